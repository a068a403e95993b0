"""Results rows, tables and plots of the pipeline."""

from __future__ import annotations

import json

import pytest

from gabfusion_mm.pipeline.plots import read_scalar_records, scalar_series
from gabfusion_mm.pipeline.report import (
    Evaluated,
    build_rows,
    format_tables,
    write_plots,
)


def _metrics(map50: float) -> dict:
    return {'coco/bbox_mAP': map50 / 2, 'coco/bbox_mAP_50': map50}


def test_rows_compute_gaps_and_drops():
    evaluated = [
        Evaluated('float', 'fit', _metrics(0.40), 'cmd', train_seconds=600),
        Evaluated('qat', 'fit', _metrics(0.30), 'cmd', train_seconds=120),
        Evaluated('gab', 'fit', _metrics(0.35), 'cmd'),
        Evaluated('folded', 'fit', _metrics(0.33), 'cmd', fold_of='gab'),
        Evaluated('onnx', 'fit', _metrics(0.32), 'cmd', onnx_of='folded'),
        Evaluated('float', 'heldout', _metrics(0.10), 'cmd'),
        Evaluated('qat', 'heldout', _metrics(0.02), 'cmd'),
    ]
    rows = {(r.model, r.protocol): r for r in build_rows(evaluated)}

    assert rows[('qat', 'fit')].gap_to_float == pytest.approx(-0.10)
    assert rows[('qat', 'heldout')].gap_to_float == pytest.approx(-0.08)
    assert rows[('folded', 'fit')].fold_drop == pytest.approx(0.02)
    assert rows[('onnx', 'fit')].onnx_drop == pytest.approx(0.01)
    assert rows[('qat', 'fit')].fold_drop is None
    assert rows[('float', 'fit')].train_minutes == pytest.approx(10.0)
    assert rows[('gab', 'fit')].train_minutes is None

    tables = format_tables(
        build_rows(evaluated), {'heldout': 'Held-out', 'fit': 'Fit'}
    )
    assert tables.index('### Held-out') < tables.index('### Fit')
    assert '| folded | 0.1650 | 0.3300 | -0.0700 | +0.0200 | - | - |' in (
        tables
    )


def _write_scalars(run_dir, records):
    vis = run_dir / 'vis_data'
    vis.mkdir(parents=True)
    lines = [json.dumps(record) for record in records]
    (vis / 'scalars.json').write_text('\n'.join(lines) + '\n')


def test_scalars_merge_resumed_runs_and_skip_validation(tmp_path):
    _write_scalars(
        tmp_path / '20260101_000000',
        [
            {'lr': 0.1, 'loss': 5.0, 'step': 1},
            {'lr': 0.1, 'loss': 4.0, 'step': 2},
            {'coco/bbox_mAP': 0.0, 'step': 1},
        ],
    )
    # The resumed run logs step 2 again, and the hook logs its own record.
    _write_scalars(
        tmp_path / '20260101_010000',
        [
            {'lr': 0.1, 'loss': 3.5, 'step': 2},
            {'gabfusion/neck.f0/alpha_0': 0.6, 'step': 2},
            {'lr': 0.1, 'loss': 3.0, 'step': 3},
        ],
    )
    records = read_scalar_records(tmp_path)
    assert [r['step'] for r in records] == [1, 2, 3]
    assert scalar_series(records, r'^loss$')['loss'] == (
        [1, 2, 3],
        [5.0, 3.5, 3.0],
    )
    assert scalar_series(records, r'alpha')['gabfusion/neck.f0/alpha_0'] == (
        [2],
        [0.6],
    )


def test_plots_are_written(tmp_path):
    arm = tmp_path / 'arm'
    _write_scalars(
        arm / '20260101_000000',
        [
            {
                'lr': 0.1,
                'loss': 5.0 - step,
                'distill.loss_ada_0': 0.1 / step,
                'step': step,
            }
            for step in range(1, 4)
        ]
        + [{'gabfusion/neck.f0/alpha_0': 0.5, 'step': 3}],
    )
    written = write_plots(tmp_path, {'arm': arm}, arm)
    names = sorted(path.name for path in written)
    assert names == ['ada_loss.png', 'gabfusion_alpha.png', 'loss_curves.png']
    for path in written:
        assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_model_without_detections_scores_zero():
    evaluated = [
        Evaluated('float', 'fit', _metrics(0.40), 'cmd'),
        Evaluated('folded', 'fit', {'onnx': 'model.onnx'}, 'cmd'),
    ]
    row = build_rows(evaluated)[1]
    assert row.no_detections
    assert row.mAP50 == 0.0
    assert row.gap_to_float == pytest.approx(-0.40)
    assert '| folded (no detections) | 0.0000 |' in format_tables(
        build_rows(evaluated), {'fit': 'Fit'}
    )
