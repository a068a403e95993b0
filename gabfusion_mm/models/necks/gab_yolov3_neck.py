"""YOLOv3's neck with GABFusion at its two concatenations."""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from mmdet.models.necks import YOLOV3Neck
from mmdet.registry import MODELS
from torch import Tensor, nn

from ..layers import build_fusion
from .gab_pafpn_mixin import check_num_inputs, crop_like


@MODELS.register_module()
class GABYOLOV3Neck(YOLOV3Neck):
    """YOLOV3Neck whose concatenations are GABFusion nodes.

    GABFusion (gradient-aware balanced feature fusion; Wang and
    Wang, arXiv:2511.05898). The layers and their state dict keys are
    mmdet's ``YOLOV3Neck``. Node ``i`` (``fusions[i]``) joins
    ``[upsample(conv{i+1}(out_i)), lateral_i]`` in the order of mmdet's
    ``torch.cat``, where ``lateral_i`` is the backbone level ``i + 1`` steps
    below the coarsest one and ``out_i`` the previous detection block's
    output. Its consumer is the 1x1 ``conv1`` of ``detect{i+2}``. An
    upsampled map one pixel larger than its lateral map is cropped, so
    inputs whose sides are not multiples of 32 work.

    Args:
        num_scales (int): Number of levels.
        in_channels (Sequence[int]): Channels per level, coarsest first.
        out_channels (Sequence[int]): Output channels per level, coarsest
            first.
        fusion_cfg (dict, optional): Config of every fusion node, passed to
            :func:`~gabfusion_mm.models.layers.build_fusion`.
            ``dict(mode='concat')`` or None gives exactly the stock neck.
            Defaults to ``dict(mode='learnable')``.
        **kwargs: Other arguments of mmdet's ``YOLOV3Neck`` (``conv_cfg``,
            ``norm_cfg``, ``act_cfg``, ``init_cfg``).
    """

    stock_type = 'YOLOV3Neck'

    def __init__(
        self,
        num_scales: int,
        in_channels: Sequence[int],
        out_channels: Sequence[int],
        fusion_cfg: dict | None = dict(mode='learnable'),  # noqa: B006
        **kwargs,
    ) -> None:
        if not num_scales == len(in_channels) == len(out_channels):
            raise ValueError(
                f'GABYOLOV3Neck: num_scales={num_scales}, in_channels has '
                f'{len(in_channels)} entries and out_channels '
                f'{len(out_channels)}; all three must be equal'
            )
        super().__init__(num_scales, in_channels, out_channels, **kwargs)
        self.fusion_cfg = fusion_cfg
        self.fusions = nn.ModuleList(
            build_fusion(fusion_cfg, [out_channels[i], in_channels[i]])
            for i in range(1, num_scales)
        )

    def fuse(self, index: int, feats: list[Tensor]) -> Tensor:
        """Join ``[upsampled, lateral]`` at node ``index``."""
        return self.fusions[index](feats)

    def forward(self, feats: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Run the neck.

        Args:
            feats (Sequence[Tensor]): Backbone levels, finest first, the
                coarsest with ``in_channels[0]`` channels.

        Returns:
            tuple[Tensor, ...]: One map per level, coarsest first, shape
            ``(N, out_channels[k], H_k, W_k)``, contiguous.
        """
        owner = type(self).__name__
        check_num_inputs(owner, feats, self.num_scales)

        out = self.detect1(feats[-1])
        outs = [out]
        laterals = list(feats[:-1])[::-1]
        for i, lateral in enumerate(laterals):
            reduced = getattr(self, f'conv{i + 1}')(out)
            upsampled = crop_like(
                F.interpolate(reduced, scale_factor=2), lateral, owner
            )
            fused = self.fuse(i, [upsampled, lateral])
            # Back to contiguous NCHW after the channels-last LayerNorm.
            out = getattr(self, f'detect{i + 2}')(fused).contiguous()
            outs.append(out)
        return tuple(outs)
