"""Compare an exported QDQ detector in onnxruntime with PyTorch.

onnxruntime and PyTorch accumulate convolutions in different orders, so a
value within round-off of a rounding boundary can land one step apart. In
a 4-bit network such a flip changes the next layers' inputs and cascades,
so the head outputs of the two runs differ by more than round-off even
when every operator agrees. The check therefore runs PyTorch twice:

* free running: the plain fake-quantized model. Its head outputs give the
  end-to-end difference that is reported (not checked).
* teacher forced: every activation fake quantizer first computes its
  output from its own input, which is compared with onnxruntime's value
  for that node, and then passes onnxruntime's value on. Each operator
  between two quantizers thus gets the same inputs in both runs. Every
  quantized activation must match within one step, with one-step
  differences (rounding ties) in at most ``MAX_TIE_FRACTION`` of the
  elements, and every head output within float round-off.

The quantized activations are read from onnxruntime by adding the output
of each activation QDQ pair (DequantizeLinear, or the Add that restores an
offset) to the graph outputs; the head outputs come from the unmodified
graph.
"""

from __future__ import annotations

import ast
import copy
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

from .qdq_convert import (
    MAX_TIE_FRACTION,
    fake_quant_modules,
    qdq_spec,
    weight_fake_quant_names,
)
from .qdq_ops import QDQSpec

# The one-step limit on activations, with room for float round-off.
MAX_ACTIVATION_STEPS = 1 + 1e-3
# Teacher-forced head outputs may differ by float round-off only: this
# share of the largest output magnitude (at least 1).
OUTPUT_RELATIVE_TOLERANCE = 1e-4
_NAME_SCOPES_KEY = 'pkg.torch.onnx.name_scopes'
_WRAPPER_PREFIX = 'detector.'


@dataclass
class OutputDiff:
    """onnxruntime against PyTorch on one graph output.

    Attributes:
        name (str): Graph output name.
        max_abs_diff (float): Largest absolute difference to the free
            running PyTorch model.
        forced_max_abs_diff (float): Largest absolute difference to the
            teacher-forced PyTorch model.
        tolerance (float): Limit on ``forced_max_abs_diff``.
    """

    name: str
    max_abs_diff: float
    forced_max_abs_diff: float
    tolerance: float


@dataclass
class ActivationStats:
    """Differences of quantized activations, in quantization steps.

    Attributes:
        max_steps (float): Largest difference.
        step_fraction (float): Share of elements at least half a step
            apart (one step or more, since values lie on the grid).
        num_tensors (int): Number of compared tensors.
    """

    max_steps: float = 0.0
    step_fraction: float = 0.0
    num_tensors: int = 0


@dataclass
class ComparisonReport:
    """Result of :func:`compare_onnx_with_pytorch`.

    Attributes:
        outputs (list[OutputDiff]): One entry per graph output.
        forced (ActivationStats): Activations, teacher forced.
        free (ActivationStats): Activations, free running.
    """

    outputs: list[OutputDiff] = field(default_factory=list)
    forced: ActivationStats = field(default_factory=ActivationStats)
    free: ActivationStats = field(default_factory=ActivationStats)

    @property
    def max_abs_diff(self) -> float:
        """Largest output difference to the free-running PyTorch model."""
        return max((out.max_abs_diff for out in self.outputs), default=0.0)

    @property
    def passed(self) -> bool:
        """Whether the teacher-forced run matches within its limits."""
        return (
            self.forced.max_steps <= MAX_ACTIVATION_STEPS
            and self.forced.step_fraction <= MAX_TIE_FRACTION
            and all(
                out.forced_max_abs_diff <= out.tolerance
                for out in self.outputs
            )
        )


def activation_output_values(
    model: onnx.ModelProto, names: set[str]
) -> dict[str, list[str]]:
    """Find the ONNX value that each activation fake quantizer produced.

    The exporter records the module path of every node in its metadata.
    Within one call of a fake quantizer, the last node (DequantizeLinear,
    or the Add that restores an offset) gives the quantized activation.

    Args:
        model (onnx.ModelProto): A model written by
            :func:`~gabfusion_mm.deploy.onnx_export.export_detector_onnx`.
        names (set[str]): Module names of the activation fake quantizers.

    Returns:
        dict[str, list[str]]: Value names per fake quantizer, one per call
        that survived the exporter's optimizer, in graph order.
    """
    last_output: dict[tuple[str, str], str] = {}
    order: list[tuple[str, str]] = []
    for node in model.graph.node:
        scopes = _name_scopes(node)
        if len(scopes) < 2:
            continue
        module = scopes[-2].removeprefix(_WRAPPER_PREFIX)
        if module not in names:
            continue
        key = (module, scopes[-1])
        if key not in last_output:
            order.append(key)
        last_output[key] = node.output[0]
    values: dict[str, list[str]] = defaultdict(list)
    for key in order:
        values[key[0]].append(last_output[key])
    return dict(values)


def _name_scopes(node: onnx.NodeProto) -> list[str]:
    for entry in node.metadata_props:
        if entry.key == _NAME_SCOPES_KEY:
            return list(ast.literal_eval(entry.value))
    return []


class _ActivationComparer:
    """Forward hooks that compare activations with onnxruntime's values.

    A call whose pair the exporter merged into an identical one (same
    input tensor, same grid) takes the value of that pair.
    """

    def __init__(
        self,
        model: nn.Module,
        values: dict[str, list[str]],
        arrays: dict[str, np.ndarray],
        force: bool,
    ) -> None:
        self.values = values
        self.arrays = arrays
        self.force = force
        self.calls: dict[str, int] = defaultdict(int)
        self.specs: dict[str, tuple[QDQSpec, bytes]] = {}
        # (input id, grid) -> (input, onnxruntime value); the input is kept
        # alive so that its id stays unique.
        self.by_input: dict[tuple[int, bytes], tuple[Tensor, Tensor]] = {}
        self.stats = ActivationStats()
        self.mismatched = 0
        self.total = 0
        fake_quants = fake_quant_modules(model)
        weight_names = weight_fake_quant_names(model)
        self.handles = []
        for name, module in fake_quants.items():
            module.disable_observer()
            if name not in weight_names:
                self.handles.append(
                    module.register_forward_hook(self._hook(name))
                )

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: Tensor):
            x = args[0]
            if name not in self.specs:
                spec, _ = qdq_spec(module, x, name)
                self.specs[name] = (spec, _grid_key(spec))
            spec, grid = self.specs[name]

            index = self.calls[name]
            self.calls[name] += 1
            names = self.values.get(name, [])
            if index < len(names):
                expected = torch.from_numpy(self.arrays[names[index]])
                self.by_input[(id(x), grid)] = (x, expected)
            elif (id(x), grid) in self.by_input:
                expected = self.by_input[(id(x), grid)][1]
            else:
                return None
            self._compare(spec, output, expected)
            return expected if self.force else None

        return hook

    def _compare(self, spec: QDQSpec, output: Tensor, expected: Tensor):
        scale = spec.scale.double()
        if scale.dim() == 1:
            shape = [1] * output.dim()
            shape[spec.axis] = -1
            scale = scale.reshape(shape)
        steps = (output.double() - expected.double()).abs() / scale
        self.stats.max_steps = max(self.stats.max_steps, float(steps.max()))
        self.stats.num_tensors += 1
        self.mismatched += int((steps >= 0.5).sum())
        self.total += steps.numel()
        self.stats.step_fraction = self.mismatched / max(self.total, 1)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _grid_key(spec: QDQSpec) -> bytes:
    parts = [spec.scale, spec.zero_point.float()]
    if spec.offset is not None:
        parts.append(spec.offset)
    grid = torch.cat([part.reshape(-1) for part in parts]).numpy()
    return grid.tobytes() + bytes(
        f'{spec.quant_min},{spec.quant_max}', 'ascii'
    )


def _run_pytorch(
    detector: nn.Module,
    inputs: Tensor,
    values: dict[str, list[str]],
    arrays: dict[str, np.ndarray],
    force: bool,
) -> tuple[list[Tensor], ActivationStats]:
    model = copy.deepcopy(detector).eval()
    comparer = _ActivationComparer(model, values, arrays, force)
    try:
        groups = model._forward(inputs)
    finally:
        comparer.remove()
    outputs = [
        t for g in groups for t in ([g] if isinstance(g, Tensor) else g)
    ]
    return outputs, comparer.stats


def _session(
    model: onnx.ModelProto, num_threads: int | None
) -> ort.InferenceSession:
    options = ort.SessionOptions()
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
    return ort.InferenceSession(
        model.SerializeToString(),
        options,
        providers=['CPUExecutionProvider'],
    )


@torch.no_grad()
def compare_onnx_with_pytorch(
    onnx_path: str,
    detector: nn.Module,
    inputs: Tensor,
    num_threads: int | None = None,
) -> ComparisonReport:
    """Run an exported detector in onnxruntime and PyTorch and compare.

    Args:
        onnx_path (str): Model written by ``export_detector_onnx``.
        detector (nn.Module): The fake-quantized detector it came from;
            copies run in eval mode with observers disabled.
        inputs (Tensor): Preprocessed images of shape (N, 3, H, W).
        num_threads (int, optional): onnxruntime intra-op threads.

    Returns:
        ComparisonReport: Output and activation differences.
    """
    onnx_model = onnx.load(onnx_path)
    feed = {'inputs': inputs.detach().cpu().numpy().astype(np.float32)}
    final = _session(onnx_model, num_threads).run(None, feed)
    output_names = [out.name for out in onnx_model.graph.output]

    # Extra graph outputs can change onnxruntime's fusions, so the head
    # outputs above come from the unmodified graph.
    names = set(fake_quant_modules(detector)) - weight_fake_quant_names(
        detector
    )
    values = activation_output_values(onnx_model, names)
    extra = [value for group in values.values() for value in group]
    for value in extra:
        onnx_model.graph.output.append(
            onnx.helper.make_tensor_value_info(
                value, onnx.TensorProto.FLOAT, None
            )
        )
    arrays = dict(
        zip(extra, _session(onnx_model, num_threads).run(extra, feed))
    )

    free, free_stats = _run_pytorch(detector, inputs, values, arrays, False)
    forced, forced_stats = _run_pytorch(detector, inputs, values, arrays, True)
    report = ComparisonReport(forced=forced_stats, free=free_stats)
    for name, actual, expected, expected_forced in zip(
        output_names, final, free, forced
    ):
        actual = torch.from_numpy(actual)
        scale = max(1.0, float(expected_forced.abs().max()))
        report.outputs.append(
            OutputDiff(
                name=name,
                max_abs_diff=float((actual - expected).abs().max()),
                forced_max_abs_diff=float(
                    (actual - expected_forced).abs().max()
                ),
                tolerance=OUTPUT_RELATIVE_TOLERANCE * scale,
            )
        )
    return report
