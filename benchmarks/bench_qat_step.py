"""Time a QAT train step over a float train step for YOLOX-tiny.

Usage: python benchmarks/bench_qat_step.py [--float-checkpoint CKPT]
       [--iters 15] [--warmup 3] [--arms ARM ...] [--threads 2]
       [--out benchmarks/qat_step.md]

Every arm is built from its config (YOLOX-tiny, COCO128 batch of 8 at
320 px). The arms are the float detector, the trace-free W4A4 baselines
(LSQ, PACT, N2UQ) in eager mode and with ``torch.compile``d fake
quantizers, the W4A4 LSQ baseline with BN folding, and mmrazor's FX 8-bit
quantizers (TensorRT, and OpenVINO with LSQ). The timed step is
``model.train_step`` (data preprocessing, forward, backward, SGD update) on
batches loaded into memory beforehand, so data loading and hooks are not
timed. The arms alternate step by step so that load from other processes
affects all of them alike, and the report uses each arm's fastest step.
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

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from mmdet.registry import MODELS as MMDET_MODELS  # noqa: E402
from mmrazor.registry import MODELS as RAZOR_MODELS  # noqa: E402

import gabfusion_mm  # noqa: E402,F401  (patches torch for mmrazor first)

FLOAT_CONFIG = 'configs/yolox/yolox_tiny_1xb8-100e_coco128.py'
QAT_DIR = 'configs/qat'
# Arm name -> (config, quantizer overrides).
ARMS = {
    'float': (FLOAT_CONFIG, None),
    'LSQ W4A4': (
        'yolox_tiny_w4a4-lsq_qat_coco128.py',
        dict(use_compile=False),
    ),
    'LSQ W4A4 compiled': (
        'yolox_tiny_w4a4-lsq_qat_coco128.py',
        dict(use_compile=True),
    ),
    'LSQ W4A4 BN-folded': (
        'yolox_tiny_w4a4-lsq_qat_coco128.py',
        dict(fold_bn=True, use_compile=False),
    ),
    'PACT W4A4': (
        'yolox_tiny_w4a4-pact_qat_coco128.py',
        dict(use_compile=False),
    ),
    'PACT W4A4 compiled': (
        'yolox_tiny_w4a4-pact_qat_coco128.py',
        dict(use_compile=True),
    ),
    'N2UQ W4A4': (
        'yolox_tiny_w4a4-n2uq_qat_coco128.py',
        dict(use_compile=False),
    ),
    'N2UQ W4A4 compiled': (
        'yolox_tiny_w4a4-n2uq_qat_coco128.py',
        dict(use_compile=True),
    ),
    'FX TensorRT W8A8': ('yolox_tiny_w8a8-fx-tensorrt_qat_coco128.py', {}),
    'FX OpenVINO LSQ W8A8': (
        'yolox_tiny_w8a8-fx-openvino_qat_coco128.py',
        {},
    ),
}
TARGET_RATIO = 1.6


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
        '--warmup',
        type=int,
        default=3,
        help='untimed steps per arm first (compilation happens here)',
    )
    parser.add_argument(
        '--arms',
        nargs='+',
        default=list(ARMS),
        choices=list(ARMS),
        help='arms to time; float is always included',
    )
    parser.add_argument(
        '--threads', type=int, default=2, help='torch intra-op threads'
    )
    parser.add_argument(
        '--out',
        default=osp.join(REPO_ROOT, 'benchmarks', 'qat_step.md'),
        help='Markdown report path',
    )
    return parser.parse_args()


def load_config(name: str) -> Config:
    path = name if name.startswith('configs/') else f'{QAT_DIR}/{name}'
    return Config.fromfile(osp.join(REPO_ROOT, path))


def random_float_checkpoint(path: str) -> str:
    cfg = load_config(FLOAT_CONFIG)
    model = MMDET_MODELS.build(cfg.model)
    model.init_weights()
    torch.save(dict(state_dict=model.state_dict()), path)
    return path


def build_arm(name: str, checkpoint: str):
    config, quantizer_changes = ARMS[name]
    cfg = load_config(config)
    if quantizer_changes is None:
        model = MMDET_MODELS.build(cfg.model)
        model.load_state_dict(torch.load(checkpoint)['state_dict'])
    else:
        model_cfg = copy.deepcopy(cfg.model)
        model_cfg.float_checkpoint = checkpoint
        model_cfg.quantizer.update(quantizer_changes)
        model = RAZOR_MODELS.build(model_cfg)
    model.train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    return model, optim_wrapper


def load_batches(count: int) -> list:
    cfg = load_config(FLOAT_CONFIG)
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


def time_step(model, optim_wrapper, batch) -> float:
    start = time.perf_counter()
    model.train_step(batch, optim_wrapper)
    return time.perf_counter() - start


def write_report(args, times: dict, first_steps: dict, path: str) -> dict:
    fastest = {arm: min(values) for arm, values in times.items()}
    medians = {arm: statistics.median(v) for arm, v in times.items()}
    ratios = {arm: fastest[arm] / fastest['float'] for arm in times}
    load = os.getloadavg()[0] if hasattr(os, 'getloadavg') else float('nan')
    lines = [
        '# QAT train-step time over float train-step time, YOLOX-tiny',
        '',
        'Command (from the repository root):',
        '',
        '```',
        'python ' + ' '.join(sys.argv),
        '```',
        '',
        f'Machine: {platform.processor() or platform.machine()}, '
        f'{os.cpu_count()} CPUs, torch {torch.__version__} with '
        f'{torch.get_num_threads()} threads, Python '
        f'{platform.python_version()}; 1-minute load average {load:.1f} '
        'at the end of the run. Model: YOLOX-tiny, COCO128 training batches '
        f'of 8 at 320 px. {args.iters} timed steps per arm after '
        f'{args.warmup} warm-up steps, alternating between the arms.',
        '',
        'Other processes only ever add time to a step, so the ratio uses '
        'the fastest step of each arm; the medians show how much the load '
        'of the machine varied during the run.',
        '',
        '| arm | fastest s/step | ratio to float | median s/step | '
        'median ratio | first step s |',
        '| --- | --- | --- | --- | --- | --- |',
    ]
    for arm in times:
        lines.append(
            f'| {arm} | {fastest[arm]:.3f} | **{ratios[arm]:.2f}** | '
            f'{medians[arm]:.3f} | {medians[arm] / medians["float"]:.2f} | '
            f'{first_steps[arm]:.1f} |'
        )
    lines += [
        '',
        f'Target for the trace-free arms: a ratio of at most {TARGET_RATIO}. '
        'W4A4 arms keep the first conv and the prediction convs at 8 bits; '
        '"compiled" arms fuse each fake quantizer with torch.compile '
        '(use_compile=True), the others run the eager autograd Functions; '
        "the FX arms are mmrazor 1.0.0 quantizers traced in 'tensor' mode "
        'by DetectorQAT. The first step includes building the optimizer '
        'state and, for compiled arms, compiling the fake quantizers '
        '(inductor caches kernels on disk, so a second run starts faster).',
        '',
    ]
    with open(path, 'w') as file:
        file.write('\n'.join(lines))
    return ratios


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    init_default_scope('mmdet')
    names = ['float'] + [arm for arm in args.arms if arm != 'float']
    checkpoint = args.float_checkpoint or random_float_checkpoint(
        '/tmp/bench_qat_step_float.pth'
    )
    arms = {name: build_arm(name, checkpoint) for name in names}
    batches = load_batches(args.warmup + args.iters)

    times = {name: [] for name in arms}
    first_steps = {}
    for index, batch in enumerate(batches):
        for name, (model, optim_wrapper) in arms.items():
            seconds = time_step(model, optim_wrapper, batch)
            if index == 0:
                first_steps[name] = seconds
            if index >= args.warmup:
                times[name].append(seconds)
        print(f'step {index + 1}/{len(batches)} done', flush=True)

    ratios = write_report(args, times, first_steps, args.out)
    for name, ratio in ratios.items():
        print(f'{name}: {ratio:.2f} x float')
    print(f'report: {args.out}')


if __name__ == '__main__':
    main()
