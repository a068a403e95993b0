"""Results table and plots of the COCO128 pipeline."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from gabfusion_mm.compat import atomic_write_bytes

from .plots import plot_loss_curves, plot_matching_scalars


@dataclass
class ResultRow:
    """One model evaluated on one protocol.

    Attributes:
        model (str): What was evaluated.
        protocol (str): ``'heldout'`` or ``'fit'``.
        mAP (float): COCO bbox mAP@[0.5:0.95].
        mAP50 (float): COCO bbox mAP@0.5.
        gap_to_float (float): ``mAP50 - mAP50`` of the float model.
        fold_drop (float | None): mAP50 lost against the unfolded
            GABFusion + ADA student (folded rows only).
        onnx_drop (float | None): mAP50 lost by onnxruntime against the
            same model in PyTorch (ONNX row only).
        train_minutes (float | None): Wall time of the model's training.
        command (str): The evaluation command.
        no_detections (bool): The model kept no box above the score
            threshold, so COCO evaluation returned no metrics; mAP and
            mAP50 are then 0.
    """

    model: str
    protocol: str
    mAP: float
    mAP50: float
    gap_to_float: float
    fold_drop: float | None
    onnx_drop: float | None
    train_minutes: float | None
    command: str
    no_detections: bool = False


@dataclass
class Evaluated:
    """Metrics of one model on one protocol, before the table is made."""

    model: str
    protocol: str
    metrics: dict
    command: str
    train_seconds: float | None = None
    fold_of: str | None = None
    onnx_of: str | None = None


def build_rows(evaluated: list[Evaluated]) -> list[ResultRow]:
    """Fill in the gaps to the float model, fold and ONNX drops.

    The first entry per protocol must be the float model. ``fold_of`` and
    ``onnx_of`` name the model (same protocol) a row is compared with.
    """
    by_key = {(e.model, e.protocol): e for e in evaluated}
    floats = {}
    for entry in evaluated:
        floats.setdefault(entry.protocol, entry)
    rows = []
    for entry in evaluated:
        map50 = _map50(entry)
        train = entry.train_seconds
        rows.append(
            ResultRow(
                model=entry.model,
                protocol=entry.protocol,
                mAP=_map(entry),
                mAP50=map50,
                gap_to_float=map50 - _map50(floats[entry.protocol]),
                fold_drop=_drop(by_key, entry, entry.fold_of),
                onnx_drop=_drop(by_key, entry, entry.onnx_of),
                train_minutes=None if train is None else train / 60,
                command=entry.command,
                no_detections='coco/bbox_mAP_50' not in entry.metrics,
            )
        )
    return rows


def _map50(entry: Evaluated) -> float:
    return entry.metrics.get('coco/bbox_mAP_50', 0.0)


def _map(entry: Evaluated) -> float:
    return entry.metrics.get('coco/bbox_mAP', 0.0)


def _drop(by_key: dict, entry: Evaluated, reference: str | None):
    """mAP50 of ``reference`` minus that of ``entry``, same protocol."""
    if reference is None:
        return None
    return _map50(by_key[(reference, entry.protocol)]) - _map50(entry)


def _cell(value: float | None, signed: bool = False, digits: int = 4) -> str:
    if value is None:
        return '-'
    return f'{value:+.{digits}f}' if signed else f'{value:.{digits}f}'


def format_tables(rows: list[ResultRow], titles: dict[str, str]) -> str:
    """Format one Markdown table per protocol, in the order of ``titles``."""
    parts = []
    for protocol, title in titles.items():
        parts += [
            f'### {title}',
            '',
            '| model | mAP | mAP50 | mAP50 gap to float | fold drop '
            '(mAP50) | ONNX vs PyTorch drop (mAP50) | train time (min) |',
            '| --- | --- | --- | --- | --- | --- | --- |',
        ]
        for row in rows:
            if row.protocol != protocol:
                continue
            minutes = _cell(row.train_minutes, digits=1)
            model = row.model + (
                ' (no detections)' if row.no_detections else ''
            )
            parts.append(
                f'| {model} | {row.mAP:.4f} | {row.mAP50:.4f} | '
                f'{_cell(row.gap_to_float, True)} | '
                f'{_cell(row.fold_drop, True)} | '
                f'{_cell(row.onnx_drop, True)} | {minutes} |'
            )
        parts.append('')
    return '\n'.join(parts)


def write_results(
    work_dir: Path, rows: list[ResultRow], tables: str, extra: dict
) -> None:
    """Write ``results.md`` and ``results.json`` atomically."""
    atomic_write_bytes(tables.encode(), str(work_dir / 'results.md'))
    payload = dict(rows=[asdict(row) for row in rows], **extra)
    atomic_write_bytes(
        json.dumps(payload, indent=2).encode(), str(work_dir / 'results.json')
    )


def write_plots(
    work_dir: Path, arms: dict[str, Path], gab_dir: Path
) -> list[Path]:
    """Write the loss, GABFusion and ADA plots under ``work_dir/plots``.

    Args:
        work_dir (Path): Pipeline work directory.
        arms (dict[str, Path]): Training work directory per arm name.
        gab_dir (Path): Work directory of the GABFusion + ADA training.

    Returns:
        list[Path]: The PNG files written.
    """
    out = work_dir / 'plots'
    written = [
        plot_loss_curves(arms, out / 'loss_curves.png'),
        plot_matching_scalars(
            gab_dir,
            r'^gabfusion/.*/alpha_\d+$',
            out / 'gabfusion_alpha.png',
            'GABFusion branch weights alpha',
            'alpha',
        ),
        plot_matching_scalars(
            gab_dir,
            r'^gabfusion/.*/log_ratio',
            out / 'gabfusion_grad_ratio.png',
            'log gradient-norm ratio between branches',
            'log(||g_i|| / ||g_j||)',
        ),
        plot_matching_scalars(
            gab_dir,
            r'^distill\.loss_ada_\d+$',
            out / 'ada_loss.png',
            'ADA loss per neck level',
            'loss',
        ),
    ]
    balance = gab_dir / 'gabfusion_balance.png'
    if balance.is_file():
        shutil.copyfile(balance, out / 'gabfusion_balance.png')
        written.append(out / 'gabfusion_balance.png')
    return [path for path in written if path is not None]
