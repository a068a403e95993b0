"""Does fitting the LayerNorm to the plain concat help a GABFusion start?

Loads a float checkpoint of the stock YOLOX neck into three models. The
first is the stock model. The second is a GABFusion neck with the LayerNorm
at weight 1 and bias 0 (``norm_init='default'``). In the third the
LayerNorm affine is fitted on the first training batch to reproduce the
concatenation (``norm_init='identity'``). The script reports how far
each model's outputs are from the stock model's right after loading, and
the training loss over a short continued float training on the same
batches in the same order.

Usage:
    python benchmarks/measure_gabfusion_norm_init.py CHECKPOINT
        [--config CONFIG] [--iters 48] [--lr 0.002]
        [--out benchmarks/gabfusion_norm_init.md]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
from pathlib import Path

import torch
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import Runner, load_checkpoint

import gabfusion_mm  # noqa: F401  (registers the GABFusion modules)
from gabfusion_mm.deploy.fold_gabfusion import flatten_tensors

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = 'configs/yolox/yolox_tiny_1xb8-100e_coco128.py'
NOTES_HEADING = '## Notes'
ARMS = {
    'stock YOLOXPAFPN': None,
    "GAB learnable, norm_init='default'": 'default',
    "GAB learnable, norm_init='identity'": 'identity',
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('checkpoint', help='float checkpoint, stock neck')
    parser.add_argument('--config', default=DEFAULT_CONFIG)
    parser.add_argument('--iters', type=int, default=48)
    parser.add_argument('--lr', type=float, default=0.002)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--out', default='benchmarks/gabfusion_norm_init.md')
    return parser.parse_args()


def build(cfg: Config, norm_init: str | None, checkpoint: str):
    model_cfg = copy.deepcopy(cfg.model)
    if norm_init is not None:
        model_cfg.neck.update(
            type='GABYOLOXPAFPN',
            fusion_cfg=dict(mode='learnable', norm_init=norm_init),
        )
    model = MODELS.build(model_cfg)
    load_checkpoint(model, checkpoint, map_location='cpu', strict=True)
    return model


def load_batches(cfg: Config, model, count: int) -> list[dict]:
    loader_cfg = copy.deepcopy(cfg.train_dataloader)
    loader_cfg.num_workers = 0
    loader_cfg.persistent_workers = False
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    batches = []
    while len(batches) < count:
        for batch in loader:
            batches.append(model.data_preprocessor(batch, True))
            if len(batches) == count:
                break
    return batches


def relative_deviation(model, reference, batches) -> float:
    """Mean over batches of ||out - out_stock|| / ||out_stock||."""
    values = []
    with torch.no_grad():
        for batch, ref in zip(batches, reference):
            outs = flatten_tensors(model(batch['inputs'], mode='tensor'))
            num = sum((a - b).square().sum() for a, b in zip(outs, ref))
            den = sum(b.square().sum() for b in ref)
            values.append((num / den).sqrt().item())
    return statistics.mean(values)


def train_losses(model, batches, iters: int, lr: float) -> list[float]:
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=lr,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
    )
    model.train()
    losses = []
    for step in range(iters):
        batch = batches[step % len(batches)]
        loss, _ = model.parse_losses(
            model.loss(batch['inputs'], batch['data_samples'])
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    cfg = Config.fromfile(str(REPO_ROOT / args.config))
    init_default_scope('mmdet')

    models = {
        name: build(cfg, norm_init, args.checkpoint)
        for name, norm_init in ARMS.items()
    }
    stock = models['stock YOLOXPAFPN']
    batches = load_batches(cfg, stock, 16)
    eval_batches = batches[:4]

    # One training-mode forward pass without gradients: the identity arm
    # fits its LayerNorm here; every arm gets it so BN statistics match.
    with torch.no_grad():
        for model in models.values():
            model.train()
            model(batches[0]['inputs'], mode='tensor')
            model.eval()
    with torch.no_grad():
        reference = [
            flatten_tensors(stock(b['inputs'], mode='tensor'))
            for b in eval_batches
        ]

    rows = []
    for name, model in models.items():
        deviation = relative_deviation(model, reference, eval_batches)
        losses = train_losses(model, batches, args.iters, args.lr)
        rows.append((name, deviation, losses))

    lines = [
        '# GABFusion: LayerNorm start from a stock float checkpoint',
        '',
        f'Command: `python benchmarks/measure_gabfusion_norm_init.py '
        f'CHECKPOINT --config {args.config} --iters {args.iters} '
        f'--lr {args.lr}`',
        '',
        f'Machine: {platform.machine()}, torch {torch.__version__}, '
        f'{args.threads} threads. Checkpoint: {Path(args.checkpoint).name}. '
        f'Batches: 16 COCO128 training batches of the config, the same '
        f'order for every arm; SGD (nesterov, momentum 0.9, weight decay '
        f'5e-4) at lr {args.lr}.',
        '',
        '| arm | output deviation from stock at load | loss, first 4 '
        'iters | loss, last 16 iters |',
        '| --- | --- | --- | --- |',
    ]
    for name, deviation, losses in rows:
        lines.append(
            f'| {name} | {deviation:.4f} | '
            f'{statistics.mean(losses[:4]):.3f} | '
            f'{statistics.mean(losses[-16:]):.3f} |'
        )
    lines += ['', 'Loss per iteration:', '']
    for name, _, losses in rows:
        values = ', '.join(f'{v:.2f}' for v in losses)
        lines.append(f'- {name}: {values}')
    text = '\n'.join(lines) + '\n'
    out = REPO_ROOT / args.out
    # Hand-written notes below the results survive a rerun.
    if out.is_file() and NOTES_HEADING in out.read_text():
        text += '\n' + NOTES_HEADING + out.read_text().split(NOTES_HEADING)[1]
    out.write_text(text)
    print(text)


if __name__ == '__main__':
    main()
