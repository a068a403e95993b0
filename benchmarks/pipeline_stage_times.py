"""Tabulate the stage times of a finished ``tools/run_demo.py`` run.

Usage: python benchmarks/pipeline_stage_times.py WORK_DIR
       [--out benchmarks/pipeline_stages.md] [--note TEXT]

Reads the stage markers under ``WORK_DIR/stages`` (each stores the wall
time of its stage, summed over interrupted and resumed runs) and writes a
Markdown page with the time per stage, each stage's share of the total,
the median logged iteration time of each training and its ratio to the
float training's, and the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gabfusion_mm.pipeline.plots import read_scalar_records  # noqa: E402

# Stage name prefixes in pipeline order, with a short description.
GROUPS = (
    ('float_', 'float YOLOX'),
    ('qat_', 'W4A4 LSQ QAT, baseline'),
    ('gabfusion_ada_', 'W4A4 LSQ QAT + GABFusion + ADA'),
    ('folded_', 'folded model'),
    ('fold', 'fold and re-calibration'),
    ('finetune_', 'fine-tune of the folded model'),
    ('onnx_', 'ONNX export and onnxruntime'),
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('work_dir', help='work directory of run_demo.py')
    parser.add_argument(
        '--out',
        default='benchmarks/pipeline_stages.md',
        help='Markdown file to write',
    )
    parser.add_argument(
        '--note', default='', help='sentence about the run, e.g. the load'
    )
    return parser.parse_args()


def read_stage_seconds(work_dir: Path) -> dict[str, float]:
    """Return the wall time of every finished stage, in marker order."""
    # plan.json records the model and schedule, not a stage.
    markers = sorted(
        (p for p in (work_dir / 'stages').glob('*.json') if p.stem != 'plan'),
        key=lambda p: p.stat().st_mtime,
    )
    if not markers:
        raise FileNotFoundError(
            f'no stage markers under {work_dir}/stages; run '
            f'tools/run_demo.py --work-dir {work_dir} first'
        )
    return {p.stem: json.loads(p.read_text())['seconds'] for p in markers}


def describe(name: str) -> str:
    for prefix, text in GROUPS:
        if name.startswith(prefix):
            return text
    return name


def median_iter_times(work_dir: Path) -> dict[str, float]:
    """Median logged iteration time of each training stage's folder."""
    times = {}
    for arm in ('float', 'qat', 'gabfusion_ada', 'finetune'):
        records = read_scalar_records(work_dir / arm)
        values = [r['time'] for r in records if 'time' in r and 'lr' in r]
        if values:
            times[arm] = statistics.median(values)
    return times


def format_page(
    work_dir: Path, seconds: dict[str, float], command: str, note: str
) -> str:
    total = sum(seconds.values())
    lines = [
        '# Stage times of the COCO128 pipeline',
        '',
        f'Command: `make demo`, then `{command}`.',
        '',
        f'Machine: {platform.machine()}, {os.cpu_count()} CPUs, torch '
        f'{torch.__version__}, Python {platform.python_version()}. {note}',
        '',
        '| stage | what | minutes | share |',
        '| --- | --- | --- | --- |',
    ]
    for name, value in seconds.items():
        lines.append(
            f'| {name} | {describe(name)} | {value / 60:.1f} | '
            f'{value / total:.1%} |'
        )
    lines += [f'| total | | {total / 60:.1f} | 100% |', '']

    iter_times = median_iter_times(work_dir)
    if iter_times:
        lines += [
            "Median training iteration time per arm (mmengine's logged "
            '`time`, batch 8):',
            '',
            '| arm | s/iter | over float |',
            '| --- | --- | --- |',
        ]
        reference = iter_times.get('float')
        for arm, value in iter_times.items():
            ratio = f'{value / reference:.2f}' if reference else '-'
            lines.append(f'| {arm} | {value:.3f} | {ratio} |')
        lines.append('')
    return '\n'.join(lines)


def main() -> None:
    args = parse_args()
    seconds = read_stage_seconds(Path(args.work_dir))
    command = f'python benchmarks/pipeline_stage_times.py {args.work_dir}'
    page = format_page(Path(args.work_dir), seconds, command, args.note)
    Path(args.out).write_text(page)
    print(page)


if __name__ == '__main__':
    main()
