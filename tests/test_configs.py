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
