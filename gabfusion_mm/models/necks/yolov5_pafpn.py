"""PAN neck of YOLOv5 (v6.0 and later) with configurable fusion points."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn
from mmcv.cnn import ConvModule
from mmdet.models.layers import CSPLayer
from mmdet.registry import MODELS
from mmdet.utils import ConfigType, OptConfigType, OptMultiConfig
from mmengine.model import BaseModule
from torch import Tensor

from ..backbones.yolov5_csp_darknet import (
    PYTORCH_CONV_INIT,
    YOLOV5_ACT_CFG,
    YOLOV5_NORM_CFG,
)
from ..layers import build_fusion

UPSAMPLE_CFG = dict(scale_factor=2, mode='nearest')


@MODELS.register_module()
class YOLOv5PAFPN(BaseModule):
    """Path aggregation neck of YOLOv5 v6.0.

    YOLOv5: Jocher et al., https://github.com/ultralytics/yolov5 (v6.0);
    the top-down plus bottom-up layout is PANet's (Liu et al., "Path
    Aggregation Network for Instance Segmentation", arXiv 1803.01534).

    With levels P3-P5 of channels (C3, C4, C5):

    - top-down: a 1x1 conv reduces P5 to C4 (R5); upsampled R5 joins P4 at
      ``top_down_fusions[0]`` and a C3 block gives T4 (C4). A 1x1 conv
      reduces T4 to C3 (R4); upsampled R4 joins P3 at
      ``top_down_fusions[1]`` and a C3 block gives the P3 output (C3).
    - bottom-up: a 3x3 stride-2 conv downsamples the P3 output, which joins
      R4 at ``bottom_up_fusions[0]``, and a C3 block gives the P4 output
      (C4). The P4 output is downsampled, joins R5 at
      ``bottom_up_fusions[1]``, and a C3 block gives the P5 output (C5).

    Each join puts the path feature first and the lateral one second, as
    in YOLOv5. The neck C3 blocks add no shortcut, and the outputs keep the
    input channels, so there are no output convolutions.

    Every join goes through a module from ``build_fusion(fusion_cfg,
    [c_path, c_lateral])``; fusion i of a stage feeds C3 block i of the same
    stage (``top_down_blocks``, ``bottom_up_blocks``). The default
    (``fusion_cfg=None``) is a plain concatenation with no parameters, so
    the state dict is the same as without fusion modules. Subclasses can
    change the fusion points by overriding ``build_fusion_layer`` or
    ``fuse``.

    Args:
        in_channels (Sequence[int]): Channels of each input level, low to
            high. YOLOv5s: (128, 256, 512).
        num_csp_blocks (int): Bottlenecks per C3 block, already scaled by
            the depth factor (1 for YOLOv5n and s). Defaults to 3.
        fusion_cfg (dict, optional): Config of the fusion modules, passed
            to ``build_fusion``. None concatenates. Defaults to None.
        upsample_cfg (dict): ``nn.Upsample`` arguments.
            Defaults to ``dict(scale_factor=2, mode='nearest')``.
        conv_cfg (dict, optional): Convolution config. Defaults to None.
        norm_cfg (dict): Normalization config.
            Defaults to ``dict(type='BN', momentum=0.03, eps=0.001)``.
        act_cfg (dict): Activation config. Defaults to
            ``dict(type='SiLU', inplace=False)``.
        init_cfg (dict or list[dict], optional): Initialization config.
            Defaults to PyTorch's own Conv2d initialization.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        num_csp_blocks: int = 3,
        fusion_cfg: OptConfigType = None,
        upsample_cfg: ConfigType = UPSAMPLE_CFG,
        conv_cfg: OptConfigType = None,
        norm_cfg: ConfigType = YOLOV5_NORM_CFG,
        act_cfg: ConfigType = YOLOV5_ACT_CFG,
        init_cfg: OptMultiConfig = PYTORCH_CONV_INIT,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if len(in_channels) < 2:
            raise ValueError(
                f'YOLOv5PAFPN: in_channels={list(in_channels)} has '
                f'{len(in_channels)} entries, expected at least 2 (one per '
                'backbone output)'
            )
        if num_csp_blocks < 1:
            raise ValueError(
                f'YOLOv5PAFPN: num_csp_blocks={num_csp_blocks} must be at '
                'least 1'
            )
        self.in_channels = list(in_channels)
        self.out_channels = list(in_channels)
        self.fusion_cfg = fusion_cfg
        layer_cfg = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        num_levels = len(in_channels)

        self.upsample = nn.Upsample(**upsample_cfg)
        self.reduce_layers = nn.ModuleList()
        self.top_down_fusions = nn.ModuleList()
        self.top_down_blocks = nn.ModuleList()
        for idx in range(num_levels - 1, 0, -1):
            low = in_channels[idx - 1]
            self.reduce_layers.append(
                ConvModule(in_channels[idx], low, 1, **layer_cfg)
            )
            self.top_down_fusions.append(self.build_fusion_layer([low, low]))
            self.top_down_blocks.append(
                CSPLayer(
                    2 * low,
                    low,
                    num_blocks=num_csp_blocks,
                    add_identity=False,
                    **layer_cfg,
                )
            )

        self.downsamples = nn.ModuleList()
        self.bottom_up_fusions = nn.ModuleList()
        self.bottom_up_blocks = nn.ModuleList()
        for idx in range(num_levels - 1):
            channels = in_channels[idx]
            self.downsamples.append(
                ConvModule(
                    channels, channels, 3, stride=2, padding=1, **layer_cfg
                )
            )
            self.bottom_up_fusions.append(
                self.build_fusion_layer([channels, channels])
            )
            self.bottom_up_blocks.append(
                CSPLayer(
                    2 * channels,
                    in_channels[idx + 1],
                    num_blocks=num_csp_blocks,
                    add_identity=False,
                    **layer_cfg,
                )
            )

    def build_fusion_layer(self, in_channels: list[int]) -> nn.Module:
        """Build the module of one fusion point.

        Args:
            in_channels (list[int]): Channels of the path and the lateral
                input, in join order.

        Returns:
            nn.Module: A module mapping ``[path, lateral]`` to one tensor of
            ``sum(in_channels)`` channels.
        """
        return build_fusion(self.fusion_cfg, in_channels)

    def fuse(self, stage: str, index: int, feats: list[Tensor]) -> Tensor:
        """Join the inputs of one fusion point.

        Args:
            stage (str): ``'top_down'`` or ``'bottom_up'``.
            index (int): Index of the point within the stage, coarsest
                first for ``'top_down'`` and finest first for
                ``'bottom_up'``.
            feats (list[Tensor]): Path and lateral features, each of shape
                (N, C_i, H, W).

        Returns:
            Tensor: The joined feature, shape (N, sum(C_i), H, W).
        """
        return getattr(self, f'{stage}_fusions')[index](feats)

    def forward(self, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Aggregate the backbone features top-down, then bottom-up.

        Args:
            inputs (Sequence[Tensor]): Backbone features, low to high
                level; level i has shape (N, in_channels[i], H_i, W_i) with
                H_i = 2 * H_(i+1).

        Returns:
            tuple[Tensor]: Output features with the input shapes.
        """
        num_levels = len(self.in_channels)
        if len(inputs) != num_levels:
            raise ValueError(
                f'YOLOv5PAFPN: got {len(inputs)} inputs, expected '
                f'{num_levels} (one per entry of in_channels)'
            )

        # Top-down. ``reduced[i]`` is the reduced feature of level i + 1,
        # which the bottom-up path reuses as its lateral input.
        path = inputs[-1]
        reduced = [None] * (num_levels - 1)
        for step, idx in enumerate(range(num_levels - 1, 0, -1)):
            path = self.reduce_layers[step](path)
            reduced[idx - 1] = path
            joined = self.fuse(
                'top_down', step, [self.upsample(path), inputs[idx - 1]]
            )
            path = self.top_down_blocks[step](joined)

        # Bottom-up.
        outs = [path]
        for idx in range(num_levels - 1):
            joined = self.fuse(
                'bottom_up',
                idx,
                [self.downsamples[idx](outs[-1]), reduced[idx]],
            )
            outs.append(self.bottom_up_blocks[idx](joined))
        return tuple(outs)
