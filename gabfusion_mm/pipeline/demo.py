"""The COCO128 pipeline: float YOLOX, two W4A4 QAT arms, fold, ONNX.

Every step is a command-line tool run as a subprocess (see
:mod:`gabfusion_mm.pipeline.stages`), so each reported number comes from a
command that a user can rerun; the commands are stored with the results.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .stages import Stage, read_test_metrics

# The training images evaluated with their original COCO annotations, for
# tools/test.py and tools/deploy/test_onnx.py.
FIT_OPTIONS = (
    'test_dataloader.dataset.ann_file='
    'annotations/instances_train2017_original_coco.json',
    'test_dataloader.dataset.data_prefix.img=images/train2017/',
    'test_evaluator.ann_file='
    'data/coco128/annotations/instances_train2017_original_coco.json',
)
PROTOCOLS = {
    'heldout': ('held-out (train2017 -> val2017)', ()),
    'fit': ('fit (train2017 -> train2017)', FIT_OPTIONS),
}

# One epoch on four images, batch 2: checks that every stage runs.
_SMOKE_DATA = (
    'train_cfg.max_epochs=1',
    'train_cfg.val_interval=1',
    'train_dataloader.batch_size=2',
    'train_dataloader.num_workers=0',
    'train_dataloader.persistent_workers=False',
    'train_dataloader.dataset.indices=4',
    'val_dataloader.batch_size=2',
    'val_dataloader.num_workers=0',
    'val_dataloader.persistent_workers=False',
    'val_dataloader.dataset.indices=4',
    'test_dataloader.batch_size=2',
    'test_dataloader.num_workers=0',
    'test_dataloader.persistent_workers=False',
    'test_dataloader.dataset.indices=4',
    'default_hooks.logger.interval=1',
)
# An untrained model scores below mmdet's threshold; keep every box so the
# COCO evaluation has detections to score.
SMOKE_OPTIONS = {
    'float': (*_SMOKE_DATA, 'model.test_cfg.score_thr=0.0'),
    'qat': (*_SMOKE_DATA, 'model.architecture.test_cfg.score_thr=0.0'),
}
SEED_OPTIONS = ('randomness.seed=0',)


@dataclass
class DemoPlan:
    """Configs and folders of one pipeline run.

    Args:
        work_dir (Path): Root of every output.
        model (str): ``'nano'`` or ``'tiny'``.
        schedule (str): ``'default'`` (the configs' schedules) or
            ``'smoke'`` (one epoch on four images per training).
        python (str): Interpreter for the tools.
    """

    work_dir: Path
    model: str = 'nano'
    schedule: str = 'default'
    python: str = sys.executable
    configs: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        size = self.model
        qat = f'configs/gabfusion_qat/yolox_{size}_w4a4-lsq'
        # Nano trains 150 epochs because after 100 it fit the training images
        # poorly (0.075 mAP50). Tiny costs about 2.5 times as much per epoch
        # and keeps 100.
        epochs = 150 if size == 'nano' else 100
        self.configs = dict(
            float=f'configs/yolox/yolox_{size}_1xb8-{epochs}e_coco128.py',
            qat=f'{qat}_qat_coco128.py',
            gabfusion_ada=f'{qat}_gabfusion-ada_coco128.py',
            finetune=f'{qat}_folded-finetune_coco128.py',
        )

    def dir(self, name: str) -> Path:
        return self.work_dir / name

    def options(self, kind: str) -> tuple[str, ...]:
        """Extra --cfg-options of a float or QAT config for the schedule."""
        return SMOKE_OPTIONS[kind] if self.schedule == 'smoke' else ()

    def float_checkpoint(self) -> Path:
        return last_checkpoint(self.dir('float'))

    def qat_options(self) -> tuple[str, ...]:
        return (
            f'model.float_checkpoint={self.float_checkpoint()}',
            *self.options('qat'),
        )


def last_checkpoint(work_dir: Path) -> Path:
    """Return the checkpoint that mmengine recorded as the latest.

    Raises:
        FileNotFoundError: if ``work_dir`` has no ``last_checkpoint`` file.
    """
    record = Path(work_dir) / 'last_checkpoint'
    if not record.is_file():
        raise FileNotFoundError(
            f'no last_checkpoint file in {work_dir}; its training stage has '
            f'not finished'
        )
    return Path(record.read_text().strip())


def _cfg_options(options: Sequence[str]) -> list[str]:
    return ['--cfg-options', *options] if options else []


def train_stage(
    plan: DemoPlan,
    name: str,
    config: str,
    options: Sequence[str],
    load_from: Path | None = None,
) -> Stage:
    """Stage running ``tools/train.py``; resumes from its own checkpoint.

    With ``load_from``, the first run starts from that checkpoint's weights
    and a rerun resumes from the stage's own latest checkpoint instead.
    """
    work_dir = plan.dir(name)
    command = [plan.python, 'tools/train.py', config, '--work-dir', work_dir]
    options = [*SEED_OPTIONS, *options]
    if load_from is None or (work_dir / 'last_checkpoint').is_file():
        command.append('--resume')
    else:
        options.append(f'load_from={load_from}')
    return Stage(f'{name}_train', command + _cfg_options(options), work_dir)


def test_stage(
    plan: DemoPlan,
    name: str,
    protocol: str,
    config: str,
    checkpoint: Path,
    options: Sequence[str],
) -> Stage:
    """Stage running ``tools/test.py`` on one protocol."""
    out_dir = plan.dir(name) / f'test_{protocol}'
    options = [*options, *PROTOCOLS[protocol][1]]
    command = [
        plan.python,
        'tools/test.py',
        config,
        checkpoint,
        '--work-dir',
        out_dir,
        *_cfg_options(options),
    ]
    return Stage(
        f'{name}_test_{protocol}',
        command,
        out_dir,
        after=lambda: read_test_metrics(out_dir),
    )


def onnx_test_stage(
    plan: DemoPlan, name: str, protocol: str, config: str, onnx_file: Path
) -> Stage:
    """Stage running ``tools/deploy/test_onnx.py`` on one protocol."""
    out_dir = plan.dir(name) / f'test_{protocol}'
    options = [*plan.qat_options(), *PROTOCOLS[protocol][1]]
    command = [
        plan.python,
        'tools/deploy/test_onnx.py',
        config,
        onnx_file,
        '--work-dir',
        out_dir,
        *_cfg_options(options),
    ]
    return Stage(
        f'{name}_test_{protocol}',
        command,
        out_dir,
        after=lambda: read_test_metrics(out_dir),
    )


def fold_stage(plan: DemoPlan, checkpoint: Path) -> Stage:
    """Stage folding the GABFusion student into the stock neck."""
    out_dir = plan.dir('folded')
    command = [
        plan.python,
        'tools/deploy/fold_gabfusion.py',
        plan.configs['gabfusion_ada'],
        checkpoint,
        '--out',
        out_dir / 'folded.pth',
        '--out-config',
        out_dir / 'folded_config.py',
        '--report',
        out_dir / 'fold_report.json',
        *_cfg_options(plan.qat_options()),
    ]
    return Stage('fold', command, out_dir)


def export_stage(
    plan: DemoPlan, name: str, config: str, checkpoint: Path
) -> Stage:
    """Stage exporting a QAT checkpoint to QDQ ONNX in ``name/model.onnx``."""
    out_dir = plan.dir(name)
    command = [
        plan.python,
        'tools/deploy/export_onnx.py',
        config,
        checkpoint,
        '--out',
        out_dir / 'model.onnx',
        *_cfg_options(plan.qat_options()),
    ]
    return Stage(f'{name}_export', command, out_dir)
