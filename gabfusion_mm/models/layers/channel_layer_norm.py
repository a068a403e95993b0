"""Layer normalization over the channels of an NCHW feature map."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel dimension of ``(N, C, H, W)`` tensors.

    Each sample is normalized at every spatial position over its ``C``
    channels, then scaled and shifted by a per-channel affine. This differs
    from ``GroupNorm(1, C)``, which pools the statistics over ``C * H * W``.

    The class subclasses :class:`torch.nn.LayerNorm`, so optimizer
    constructors that treat normalization layers specially (for example
    ``norm_decay_mult`` in mmengine's ``DefaultOptimWrapperConstructor``)
    treat ``weight`` and ``bias`` like any other LayerNorm affine.

    The input is viewed as ``(N, H, W, C)`` and normalized by the fused
    ``F.layer_norm`` kernel. The output keeps that channels-last memory
    layout and is not copied back to contiguous NCHW memory, because the
    convolutions that consume it accept either layout. In
    ``benchmarks/bench_gabfusion_neck.py`` (YOLOX-tiny train step on a
    CPU) both that copy and a ``torch.var_mean`` version in NCHW made the
    step up to 2% slower. Code that needs ``view()`` on the result or on
    tensors computed from it must call ``contiguous()`` first; the
    GABFusion necks return contiguous outputs.

    Args:
        num_channels (int): Number of channels ``C``.
        eps (float): Value added to the variance for numerical stability.
            Defaults to 1e-5.
        elementwise_affine (bool): Whether to learn a per-channel weight and
            bias. Defaults to True.
    """

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
        elementwise_affine: bool = True,
    ) -> None:
        super().__init__(
            num_channels, eps=eps, elementwise_affine=elementwise_affine
        )

    def forward(self, x: Tensor) -> Tensor:
        """Normalize ``x`` of shape ``(N, C, H, W)`` over ``C``.

        Returns:
            Tensor: The normalized tensor, shape ``(N, C, H, W)``, in
            channels-last memory layout.
        """
        y = F.layer_norm(
            x.permute(0, 2, 3, 1),
            self.normalized_shape,
            self.weight,
            self.bias,
            self.eps,
        )
        return y.permute(0, 3, 1, 2)

    def normalize(self, x: Tensor) -> Tensor:
        """Normalize ``x`` of shape ``(N, C, H, W)`` without the affine."""
        y = F.layer_norm(
            x.permute(0, 2, 3, 1), self.normalized_shape, None, None, self.eps
        )
        return y.permute(0, 3, 1, 2)
