"""Train a float YOLOX on COCO128 and evaluate it on both protocols.

Stages (each skipped when finished, so a killed run resumes):
  1. float_train: tools/train.py on the 128 train2017 images.
  2. test_heldout: tools/test.py on the 128 held-out val2017 images.
  3. test_fit: tools/test.py on the 128 training images.
A results table is printed and written to WORK_DIR/results.{md,json}.

Usage: python tools/run_demo.py [--work-dir DIR] [--model nano|tiny]
       [--schedule default|smoke]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from mmengine.logging import MMLogger

import gabfusion_mm  # noqa: F401
from gabfusion_mm.compat import atomic_write_bytes
from gabfusion_mm.pipeline import Stage, StageRunner, read_test_metrics

REPO_ROOT = Path(__file__).resolve().parents[1]

# A few images, one epoch, batch 2: checks that every stage runs.
SMOKE_OPTIONS = (
    'train_cfg.max_epochs=1',
    'train_cfg.val_interval=1',
    'train_dataloader.batch_size=2',
    'train_dataloader.num_workers=0',
    'train_dataloader.persistent_workers=False',
    'train_dataloader.dataset.indices=4',
    'val_dataloader.num_workers=0',
    'val_dataloader.persistent_workers=False',
    'val_dataloader.dataset.indices=4',
    'test_dataloader.num_workers=0',
    'test_dataloader.persistent_workers=False',
    'test_dataloader.dataset.indices=4',
    'model.test_cfg.score_thr=0.0',
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        '--work-dir',
        default='work_dirs/demo',
        help='folder for checkpoints, logs and the results table',
    )
    parser.add_argument(
        '--model',
        choices=['nano', 'tiny'],
        default='nano',
        help='YOLOX size (nano: about 8 s per COCO128 epoch on 2 cores)',
    )
    parser.add_argument(
        '--schedule',
        choices=['default', 'smoke'],
        default='default',
        help='default: the config schedule; smoke: 2 iterations on 4 images',
    )
    return parser.parse_args()


def last_checkpoint(work_dir: Path) -> Path:
    """Return the checkpoint that mmengine recorded as the latest."""
    record = work_dir / 'last_checkpoint'
    if not record.is_file():
        raise FileNotFoundError(f'no last_checkpoint file in {work_dir}')
    return Path(record.read_text().strip())


def test_stage(
    name: str, config: Path, train_dir: Path, options: list[str]
) -> Stage:
    """Stage that evaluates the latest checkpoint of ``train_dir``."""
    out_dir = train_dir / name

    def metrics() -> dict:
        return read_test_metrics(out_dir)

    command = [
        sys.executable,
        'tools/test.py',
        str(config),
        str(last_checkpoint(train_dir)),
        '--work-dir',
        str(out_dir),
    ]
    if options:
        command += ['--cfg-options', *options]
    return Stage(name, command, out_dir, after=metrics)


def format_table(rows: list[dict]) -> str:
    """Markdown table of bbox mAP and mAP50 per model and protocol."""
    lines = [
        '| model | protocol | mAP | mAP50 | train time (min) |',
        '| --- | --- | --- | --- | --- |',
    ]
    for row in rows:
        lines.append(
            f'| {row["model"]} | {row["protocol"]} | {row["mAP"]:.4f} | '
            f'{row["mAP50"]:.4f} | {row["train_minutes"]:.1f} |'
        )
    return '\n'.join(lines)


def main() -> None:
    args = parse_args()
    work_dir = Path(args.work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    logger = MMLogger.get_instance(
        'gabfusion_demo', log_file=str(work_dir / 'demo.log')
    )
    options = list(SMOKE_OPTIONS) if args.schedule == 'smoke' else []

    config = (
        REPO_ROOT / f'configs/yolox/yolox_{args.model}_1xb8-100e_coco128.py'
    )
    fit_config = config.with_name(config.stem + '-fit.py')
    float_dir = work_dir / 'float'
    runner = StageRunner(work_dir, REPO_ROOT)

    logger.info('[1/3] float training')
    train_cmd = [
        sys.executable,
        'tools/train.py',
        str(config),
        '--work-dir',
        str(float_dir),
        '--resume',
    ]
    if options:
        train_cmd += ['--cfg-options', *options]
    train = runner.run(Stage('float_train', train_cmd, float_dir))

    logger.info('[2/3] evaluation on the held-out val2017 images')
    heldout = runner.run(
        test_stage('test_heldout', config, float_dir, options)
    )
    logger.info('[3/3] evaluation on the training images (fit protocol)')
    fit = runner.run(test_stage('test_fit', fit_config, float_dir, options))

    rows = [
        dict(
            model=f'YOLOX-{args.model} float',
            protocol=protocol,
            mAP=metrics['coco/bbox_mAP'],
            mAP50=metrics['coco/bbox_mAP_50'],
            train_minutes=train['seconds'] / 60,
        )
        for protocol, metrics in (
            ('held-out (val2017)', heldout),
            ('fit (train2017)', fit),
        )
    ]
    table = format_table(rows)
    atomic_write_bytes((table + '\n').encode(), str(work_dir / 'results.md'))
    atomic_write_bytes(
        json.dumps(rows, indent=2).encode(), str(work_dir / 'results.json')
    )
    print('\n' + table)
    logger.info(f'results written to {work_dir}/results.md and .json')


if __name__ == '__main__':
    main()
