"""Time one QAT train step with and without ADA distillation, side by side.

Usage: python benchmarks/bench_ada_step.py [--float-checkpoint CKPT]
       [--iters 15] [--warmup 2] [--threads 1] [--out benchmarks/ada_step.md]

Both arms are built from their configs (YOLOX-tiny, W4A4 LSQ, COCO128 at the
configs' input size and batch size) from the same float checkpoint; the
ADA arm also runs the float teacher's backbone and neck and the ADA loss.
The timed step is ``model.train_step`` (data preprocessing, forward,
backward, optimizer step) on batches loaded into memory beforehand, so data
loading and hooks (EMA, logging) are not timed. The arms alternate step by
step so that load from other processes affects both alike, and the report
uses medians of the wall time and of the process CPU time. On a shared
machine the CPU time is the steadier measure, and one thread avoids the
OpenMP barrier stalls that multi-threaded runs suffer when other processes
take the cores.
"""

from __future__ import annotations

import argparse
import copy
import os
import os.path as osp
import platform
import statistics
import sys
import time

import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmrazor.registry import MODELS

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import gabfusion_mm  # noqa: E402,F401  (patches torch for mmrazor first)

CONFIG_DIR = osp.join(REPO_ROOT, 'configs', 'gabfusion_qat')
ARMS = {
    'QAT': 'yolox_tiny_w4a4-lsq_qat_coco128.py',
    'QAT + ADA': 'yolox_tiny_w4a4-lsq_ada_coco128.py',
}
TARGET_RATIO = 1.3


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--float-checkpoint',
        help='float YOLOX-tiny checkpoint; by default a randomly '
        'initialized one is written to a temporary file (the step time does '
        'not depend on the weights)',
    )
    parser.add_argument('--iters', type=int, default=15, help='timed steps')
    parser.add_argument(
        '--warmup', type=int, default=2, help='untimed steps per arm first'
    )
    parser.add_argument(
        '--threads', type=int, default=1, help='torch intra-op threads'
    )
    parser.add_argument(
        '--out',
        default=osp.join(REPO_ROOT, 'benchmarks', 'ada_step.md'),
        help='Markdown report path',
    )
    return parser.parse_args()


def _random_float_checkpoint(cfg: Config, path: str) -> str:
    model = MODELS.build(copy.deepcopy(cfg.model.architecture))
    torch.save(dict(state_dict=model.state_dict()), path)
    return path


def build_arm(cfg: Config, checkpoint: str):
    cfg = copy.deepcopy(cfg)
    cfg.model.float_checkpoint = checkpoint
    model = MODELS.build(cfg.model)
    model.train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    return model, optim_wrapper


def load_batches(cfg: Config, count: int) -> list:
    loader_cfg = copy.deepcopy(cfg.train_dataloader)
    loader_cfg.num_workers = 0
    loader_cfg.persistent_workers = False
    loader = Runner.build_dataloader(loader_cfg, seed=0)
    batches = []
    while len(batches) < count:
        for batch in loader:
            batches.append(batch)
            if len(batches) == count:
                break
    return batches


def time_step(model, optim_wrapper, batch) -> tuple[float, float]:
    """Return the wall and process CPU seconds of one train step."""
    wall, cpu = time.perf_counter(), time.process_time()
    model.train_step(batch, optim_wrapper)
    return time.perf_counter() - wall, time.process_time() - cpu


def write_report(args, cfg: Config, times: dict, path: str) -> float:
    wall = {a: statistics.median(v['wall']) for a, v in times.items()}
    cpu = {a: statistics.median(v['cpu']) for a, v in times.items()}
    ratio = cpu['QAT + ADA'] / cpu['QAT']
    wall_ratio = wall['QAT + ADA'] / wall['QAT']
    batch = cfg.train_dataloader.batch_size
    lines = [
        '# Train-step time of QAT with ADA over QAT alone',
        '',
        'Command (from the repository root):',
        '',
        '```',
        'python ' + ' '.join(sys.argv),
        '```',
        '',
        f'Machine: {platform.processor() or platform.machine()}, '
        f'{os.cpu_count()} CPUs, torch {torch.__version__}, '
        f'{torch.get_num_threads()} intra-op thread(s), Python '
        f'{platform.python_version()}. Model: YOLOX-tiny, W4A4 LSQ, batch '
        f"{batch} of COCO128 training images at the configs' input size. "
        f'{args.iters} timed steps per arm after {args.warmup} warm-up '
        'steps, alternating between the arms.',
        '',
        '| arm | median CPU s/step | median wall s/step | wall min-max |',
        '| --- | --- | --- | --- |',
    ]
    for arm, values in times.items():
        lines.append(
            f'| {arm} | {cpu[arm]:.3f} | {wall[arm]:.3f} | '
            f'{min(values["wall"]):.2f}-{max(values["wall"]):.2f} |'
        )
    verdict = 'meets' if ratio <= TARGET_RATIO else 'misses'
    lines += [
        '',
        f'Ratio QAT + ADA / QAT, CPU time: **{ratio:.3f}** ({verdict} the '
        f'target of at most {TARGET_RATIO}); wall time: {wall_ratio:.3f}.',
        '',
        'The ADA step also runs the frozen float teacher (backbone and neck, '
        'under torch.no_grad) and the three per-level ADA terms. Data '
        'loading and hooks such as EMA are not timed.',
        '',
    ]
    with open(path, 'w') as file:
        file.write('\n'.join(lines))
    return ratio


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    init_default_scope('mmdet')
    cfgs = {
        arm: Config.fromfile(osp.join(CONFIG_DIR, name))
        for arm, name in ARMS.items()
    }
    checkpoint = args.float_checkpoint or _random_float_checkpoint(
        cfgs['QAT'], '/tmp/bench_ada_step_float.pth'
    )
    arms = {arm: build_arm(cfg, checkpoint) for arm, cfg in cfgs.items()}
    batches = load_batches(cfgs['QAT'], args.warmup + args.iters)

    times = {arm: dict(wall=[], cpu=[]) for arm in arms}
    for index, batch in enumerate(batches):
        for arm, (model, optim_wrapper) in arms.items():
            wall, cpu = time_step(model, optim_wrapper, batch)
            if index >= args.warmup:
                times[arm]['wall'].append(wall)
                times[arm]['cpu'].append(cpu)

    ratio = write_report(args, cfgs['QAT'], times, args.out)
    print(f'QAT + ADA / QAT train-step CPU time: {ratio:.3f} -> {args.out}')


if __name__ == '__main__':
    main()
