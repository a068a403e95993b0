"""Fold GABFusion nodes of a quantized (QAT) detector and re-calibrate.

In a quantization-aware trained student the consumers of a fused tensor
are :class:`QuantConv2d` layers whose input quantizer was trained on the
LayerNorm output and whose weight quantizer was trained on ``W``. After
the fold they see the plain concatenation and ``W * multiplier``, so both
quantizers are fitted again on the new data. The fold itself runs with
every fake quantizer disabled, where each ``QuantConv2d`` computes exactly
its float convolution, so :func:`fold_gabfusion` and its exactness checks
apply unchanged.

Deployment recipe of "GABFusion: Gradient-Aware Balanced Feature Fusion
for Quantization-Aware Training of YOLO Detectors" (Wang and Wang, arXiv
2511.05898): freeze alpha, replace the LayerNorm by a calibrated affine,
fold it into the consuming convolutions, then fine-tune briefly with the
task loss (Adam, lr 2e-5). This module does everything but the fine-tune.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from mmengine.logging import print_log
from torch import Tensor, nn
from torch.ao.quantization import FakeQuantizeBase

from gabfusion_mm.models.layers import GABFusion
from gabfusion_mm.models.quantizers import QuantConv2d

from .fake_quant_calibration import StepChange, recalibrate_fake_quant
from .fold_gabfusion import (
    FoldedNode,
    FoldResult,
    _default_forward,
    _max_diff,
    _relative_error,
    _run,
    fold_gabfusion,
)

# Growth of a consumer's largest weight step through the fold above which
# a warning is logged. Normal folds change steps by factors near 1.
STEP_GROWTH_WARNING = 1e3


@dataclass
class ConsumerRecalibration:
    """Re-calibration of the quantizers of one rewritten convolution.

    Attributes:
        node (str): The fusion node whose output the convolution consumes.
        weight (StepChange, optional): The weight quantizer's change, or
            None when the weight is not quantized.
        input (StepChange, optional): The input quantizer's change, or
            None when the input is not quantized.
    """

    node: str
    weight: StepChange | None = None
    input: StepChange | None = None


@dataclass
class QuantFoldResult:
    """Output changes of a quantized model through the fold.

    Every difference compares with the quantized model before the fold,
    with its fake quantizers as they were set, on the calibration batches.

    Attributes:
        relative_error_without_recalibration (float):
            ``||folded - before|| / ||before||`` over all outputs (L2
            norms), with the consumers' quantizers still trained for the
            LayerNorm output.
        relative_error (float): The same after the re-calibration.
        max_abs_diff_without_recalibration (float): Largest absolute
            output difference without the re-calibration.
        max_abs_diff (float): Largest absolute output difference after it.
        max_abs_output (float): Largest output magnitude before the fold.
        float_fold (FoldResult): The fold with all fake quantizers
            disabled, as :func:`fold_gabfusion` reports it.
        nodes (dict[str, FoldedNode]): Alpha, ``1 - R^2`` of the affine
            and consumers per fusion node, by module name.
        consumers (dict[str, ConsumerRecalibration]): Per rewritten
            convolution in execution order, by module name.
    """

    relative_error_without_recalibration: float = 0.0
    relative_error: float = 0.0
    max_abs_diff_without_recalibration: float = 0.0
    max_abs_diff: float = 0.0
    max_abs_output: float = 0.0
    float_fold: FoldResult = field(default_factory=FoldResult)
    nodes: dict[str, FoldedNode] = field(default_factory=dict)
    consumers: dict[str, ConsumerRecalibration] = field(default_factory=dict)


def fold_quantized_gabfusion(
    model: nn.Module,
    calib_inputs: Sequence[Any],
    forward_fn: Callable[[nn.Module, Any], Any] = _default_forward,
    sequential: bool = True,
) -> QuantFoldResult:
    """Fold every non-concat GABFusion of a quantized model, re-calibrated.

    Steps:

    1. Record the outputs of the quantized model on ``calib_inputs``.
    2. Disable every fake quantizer (``FakeQuantizeBase``) and its
       observer, run :func:`fold_gabfusion`, then restore each
       ``fake_quant_enabled`` and ``observer_enabled`` buffer exactly.
    3. Re-calibrate the weight and input quantizers of each rewritten
       convolution with :func:`recalibrate_fake_quant`. The weight
       quantizer gets what ``QuantConv2d.quantized_weight`` passes to it
       (the new weight, times ``gamma / sigma`` of a folded batch norm). The
       input quantizer receives the convolution's inputs on all calibration
       batches, with every other quantizer active. With
       ``sequential=True`` the nodes are handled in execution order, so
       each node's consumers see the inputs that the re-calibrated
       quantizers before them produce. ``sequential=False`` collects all
       inputs in one pass first.
    4. Measure the output change with and without step 3.

    ``model`` is changed in place and left in eval mode. A model with no
    non-concat GABFusion is only put in eval mode and gets an empty result.

    Args:
        model (nn.Module): A model with GABFusion modules, quantized in
            place (``QuantConv2d`` layers from ``TraceFreeQuantizer``).
        calib_inputs (Sequence): Calibration batches, each passed to
            ``forward_fn``.
        forward_fn (Callable): ``forward_fn(model, batch)`` runs the model
            and returns tensors, possibly nested in tuples, lists or dicts.
            Defaults to ``model(batch)``.
        sequential (bool): Calibrate the LayerNorm affines and the
            quantizers node by node in execution order. Defaults to True.

    Returns:
        QuantFoldResult: Output errors and what changed per node and
        consumer.
    """
    if len(calib_inputs) == 0:
        raise ValueError('fold_quantized_gabfusion needs at least one batch')
    model.eval()
    if not any(
        isinstance(m, GABFusion) and m.mode != 'concat'
        for m in model.modules()
    ):
        return QuantFoldResult()

    reference = _run(model, calib_inputs, forward_fn)
    with fake_quants_disabled(model):
        fold = fold_gabfusion(model, calib_inputs, forward_fn, sequential)
    unrecalibrated = _run(model, calib_inputs, forward_fn)

    consumers = _recalibrate_consumers(
        model, fold, calib_inputs, forward_fn, sequential
    )
    _warn_on_step_growth(consumers)
    recalibrated = _run(model, calib_inputs, forward_fn)
    model.eval()

    return QuantFoldResult(
        relative_error_without_recalibration=_relative_error(
            reference, unrecalibrated
        ),
        relative_error=_relative_error(reference, recalibrated),
        max_abs_diff_without_recalibration=_max_diff(
            reference, unrecalibrated
        ),
        max_abs_diff=_max_diff(reference, recalibrated),
        max_abs_output=max(
            (t.abs().max().item() for batch in reference for t in batch),
            default=0.0,
        ),
        float_fold=fold,
        nodes=fold.nodes,
        consumers=consumers,
    )


class fake_quants_disabled:
    """Context manager that turns off every fake quantizer and observer.

    On exit, each ``fake_quant_enabled`` and ``observer_enabled`` buffer
    gets back its value from before, also when the body raises.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.saved: list[tuple[FakeQuantizeBase, Tensor, Tensor]] = []

    def __enter__(self) -> fake_quants_disabled:
        for module in self.model.modules():
            if isinstance(module, FakeQuantizeBase):
                self.saved.append(
                    (
                        module,
                        module.fake_quant_enabled.clone(),
                        module.observer_enabled.clone(),
                    )
                )
                module.disable_fake_quant()
                module.disable_observer()
        return self

    def __exit__(self, *exc_info) -> None:
        with torch.no_grad():
            for module, fake_quant, observer in self.saved:
                module.fake_quant_enabled.copy_(fake_quant)
                module.observer_enabled.copy_(observer)
        self.saved.clear()


def _recalibrate_consumers(
    model: nn.Module,
    fold: FoldResult,
    calib_inputs: Sequence[Any],
    forward_fn: Callable[[nn.Module, Any], Any],
    sequential: bool,
) -> dict[str, ConsumerRecalibration]:
    """Re-calibrate the consumers' quantizers, node by node."""
    node_of = {
        conv: node
        for node, folded in fold.nodes.items()
        for conv in folded.consumers
    }
    convs = {
        name: model.get_submodule(name)
        for name in node_of
        if isinstance(model.get_submodule(name), QuantConv2d)
    }
    order = _execution_order(model, convs, calib_inputs[0], forward_fn)
    groups: dict[str, list[str]] = {}
    for name in order:
        groups.setdefault(node_of[name], []).append(name)
    if not sequential:
        groups = {'all': order}

    results = {
        name: ConsumerRecalibration(node=node_of[name]) for name in order
    }
    for group in groups.values():
        inputs = _collect_inputs(
            model, {n: convs[n] for n in group}, calib_inputs, forward_fn
        )
        for name in group:
            conv = convs[name]
            if conv.weight_fake_quant is not None:
                results[name].weight = recalibrate_fake_quant(
                    conv.weight_fake_quant, weight_seen_by_quantizer(conv)
                )
            if conv.input_fake_quant is not None:
                results[name].input = recalibrate_fake_quant(
                    conv.input_fake_quant, inputs[name]
                )
    return results


def _warn_on_step_growth(consumers: dict) -> None:
    for name, change in consumers.items():
        if change.weight is None:
            continue
        old = max(max(change.weight.old_step), 1e-30)
        growth = max(change.weight.new_step) / old
        if growth > STEP_GROWTH_WARNING:
            print_log(
                f'fold_quantized_gabfusion: the largest weight step of '
                f'{name} grew {growth:.3g} times. The affine fit of '
                f'{change.node} gave some input channels a huge scale, '
                f'typically channels that are nearly constant on the '
                f'calibration data. After weight quantization the other '
                f'input channels of {name} then round to zero.',
                logger='current',
                level=logging.WARNING,
            )


def weight_seen_by_quantizer(conv: QuantConv2d) -> Tensor:
    """Return the tensor that ``conv.quantized_weight()`` quantizes."""
    seen: list[Tensor] = []

    def record(module: nn.Module, args: tuple) -> None:
        seen.append(args[0].detach().clone())

    handle = conv.weight_fake_quant.register_forward_pre_hook(record)
    try:
        with torch.no_grad():
            conv.quantized_weight()
    finally:
        handle.remove()
    return seen[0]


def _execution_order(model, convs, batch, forward_fn) -> list[str]:
    order: list[str] = []

    def recorder(name: str) -> Callable:
        def record(module: nn.Module, args: tuple) -> None:
            if name not in order:
                order.append(name)

        return record

    handles = [
        conv.register_forward_pre_hook(recorder(name))
        for name, conv in convs.items()
    ]
    try:
        with torch.no_grad():
            forward_fn(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    missing = sorted(set(convs) - set(order))
    if missing:
        raise RuntimeError(
            f'fold_quantized_gabfusion: the rewritten convolutions '
            f'{missing} did not run on the first calibration batch'
        )
    return order


def _collect_inputs(model, convs, calib_inputs, forward_fn) -> dict:
    """Collect each convolution's inputs over all batches.

    Batches may differ in size, so every batch is flattened per channel
    and concatenated along the last axis, giving shape ``(1, C, 1, L)``.
    Per-tensor and per-channel (axis 1) statistics are the same as over
    the original tensors.
    """
    seen: dict[str, list[Tensor]] = {name: [] for name in convs}

    def recorder(name: str) -> Callable:
        def record(module: nn.Module, args: tuple) -> None:
            # Stored without detach() (no_grad builds no graph), so that
            # the consumers of one tensor are recognized by identity below.
            seen[name].append(args[0])

        return record

    handles = [
        conv.register_forward_pre_hook(recorder(name))
        for name, conv in convs.items()
    ]
    try:
        with torch.no_grad():
            for batch in calib_inputs:
                forward_fn(model, batch)
    finally:
        for handle in handles:
            handle.remove()

    # Consumers of one node get the same tensors, so each list is
    # flattened once.
    flattened: dict[tuple[int, ...], Tensor] = {}
    inputs = {}
    for name, tensors in seen.items():
        key = tuple(id(t) for t in tensors)
        if key not in flattened:
            flattened[key] = torch.cat(
                [t.transpose(0, 1).reshape(t.shape[1], -1) for t in tensors],
                dim=1,
            ).reshape(1, tensors[0].shape[1], 1, -1)
        inputs[name] = flattened[key]
    return inputs
