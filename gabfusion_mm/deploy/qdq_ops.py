"""A QuantizeLinear/DequantizeLinear operator that exports to ONNX.

``torch.onnx.export`` (torch 2.13, the ``torch.export``-based exporter)
turns ``torch.fake_quantize_per_*_affine`` into QuantizeLinear and
DequantizeLinear only for 8-bit ranges, and it writes custom autograd
functions as Div/Round/Clip/Mul. This module therefore defines
``torch.ops.gabfusion_mm.quantize_dequantize`` with ``torch.library`` and
an onnxscript translation that emits the two ONNX nodes with an integer
container chosen by the number of levels:

* at most 16 levels (bit widths up to 4): INT4 or UINT4, which needs
  opset 21;
* 17 to 256 levels (5 to 8 bits): INT8 or UINT8.

A signed container is used when the integer range goes below zero. When
the range is narrower than its container (a 5-bit grid in INT8), a
Clip (Min/Max when per channel) on the float input keeps the levels
inside the range, because QuantizeLinear saturates only at the container
bounds. An offset that is not a whole number of steps (LSQ+, PACT with a
lower bound, DoReFa and N2UQ weight grids) is subtracted before
QuantizeLinear and added back after DequantizeLinear, which keeps the
result exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

# Opset that first allows INT4 and UINT4 in QuantizeLinear.
QDQ_OPSET = 21

# (levels, signed) -> (ONNX type name, lowest integer, highest integer).
_CONTAINERS = {
    (16, True): ('INT4', -8, 7),
    (16, False): ('UINT4', 0, 15),
    (256, True): ('INT8', -128, 127),
    (256, False): ('UINT8', 0, 255),
}


@dataclass
class QDQSpec:
    """Uniform quantization grid written as QuantizeLinear/DequantizeLinear.

    The dequantized value is ``scale * (q - zero_point) + offset`` for an
    integer ``q`` in ``[quant_min, quant_max]``.

    Args:
        scale (Tensor): float32 step, shape ``()`` or ``(C,)``.
        zero_point (Tensor): int32 zero point with the shape of ``scale``.
        quant_min (int): Lowest integer level.
        quant_max (int): Highest integer level.
        axis (int): Channel axis of a per-channel grid; ignored per tensor.
        offset (Tensor, optional): float32 offset with the shape of
            ``scale``, subtracted before quantization and added after
            dequantization. Defaults to None.
        clip (bool): Clip the input to the range when it is narrower than
            the container. Defaults to True.
    """

    scale: Tensor
    zero_point: Tensor
    quant_min: int
    quant_max: int
    axis: int = 0
    offset: Tensor | None = None
    clip: bool = True

    def __post_init__(self) -> None:
        if self.scale.dtype != torch.float32:
            raise TypeError(
                f'QDQSpec: scale has dtype {self.scale.dtype}; QuantizeLinear '
                'needs float32.'
            )
        if self.zero_point.dtype != torch.int32:
            raise TypeError(
                f'QDQSpec: zero_point has dtype {self.zero_point.dtype}; '
                'use int32.'
            )
        if self.scale.shape != self.zero_point.shape:
            raise ValueError(
                f'QDQSpec: scale shape {tuple(self.scale.shape)} differs from '
                f'zero_point shape {tuple(self.zero_point.shape)}.'
            )
        if self.scale.dim() > 1:
            raise ValueError(
                f'QDQSpec: scale has shape {tuple(self.scale.shape)}; use a '
                'scalar or one value per channel.'
            )
        self.container()

    @property
    def levels(self) -> int:
        """Number of integer levels of the grid."""
        return self.quant_max - self.quant_min + 1

    @property
    def signed(self) -> bool:
        """Whether the container is a signed integer type."""
        return self.quant_min < 0

    def container(self) -> tuple[str, int, int]:
        """Return the ONNX integer type name of the grid and its bounds.

        Raises:
            ValueError: When the grid or its zero point does not fit a
                4-bit or 8-bit container.
        """
        size = 16 if self.levels <= 16 else 256
        if self.levels > 256 or (size, self.signed) not in _CONTAINERS:
            raise ValueError(
                f'QDQSpec: the range [{self.quant_min}, {self.quant_max}] has '
                f'{self.levels} levels; QuantizeLinear supports at most 256 '
                '(8 bits).'
            )
        dtype, low, high = _CONTAINERS[(size, self.signed)]
        if self.quant_min < low or self.quant_max > high:
            raise ValueError(
                f'QDQSpec: the range [{self.quant_min}, {self.quant_max}] '
                f'does not fit {dtype} [{low}, {high}]; use a signed '
                'range centred on zero or an unsigned range from zero.'
            )
        zero_min = int(self.zero_point.min())
        zero_max = int(self.zero_point.max())
        if zero_min < low or zero_max > high:
            raise ValueError(
                f'QDQSpec: zero points in [{zero_min}, {zero_max}] do not fit '
                f'{dtype} [{low}, {high}]; express the shift as offset.'
            )
        return dtype, low, high

    def needs_clip(self) -> bool:
        """Whether the input must be clipped before QuantizeLinear."""
        _, low, high = self.container()
        narrower = self.quant_min > low or self.quant_max < high
        return self.clip and narrower


class QuantizeDequantize(nn.Module):
    """Fake quantization on a fixed grid that exports as ONNX QDQ nodes.

    Eager results follow onnxruntime's QuantizeLinear (division by the
    scale, rounding half to even, saturation) and DequantizeLinear.

    Args:
        spec (QDQSpec): The grid.
        constant (Tensor, optional): A tensor to quantize in place of the
            input, e.g. a fake-quantized weight captured from the model;
            the input is then ignored. Defaults to None.
    """

    def __init__(self, spec: QDQSpec, constant: Tensor | None = None) -> None:
        super().__init__()
        self.quant_min = spec.quant_min
        self.quant_max = spec.quant_max
        self.axis = spec.axis
        self.has_offset = spec.offset is not None
        self.clip = spec.needs_clip()
        zero = spec.zero_point.float()
        offset = spec.offset
        if offset is None:
            offset = torch.zeros_like(spec.scale)
        self.register_buffer('scale', spec.scale.clone())
        self.register_buffer('zero_point', spec.zero_point.clone())
        self.register_buffer('offset', offset.float().clone())
        self.register_buffer('low', (spec.quant_min - zero) * spec.scale)
        self.register_buffer('high', (spec.quant_max - zero) * spec.scale)
        self.constant: Tensor | None
        if constant is None:
            self.constant = None
        else:
            self.register_buffer('constant', constant.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        """Round ``x`` (or the stored constant) to the grid.

        Args:
            x (Tensor): Input of any shape, e.g. ``(N, C, H, W)``.

        Returns:
            Tensor: The rounded tensor, with the shape of its input.
        """
        if self.constant is not None:
            x = self.constant
        return torch.ops.gabfusion_mm.quantize_dequantize(
            x,
            self.scale,
            self.zero_point,
            _channel_view(self.offset, x, self.axis),
            _channel_view(self.low, x, self.axis),
            _channel_view(self.high, x, self.axis),
            self.quant_min,
            self.quant_max,
            self.axis,
            self.has_offset,
            self.clip,
        )

    def extra_repr(self) -> str:
        return (
            f'quant_min={self.quant_min}, quant_max={self.quant_max}, '
            f'per_channel={self.scale.dim() == 1}, axis={self.axis}, '
            f'offset={self.has_offset}, clip={self.clip}, '
            f'constant={self.constant is not None}'
        )


def _channel_view(t: Tensor, x: Tensor, axis: int) -> Tensor:
    """Reshape a per-channel ``(C,)`` tensor to broadcast along ``axis``."""
    if t.dim() == 0:
        return t
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


@torch.library.custom_op('gabfusion_mm::quantize_dequantize', mutates_args=())
def quantize_dequantize(
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    offset: Tensor,
    low: Tensor,
    high: Tensor,
    quant_min: int,
    quant_max: int,
    axis: int,
    has_offset: bool,
    clip: bool,
) -> Tensor:
    """Round ``x`` to a uniform grid with ONNX QuantizeLinear semantics.

    With ``y = x - offset``, clipped to ``[low, high]`` when ``clip``,
    ``q = clamp(round_half_even(y / scale) + zero_point, quant_min,
    quant_max)`` and the result is ``(q - zero_point) * scale + offset``.
    ``offset``, ``low`` and ``high`` broadcast to ``x``; ``scale`` and
    ``zero_point`` are scalars or hold one value per channel of ``axis``.
    """
    scale_b = _channel_view(scale, x, axis)
    zero_b = _channel_view(zero_point, x, axis).to(x.dtype)
    y = x - offset if has_offset else x
    if clip:
        y = torch.minimum(torch.maximum(y, low), high)
    q = torch.clamp(torch.round(y / scale_b) + zero_b, quant_min, quant_max)
    out = (q - zero_b) * scale_b
    return out + offset if has_offset else out


@quantize_dequantize.register_fake
def _quantize_dequantize_fake(
    x: Tensor,
    scale: Tensor,
    zero_point: Tensor,
    offset: Tensor,
    low: Tensor,
    high: Tensor,
    quant_min: int,
    quant_max: int,
    axis: int,
    has_offset: bool,
    clip: bool,
) -> Tensor:
    return torch.empty_like(x)


def container_type(quant_min: int, quant_max: int) -> str:
    """Return the ONNX integer type for ``[quant_min, quant_max]``."""
    size = 16 if quant_max - quant_min + 1 <= 16 else 256
    return _CONTAINERS[(size, quant_min < 0)][0]


def quantize_dequantize_onnx(
    x,
    scale,
    zero_point,
    offset,
    low,
    high,
    quant_min: int,
    quant_max: int,
    axis: int,
    has_offset: bool,
    clip: bool,
):
    """Translate ``quantize_dequantize`` into ONNX (opset 21) nodes.

    The arguments are onnxscript values and Python attributes in the order
    of the PyTorch operator. Emits QuantizeLinear and DequantizeLinear
    with a zero point of the container type, plus Sub/Add for an offset
    and Max/Min for a range narrower than its container.
    """
    # Imported here so that importing gabfusion_mm does not load onnx.
    from onnxscript import ir
    from onnxscript import opset21 as op

    dtype = getattr(ir.DataType, container_type(quant_min, quant_max))
    zero = op.Cast(zero_point, to=dtype)
    if has_offset:
        x = op.Sub(x, offset)
    if clip:
        x = op.Min(op.Max(x, low), high)
    # QuantizeLinear ignores ``axis`` when the scale is a scalar.
    q = op.QuantizeLinear(x, scale, zero, axis=axis)
    y = op.DequantizeLinear(q, scale, zero, axis=axis)
    if has_offset:
        y = op.Add(y, offset)
    return y


def qdq_translations() -> dict:
    """Return the ``custom_translation_table`` for ``torch.onnx.export``."""
    return {
        torch.ops.gabfusion_mm.quantize_dequantize.default: (
            quantize_dequantize_onnx
        ),
    }
