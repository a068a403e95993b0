"""PACT activation fake quantization with a lower clipping bound."""

from __future__ import annotations

from typing import Any

import torch
from mmrazor.registry import MODELS
from torch import Tensor, nn

from .base import LowBitFakeQuantize
from .functional import get_kernel, pact_quantize, scale_grad
from .lsq import robust_range

_MIN_SPAN = 1e-6


@MODELS.register_module()
class PACTFakeQuantize(LowBitFakeQuantize):
    """Parameterized clipping activation (PACT) with a lower bound.

    Paper: "PACT: Parameterized Clipping Activation for Quantized Neural
    Networks", Choi et al., arXiv 1805.06085. The input is clipped to
    ``[lower, alpha]`` and quantized uniformly with ``2**bit - 1`` steps;
    ``d y / d alpha`` is 1 where ``x >= alpha`` and 0 elsewhere. The
    original PACT clips at 0 from below; activations after SiLU reach about
    -0.28, so the lower bound can be a constant or a second learned
    parameter with ``d y / d lower = 1`` where ``x <= lower``.

    From the first batch, ``alpha`` is initialized to the smaller of
    ``max(x)`` and ``mean(x) + 3 std(x)`` unless ``init_alpha`` is given,
    and a learned ``lower`` to ``min(min(x), 0)``.

    Args:
        bit (int): Bit width, 2 to 8. Defaults to 4.
        lower_bound (float | str): A constant lower bound (0.0 is the
            original PACT) or ``'learnable'``. Defaults to ``'learnable'``.
        init_alpha (float, optional): Initial ``alpha``; None initializes it
            from data. Defaults to None.
        grad_scaling (bool): Multiply the gradients of ``alpha`` and
            ``lower`` by the LSQ scale ``1 / sqrt(N * (2**bit - 1))``. PACT
            itself does not. Defaults to False.
        **kwargs: See :class:`LowBitFakeQuantize` (``use_compile``).
    """

    def __init__(
        self,
        bit: int = 4,
        lower_bound: float | str = 'learnable',
        init_alpha: float | None = None,
        grad_scaling: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(bit=bit, signed=False, **kwargs)
        if self.per_channel:
            raise ValueError(
                'PACTFakeQuantize: per_channel=True is not supported; PACT '
                'learns one clipping value per tensor.'
            )
        self.num_steps = 2**self.bit - 1
        self.grad_scaling = grad_scaling
        self.init_alpha = init_alpha
        self.alpha = nn.Parameter(torch.tensor([init_alpha or 1.0]))
        if lower_bound == 'learnable':
            self.learn_lower = True
            self.lower = nn.Parameter(torch.zeros(1))
        elif isinstance(lower_bound, (int, float)) and not isinstance(
            lower_bound, bool
        ):
            self.learn_lower = False
            self.register_buffer('lower', torch.tensor([float(lower_bound)]))
        else:
            raise ValueError(
                f'PACTFakeQuantize: lower_bound={lower_bound!r} is invalid; '
                "use a number (0.0 for the original PACT) or 'learnable'."
            )

    @property
    def scale(self) -> Tensor:
        """Quantization step ``(alpha - lower) / (2**bit - 1)``."""
        lower, upper = self._bounds()
        return (upper - lower) / self.num_steps

    def _bounds(self) -> tuple[Tensor, Tensor]:
        upper = torch.maximum(self.alpha, self.lower + _MIN_SPAN)
        return self.lower, upper

    def init_from_data(self, x: Tensor) -> None:
        """Set ``alpha`` (unless given) and a learned ``lower`` from ``x``."""
        low, high = robust_range(x, self.reduce_dims(x))
        if self.learn_lower:
            self.lower.data.copy_(low.clamp_max(0.0).to(self.lower))
        if self.init_alpha is None:
            high = torch.maximum(high, self.lower.to(high) + _MIN_SPAN)
            self.alpha.data.copy_(high.to(self.alpha))

    def quantize(self, x: Tensor) -> Tensor:
        lower, upper = self._bounds()
        if self.grad_scaling:
            factor = self.grad_factor(x, self.num_steps)
            upper = scale_grad(upper, factor)
            if self.learn_lower:
                lower = scale_grad(lower, factor)
        kernel = get_kernel(pact_quantize, self.use_compile)
        return kernel(x, lower, upper, self.num_steps)

    def export_qparams(self, x: Tensor | None = None) -> dict[str, Any]:
        return dict(
            scale=self.scale.detach().float(),
            zero_point=self.zero_point.clone(),
            quant_min=0,
            quant_max=self.num_steps,
            ch_axis=None,
            bit=self.bit,
            offset=self.lower.detach().float().clone(),
            thresholds=None,
        )

    def extra_repr(self) -> str:
        lower = 'learnable' if self.learn_lower else float(self.lower)
        return f'bit={self.bit}, lower_bound={lower}'
