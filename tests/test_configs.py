"""Every config in configs/ loads, and the float configs build a detector."""

from __future__ import annotations

from pathlib import Path

import pytest
from mmengine.config import Config

import gabfusion_mm  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(
    str(p.relative_to(REPO_ROOT))
    for p in (REPO_ROOT / 'configs').rglob('*.py')
)


def test_configs_found() -> None:
    assert len(CONFIGS) >= 5


@pytest.mark.parametrize('config', CONFIGS)
def test_config_loads(config: str) -> None:
    cfg = Config.fromfile(str(REPO_ROOT / config))
    assert len(cfg.keys()) > 0
    if '_base_' not in Path(config).parts:
        assert 'model' in cfg, f'{config} defines no model'
        assert 'gabfusion_mm' in cfg.get('custom_imports', {}).get(
            'imports', []
        ), f'{config} does not load gabfusion_mm through custom_imports'


def test_float_yolox_configs_build() -> None:
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    for name in ('yolox_nano', 'yolox_tiny'):
        path = REPO_ROOT / f'configs/yolox/{name}_1xb8-100e_coco128.py'
        cfg = Config.fromfile(str(path))
        model = MODELS.build(cfg.model)
        assert type(model).__name__ == 'YOLOX'
        assert cfg.train_dataloader.dataset.type == 'CocoDataset'
        assert cfg.model.data_preprocessor.batch_augments is None


def test_readme_neck_override_builds(tmp_path) -> None:
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    config = tmp_path / 'yolox_tiny_gabfusion.py'
    config.write_text(
        "_base_ = ['mmdet::yolox/yolox_tiny_8xb8-300e_coco.py']\n"
        'custom_imports = dict(imports=["gabfusion_mm"], '
        'allow_failed_imports=False)\n'
        "model = dict(neck=dict(type='GABYOLOXPAFPN', "
        "fusion_cfg=dict(mode='learnable')))\n"
        "custom_hooks = [dict(type='GABFusionHook')]\n"
    )
    cfg = Config.fromfile(str(config))
    model = MODELS.build(cfg.model)
    assert type(model.neck).__name__ == 'GABYOLOXPAFPN'
    assert issubclass(type(model.neck), MODELS.get('YOLOXPAFPN'))
