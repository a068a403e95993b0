"""CSP-Darknet backbone of YOLOv5 (v6.0 and later)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmdet.models.layers import CSPLayer
from mmdet.registry import MODELS
from mmdet.utils import ConfigType, OptConfigType, OptMultiConfig
from mmengine.model import BaseModule
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

# YOLOv5's batch norm and activation. Module-level dicts serve as argument
# defaults; mmcv and mmengine copy config dicts before changing them.
YOLOV5_NORM_CFG = dict(type='BN', momentum=0.03, eps=0.001)
YOLOV5_ACT_CFG = dict(type='SiLU', inplace=False)
# PyTorch's own Conv2d initialization, which YOLOv5 keeps.
PYTORCH_CONV_INIT = dict(
    type='Kaiming',
    layer='Conv2d',
    a=math.sqrt(5),
    distribution='uniform',
    mode='fan_in',
    nonlinearity='leaky_relu',
)

# Per stage: input channels, output channels, C3 blocks, whether the C3
# bottlenecks add their input, whether SPPF follows. Channels and block
# counts are for deepen_factor = widen_factor = 1 (YOLOv5l).
YOLOV5_STAGES = (
    (64, 128, 3, True, False),
    (128, 256, 6, True, False),
    (256, 512, 9, True, False),
    (512, 1024, 3, True, True),
)


def make_divisible(channels: float, divisor: int = 8) -> int:
    """Round a channel count up to a multiple of ``divisor``, as YOLOv5 does.

    Args:
        channels (float): Channel count after widening.
        divisor (int): The multiple. Defaults to 8.

    Returns:
        int: The rounded count.
    """
    return int(math.ceil(channels / divisor) * divisor)


def scale_depth(num_blocks: int, deepen_factor: float) -> int:
    """Scale a block count by ``deepen_factor``, keeping at least one block.

    Args:
        num_blocks (int): Block count at deepen_factor 1.
        deepen_factor (float): Depth multiplier.

    Returns:
        int: ``max(round(num_blocks * deepen_factor), 1)``.
    """
    return max(round(num_blocks * deepen_factor), 1)


class SPPFBottleneck(BaseModule):
    """Spatial pyramid pooling, fast form (SPPF), from YOLOv5 v6.0.

    A 1x1 convolution halves the channels and three max poolings of kernel
    ``k`` run in series. The series equals SPP's parallel poolings of
    kernels k, 2k - 1 and 3k - 2. A 1x1 convolution maps the concatenation
    of the four tensors to ``out_channels``.

    Args:
        in_channels (int): Input channels.
        out_channels (int): Output channels.
        kernel_size (int): Max-pooling kernel, odd. Defaults to 5.
        conv_cfg (dict, optional): Convolution config. Defaults to None.
        norm_cfg (dict): Normalization config.
            Defaults to ``dict(type='BN', momentum=0.03, eps=0.001)``.
        act_cfg (dict): Activation config. Defaults to
            ``dict(type='SiLU', inplace=False)``.
        init_cfg (dict or list[dict], optional): Initialization config.
            Defaults to None.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 5,
        conv_cfg: OptConfigType = None,
        norm_cfg: ConfigType = YOLOV5_NORM_CFG,
        act_cfg: ConfigType = YOLOV5_ACT_CFG,
        init_cfg: OptMultiConfig = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if kernel_size % 2 == 0:
            raise ValueError(
                f'SPPFBottleneck: kernel_size={kernel_size} must be odd so '
                'that pooling keeps the spatial size'
            )
        mid_channels = in_channels // 2
        layer_cfg = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.conv1 = ConvModule(in_channels, mid_channels, 1, **layer_cfg)
        self.pool = nn.MaxPool2d(
            kernel_size, stride=1, padding=kernel_size // 2
        )
        self.conv2 = ConvModule(4 * mid_channels, out_channels, 1, **layer_cfg)

    def forward(self, x: Tensor) -> Tensor:
        """Pool at three scales and fuse.

        Args:
            x (Tensor): Input of shape (N, C_in, H, W).

        Returns:
            Tensor: Output of shape (N, C_out, H, W).
        """
        x = self.conv1(x)
        pooled1 = self.pool(x)
        pooled2 = self.pool(pooled1)
        pooled3 = self.pool(pooled2)
        return self.conv2(torch.cat([x, pooled1, pooled2, pooled3], dim=1))


@MODELS.register_module()
class YOLOv5CSPDarknet(BaseModule):
    """CSP-Darknet backbone of YOLOv5 v6.0 with C3 blocks and SPPF.

    YOLOv5: Jocher et al., https://github.com/ultralytics/yolov5 (v6.0,
    October 2021). A 6x6 stride-2 stem convolution is followed by four
    stages. Each stage is a 3x3 stride-2 convolution and a C3 block
    (mmdet's ``CSPLayer`` has the same layout), and the last stage ends
    with SPPF.
    Layer 0 is the stem and layers 1-4 are the stages, so the default
    ``out_indices`` (2, 3, 4) return strides 8, 16 and 32.

    Sizes (deepen_factor, widen_factor): n (0.33, 0.25), s (0.33, 0.5),
    m (0.67, 0.75), l (1.0, 1.0), x (1.33, 1.25). Channels are rounded up to
    multiples of 8 and block counts to at least 1.

    Args:
        deepen_factor (float): Multiplier of the C3 block counts.
            Defaults to 1.0.
        widen_factor (float): Multiplier of the channel counts.
            Defaults to 1.0.
        in_channels (int): Input image channels. Defaults to 3.
        out_indices (Sequence[int]): Layers whose outputs are returned.
            Defaults to (2, 3, 4).
        frozen_stages (int): Layers 0 to ``frozen_stages`` are frozen; -1
            freezes nothing. Defaults to -1.
        spp_kernel_size (int): SPPF pooling kernel. Defaults to 5.
        conv_cfg (dict, optional): Convolution config. Defaults to None.
        norm_cfg (dict): Normalization config.
            Defaults to ``dict(type='BN', momentum=0.03, eps=0.001)``.
        act_cfg (dict): Activation config. Defaults to
            ``dict(type='SiLU', inplace=False)``: an in-place SiLU makes
            autograd copy its input for the backward pass, which is slower.
        norm_eval (bool): Keep BN layers in eval mode while training.
            Defaults to False.
        init_cfg (dict or list[dict], optional): Initialization config.
            Defaults to PyTorch's own Conv2d initialization, as YOLOv5 uses.
    """

    def __init__(
        self,
        deepen_factor: float = 1.0,
        widen_factor: float = 1.0,
        in_channels: int = 3,
        out_indices: Sequence[int] = (2, 3, 4),
        frozen_stages: int = -1,
        spp_kernel_size: int = 5,
        conv_cfg: OptConfigType = None,
        norm_cfg: ConfigType = YOLOV5_NORM_CFG,
        act_cfg: ConfigType = YOLOV5_ACT_CFG,
        norm_eval: bool = False,
        init_cfg: OptMultiConfig = PYTORCH_CONV_INIT,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        num_layers = len(YOLOV5_STAGES) + 1
        bad = [i for i in out_indices if not 0 <= i < num_layers]
        if bad or not out_indices:
            raise ValueError(
                f'YOLOv5CSPDarknet: out_indices={tuple(out_indices)} must '
                f'be non-empty and lie in [0, {num_layers - 1}] (0 is the '
                'stem, 1-4 the stages)'
            )
        if not -1 <= frozen_stages < num_layers:
            raise ValueError(
                f'YOLOv5CSPDarknet: frozen_stages={frozen_stages} must lie '
                f'in [-1, {num_layers - 1}]'
            )
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        layer_cfg = dict(conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)

        stem_channels = make_divisible(YOLOV5_STAGES[0][0] * widen_factor)
        self.stem = ConvModule(
            in_channels, stem_channels, 6, stride=2, padding=2, **layer_cfg
        )
        self.layers = ['stem']
        self.out_channels = [stem_channels]

        for i, stage_arch in enumerate(YOLOV5_STAGES):
            (stage_in, stage_out, num_blocks, add_identity, use_spp) = (
                stage_arch
            )
            stage_in = make_divisible(stage_in * widen_factor)
            stage_out = make_divisible(stage_out * widen_factor)
            stage = [
                ConvModule(
                    stage_in, stage_out, 3, stride=2, padding=1, **layer_cfg
                ),
                CSPLayer(
                    stage_out,
                    stage_out,
                    num_blocks=scale_depth(num_blocks, deepen_factor),
                    add_identity=add_identity,
                    **layer_cfg,
                ),
            ]
            if use_spp:
                stage.append(
                    SPPFBottleneck(
                        stage_out,
                        stage_out,
                        kernel_size=spp_kernel_size,
                        **layer_cfg,
                    )
                )
            self.add_module(f'stage{i + 1}', nn.Sequential(*stage))
            self.layers.append(f'stage{i + 1}')
            self.out_channels.append(stage_out)

    def _freeze_stages(self) -> None:
        """Stop gradients and BN statistics in the frozen layers."""
        for name in self.layers[: self.frozen_stages + 1]:
            layer = getattr(self, name)
            layer.eval()
            for param in layer.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> YOLOv5CSPDarknet:
        """Set train mode, then re-freeze layers and BN as configured."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        """Extract multi-level features.

        Args:
            x (Tensor): Images of shape (N, C, H, W), H and W multiples of
                32.

        Returns:
            tuple[Tensor]: One feature map per entry of ``out_indices``;
            layer i has stride 2^(i + 1).
        """
        outs = []
        for i, name in enumerate(self.layers):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
