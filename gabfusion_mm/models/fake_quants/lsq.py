"""LSQ and LSQ+ fake quantization."""

from __future__ import annotations

import math
from typing import Any

import torch
from mmrazor.registry import MODELS
from torch import Tensor, nn

from .base import LowBitFakeQuantize
from .functional import get_kernel, lsq_quantize

_MIN_SCALE = 1e-8


@MODELS.register_module()
class LSQFakeQuantize(LowBitFakeQuantize):
    """Learned Step Size Quantization.

    Paper: "Learned Step Size Quantization", Esser et al., ICLR 2020,
    arXiv 1902.08153. ``v_q = round(clip(v / s, -Q_N, Q_P)) * s`` with a
    straight-through round. The step ``s`` is learned with its gradient
    scaled by ``1 / sqrt(N * Q_P)``. It is initialized from the first batch
    as ``2 * mean(|v|) / sqrt(Q_P)``, per channel when ``per_channel``.

    Args:
        bit (int): Bit width, 2 to 8. Defaults to 4.
        signed (bool): Signed range ``[-2**(bit-1), 2**(bit-1) - 1]``
            (weights, or activations that go negative) or unsigned
            ``[0, 2**bit - 1]``. Defaults to True.
        grad_scaling (bool): Apply the LSQ gradient scale to ``scale``.
            Defaults to True.
        **kwargs: See :class:`LowBitFakeQuantize` (``per_channel``,
            ``ch_axis``, ``num_channels``, ``use_compile``).
    """

    def __init__(
        self,
        bit: int = 4,
        signed: bool = True,
        grad_scaling: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(bit=bit, signed=signed, **kwargs)
        self.grad_scaling = grad_scaling
        self.scale = nn.Parameter(torch.ones(self.num_param_channels))

    def _channel_tensors(self) -> list[Tensor]:
        return [self.scale]

    def init_from_data(self, x: Tensor) -> None:
        """Set ``scale = 2 * mean(|x|) / sqrt(Q_P)``."""
        if self.per_channel:
            self.resize_channels(x.shape[self.ch_axis])
        mean_abs = x.abs().mean(dim=self.reduce_dims(x)).reshape(-1)
        step = 2 * mean_abs / math.sqrt(self.quant_max)
        self.scale.data.copy_(step.clamp_min(_MIN_SCALE).to(self.scale))

    def _grad_factor(self, x: Tensor) -> float:
        if not self.grad_scaling:
            return 1.0
        return self.grad_factor(x, self.quant_max)

    def _offset(self, x: Tensor) -> Tensor | None:
        return None

    def quantize(self, x: Tensor) -> Tensor:
        scale = self.channel_view(self.scale.clamp_min(_MIN_SCALE), x)
        kernel = get_kernel(lsq_quantize, self.use_compile)
        return kernel(
            x,
            scale,
            self._offset(x),
            float(self.quant_min),
            float(self.quant_max),
            self._grad_factor(x),
        )

    def export_qparams(self, x: Tensor | None = None) -> dict[str, Any]:
        return dict(
            scale=self.scale.detach().clamp_min(_MIN_SCALE).float(),
            zero_point=self.zero_point.clone(),
            quant_min=self.quant_min,
            quant_max=self.quant_max,
            ch_axis=self.ch_axis if self.per_channel else None,
            bit=self.bit,
            offset=None,
            thresholds=None,
        )


@MODELS.register_module()
class LSQPlusFakeQuantize(LSQFakeQuantize):
    """LSQ with a learned offset (LSQ+), for activations with a negative tail.

    Paper: "LSQ+: Improving low-bit quantization through learnable offsets
    and better initialization", Bhalgat et al., CVPR Workshops 2020,
    arXiv 2004.09576. ``x_q = round(clip((x - beta) / s, Q_min, Q_max)) * s
    + beta`` with learned ``s`` and ``beta``; ``d x_q / d beta`` is 0 inside
    the range and 1 outside. Both gradients get the LSQ scale. The default
    unsigned range suits activations after SiLU, whose minimum is about
    -0.28: from the first batch, ``beta`` is initialized to ``min(x)`` and
    ``s`` to ``(hi - beta) / (Q_max - Q_min)``, where ``hi`` is the smaller
    of ``max(x)`` and ``mean(x) + 3 std(x)``.

    Args:
        bit (int): Bit width, 2 to 8. Defaults to 4.
        signed (bool): Integer range; the offset makes an unsigned range
            cover negative values. Defaults to False.
        **kwargs: See :class:`LSQFakeQuantize`.
    """

    def __init__(
        self, bit: int = 4, signed: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(bit=bit, signed=signed, **kwargs)
        self.offset = nn.Parameter(torch.zeros(self.num_param_channels))

    def _channel_tensors(self) -> list[Tensor]:
        return [self.scale, self.offset]

    def init_from_data(self, x: Tensor) -> None:
        """Set ``beta = min(x)`` and ``s = (hi - beta) / (Q_max - Q_min)``."""
        if self.per_channel:
            self.resize_channels(x.shape[self.ch_axis])
        low, high = robust_range(x, self.reduce_dims(x))
        span = self.quant_max - self.quant_min
        step = ((high - low) / span).clamp_min(_MIN_SCALE)
        # The lowest level -Q_N * s + beta lands on min(x).
        offset = low - self.quant_min * step
        self.scale.data.copy_(step.to(self.scale))
        self.offset.data.copy_(offset.to(self.offset))

    def _offset(self, x: Tensor) -> Tensor:
        return self.channel_view(self.offset, x)

    def export_qparams(self, x: Tensor | None = None) -> dict[str, Any]:
        qparams = super().export_qparams(x)
        qparams['offset'] = self.offset.detach().float()
        return qparams


def robust_range(x: Tensor, dims: list[int]) -> tuple[Tensor, Tensor]:
    """Return ``min(x)`` and ``min(max(x), mean(x) + 3 std(x))``.

    Args:
        x (Tensor): Values to describe.
        dims (list[int]): Dimensions to reduce.

    Returns:
        tuple[Tensor, Tensor]: Flattened lower and upper bounds.
    """
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    low = x.amin(dim=dims).reshape(-1)
    high = x.amax(dim=dims).reshape(-1)
    if x.numel() > 1:
        std, mean = torch.std_mean(x, dim=dims)
        high = torch.minimum(high, (mean + 3 * std).reshape(-1))
    high = torch.maximum(high, low + _MIN_SCALE)
    return low, high
