"""Tests for GABFusionHook."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import torch
from mmdet.registry import HOOKS as MMDET_HOOKS
from mmengine.model import BaseModel
from mmengine.registry import HOOKS
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import DataLoader

import gabfusion_mm  # noqa: F401
from gabfusion_mm.engine.hooks import GABFusionHook
from gabfusion_mm.engine.hooks.gab_fusion_hook import (
    branch_log_ratios,
    find_fusion_modules,
)
from gabfusion_mm.models.layers import GABFusion
from tests.conftest import TINY_RUN_OPTIONS, requires_coco128


class ToyFusionModel(BaseModel):
    """Two conv branches joined by GABFusion; the second is 5x larger."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.shallow = nn.Conv2d(3, 4, 3, padding=1)
        self.deep = nn.Conv2d(3, 4, 3, padding=1)
        self.fusion = GABFusion([4, 4], mode=mode, eta=0.2)
        self.head = nn.Conv2d(8, 1, 1)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        fused = self.fusion([self.shallow(inputs), 5 * self.deep(inputs)])
        out = self.head(fused)
        if mode == 'loss':
            return dict(loss=(out - 1).square().mean())
        return out


class ToyWrapper(BaseModel):
    """Holds a detector-like model, as an mmrazor algorithm does."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.architecture = ToyFusionModel(mode)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        return self.architecture(inputs, data_samples, mode)


def toy_loader() -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    images = [torch.randn(3, 8, 8, generator=gen) for _ in range(8)]
    return DataLoader(
        images, batch_size=2, collate_fn=lambda b: dict(inputs=torch.stack(b))
    )


def run_toy(model: BaseModel, work_dir: Path, iters: int = 6) -> Runner:
    runner = Runner(
        model=model,
        work_dir=str(work_dir),
        experiment_name=f'gab_hook_{uuid.uuid4().hex}',
        train_dataloader=toy_loader(),
        train_cfg=dict(by_epoch=False, max_iters=iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        default_hooks=dict(logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=[dict(type='GABFusionHook', interval=2)],
        visualizer=dict(
            type='Visualizer', vis_backends=[dict(type='LocalVisBackend')]
        ),
    )
    runner.train()
    return runner


def read_scalars(runner: Runner) -> list[dict]:
    path = Path(runner.log_dir) / 'vis_data' / 'scalars.json'
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_registered_in_mmengine_and_found_from_mmdet_scope():
    assert HOOKS.get('GABFusionHook') is GABFusionHook
    hook = MMDET_HOOKS.build(dict(type='GABFusionHook', interval=3))
    assert isinstance(hook, GABFusionHook)
    assert hook.interval == 3


def test_invalid_interval_raises():
    with pytest.raises(ValueError, match='interval=0'):
        GABFusionHook(interval=0)


def test_finds_fusion_modules_inside_wrappers():
    holder = nn.Module()
    holder.module = ToyWrapper('learnable')

    names = [name for name, _ in find_fusion_modules(holder)]
    assert names == ['architecture.fusion']


def test_log_ratio_of_two_and_three_branches():
    two = branch_log_ratios(torch.tensor([4.0, 1.0]), eps=0.0)
    three = branch_log_ratios(torch.tensor([1.0, 1.0, 8.0]), eps=0.0)

    torch.testing.assert_close(two, torch.log(torch.tensor([4.0])))
    expected = torch.log(torch.tensor([1.0, 1.0, 8.0])) - torch.log(
        torch.tensor(2.0)
    )
    torch.testing.assert_close(three, expected)


def test_feedback_updates_lambda_in_wrapped_model(tmp_path):
    torch.manual_seed(0)
    model = ToyWrapper('feedback')
    runner = run_toy(model, tmp_path)
    fusion = model.architecture.fusion

    history = json.loads((tmp_path / 'gabfusion_balance.json').read_text())
    record = history['nodes']['architecture.fusion']
    assert history['iter'] == [2, 4, 6]
    # The branch with the larger gradient norm must end with alpha < 1/2.
    mean_log_ratio = sum(r[0] for r in record['log_ratio']) / 3
    dominant = 0 if mean_log_ratio > 0 else 1
    assert abs(mean_log_ratio) > 0.01
    assert fusion.alpha[dominant] < 0.5
    assert not torch.equal(fusion.grad_norm_ema, torch.zeros(2))

    tags = {key for record in read_scalars(runner) for key in record}
    assert 'gabfusion/architecture.fusion/alpha_1' in tags
    assert 'gabfusion/architecture.fusion/log_ratio' in tags
    assert (tmp_path / 'gabfusion_balance.png').stat().st_size > 0


def test_concat_mode_measures_ratio_without_alpha(tmp_path):
    runner = run_toy(ToyFusionModel('concat'), tmp_path)

    history = json.loads((tmp_path / 'gabfusion_balance.json').read_text())
    record = history['nodes']['fusion']
    assert len(record['grad_norm']) == 3
    assert all(len(norms) == 2 for norms in record['grad_norm'])
    assert record['alpha'] == [[], [], []]
    tags = {key for record in read_scalars(runner) for key in record}
    assert 'gabfusion/fusion/grad_norm_0' in tags
    assert 'gabfusion/fusion/alpha_0' not in tags
    log_text = next(Path(runner.log_dir).glob('*.log')).read_text()
    assert 'GABFusion fusion: grad_norm=(' in log_text


def test_learnable_mode_leaves_lambda_to_optimizer(tmp_path):
    model = ToyFusionModel('learnable')
    before = model.fusion.branch_logits.detach().clone()
    run_toy(model, tmp_path, iters=2)

    assert not torch.equal(model.fusion.branch_logits.detach(), before)
    assert (tmp_path / 'gabfusion_balance.png').is_file()


@requires_coco128()
def test_train_tool_with_gabfusion_config(run_tool, tmp_path):
    run_tool(
        'tools/train.py',
        'configs/gabfusion/yolox_nano_gabfusion_1xb8-100e_coco128.py',
        '--work-dir',
        str(tmp_path),
        '--cfg-options',
        *TINY_RUN_OPTIONS,
    )

    history = json.loads((tmp_path / 'gabfusion_balance.json').read_text())
    assert history['iter'] == [2]
    assert sorted(history['nodes']) == [
        'neck.bottom_up_fusions.0',
        'neck.bottom_up_fusions.1',
        'neck.top_down_fusions.0',
        'neck.top_down_fusions.1',
    ]
    assert (tmp_path / 'gabfusion_balance.png').is_file()
