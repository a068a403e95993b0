"""Neck builders and inputs shared by the GABFusion neck tests."""

from __future__ import annotations

import math

import torch
from mmdet.registry import MODELS

import gabfusion_mm  # noqa: F401  (registers the GAB necks)

WIDEN_FACTORS = (0.125, 0.25, 0.5)
# 128 and 160 are multiples of 32; 100 and 150 are not.
INPUT_SIZES = (128, 160, 100, 150)


def level_sizes(size: int, num_levels: int = 3) -> list[int]:
    """Feature sizes at strides 8, 16, 32 of a backbone that rounds up."""
    sizes = []
    for _ in range(2 + num_levels):
        size = math.ceil(size / 2)
        sizes.append(size)
    return sizes[2:]


def pafpn_cfg(neck_type: str, widen: float, **kwargs) -> dict:
    """YOLOX / RTMDet PAFPN config at a widen factor (P3-P5 channels)."""
    channels = [int(256 * widen), int(512 * widen), int(1024 * widen)]
    return dict(
        type=neck_type,
        in_channels=channels,
        out_channels=channels[0],
        num_csp_blocks=1,
        **kwargs,
    )


def pafpn_inputs(cfg: dict, size: int, batch: int = 2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(size)
    return [
        torch.randn(batch, c, s, s, generator=gen)
        for c, s in zip(cfg['in_channels'], level_sizes(size))
    ]


def yolov3_cfg(neck_type: str, widen: float, **kwargs) -> dict:
    """YOLOv3 neck config at a widen factor (coarsest level first)."""
    return dict(
        type=neck_type,
        num_scales=3,
        in_channels=[int(1024 * widen), int(512 * widen), int(256 * widen)],
        out_channels=[int(512 * widen), int(256 * widen), int(128 * widen)],
        **kwargs,
    )


def yolov3_inputs(cfg: dict, size: int, batch: int = 2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(size)
    channels = cfg['in_channels'][::-1]
    return [
        torch.randn(batch, c, s, s, generator=gen)
        for c, s in zip(channels, level_sizes(size))
    ]


def build_pair(gab_cfg: dict, stock_type: str, fusion_cfg=None):
    """Build a stock neck and a GAB neck sharing the stock weights."""
    stock_cfg = dict(gab_cfg, type=stock_type)
    torch.manual_seed(0)
    stock = MODELS.build(stock_cfg)
    gab = MODELS.build(dict(gab_cfg, fusion_cfg=fusion_cfg))
    gab.load_state_dict(stock.state_dict(), strict=True)
    return stock, gab


def randomize_batch_norms(module: torch.nn.Module) -> None:
    """Give BatchNorms non-trivial running statistics for eval checks."""
    gen = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(
                torch.rand(m.num_features, generator=gen) + 0.5
            )
