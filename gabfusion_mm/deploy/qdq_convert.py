"""Replace fake quantizers by QuantizeLinear/DequantizeLinear modules.

The grid of each fake quantizer comes from its ``export_qparams`` (the
low-bit quantizers of :mod:`gabfusion_mm.models.fake_quants`) or, for
torch's and mmrazor's fake quantizers, from ``calculate_qparams``. A
forward pass on real images captures each quantizer's input and output,
so that every replacement is checked against the fake quantizer's own
result before anything is exported.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from mmengine.logging import print_log
from torch import Tensor, nn
from torch.ao.quantization import FakeQuantizeBase

from .qdq_ops import QDQSpec, QuantizeDequantize

# Attribute name of a weight fake quantizer in torch.ao's QAT modules and
# in gabfusion_mm's QuantConv2d.
WEIGHT_FAKE_QUANT_ATTR = 'weight_fake_quant'
# A fake-quantized value may differ from its QDQ replacement by float
# round-off (this many steps) and, at rounding ties, by one step.
GRID_TOLERANCE = 1e-3
# Largest share of activation elements allowed to sit on a rounding tie.
MAX_TIE_FRACTION = 1e-3


class NonUniformQuantizerError(ValueError):
    """A fake quantizer whose levels QuantizeLinear cannot express."""


@dataclass
class QDQRecord:
    """How one fake quantizer was exported.

    Attributes:
        name (str): Module name of the fake quantizer.
        type_name (str): Its class name.
        kind (str): ``'weight'`` or ``'activation'``.
        calls (int): Calls in one forward; each adds one QDQ pair.
        merged_calls (int): Calls whose QDQ pair repeats an earlier one
            (same input tensor, same grid). The ONNX optimizer's common
            subexpression elimination keeps one pair for them.
        container (str): ONNX integer type, e.g. ``'INT4'``.
        quant_min (int): Lowest integer level.
        quant_max (int): Highest integer level.
        per_channel (bool): One scale per channel.
        offset (str): ``'none'``, ``'zero_point'`` (folded) or
            ``'sub_add'`` (float Sub before and Add after the pair).
        max_diff_steps (float): Largest difference, in steps, between the
            fake quantizer and its replacement on the export batch.
        tie_fraction (float): Share of elements that differ by more than
            round-off (rounding ties).
    """

    name: str
    type_name: str
    kind: str
    calls: int = 0
    merged_calls: int = 0
    container: str = ''
    quant_min: int = 0
    quant_max: int = 0
    per_channel: bool = False
    offset: str = 'none'
    max_diff_steps: float = 0.0
    tie_fraction: float = 0.0


def fake_quant_modules(model: nn.Module) -> dict[str, FakeQuantizeBase]:
    """Return the fake quantizers of ``model`` by module name."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, FakeQuantizeBase)
    }


def weight_fake_quant_names(model: nn.Module) -> set[str]:
    """Return the names of fake quantizers that quantize a weight."""
    names = set()
    for name, module in model.named_modules():
        child = getattr(module, WEIGHT_FAKE_QUANT_ATTR, None)
        if isinstance(child, FakeQuantizeBase):
            prefix = f'{name}.' if name else ''
            names.add(prefix + WEIGHT_FAKE_QUANT_ATTR)
    return names


def qdq_spec(
    fake_quant: nn.Module, x: Tensor | None, name: str
) -> tuple[QDQSpec, str]:
    """Describe a fake quantizer's grid for QuantizeLinear.

    Args:
        fake_quant (nn.Module): A ``FakeQuantizeBase``; low-bit ones
            provide ``export_qparams``.
        x (Tensor, optional): The tensor it quantizes (needed by weight
            quantizers whose step depends on the weight).
        name (str): Module name, for messages.

    Returns:
        tuple[QDQSpec, str]: The grid and how its offset is exported:
        ``'none'`` (no offset), ``'zero_point'`` (a whole number of steps,
        folded into the zero point) or ``'sub_add'``.

    Raises:
        NonUniformQuantizerError: For non-uniform thresholds (N2UQ).
        TypeError: For a module that is no fake quantizer.
    """
    type_name = type(fake_quant).__name__
    if hasattr(fake_quant, 'export_qparams'):
        params = fake_quant.export_qparams(x)
    elif isinstance(fake_quant, FakeQuantizeBase):
        params = _torch_qparams(fake_quant)
    else:
        raise TypeError(
            f'{name}: {type_name} is not a fake quantizer '
            '(FakeQuantizeBase) and has no export_qparams().'
        )
    offset = params.get('offset')
    if params.get('thresholds') is not None:
        _check_uniform_thresholds(name, type_name, params)

    axis = params.get('ch_axis')
    scale = params['scale'].detach().float().reshape(-1)
    zero = params['zero_point'].detach().round().to(torch.int32).reshape(-1)
    if axis is None:
        if scale.numel() != 1:
            raise ValueError(
                f'{name}: {type_name} reports {scale.numel()} scales without '
                'a channel axis (ch_axis=None).'
            )
        scale, zero, axis = scale[0], zero[0], 1
    elif zero.numel() == 1 and scale.numel() > 1:
        zero = zero.expand_as(scale).clone()
    if offset is not None:
        offset = offset.detach().float().reshape(scale.shape)

    quant_min, quant_max = int(params['quant_min']), int(params['quant_max'])
    if _is_wide_odd_grid(quant_min, quant_max, zero, offset):
        # 8-bit DoReFa or N2UQ weights: the 256 odd codes in [-255, 255]
        # become codes -128..127 of twice the step, shifted by one step.
        offset, scale = scale.clone(), scale * 2
        quant_min, quant_max = -(quant_max + 1) // 2, (quant_max - 1) // 2

    spec = QDQSpec(
        scale=scale.clone(),
        zero_point=zero.clone(),
        quant_min=quant_min,
        quant_max=quant_max,
        axis=int(axis),
        offset=offset,
    )
    if offset is None or not bool(offset.any()):
        spec.offset = None
        return spec, 'none'
    spec = _fold_offset(spec)
    return spec, 'sub_add' if spec.offset is not None else 'zero_point'


def _is_wide_odd_grid(
    quant_min: int, quant_max: int, zero: Tensor, offset: Tensor | None
) -> bool:
    """Whether the grid is ``[-n, n]`` with odd ``n`` beyond 256 codes.

    DoReFa and N2UQ weight quantizers report such grids; only their odd
    codes occur, which the weight check confirms.
    """
    return (
        quant_max - quant_min + 1 > 256
        and quant_min == -quant_max
        and quant_max % 2 == 1
        and not bool(zero.any())
        and offset is None
    )


def _torch_qparams(fake_quant: FakeQuantizeBase) -> dict:
    scale, zero_point = fake_quant.calculate_qparams()
    per_channel = fake_quant.qscheme in (
        torch.per_channel_symmetric,
        torch.per_channel_affine,
    )
    return dict(
        scale=scale,
        zero_point=zero_point,
        quant_min=fake_quant.quant_min,
        quant_max=fake_quant.quant_max,
        ch_axis=fake_quant.ch_axis if per_channel else None,
        offset=None,
        thresholds=None,
    )


def _check_uniform_thresholds(name: str, type_name: str, params: dict):
    """Raise unless threshold ``i`` is ``offset + (i + 1/2) * scale``.

    Only then does rounding ``(x - offset) / scale`` pick the same level
    as counting the thresholds that ``x`` reaches.
    """
    thresholds = params['thresholds'].detach().double().reshape(-1)
    step = params['scale'].detach().double().reshape(-1)[0]
    start = params['offset'].detach().double().reshape(-1)[0]
    index = torch.arange(thresholds.numel(), dtype=torch.float64)
    uniform = start + (index + 0.5) * step
    if bool(((thresholds - uniform).abs() <= 1e-5 * step).all()):
        return
    gaps = thresholds[1:] - thresholds[:-1]
    raise NonUniformQuantizerError(
        f'{name}: {type_name} uses non-uniform input thresholds (gaps '
        f'from {float(gaps.min()):.4g} to {float(gaps.max()):.4g}, output '
        f'step {float(step):.4g}), which QuantizeLinear cannot express '
        'because it rounds at evenly spaced points. Export a model whose '
        'activations use a uniform quantizer (LSQ, LSQ+ or PACT; N2UQ '
        'weight quantizers export), or deploy N2UQ activations with a '
        'threshold-comparison kernel.'
    )


def _fold_offset(spec: QDQSpec) -> QDQSpec:
    """Turn an offset that is a whole number of steps into a zero point."""
    if spec.offset is None:
        return spec
    steps = spec.offset.double() / spec.scale.double()
    shift = steps.round()
    if not bool(((steps - shift).abs() <= 1e-6).all()):
        return spec
    zero = (spec.zero_point - shift).to(torch.int32)
    _, low, high = spec.container()
    if int(zero.min()) < low or int(zero.max()) > high:
        return spec
    return QDQSpec(spec.scale, zero, spec.quant_min, spec.quant_max, spec.axis)


def _diff_in_steps(
    actual: Tensor, expected: Tensor, spec: QDQSpec
) -> tuple[float, float]:
    """Return the max difference in steps and the share above round-off."""
    scale = spec.scale
    if scale.dim() == 1:
        shape = [1] * actual.dim()
        shape[spec.axis] = -1
        scale = scale.reshape(shape)
    steps = (actual.double() - expected.double()).abs() / scale.double()
    if steps.numel() == 0:
        return 0.0, 0.0
    above = (steps > GRID_TOLERANCE).double().mean()
    return float(steps.max()), float(above)


class _Capture:
    """Forward hook that builds the QDQ replacement of one fake quantizer.

    At the first call it reads the grid and keeps the fake-quantized weight
    of a weight quantizer. Every call is counted, and its replacement is
    checked against the fake quantizer's output.
    """

    def __init__(self, name: str, is_weight: bool, seen: dict) -> None:
        self.name = name
        self.is_weight = is_weight
        # (input, grid) keys of all calls so far, shared by all captures;
        # it keeps the inputs alive so that their ids stay unique.
        self.seen = seen
        self.record: QDQRecord | None = None
        self.replacement: QuantizeDequantize | None = None

    def __call__(self, module: nn.Module, args: tuple, output: Tensor):
        x = args[0].detach()
        output = output.detach()
        if self.replacement is None:
            spec, offset_mode = qdq_spec(module, x, self.name)
            constant = output if self.is_weight else None
            self.replacement = QuantizeDequantize(spec, constant)
            self.spec = spec
            dtype, _, _ = spec.container()
            self.record = QDQRecord(
                name=self.name,
                type_name=type(module).__name__,
                kind='weight' if self.is_weight else 'activation',
                container=dtype,
                quant_min=spec.quant_min,
                quant_max=spec.quant_max,
                per_channel=spec.scale.dim() == 1,
                offset=offset_mode,
            )
        self.record.calls += 1
        if self._repeats_earlier_call(args[0], output):
            self.record.merged_calls += 1
        replaced = self.replacement(output if self.is_weight else x)
        diff, above = _diff_in_steps(replaced, output, self.spec)
        self.record.max_diff_steps = max(self.record.max_diff_steps, diff)
        self.record.tie_fraction = max(self.record.tie_fraction, above)
        self._check(diff, above, module)

    def _repeats_earlier_call(self, x: Tensor, output: Tensor) -> bool:
        spec = self.spec
        grid = (
            spec.quant_min,
            spec.quant_max,
            spec.axis,
            spec.scale.numpy().tobytes(),
            spec.zero_point.numpy().tobytes(),
            None if spec.offset is None else spec.offset.numpy().tobytes(),
        )
        if self.is_weight:
            key = ('weight', output.numpy().tobytes(), grid)
        else:
            key = ('activation', id(x), grid)
        if key in self.seen:
            return True
        self.seen[key] = x
        return False

    def _check(self, diff: float, above: float, module: nn.Module) -> None:
        limit = GRID_TOLERANCE if self.is_weight else 1 + GRID_TOLERANCE
        ties = 0.0 if self.is_weight else MAX_TIE_FRACTION
        if diff <= limit and above <= ties:
            return
        raise ValueError(
            f'{self.name}: the output of {type(module).__name__} is not on '
            f'the grid its export_qparams() reports ({self.spec.quant_min} '
            f'to {self.spec.quant_max}): it differs from QuantizeLinear/'
            f'DequantizeLinear by up to {diff:.3g} steps, in '
            f'{100 * above:.3g}% of the elements. Fix export_qparams() of '
            'that fake quantizer.'
        )


def convert_fake_quants_to_qdq(
    detector: nn.Module, inputs: Tensor
) -> tuple[nn.Module, list[QDQRecord], list[str]]:
    """Copy a detector and replace its fake quantizers by QDQ modules.

    Args:
        detector (nn.Module): A fake-quantized mmdet detector. It is not
            modified.
        inputs (Tensor): Preprocessed images of shape (N, 3, H, W), used to
            capture weights and check every replacement.

    Returns:
        tuple: The converted copy in eval mode, one :class:`QDQRecord` per
        replaced fake quantizer (in call order), and the names of fake
        quantizers left in place because they are disabled or never ran.
    """
    model = copy.deepcopy(detector).eval()
    fake_quants = fake_quant_modules(model)
    weight_names = weight_fake_quant_names(model)
    captures, handles, skipped, seen = {}, [], [], {}
    for name, fake_quant in fake_quants.items():
        fake_quant.disable_observer()
        if int(fake_quant.fake_quant_enabled[0]) == 0:
            skipped.append(name)
            continue
        captures[name] = _Capture(name, name in weight_names, seen)
        handles.append(fake_quant.register_forward_hook(captures[name]))
    try:
        with torch.no_grad():
            model._forward(inputs)
    finally:
        for handle in handles:
            handle.remove()

    replacements, records = {}, []
    for name, capture in captures.items():
        if capture.replacement is None:
            skipped.append(name)
            continue
        replacements[id(fake_quants[name])] = capture.replacement
        records.append(capture.record)
    _swap_modules(model, replacements)
    if skipped:
        print_log(
            f'ONNX export: {len(skipped)} fake quantizers are disabled or '
            f'never run and stay out of the graph: {skipped[:8]}',
            logger='current',
            level=30,
        )
    return model, records, skipped


def _swap_modules(model: nn.Module, replacements: dict) -> None:
    for parent in model.modules():
        for child_name, child in list(parent.named_children()):
            if id(child) in replacements:
                setattr(parent, child_name, replacements[id(child)])


def format_records(records: list[QDQRecord]) -> str:
    """Format exported fake quantizers as a Markdown table."""
    lines = [
        '| fake quantizer | type | kind | calls | container | range | '
        'offset | max diff (steps) |',
        '| --- | --- | --- | --- | --- | --- | --- | --- |',
    ]
    for record in records:
        lines.append(
            f'| {record.name} | {record.type_name} | {record.kind} | '
            f'{record.calls} | {record.container} | '
            f'[{record.quant_min}, {record.quant_max}] | {record.offset} | '
            f'{record.max_diff_steps:.3g} |'
        )
    return '\n'.join(lines)
