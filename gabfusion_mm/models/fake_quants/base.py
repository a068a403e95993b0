"""Shared machinery of the low-bit fake quantizers."""

from __future__ import annotations

import math
from typing import Any

import torch
from mmengine.dist import all_reduce
from torch import Tensor
from torch.ao.quantization import FakeQuantizeBase

MIN_BIT = 2
MAX_BIT = 8

_PER_CHANNEL_QSCHEMES = (
    torch.per_channel_symmetric,
    torch.per_channel_affine,
)


def check_bit(owner: str, bit: Any, name: str = 'bit') -> int:
    """Return ``bit`` if it is a supported width, else raise ValueError.

    Args:
        owner (str): Prefix of the error message, e.g. the class name.
        bit: The value to check.
        name (str): Name of the value in the message. Defaults to 'bit'.
    """
    if isinstance(bit, bool) or not isinstance(bit, int):
        raise ValueError(
            f'{owner}: {name}={bit!r} is not an integer; use an integer '
            f'from {MIN_BIT} to {MAX_BIT}.'
        )
    if not MIN_BIT <= bit <= MAX_BIT:
        raise ValueError(
            f'{owner}: {name}={bit} is not supported; use an integer from '
            f'{MIN_BIT} to {MAX_BIT}.'
        )
    return bit


class LowBitFakeQuantize(FakeQuantizeBase):
    """Base class of the learnable low-bit fake quantizers.

    A subclass of torch's ``FakeQuantizeBase``, so torch's and mmrazor's
    switches (``enable_fake_quant``, ``disable_observer`` and the QAT
    loops that apply them) drive it. With fake quantization disabled,
    ``forward`` returns its input unchanged.

    The observer switch controls data-driven initialization: the first
    ``forward`` in training mode while the observer is enabled sets the
    parameters from that batch (see :meth:`init_from_data`) and marks the
    quantizer initialized. The flag is a buffer, so a checkpoint saved
    after QAT reloads without re-initialization. In distributed training
    the initial values are averaged over ranks.

    Every subclass exposes ``scale`` (the quantization step, a Tensor),
    keeps its learnable values as ``nn.Parameter`` and describes itself for
    deployment through :meth:`export_qparams`.

    Args:
        bit (int): Bit width, 2 to 8. Defaults to 4.
        signed (bool): Whether the integer range is signed
            (``[-2**(bit-1), 2**(bit-1) - 1]``) or not
            (``[0, 2**bit - 1]``). Defaults to False.
        per_channel (bool): One step per channel along ``ch_axis``.
            Defaults to False.
        ch_axis (int): Channel axis for per-channel parameters.
            Defaults to 0 (output channels of a convolution weight).
        num_channels (int, optional): Number of channels; when omitted
            for a per-channel quantizer, the parameters are resized at
            initialization. Defaults to None.
        use_compile (bool): Fuse the quantization formula with
            ``torch.compile``. Defaults to False.
        quant_min (int, optional): Lowest integer level, as passed by
            mmrazor's ``QConfigHandler``; with ``quant_max`` it overrides
            ``bit`` and ``signed``. Defaults to None.
        quant_max (int, optional): Highest integer level. Defaults to None.
        qscheme (torch.qscheme, optional): A per-channel qscheme turns on
            ``per_channel``. Defaults to None.
        **observer_kwargs: Other arguments that mmrazor's qconfig passes to
            fake quantizers (``observer``, ``dtype``, ``reduce_range``);
            they are ignored because initialization is data-driven.
    """

    initialized: Tensor
    zero_point: Tensor

    def __init__(
        self,
        bit: int = 4,
        signed: bool = False,
        per_channel: bool = False,
        ch_axis: int = 0,
        num_channels: int | None = None,
        use_compile: bool = False,
        quant_min: int | None = None,
        quant_max: int | None = None,
        qscheme: torch.qscheme | None = None,
        **observer_kwargs: Any,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if quant_min is not None and quant_max is not None:
            bit, signed = _bit_from_range(name, quant_min, quant_max)
        if qscheme is not None and qscheme in _PER_CHANNEL_QSCHEMES:
            per_channel = True
        self.bit = check_bit(name, bit)
        self.signed = bool(signed)
        self.per_channel = bool(per_channel)
        self.ch_axis = ch_axis
        self.use_compile = bool(use_compile)
        if self.signed:
            self.quant_min = -(2 ** (self.bit - 1))
            self.quant_max = 2 ** (self.bit - 1) - 1
        else:
            self.quant_min = 0
            self.quant_max = 2**self.bit - 1
        self.num_param_channels = (
            num_channels if (self.per_channel and num_channels) else 1
        )
        self.register_buffer(
            'initialized', torch.tensor([0], dtype=torch.uint8)
        )
        self.register_buffer(
            'zero_point',
            torch.zeros(self.num_param_channels, dtype=torch.int32),
        )

    # -- interface of subclasses -------------------------------------------

    def quantize(self, x: Tensor) -> Tensor:
        """Fake-quantize ``x`` with the current parameters."""
        raise NotImplementedError

    def init_from_data(self, x: Tensor) -> None:
        """Set the parameters from the values of ``x``."""
        raise NotImplementedError

    def export_qparams(self, x: Tensor | None = None) -> dict[str, Any]:
        """Describe the quantizer for QuantizeLinear/DequantizeLinear.

        The dict has the keys ``scale`` (float32 Tensor), ``zero_point``
        (int32 Tensor), ``quant_min`` and ``quant_max`` (the integer grid
        on which every output lies) and ``ch_axis`` (int, or None when per
        tensor). It also has ``bit``, ``offset`` (float Tensor added after
        dequantization, or None) and ``thresholds`` (input thresholds of a
        non-uniform quantizer, or None). The output is
        ``scale * (q - zero_point) + offset`` for an integer ``q`` in
        ``[quant_min, quant_max]``. An offset is exact at deployment when it
        is added after DequantizeLinear (or folded into the bias of the
        consuming convolution where no zero padding reaches it).

        Args:
            x (Tensor, optional): The weight, for quantizers whose step
                depends on it. Defaults to None.
        """
        raise NotImplementedError

    # -- shared behaviour --------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """Fake-quantize ``x``; the identity when fake quantization is off.

        Args:
            x (Tensor): Input of any shape, for example ``(N, C, H, W)``
                activations or ``(C_out, C_in, kH, kW)`` weights.

        Returns:
            Tensor: A tensor with the shape and dtype of ``x``.
        """
        if (
            self.training
            and self.observer_enabled[0] == 1
            and self.initialized[0] == 0
        ):
            with torch.no_grad():
                self.init_from_data(x.detach())
                self._sync_parameters()
            self.initialized.fill_(1)
        if self.fake_quant_enabled[0] == 0:
            return x
        return self.quantize(x)

    @torch.jit.export
    def calculate_qparams(self) -> tuple[Tensor, Tensor]:
        """Return ``(scale, zero_point)`` as torch's fake quantizers do."""
        return self.scale.detach(), self.zero_point

    def grad_factor(self, x: Tensor, positive_levels: float) -> float:
        """LSQ gradient scale ``1 / sqrt(N * Q_P)``.

        ``N`` is the number of elements that share one step: all of ``x``
        for a per-tensor quantizer, or one channel for a per-channel one.
        """
        count = x.numel()
        if self.per_channel:
            count = count // max(x.shape[self.ch_axis], 1)
        return 1.0 / math.sqrt(max(count, 1) * max(positive_levels, 1.0))

    def channel_view(self, param: Tensor, x: Tensor) -> Tensor:
        """Reshape a per-channel parameter to broadcast along ``ch_axis``."""
        if not self.per_channel:
            return param
        shape = [1] * x.dim()
        shape[self.ch_axis] = -1
        return param.reshape(shape)

    def reduce_dims(self, x: Tensor) -> list[int]:
        """Dimensions to reduce for per-channel (or per-tensor) statistics."""
        if not self.per_channel:
            return list(range(x.dim()))
        axis = self.ch_axis % x.dim()
        return [d for d in range(x.dim()) if d != axis]

    def resize_channels(self, num_channels: int) -> None:
        """Resize per-channel parameters and buffers to ``num_channels``."""
        if not self.per_channel or num_channels == self.num_param_channels:
            return
        for tensor in self._channel_tensors():
            tensor.data = tensor.data.new_ones(num_channels)
        self.zero_point.data = self.zero_point.data.new_zeros(num_channels)
        self.num_param_channels = num_channels

    def _channel_tensors(self) -> list[Tensor]:
        """Parameters with one value per channel; overridden as needed."""
        return []

    def _sync_parameters(self) -> None:
        for param in self.parameters(recurse=False):
            all_reduce(param.data, op='mean')

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list,
        unexpected_keys: list,
        error_msgs: list,
    ) -> None:
        # A per-channel quantizer built without num_channels has one value
        # until initialized, so take the saved channel count instead.
        key = prefix + 'zero_point'
        if self.per_channel and key in state_dict:
            self.resize_channels(state_dict[key].numel())
        super()._load_from_state_dict(
            state_dict,
            prefix,
            local_metadata,
            strict,
            missing_keys,
            unexpected_keys,
            error_msgs,
        )

    def extra_repr(self) -> str:
        granularity = 'per_channel' if self.per_channel else 'per_tensor'
        return (
            f'bit={self.bit}, quant_min={self.quant_min}, '
            f'quant_max={self.quant_max}, {granularity}'
        )


def _bit_from_range(owner: str, quant_min: int, quant_max: int) -> tuple:
    levels = quant_max - quant_min + 1
    bit = int(round(math.log2(levels))) if levels > 0 else 0
    if levels <= 0 or 2**bit != levels:
        raise ValueError(
            f'{owner}: quant_min={quant_min}, quant_max={quant_max} do not '
            'span a power-of-two number of levels; give bit and signed '
            'instead.'
        )
    return bit, quant_min < 0
