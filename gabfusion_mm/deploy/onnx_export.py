"""Export a fake-quantized detector to ONNX with QDQ nodes.

Every enabled fake quantizer becomes one QuantizeLinear and one
DequantizeLinear node (see :mod:`gabfusion_mm.deploy.qdq_ops` for the
container types: INT4/UINT4 up to 16 levels at opset 21, INT8/UINT8 up to
256 levels). The grid comes from the fake quantizer's ``export_qparams``
(the low-bit quantizers of :mod:`gabfusion_mm.models.fake_quants`) or, for
torch's and mmrazor's fake quantizers, from ``calculate_qparams``.

* Weight quantizers are replaced by the fake-quantized weight they
  produce, stored as a float initializer followed by QuantizeLinear and
  DequantizeLinear. The stored values lie on the grid, so the pair returns
  them unchanged. Weight transforms such as DoReFa's ``tanh`` and BN
  folding during QAT are thereby exported as computed. DoReFa and N2UQ
  weight grids have no zero level: their ``2**bit`` levels are odd
  multiples of half a step. Up to 7 bits they are stored as odd INT8 codes
  (``2**(bit+1) - 1`` codes, a plain DequantizeLinear before the Conv that
  an INT8 kernel runs as is), so at 4 bits these two quantizers use INT8,
  not INT4. At 8 bits they become INT8 codes of twice the step with a
  one-step offset (Sub/QDQ/Add, see below).
* Activation quantizers are replaced by the same pair on the live tensor.
  An offset (LSQ+ ``beta``, PACT's lower bound) becomes the zero point
  when it is a whole number of steps and the zero point fits the
  container; otherwise it is subtracted before QuantizeLinear and added
  after DequantizeLinear (Sub/QDQ/Add), which is exact but leaves a float
  Add for the runtime.
* N2UQ activation quantizers with non-uniform thresholds have no QDQ form
  (QuantizeLinear rounds at uniformly spaced points) and raise
  :class:`NonUniformQuantizerError`.

Each replacement is checked on the export batch against the fake
quantizer's own output before the graph is written.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.runner.checkpoint import _load_checkpoint
from torch import Tensor, nn

from .onnx_eval import OUTPUT_GROUPS_KEY, build_float_detector
from .qdq_convert import QDQRecord, convert_fake_quants_to_qdq
from .qdq_ops import QDQ_OPSET, qdq_translations

if TYPE_CHECKING:
    import onnx

# Prefix of the quantized detector's entries in an algorithm checkpoint.
_ARCHITECTURE_PREFIX = 'architecture.'


@dataclass
class ExportReport:
    """Result of :func:`export_detector_onnx`.

    Attributes:
        path (str): The written ONNX file.
        opset (int): ONNX opset of the default domain.
        records (list[QDQRecord]): One entry per exported fake quantizer.
        num_quantize_nodes (int): QuantizeLinear nodes in the graph.
        num_dequantize_nodes (int): DequantizeLinear nodes in the graph.
        output_names (list[str]): Graph outputs in order.
        output_groups (list[int]): Sizes of the head's output groups.
        skipped (list[str]): Fake quantizers left out because fake
            quantization was disabled or they never ran.
    """

    path: str
    opset: int
    records: list[QDQRecord]
    num_quantize_nodes: int
    num_dequantize_nodes: int
    output_names: list[str]
    output_groups: list[int]
    skipped: list[str] = field(default_factory=list)

    @property
    def num_fake_quant_calls(self) -> int:
        """Calls of the exported fake quantizers in one forward."""
        return sum(record.calls for record in self.records)

    @property
    def num_expected_pairs(self) -> int:
        """QDQ pairs expected in the graph: one per distinct call."""
        return sum(r.calls - r.merged_calls for r in self.records)


class TensorModeWrapper(nn.Module):
    """Expose a detector's raw head outputs as a flat tuple.

    Args:
        detector (nn.Module): An mmdet detector; ``_forward`` (the
            ``'tensor'`` mode) returns a tuple of per-level lists.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, inputs: Tensor) -> tuple[Tensor, ...]:
        """Run the detector on images of shape (N, 3, H, W)."""
        groups = self.detector._forward(inputs)
        return tuple(t for group in groups for t in _as_list(group))

    def output_groups(self, inputs: Tensor) -> list[int]:
        """Return the size of each output group for ``inputs``."""
        with torch.no_grad():
            groups = self.detector._forward(inputs)
        return [len(_as_list(group)) for group in groups]


def _as_list(group: Tensor | list | tuple) -> list[Tensor]:
    return [group] if isinstance(group, Tensor) else list(group)


def count_qdq_nodes(model: onnx.ModelProto) -> tuple[int, int]:
    """Count QuantizeLinear and DequantizeLinear nodes, functions included.

    Args:
        model (onnx.ModelProto): An ONNX model.

    Returns:
        tuple[int, int]: Numbers of QuantizeLinear and DequantizeLinear.
    """
    nodes = list(model.graph.node)
    for function in model.functions:
        nodes.extend(function.node)
    quantize = sum(node.op_type == 'QuantizeLinear' for node in nodes)
    dequantize = sum(node.op_type == 'DequantizeLinear' for node in nodes)
    return quantize, dequantize


def export_detector_onnx(
    detector: nn.Module,
    inputs: Tensor,
    path: str,
    opset: int = QDQ_OPSET,
    dynamic_batch: bool = True,
) -> ExportReport:
    """Export a fake-quantized detector's raw head outputs to ONNX.

    The graph takes preprocessed images (input ``inputs``, shape
    ``(N, 3, H, W)`` with ``H`` and ``W`` fixed to those of ``inputs``) and
    returns the head outputs flattened group by group. The metadata entry
    ``gabfusion_mm.output_groups`` stores the group sizes for
    :class:`~gabfusion_mm.deploy.onnx_eval.ONNXDetector`.

    Args:
        detector (nn.Module): A fake-quantized mmdet detector (e.g. the
            result of ``TraceFreeQuantizer.prepare``). It is not modified.
        inputs (Tensor): Preprocessed images of shape (N, 3, H, W).
        path (str): Output ``.onnx`` file.
        opset (int): ONNX opset, at least 21 (INT4 QuantizeLinear).
            Defaults to 21.
        dynamic_batch (bool): Let the batch size vary. Defaults to True.

    Returns:
        ExportReport: The exported quantizers and node counts.

    Raises:
        ValueError: For an opset below 21, or a fake quantizer whose
            output does not match its reported grid.
        NonUniformQuantizerError: For N2UQ activation thresholds.
        RuntimeError: When the graph does not hold one QuantizeLinear per
            fake quantizer call.
    """
    if opset < QDQ_OPSET:
        raise ValueError(
            f'opset={opset} is too old: INT4 QuantizeLinear and '
            f'DequantizeLinear need opset {QDQ_OPSET} or newer.'
        )
    qdq_model, records, skipped = convert_fake_quants_to_qdq(detector, inputs)
    wrapper = TensorModeWrapper(qdq_model).eval()
    groups = wrapper.output_groups(inputs)
    output_names = [
        f'output{group}_{level}'
        for group, size in enumerate(groups)
        for level in range(size)
    ]

    # torch.export specializes a dimension of size 1, so a single image is
    # traced as a batch of two to keep the batch dimension dynamic.
    sample = inputs
    dynamic_shapes = None
    if dynamic_batch:
        if inputs.shape[0] == 1:
            sample = inputs.repeat(2, 1, 1, 1)
        dynamic_shapes = {'inputs': {0: torch.export.Dim('batch')}}
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (sample,),
            path,
            input_names=['inputs'],
            output_names=output_names,
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=dynamic_shapes,
            custom_translation_table=qdq_translations(),
            verbose=False,
        )

    import onnx

    model = onnx.load(path)
    _set_metadata(model, OUTPUT_GROUPS_KEY, json.dumps(groups))
    onnx.save(model, path)
    num_quantize, num_dequantize = count_qdq_nodes(model)
    report = ExportReport(
        path=path,
        opset=opset,
        records=records,
        num_quantize_nodes=num_quantize,
        num_dequantize_nodes=num_dequantize,
        output_names=output_names,
        output_groups=groups,
        skipped=skipped,
    )
    expected = report.num_expected_pairs
    if num_quantize != expected or num_dequantize != expected:
        raise RuntimeError(
            f'{path} contains {num_quantize} QuantizeLinear and '
            f'{num_dequantize} DequantizeLinear nodes, expected {expected} '
            'of each (one per distinct fake quantizer call); the exporter '
            'folded or dropped some of them.'
        )
    print_log(
        f'Exported {path}: {len(records)} fake quantizers as '
        f'{num_quantize} QuantizeLinear/DequantizeLinear pairs '
        f'(opset {opset}).',
        logger='current',
    )
    return report


def _set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    for entry in model.metadata_props:
        if entry.key == key:
            entry.value = value
            return
    entry = model.metadata_props.add()
    entry.key = key
    entry.value = value


def load_detector_state(path: str) -> dict[str, Tensor]:
    """Read the quantized detector's state from a QAT checkpoint.

    Accepts checkpoints of algorithms that hold the quantized detector as
    ``architecture`` (DetectorQAT with an in-place quantizer, QATDistill),
    student-only checkpoints (``state_dict`` plus
    ``quantizer_state_dict``) and bare detector state dicts.

    Args:
        path (str): Checkpoint file.

    Returns:
        dict[str, Tensor]: Entries keyed as in the quantized detector.
    """
    checkpoint = _load_checkpoint(path, map_location='cpu')
    state = dict(checkpoint.get('state_dict', checkpoint))
    state.update(checkpoint.get('quantizer_state_dict', {}))
    state = {key.removeprefix('module.'): val for key, val in state.items()}
    if any(key.startswith(_ARCHITECTURE_PREFIX) for key in state):
        state = {
            key[len(_ARCHITECTURE_PREFIX) :]: value
            for key, value in state.items()
            if key.startswith(_ARCHITECTURE_PREFIX)
        }
    return state


def build_quantized_detector(cfg: Config, checkpoint: str) -> nn.Module:
    """Build the fake-quantized detector of a QAT config from a checkpoint.

    The detector (``model.architecture``) is built, prepared with
    ``model.quantizer`` and loaded strictly, without the algorithm
    wrapper, so neither the float checkpoint nor a teacher is needed.

    Args:
        cfg (Config): A QAT config (DetectorQAT or QATDistill) whose
            quantizer works in place, such as ``TraceFreeQuantizer``.
        checkpoint (str): A checkpoint of that config.

    Returns:
        nn.Module: The quantized detector in eval mode.
    """
    from mmrazor.registry import MODELS as RAZOR_MODELS

    if 'architecture' not in cfg.model or 'quantizer' not in cfg.model:
        raise ValueError(
            f'{cfg.filename}: model has no architecture and quantizer '
            'entries; pass the QAT config the checkpoint was trained with '
            '(e.g. configs/qat/yolox_tiny_w4a4-lsq_qat_coco128.py).'
        )
    detector = build_float_detector(cfg)
    quantizer_cfg = dict(copy.deepcopy(cfg.model.quantizer))
    quantizer_cfg.setdefault('_scope_', 'mmrazor')
    quantizer = RAZOR_MODELS.build(quantizer_cfg)
    if getattr(quantizer, 'traces_model', True):
        raise ValueError(
            f'{type(quantizer).__name__} traces the model; ONNX export with '
            'QDQ nodes supports in-place quantizers such as '
            'TraceFreeQuantizer.'
        )
    detector = quantizer.prepare(detector)

    state = load_detector_state(checkpoint)
    missing, unexpected = detector.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f'{checkpoint} does not match the quantized detector of '
            f'{cfg.filename}: {len(missing)} missing keys (e.g. '
            f'{missing[:4]}) and {len(unexpected)} unexpected keys (e.g. '
            f'{unexpected[:4]}). Pass the config it was trained with.'
        )
    return detector.eval()
