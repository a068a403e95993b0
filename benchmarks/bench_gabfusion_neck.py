"""Train-step time of YOLOX-tiny with GABFusion necks against the stock neck.

Every variant is built from the same config and timed in one process, in
round-robin order, so that load changes on a shared machine hit all of
them alike. A step is forward, loss, backward and an SGD update on one
synthetic batch. The script writes a Markdown table of median step times
and their ratios to the stock neck.

Usage:
    python benchmarks/bench_gabfusion_neck.py [--batch-size 8] [--size 320]
        [--steps 15] [--threads 2] [--out benchmarks/gabfusion_neck.md]
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmengine.config import Config
from torch import Tensor, nn

import gabfusion_mm  # noqa: F401  (registers the GABFusion modules)
from gabfusion_mm.models.layers import ChannelLayerNorm, GABFusion

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG = REPO_ROOT / 'configs/yolox/yolox_tiny_1xb8-100e_coco128.py'
NOTES_HEADING = '## Notes'


def layer_norm_contiguous(self: ChannelLayerNorm, x: Tensor) -> Tensor:
    """Permute, F.layer_norm, permute back and copy to NCHW memory."""
    y = F.layer_norm(
        x.permute(0, 2, 3, 1),
        self.normalized_shape,
        self.weight,
        self.bias,
        self.eps,
    )
    return y.permute(0, 3, 1, 2).contiguous()


def layer_norm_var_mean(self: ChannelLayerNorm, x: Tensor) -> Tensor:
    """Normalize in NCHW with torch.var_mean over dim 1 (no permute)."""
    var, mean = torch.var_mean(x, dim=1, keepdim=True, correction=0)
    normalized = (x - mean) * torch.rsqrt(var + self.eps)
    return torch.addcmul(
        self.bias.view(1, -1, 1, 1), normalized, self.weight.view(1, -1, 1, 1)
    )


def fusion_nhwc_concat(self: GABFusion, inputs: list[Tensor]) -> Tensor:
    """Concatenate the scaled branches straight into NHWC memory."""
    alpha = self.branch_logits.softmax(dim=0)
    x = torch.cat(
        [(a * f).permute(0, 2, 3, 1) for a, f in zip(alpha, inputs)], dim=-1
    )
    norm = self.norm
    y = F.layer_norm(
        x, norm.normalized_shape, norm.weight, norm.bias, norm.eps
    )
    return y.permute(0, 3, 1, 2)


def patch_fusions(model: nn.Module, forward) -> None:
    for module in model.modules():
        if isinstance(module, GABFusion):
            module.forward = types.MethodType(forward, module)


def patch_norms(model: nn.Module, forward) -> None:
    for module in model.modules():
        if isinstance(module, ChannelLayerNorm):
            module.forward = types.MethodType(forward, module)


def track_norms(model: nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, GABFusion):
            module.track_grad_norms = True


def build_variants(cfg: Config) -> dict[str, nn.Module]:
    """Build the stock model and each GABFusion variant."""
    gab = dict(type='GABYOLOXPAFPN')
    specs = {
        'stock YOLOXPAFPN': None,
        'GAB concat + grad norms': dict(mode='concat'),
        'GAB learnable (default)': dict(mode='learnable'),
        'GAB learnable + grad norms': dict(mode='learnable'),
        'GAB feedback (grad norms)': dict(mode='feedback'),
        'GAB learnable, LN copied to NCHW': dict(mode='learnable'),
        'GAB learnable, LN via var_mean': dict(mode='learnable'),
        'GAB learnable, concat into NHWC': dict(mode='learnable'),
    }
    models = {}
    for name, fusion_cfg in specs.items():
        model_cfg = copy.deepcopy(cfg.model)
        if fusion_cfg is not None:
            model_cfg.neck.update(gab, fusion_cfg=fusion_cfg)
        torch.manual_seed(0)
        model = MODELS.build(model_cfg)
        model.init_weights()
        if 'grad norms' in name:
            track_norms(model)
        if 'copied to NCHW' in name:
            patch_norms(model, layer_norm_contiguous)
        if 'var_mean' in name:
            patch_norms(model, layer_norm_var_mean)
        if 'into NHWC' in name:
            patch_fusions(model, fusion_nhwc_concat)
        model.train()
        models[name] = model
    return models


def make_batch(model: nn.Module, batch_size: int, size: int) -> dict:
    packed = demo_mm_inputs(
        batch_size=batch_size,
        image_shapes=(3, size, size),
        num_items=[5] * batch_size,
        num_classes=80,
    )
    return model.data_preprocessor(packed, True)


def train_step(
    model: nn.Module, optimizer, batch: dict
) -> tuple[float, float]:
    """Run one step; return its wall time and process CPU time in seconds."""
    start = time.perf_counter()
    start_cpu = time.process_time()
    losses = model.loss(batch['inputs'], batch['data_samples'])
    loss, _ = model.parse_losses(losses)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    for module in model.modules():
        if isinstance(module, GABFusion):
            norms = module.pop_grad_norms()
            if module.mode == 'feedback' and norms is not None:
                module.feedback_update(norms)
    return time.perf_counter() - start, time.process_time() - start_cpu


def cpu_model() -> str:
    """Return the processor name from /proc/cpuinfo, or a generic name."""
    cpuinfo = Path('/proc/cpuinfo')
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    return platform.processor() or 'unknown CPU'


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch-size', type=int, default=8)
    parser.add_argument('--size', type=int, default=320, help='input px')
    parser.add_argument('--steps', type=int, default=15)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--out', default='benchmarks/gabfusion_neck.md')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    cfg = Config.fromfile(str(CONFIG))
    models = build_variants(cfg)
    optimizers = {
        name: torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
        for name, model in models.items()
    }
    batch = make_batch(next(iter(models.values())), args.batch_size, args.size)

    wall: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    for step in range(args.warmup + args.steps):
        for name, model in models.items():
            elapsed, elapsed_cpu = train_step(model, optimizers[name], batch)
            if step >= args.warmup:
                wall[name].append(elapsed)
                cpu[name].append(elapsed_cpu)

    stock_cpu = statistics.median(cpu['stock YOLOXPAFPN'])
    stock_wall = min(wall['stock YOLOXPAFPN'])
    lines = [
        '# GABFusion neck: YOLOX-tiny train-step time',
        '',
        f'Command: `python benchmarks/bench_gabfusion_neck.py '
        f'--batch-size {args.batch_size} --size {args.size} '
        f'--steps {args.steps} --warmup {args.warmup} '
        f'--threads {args.threads}`',
        '',
        f'Machine: {platform.machine()}, {cpu_model()}, '
        f'torch {torch.__version__}, {args.threads} thread(s), Python '
        f'{sys.version.split()[0]}. One step: forward, loss, backward and '
        f'SGD update of YOLOX-tiny (mmdet config, batch {args.batch_size}, '
        f'{args.size}x{args.size}). Variants run round-robin in one '
        f'process, {args.steps} steps each after {args.warmup} warm-up '
        f'rounds. The machine is shared, so wall times include waits for '
        f'other processes; the process CPU time per step (all threads) is '
        f'the steadier measure, and the fastest wall time is the least '
        f'disturbed one.',
        '',
        '| variant | median CPU s/step | ratio (median CPU) | '
        'min wall s/step | ratio (min wall) | median wall s/step |',
        '| --- | --- | --- | --- | --- | --- |',
    ]
    for name in models:
        median_cpu = statistics.median(cpu[name])
        min_wall = min(wall[name])
        lines.append(
            f'| {name} | {median_cpu:.3f} | {median_cpu / stock_cpu:.3f} | '
            f'{min_wall:.3f} | {min_wall / stock_wall:.3f} | '
            f'{statistics.median(wall[name]):.3f} |'
        )
    text = '\n'.join(lines) + '\n'
    out = REPO_ROOT / args.out
    # Hand-written notes below the table survive a rerun.
    if out.is_file() and NOTES_HEADING in out.read_text():
        text += '\n' + NOTES_HEADING + out.read_text().split(NOTES_HEADING)[1]
    out.write_text(text)
    print(text)


if __name__ == '__main__':
    main()
