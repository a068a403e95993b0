"""PNG plots of training curves read from mmengine's ``scalars.json``."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def read_scalar_records(work_dir: Path) -> list[dict]:
    """Return the training records of every run's ``vis_data/scalars.json``.

    A resumed training writes one timestamped folder per run. The records
    are read in run order and merged per step, so a step logged twice keeps
    its last values. Validation records (keyed by epoch, with metric names
    such as ``coco/bbox_mAP``) are left out.
    """
    records: dict[int, dict] = {}
    for path in sorted(Path(work_dir).glob('*/vis_data/scalars.json')):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if 'step' not in record or any('/bbox_' in k for k in record):
                continue
            records.setdefault(record['step'], {}).update(record)
    return [records[step] for step in sorted(records)]


def plot_series(
    series: Mapping[str, tuple[list[float], list[float]]],
    out_file: Path,
    title: str,
    ylabel: str,
    log_y: bool = False,
) -> Path | None:
    """Plot named (x, y) series on one axis; return the file, or None when
    there is nothing to plot."""
    series = {name: xy for name, xy in series.items() if xy[0]}
    if not series:
        return None

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, label=name, linewidth=1.2)
    ax.set_title(title)
    ax.set_xlabel('iteration')
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale('log')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_file, dpi=120)
    plt.close(fig)
    return out_file


def scalar_series(
    records: list[dict], key_pattern: str
) -> dict[str, tuple[list[float], list[float]]]:
    """Return one (steps, values) series per key matching ``key_pattern``."""
    pattern = re.compile(key_pattern)
    series: dict[str, tuple[list[float], list[float]]] = {}
    for record in records:
        for key, value in record.items():
            if not pattern.search(key) or not isinstance(value, int | float):
                continue
            steps, values = series.setdefault(key, ([], []))
            steps.append(record['step'])
            values.append(float(value))
    return series


def plot_loss_curves(arms: Mapping[str, Path], out_file: Path) -> Path | None:
    """Plot the total training loss of each arm's work directory."""
    series = {}
    for name, work_dir in arms.items():
        found = scalar_series(read_scalar_records(work_dir), r'^loss$')
        if 'loss' in found:
            series[name] = found['loss']
    return plot_series(series, out_file, 'training loss', 'loss', log_y=True)


def plot_matching_scalars(
    work_dir: Path, key_pattern: str, out_file: Path, title: str, ylabel: str
) -> Path | None:
    """Plot every logged scalar of ``work_dir`` matching ``key_pattern``."""
    series = scalar_series(read_scalar_records(work_dir), key_pattern)
    return plot_series(series, out_file, title, ylabel)
