"""Fusion points shared by the GABFusion versions of mmdet's PAFPN necks."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from ..layers import build_fusion
from ..layers.gab_fusion import is_fx_proxy


def crop_like(feat: Tensor, reference: Tensor, owner: str) -> Tensor:
    """Crop an upsampled feature map to the spatial size of a lateral one.

    A backbone whose stride-2 layers round up (``ceil(h / 2)``) gives, for
    an input size that is not a multiple of the largest stride, a level
    whose 2x upsampling is one row or column larger than the level below.
    Cropping the extra row or column keeps the nearest-neighbour geometry
    (upsampled pixel ``i`` comes from source pixel ``i // 2``) and is a
    no-op when the sizes already match.

    Args:
        feat (Tensor): Upsampled map, shape ``(N, C, H', W')``.
        reference (Tensor): Lateral map, shape ``(N, C_r, H, W)``.
        owner (str): Name of the calling neck, used in error messages.

    Returns:
        Tensor: ``feat[..., :H, :W]``.
    """
    if is_fx_proxy(feat):
        # Shapes are symbolic while torch.fx traces, so crop unconditionally.
        return feat[..., : reference.shape[-2], : reference.shape[-1]]

    height, width = feat.shape[-2:]
    ref_height, ref_width = reference.shape[-2:]
    if (height, width) == (ref_height, ref_width):
        return feat
    if not (0 <= height - ref_height <= 1 and 0 <= width - ref_width <= 1):
        raise ValueError(
            f'{owner}: an upsampled feature map is {height}x{width} but the '
            f'lateral map it joins is {ref_height}x{ref_width}; each '
            f'backbone level must be half the size of the level below, '
            f'rounded up (true for inputs whose sides are multiples of 32)'
        )
    return feat[..., :ref_height, :ref_width]


def check_num_inputs(owner: str, inputs: Sequence, expected: int) -> None:
    """Raise a ValueError when a neck gets the wrong number of levels."""
    if len(inputs) != expected:
        raise ValueError(
            f'{owner}: got {len(inputs)} feature maps, expected {expected} '
            f'(one per in_channels entry)'
        )


class GABPAFPNMixin:
    """Top-down plus bottom-up PAN forward with replaceable fusion points.

    Used with mmdet's ``YOLOXPAFPN`` and ``CSPNeXtPAFPN``, whose layers this
    class reuses. With ``L`` input levels, top-down node ``j``
    (``top_down_fusions[j]``, ``j = 0`` at the coarsest level) joins
    ``[upsample(reduce_layers[j](x)), inputs[L - 2 - j]]``, and bottom-up
    node ``j`` (``bottom_up_fusions[j]``) joins
    ``[downsamples[j](out_j), reduced_{j + 1}]``, where ``reduced_k`` is the
    output of the 1x1 reduce layer at level ``k``. Branch 0 is therefore
    always the resampled path and branch 1 the lateral feature, in the
    order of mmdet's ``torch.cat`` calls, so checkpoints of the stock necks
    load unchanged.
    """

    in_channels: Sequence[int]
    reduce_layers: nn.ModuleList
    top_down_blocks: nn.ModuleList
    downsamples: nn.ModuleList
    bottom_up_blocks: nn.ModuleList
    out_convs: nn.ModuleList
    upsample: nn.Module

    def _build_fusions(self, fusion_cfg: dict | None) -> None:
        """Create ``top_down_fusions`` and ``bottom_up_fusions``."""
        levels = range(len(self.in_channels) - 2, -1, -1)
        self.top_down_fusions = nn.ModuleList(
            build_fusion(fusion_cfg, [self.in_channels[k]] * 2) for k in levels
        )
        self.bottom_up_fusions = nn.ModuleList(
            build_fusion(fusion_cfg, [self.in_channels[k]] * 2)
            for k in range(len(self.in_channels) - 1)
        )

    def fuse(self, stage: str, index: int, feats: list[Tensor]) -> Tensor:
        """Join the branches of one fusion node.

        Args:
            stage (str): ``'top_down'`` or ``'bottom_up'``.
            index (int): Node index within the stage.
            feats (list[Tensor]): ``[resampled, lateral]`` maps of one
                spatial size.

        Returns:
            Tensor: The fused map that the stage's CSP block consumes.
        """
        return getattr(self, f'{stage}_fusions')[index](feats)

    def forward(self, inputs: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """Run the PAN.

        Args:
            inputs (Sequence[Tensor]): One map per level, finest first,
                shape ``(N, in_channels[k], H_k, W_k)``.

        Returns:
            tuple[Tensor, ...]: One map per level, finest first, shape
            ``(N, out_channels, H_k, W_k)``, contiguous.
        """
        owner = type(self).__name__
        num_levels = len(self.in_channels)
        check_num_inputs(owner, inputs, num_levels)

        reduced: list[Tensor | None] = [None] * num_levels
        feat = inputs[-1]
        for step in range(num_levels - 1):
            level = num_levels - 2 - step
            reduced[level + 1] = self.reduce_layers[step](feat)
            upsampled = self.upsample(reduced[level + 1])
            lateral = inputs[level]
            upsampled = crop_like(upsampled, lateral, owner)
            fused = self.fuse('top_down', step, [upsampled, lateral])
            feat = self.top_down_blocks[step](fused)

        outs = [feat]
        for step in range(num_levels - 1):
            downsampled = self.downsamples[step](outs[-1])
            fused = self.fuse(
                'bottom_up', step, [downsampled, reduced[step + 1]]
            )
            outs.append(self.bottom_up_blocks[step](fused))

        # The LayerNorm leaves channels-last tensors behind it; the outputs
        # go back to contiguous NCHW so heads and losses may use view().
        return tuple(
            conv(out).contiguous() for conv, out in zip(self.out_convs, outs)
        )
