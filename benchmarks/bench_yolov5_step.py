"""Train-step time of YOLOv5s against YOLOX-s at the same input size.

Both detectors are built from configs and timed in one process, in
alternating order, so load changes on a shared machine hit both alike. A
step is forward, loss, backward and an SGD update on one synthetic batch
(the same images and boxes for both). The script also times the plain
forward pass (``mode='tensor'``, eval mode, no gradient) and writes a
Markdown table of median times and the YOLOv5s / YOLOX-s ratios.

Usage:
    python benchmarks/bench_yolov5_step.py [--batch-size 4] [--size 320]
        [--steps 10] [--threads 2] [--out benchmarks/yolov5_step.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmengine.config import Config
from mmengine.hub import get_config
from mmengine.registry import init_default_scope
from torch import nn

import gabfusion_mm  # noqa: F401  (registers the YOLOv5 modules)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    'YOLOv5s': str(REPO_ROOT / 'configs/yolov5/yolov5_s_1xb8-100e_coco128.py'),
    'YOLOX-s': 'mmdet::yolox/yolox_s_8xb8-300e_coco.py',
}


def build_model(config: str) -> nn.Module:
    """Build a detector with fixed-size inputs (no batch resizing)."""
    if config.startswith('mmdet::'):
        cfg = get_config(config)
    else:
        cfg = Config.fromfile(config)
    if 'batch_augments' in cfg.model.data_preprocessor:
        cfg.model.data_preprocessor.batch_augments = None
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def make_batch(model: nn.Module, batch_size: int, size: int) -> dict:
    torch.manual_seed(0)
    packed = demo_mm_inputs(
        batch_size=batch_size,
        image_shapes=(3, size, size),
        num_items=[8] * batch_size,
        num_classes=80,
    )
    return model.data_preprocessor(packed, True)


def train_step(model: nn.Module, optimizer, batch: dict) -> float:
    model.train()
    start = time.perf_counter()
    losses = model.loss(batch['inputs'], batch['data_samples'])
    loss, _ = model.parse_losses(losses)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def forward_time(model: nn.Module, batch: dict) -> float:
    model.eval()
    start = time.perf_counter()
    with torch.no_grad():
        model(batch['inputs'], mode='tensor')
    return time.perf_counter() - start


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--batch-size', type=int, default=4)
    parser.add_argument('--size', type=int, default=320, help='input px')
    parser.add_argument('--steps', type=int, default=10)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--out', default='benchmarks/yolov5_step.md')
    return parser.parse_args()


def measure(args: argparse.Namespace) -> tuple[dict, dict, dict]:
    """Return per-model step times, forward times and parameter counts."""
    models = {name: build_model(config) for name, config in CONFIGS.items()}
    optimizers = {
        name: torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
        for name, model in models.items()
    }
    batch = make_batch(models['YOLOv5s'], args.batch_size, args.size)
    params = {
        name: sum(p.numel() for p in model.parameters())
        for name, model in models.items()
    }

    steps = {name: [] for name in models}
    forwards = {name: [] for name in models}
    for step in range(args.warmup + args.steps):
        # Alternate which model goes first, so neither always follows the
        # other's memory traffic.
        names = list(models) if step % 2 == 0 else list(models)[::-1]
        for name in names:
            elapsed = train_step(models[name], optimizers[name], batch)
            forward = forward_time(models[name], batch)
            if step >= args.warmup:
                steps[name].append(elapsed)
                forwards[name].append(forward)
    return steps, forwards, params


def paired_ratio(values: dict[str, list[float]]) -> float:
    """Median over rounds of YOLOv5s time / YOLOX-s time of the same round.

    Both models of a round run back to back, so the load of other
    processes on a shared machine cancels in the per-round ratio better
    than in a ratio of medians.
    """
    return statistics.median(
        v5 / x for v5, x in zip(values['YOLOv5s'], values['YOLOX-s'])
    )


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    init_default_scope('mmdet')
    load_before = os.getloadavg()[0]
    steps, forwards, params = measure(args)
    load_after = os.getloadavg()[0]

    lines = [
        '# YOLOv5s against YOLOX-s: train-step time',
        '',
        f'Command: `python benchmarks/bench_yolov5_step.py '
        f'--batch-size {args.batch_size} --size {args.size} '
        f'--steps {args.steps} --warmup {args.warmup} '
        f'--threads {args.threads}`',
        '',
        f'Machine: {platform.machine()}, {os.cpu_count()} cores, torch '
        f'{torch.__version__}, {args.threads} threads, Python '
        f'{sys.version.split()[0]}, CPU only; 1-minute load average '
        f'{load_before:.1f} before and {load_after:.1f} after the run.',
        '',
        f'Models: YOLOv5s from `configs/yolov5/yolov5_s_1xb8-100e_coco128.py`'
        f", YOLOX-s from mmdet's `yolox/yolox_s_8xb8-300e_coco.py` (batch "
        f'resizing off), 80 classes, untrained. Input: batch '
        f'{args.batch_size} of {args.size}x{args.size} random images with 8 '
        f'random boxes each. A train step is forward, loss (with target '
        f'assignment), backward and an SGD update. Forward is '
        f"`mode='tensor'` in eval mode without gradients. The two models run "
        f'alternately in one process, {args.steps} rounds after '
        f'{args.warmup} warm-up rounds.',
        '',
        '| model | parameters | median train step (s) | min train step (s) '
        '| median forward (s) | min forward (s) |',
        '| --- | --- | --- | --- | --- | --- |',
    ]
    for name in CONFIGS:
        lines.append(
            f'| {name} | {params[name]:,} | '
            f'{statistics.median(steps[name]):.3f} | '
            f'{min(steps[name]):.3f} | '
            f'{statistics.median(forwards[name]):.3f} | '
            f'{min(forwards[name]):.3f} |'
        )
    lines += [
        '',
        'Ratio YOLOv5s / YOLOX-s, median of the per-round ratios: train '
        f'step {paired_ratio(steps):.3f}, forward '
        f'{paired_ratio(forwards):.3f}. Ratio of the minimum times: train '
        f'step {min(steps["YOLOv5s"]) / min(steps["YOLOX-s"]):.3f}, forward '
        f'{min(forwards["YOLOv5s"]) / min(forwards["YOLOX-s"]):.3f}.',
    ]
    text = '\n'.join(lines) + '\n'
    (REPO_ROOT / args.out).write_text(text)
    print(text)


if __name__ == '__main__':
    main()
