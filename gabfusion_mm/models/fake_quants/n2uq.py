"""N2UQ fake quantization: learned thresholds, uniform output levels."""

from __future__ import annotations

import math
from typing import Any

import torch
from mmrazor.registry import MODELS
from torch import Tensor, nn

from .base import LowBitFakeQuantize
from .functional import get_kernel, midrise_quantize, n2uq_quantize
from .lsq import robust_range

_MIN_SCALE = 1e-8
# Smallest interval width, relative to the initial step: it bounds the
# generalized STE slope 1 / a_i at 100 times the initial slope.
_MIN_INTERVAL_RATIO = 1e-2
_MAX_COMPILED_STEPS = 15


@MODELS.register_module()
class N2UQFakeQuantize(LowBitFakeQuantize):
    """Nonuniform-to-uniform activation quantization (N2UQ).

    Paper: "Nonuniform-to-Uniform Quantization: Towards Accurate
    Quantization via Generalized Straight-Through Estimation", Liu et al.,
    CVPR 2022, arXiv 2111.14826. ``n = 2**bit - 1`` learned interval widths
    ``a_i`` place non-uniform input thresholds ``T_i`` (the midpoints of the
    intervals), while the output levels ``start + scale * q``,
    ``q = 0 .. n``, stay uniform, so inference needs only the thresholds
    and an integer tensor. The generalized straight-through estimator
    gives slope ``scale / a_i`` on interval ``i``; see
    :func:`~gabfusion_mm.models.fake_quants.functional.n2uq_quantize`.

    ``start`` is the learned first knot, so the negative tail of SiLU is
    covered. From the first batch, ``start`` is initialized to ``min(x)``
    and all ``a_i`` and ``scale`` to ``(hi - start) / n``, where ``hi`` is
    the smaller of ``max(x)`` and ``mean(x) + 3 std(x)``. With these equal
    widths the quantizer starts as a uniform one. All gradients get the LSQ
    scale ``1 / sqrt(N * n)``.

    Args:
        bit (int): Bit width, 2 to 8. Defaults to 4.
        grad_scaling (bool): Apply the LSQ gradient scale. Defaults to True.
        **kwargs: See :class:`LowBitFakeQuantize` (``use_compile``).
    """

    def __init__(
        self, bit: int = 4, grad_scaling: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(bit=bit, signed=False, **kwargs)
        if self.per_channel:
            raise ValueError(
                'N2UQFakeQuantize: per_channel=True is not supported; the '
                'thresholds are shared by the whole tensor.'
            )
        self.num_steps = 2**self.bit - 1
        self.grad_scaling = grad_scaling
        step = 1.0 / self.num_steps
        self.start = nn.Parameter(torch.zeros(1))
        self.intervals = nn.Parameter(torch.full((self.num_steps,), step))
        self.scale = nn.Parameter(torch.tensor([step]))
        self.register_buffer(
            'min_interval', torch.tensor([step * _MIN_INTERVAL_RATIO])
        )

    @property
    def thresholds(self) -> Tensor:
        """Forward thresholds ``T_1 .. T_n``, shape ``(n,)``."""
        widths = self._widths()
        knots = self.start + widths.cumsum(0) - widths
        return knots + widths / 2

    def _widths(self) -> Tensor:
        return torch.maximum(self.intervals, self.min_interval)

    def init_from_data(self, x: Tensor) -> None:
        """Set uniform thresholds over ``[min(x), hi]``."""
        low, high = robust_range(x, self.reduce_dims(x))
        step = ((high - low) / self.num_steps).clamp_min(_MIN_SCALE)
        self.start.data.copy_(low.to(self.start))
        self.intervals.data.copy_(step.expand(self.num_steps))
        self.scale.data.copy_(step.to(self.scale))
        self.min_interval.copy_(step * _MIN_INTERVAL_RATIO)

    def quantize(self, x: Tensor) -> Tensor:
        factor = 1.0
        if self.grad_scaling:
            factor = self.grad_factor(x, self.num_steps)
        # The compiled form costs O(n) per element and unrolls n steps into
        # the graph, so wide quantizers stay with the eager binary search.
        compiled = self.use_compile and self.num_steps <= _MAX_COMPILED_STEPS
        kernel = get_kernel(n2uq_quantize, compiled)
        return kernel(
            x,
            self.start,
            self._widths(),
            self.scale.clamp_min(_MIN_SCALE),
            factor,
        )

    def export_qparams(self, x: Tensor | None = None) -> dict[str, Any]:
        """Describe the quantizer; ``q`` is the number of ``thresholds``
        that the input reaches, and the output ``scale * q + offset``."""
        return dict(
            scale=self.scale.detach().clamp_min(_MIN_SCALE).float(),
            zero_point=self.zero_point.clone(),
            quant_min=0,
            quant_max=self.num_steps,
            ch_axis=None,
            bit=self.bit,
            offset=self.start.detach().float().clone(),
            thresholds=self.thresholds.detach().float(),
        )

    def extra_repr(self) -> str:
        return f'bit={self.bit}, num_thresholds={self.num_steps}'


@MODELS.register_module()
class N2UQWeightFakeQuantize(LowBitFakeQuantize):
    """N2UQ weight quantization: uniform levels after standardization.

    Paper: "Nonuniform-to-Uniform Quantization: Towards Accurate
    Quantization via Generalized Straight-Through Estimation", Liu et al.,
    CVPR 2022, arXiv 2111.14826. Each output channel is divided by its mean
    absolute value ``m_c`` (a constant for autograd), quantized to the
    ``2**bit`` symmetric levels ``(k + 1/2) * scale`` (no zero level, as in
    the authors' code) and multiplied back by ``m_c``. The step ``scale`` is
    learned with the LSQ gradient and starts at ``2**(2 - bit)``, which puts
    the outer levels at ``+-(2**bit - 1) / 2**(bit - 1) * m_c``.

    Args:
        bit (int): Bit width, 2 to 8. Defaults to 4.
        ch_axis (int): Output-channel axis of the weight. Defaults to 0.
        grad_scaling (bool): Apply the LSQ gradient scale to ``scale``.
            Defaults to True.
        **kwargs: See :class:`LowBitFakeQuantize` (``use_compile``).
    """

    def __init__(
        self,
        bit: int = 4,
        ch_axis: int = 0,
        grad_scaling: bool = True,
        **kwargs: Any,
    ) -> None:
        kwargs.pop('per_channel', None)
        kwargs.pop('num_channels', None)
        super().__init__(bit=bit, signed=True, ch_axis=ch_axis, **kwargs)
        self.num_levels = 2**self.bit
        self.grad_scaling = grad_scaling
        self.scale = nn.Parameter(torch.tensor([self._initial_scale()]))

    def _initial_scale(self) -> float:
        return 2.0 ** (2 - self.bit)

    def init_from_data(self, x: Tensor) -> None:
        """Reset ``scale`` to ``2**(2 - bit)``; weights are standardized."""
        self.scale.data.fill_(self._initial_scale())

    def channel_norm(self, weight: Tensor) -> Tensor:
        """Mean absolute value per output channel, broadcastable."""
        axis = self.ch_axis % weight.dim()
        dims = [d for d in range(weight.dim()) if d != axis]
        norm = weight.detach().abs().mean(dim=dims, keepdim=True)
        return norm.clamp_min(_MIN_SCALE)

    def quantize(self, x: Tensor) -> Tensor:
        norm = self.channel_norm(x)
        factor = 1.0
        if self.grad_scaling:
            positive_levels = (self.num_levels - 1) / 2
            factor = 1.0 / math.sqrt(x.numel() * positive_levels)
        kernel = get_kernel(midrise_quantize, self.use_compile)
        scale = self.scale.clamp_min(_MIN_SCALE)
        return kernel(x / norm, scale, self.num_levels, factor) * norm

    def export_qparams(self, x: Tensor | None = None) -> dict[str, Any]:
        """Describe the levels of weight ``x`` on an odd integer grid.

        Every output equals ``scale_c * q`` with ``q`` an odd integer in
        ``[-(2**bit - 1), 2**bit - 1]`` and ``scale_c = scale * m_c / 2``.

        Args:
            x (Tensor): The float weight. Required.
        """
        if x is None:
            raise ValueError(
                'N2UQWeightFakeQuantize.export_qparams needs the weight '
                'tensor, because the step of each channel depends on it.'
            )
        norm = self.channel_norm(x).reshape(-1)
        scale = self.scale.detach().clamp_min(_MIN_SCALE) * norm / 2
        return dict(
            scale=scale.float(),
            zero_point=torch.zeros_like(norm, dtype=torch.int32),
            quant_min=-(self.num_levels - 1),
            quant_max=self.num_levels - 1,
            ch_axis=self.ch_axis,
            bit=self.bit,
            offset=None,
            thresholds=None,
        )

    def extra_repr(self) -> str:
        return f'bit={self.bit}, levels={self.num_levels}, midrise'
