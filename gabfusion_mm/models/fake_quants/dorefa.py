"""DoReFa-Net weight fake quantization."""

from __future__ import annotations

from typing import Any

import torch
from mmrazor.registry import MODELS
from torch import Tensor

from .base import LowBitFakeQuantize
from .functional import dorefa_weight_quantize, get_kernel


@MODELS.register_module()
class DoReFaWeightFakeQuantize(LowBitFakeQuantize):
    """DoReFa-Net weight quantization, used with PACT activations.

    Paper: "DoReFa-Net: Training Low Bitwidth Convolutional Neural Networks
    with Low Bitwidth Gradients", Zhou et al., arXiv 1606.06160.
    ``w_q = 2 * quantize_k(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1`` with
    ``quantize_k(r) = round((2**k - 1) r) / (2**k - 1)``. It has no learned
    parameter. The levels ``(2j - n) / n``, ``j = 0 .. n``,
    ``n = 2**k - 1``, lie in ``[-1, 1]`` and do not include zero. A network
    that starts from a float checkpoint needs the weights' magnitude back,
    so by default the result is multiplied by ``max|w|``, which autograd
    treats as a constant.

    Args:
        bit (int): Bit width, 2 to 8. Defaults to 4.
        rescale (bool): Multiply the result by ``max|w|``. Defaults to True.
        **kwargs: See :class:`LowBitFakeQuantize` (``use_compile``).
    """

    def __init__(self, bit: int = 4, rescale: bool = True, **kwargs: Any):
        super().__init__(bit=bit, signed=True, **kwargs)
        if self.per_channel:
            raise ValueError(
                'DoReFaWeightFakeQuantize: per_channel=True is not '
                'supported; DoReFa normalizes by the maximum of the tensor.'
            )
        self.num_steps = 2**self.bit - 1
        self.rescale = rescale
        # Step of the last quantized weight, kept for reading and export.
        self.register_buffer('scale', torch.ones(1), persistent=False)

    def init_from_data(self, x: Tensor) -> None:
        """Nothing to initialize: DoReFa has no learned parameter."""

    def _rescale(self, weight: Tensor) -> Tensor | None:
        if not self.rescale:
            return None
        return weight.detach().abs().max().reshape(1)

    def quantize(self, x: Tensor) -> Tensor:
        rescale = self._rescale(x)
        factor = rescale if rescale is not None else x.new_ones(1)
        self.scale.copy_(2 * factor.detach() / self.num_steps)
        kernel = get_kernel(dorefa_weight_quantize, self.use_compile)
        return kernel(x, self.num_steps, rescale)

    def export_qparams(self, x: Tensor | None = None) -> dict[str, Any]:
        """Describe the levels of weight ``x`` on an odd integer grid.

        Every output equals ``scale * q`` with ``q`` an odd integer in
        ``[-n, n]``, ``n = 2**bit - 1``, and ``scale = max|w| / n``.

        Args:
            x (Tensor): The float weight. Required.
        """
        if x is None:
            raise ValueError(
                'DoReFaWeightFakeQuantize.export_qparams needs the weight '
                'tensor, because the step depends on max|w|.'
            )
        rescale = self._rescale(x)
        factor = rescale if rescale is not None else x.new_ones(1)
        return dict(
            scale=(factor / self.num_steps).float(),
            zero_point=self.zero_point.clone(),
            quant_min=-self.num_steps,
            quant_max=self.num_steps,
            ch_axis=None,
            bit=self.bit,
            offset=None,
            thresholds=None,
        )

    def extra_repr(self) -> str:
        return f'bit={self.bit}, rescale={self.rescale}'
