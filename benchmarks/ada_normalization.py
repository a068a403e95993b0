"""Measure what ADA's normalization sends to a W4A4 YOLOX-tiny student.

Usage: python benchmarks/ada_normalization.py --float-checkpoint CKPT
       [--batches 4] [--loss-weight 0.01]
       [--out benchmarks/ada_normalization.md]

The student is the ADA arm's W4A4 LSQ YOLOX-tiny (train mode, as in QAT)
and the teacher the float checkpoint it starts from, on COCO128 training
batches. For every ADA variant the script takes the gradient of the ADA
loss (``loss_weight`` times the mean over the three neck levels) and of the
detection loss with respect to the student's neck outputs and reports:

- loss: the weighted ADA loss;
- grad ratio: ||d ADA / dX|| / ||d L_det / dX|| over all levels, i.e. how
  strong the distillation signal is next to the detection loss at the same
  point of the network;
- top-10% share: the fraction of the ADA gradient energy (sum of squares)
  at the 10% positions of each channel where the teacher's energy is
  highest (0.10 if the gradient ignored saliency);
- teacher entropy gap: log(H*W) - H(P_teacher) in nats, averaged over
  channels, images and levels (0 for a uniform distribution);
- teacher top-10% mass: the teacher probability on the 10% most probable
  positions of a channel, averaged likewise (0.10 for a uniform
  distribution).
"""

from __future__ import annotations

import argparse
import copy
import os
import os.path as osp
import platform
import sys

import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmrazor.registry import MODELS

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import gabfusion_mm  # noqa: E402,F401  (patches torch for mmrazor first)
from gabfusion_mm.models.losses import ADALoss  # noqa: E402

CONFIG = osp.join(
    REPO_ROOT, 'configs', 'gabfusion_qat', 'yolox_tiny_w4a4-lsq_ada_coco128.py'
)
# Input quantizer of the first classification conv on each level.
QUANTIZER_PATHS = [
    f'bbox_head.multi_level_cls_convs.{level}.0.conv.input_fake_quant'
    for level in range(3)
]
VARIANTS = [
    ('v1', 'sum', 1.0, 'kl'),
    ('v1', 'softmax', 0.5, 'kl'),
    ('v1', 'softmax', 1.0, 'kl'),
    ('v1', 'softmax', 2.0, 'kl'),
    ('v1', 'sum', 1.0, 'js'),
    ('v1', 'softmax', 1.0, 'js'),
    ('v2', 'sum', 1.0, 'js'),
    ('v2', 'softmax', 1.0, 'js'),
    ('v2', 'softmax', 1.0, 'kl'),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--float-checkpoint', required=True, help='float YOLOX-tiny weights'
    )
    parser.add_argument('--batches', type=int, default=4)
    parser.add_argument('--loss-weight', type=float, default=0.01)
    parser.add_argument(
        '--out',
        default=osp.join(REPO_ROOT, 'benchmarks', 'ada_normalization.md'),
    )
    parser.add_argument(
        '--note',
        default='',
        help='text appended to the report, e.g. how '
        'the float checkpoint was trained',
    )
    return parser.parse_args()


def build(args: argparse.Namespace):
    cfg = Config.fromfile(CONFIG)
    cfg.model.float_checkpoint = args.float_checkpoint
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    model.train()
    loader_cfg = copy.deepcopy(cfg.train_dataloader)
    loader_cfg.num_workers = 0
    loader_cfg.persistent_workers = False
    return model, Runner.build_dataloader(loader_cfg, seed=0), cfg


def level_features(model, batch):
    """Return teacher features, student leaf features and their Q(x)."""
    data = model.data_preprocessor(batch, True)
    inputs, samples = data['inputs'], data['data_samples']
    with torch.no_grad():
        teacher_feats = model.teacher.extract_feat(inputs)
    student_feats = model.student.extract_feat(inputs)
    leaves = [feat.detach().requires_grad_(True) for feat in student_feats]
    quantizers = [model.student.get_submodule(p) for p in QUANTIZER_PATHS]
    quantized = [fq(leaf) for fq, leaf in zip(quantizers, leaves)]
    steps = [fq.scale for fq in quantizers]

    det_losses = model.student.bbox_head.loss(leaves, samples)
    det_total = sum(
        value for key, value in det_losses.items() if 'loss' in key
    )
    det_grads = torch.autograd.grad(det_total, leaves, retain_graph=True)
    return teacher_feats, leaves, quantized, steps, det_grads


def measure_variant(variant, weight, feats) -> dict[str, float]:
    version, normalization, temperature, divergence = variant
    teacher_feats, leaves, quantized, steps, det_grads = feats
    loss = ADALoss(
        loss_weight=weight,
        version=version,
        normalization=normalization,
        temperature=temperature,
        divergence=divergence,
    )
    total = 0
    for level, (leaf, teacher) in enumerate(zip(leaves, teacher_feats)):
        q_x = quantized[level] if version == 'v2' else None
        total = total + loss(leaf, teacher, q_x, steps[level]) / len(leaves)
    grads = torch.autograd.grad(total, leaves, retain_graph=True)

    grad_sq = sum(g.square().sum() for g in grads)
    det_sq = sum(g.square().sum() for g in det_grads)
    top_sq, gap, mass = 0.0, [], []
    for grad, teacher in zip(grads, teacher_feats):
        energy = loss.energy(teacher.float()).flatten(2)
        k = max(1, int(0.1 * energy.shape[-1]))
        top = energy.topk(k, dim=-1).indices
        top_sq += grad.flatten(2).square().gather(-1, top).sum()
        prob = loss.log_distribution(loss.energy(teacher.float())).exp()
        entropy = -(prob * prob.clamp_min(1e-30).log()).sum(-1)
        gap.append((torch.log(torch.tensor(prob.shape[-1])) - entropy).mean())
        mass.append(prob.topk(k, dim=-1).values.sum(-1).mean())
    return dict(
        loss=float(total.detach()),
        grad_ratio=float(grad_sq.sqrt() / det_sq.sqrt()),
        top_share=float(top_sq / grad_sq),
        entropy_gap=float(torch.stack(gap).mean()),
        top_mass=float(torch.stack(mass).mean()),
    )


def write_report(args, results: dict, path: str) -> None:
    lines = [
        '# ADA normalization on W4A4 YOLOX-tiny neck features',
        '',
        'Command (from the repository root):',
        '',
        '```',
        'python ' + ' '.join(sys.argv),
        '```',
        '',
        f'Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch '
        f'{torch.__version__}. Student: the ADA arm config '
        '(W4A4 LSQ YOLOX-tiny, train mode), teacher: the float checkpoint '
        f'{args.float_checkpoint}. {args.batches} COCO128 training batches '
        f'of 8 images at 320 px; ADA loss weight {args.loss_weight}, mean '
        'over the three levels; means over the batches. v2 reads Q(x) and '
        'the step from the input quantizer of the first classification '
        'conv of each level.',
        '',
        '| energy | normalization | T | divergence | loss | grad ratio '
        'to detection | top-10% share | teacher entropy gap (nats) | '
        'teacher top-10% mass |',
        '| --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ]
    for (version, norm, temp, div), row in results.items():
        temp_text = f'{temp:g}' if norm == 'softmax' else '-'
        lines.append(
            f'| {version} | {norm} | {temp_text} | {div} | '
            f'{row["loss"]:.3g} | {row["grad_ratio"]:.3g} | '
            f'{row["top_share"]:.3f} | {row["entropy_gap"]:.3g} | '
            f'{row["top_mass"]:.3f} |'
        )
    lines.append('')
    if args.note:
        lines += [args.note, '']
    with open(path, 'w') as file:
        file.write('\n'.join(lines))


def main() -> None:
    args = parse_args()
    torch.manual_seed(0)
    model, loader, _ = build(args)
    sums = {variant: {} for variant in VARIANTS}
    for index, batch in enumerate(loader):
        if index == args.batches:
            break
        feats = level_features(model, batch)
        for variant in VARIANTS:
            row = measure_variant(variant, args.loss_weight, feats)
            for key, value in row.items():
                sums[variant][key] = sums[variant].get(key, 0.0) + value
    results = {
        variant: {k: v / args.batches for k, v in row.items()}
        for variant, row in sums.items()
    }
    write_report(args, results, args.out)
    print(open(args.out).read())


if __name__ == '__main__':
    main()
