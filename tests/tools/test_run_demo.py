"""The COCO128 pipeline end to end on the smoke schedule."""

from __future__ import annotations

import json
import shlex

from tests.conftest import REPO_ROOT, requires_coco128

MODELS = (
    'YOLOX-nano float',
    'YOLOX-nano W4A4 LSQ QAT',
    'YOLOX-nano W4A4 LSQ QAT + GABFusion + ADA',
    'YOLOX-nano W4A4 LSQ QAT + GABFusion + ADA, folded',
    'YOLOX-nano W4A4 LSQ QAT + GABFusion + ADA, folded + fine-tune',
    'YOLOX-nano W4A4 LSQ QAT + GABFusion + ADA, folded + fine-tune, '
    'ONNX Runtime',
    'YOLOX-nano W4A4 LSQ QAT, ONNX Runtime',
)


def _test_json(proc_dir) -> dict:
    found = [p for p in proc_dir.glob('*/*.json') if p.stem == p.parent.name]
    return json.loads(sorted(found)[-1].read_text())


@requires_coco128()
def test_pipeline_runs_skips_and_reproduces(tmp_path, run_tool):
    work_dir = tmp_path / 'demo'
    args = ('--work-dir', str(work_dir), '--schedule', 'smoke')
    first = run_tool('tools/run_demo.py', *args, timeout=1500)

    results = json.loads((work_dir / 'results.json').read_text())
    rows = results['rows']
    assert [(r['model'], r['protocol']) for r in rows] == [
        (model, protocol)
        for model in MODELS
        for protocol in ('heldout', 'fit')
    ]
    by_model = {(r['model'], r['protocol']): r for r in rows}
    for protocol in ('heldout', 'fit'):
        assert by_model[(MODELS[0], protocol)]['gap_to_float'] == 0.0
        assert by_model[(MODELS[3], protocol)]['fold_drop'] is not None
        assert by_model[(MODELS[5], protocol)]['onnx_drop'] is not None
        assert by_model[(MODELS[6], protocol)]['onnx_drop'] is not None
        assert by_model[(MODELS[1], protocol)]['train_minutes'] > 0
    assert '### fit (train2017 -> train2017)' in first.stdout
    assert (work_dir / 'results.md').read_text().strip() in first.stdout

    plots = {p.name for p in (work_dir / 'plots').glob('*.png')}
    assert {
        'loss_curves.png',
        'gabfusion_alpha.png',
        'gabfusion_grad_ratio.png',
        'ada_loss.png',
    } <= plots
    for name in ('onnx', 'onnx_qat'):
        assert (work_dir / name / 'model.onnx').stat().st_size > 0

    # A second run finds every stage finished and trains nothing.
    second = run_tool('tools/run_demo.py', *args, timeout=300)
    assert 'running:' not in second.stdout
    assert second.stdout.count('finished earlier, skipped') == 21
    assert json.loads((work_dir / 'results.json').read_text()) == results

    # The stored command of a QAT evaluation reproduces its numbers.
    row = by_model[(MODELS[1], 'fit')]
    command = shlex.split(row['command'])
    out_dir = tmp_path / 'again'
    command[command.index('--work-dir') + 1] = str(out_dir)
    assert command[1] == 'tools/test.py'
    run_tool(command[1], *command[2:])
    metrics = _test_json(out_dir)
    assert metrics['coco/bbox_mAP_50'] == row['mAP50']
    assert metrics['coco/bbox_mAP'] == row['mAP']
    assert REPO_ROOT.joinpath(command[1]).is_file()
