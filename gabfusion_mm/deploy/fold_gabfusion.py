"""Fold GABFusion nodes into the convolutions that consume them.

After the fold a GABFusion neck computes a plain concatenation again, so
its state dict loads into the stock mmdet neck with no missing or
unexpected keys. Deployment then has exactly the stock architecture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from mmcv.cnn import ConvModule
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from gabfusion_mm.models.layers import ChannelAffineFit, GABFusion

# Largest output change, relative to the largest output magnitude, that the
# fold's own float32 arithmetic may cause. A larger change means that a
# consumer of a fused tensor was not rewritten.
FOLD_ROUNDING_TOLERANCE = 1e-4


@dataclass
class FoldedNode:
    """Record of the fold at one fusion node.

    Attributes:
        alpha (list[float]): Frozen branch weights.
        residual_ratio (float): Mean over channels of ``1 - R^2`` of the
            per-channel affine that replaced the LayerNorm.
        consumers (list[str]): Names of the rewritten convolutions.
    """

    alpha: list[float]
    residual_ratio: float
    consumers: list[str]


@dataclass
class FoldResult:
    """Largest output differences on the calibration data.

    Attributes:
        max_abs_diff (float): Folded model against the model before the
            fold.
        max_abs_diff_affine (float): Model with each LayerNorm replaced by
            its calibrated affine (not yet folded) against the model before
            the fold: the cost of the affine approximation.
        max_abs_diff_rounding (float): Folded model against that affine
            model: the fold's own round-off.
        max_abs_output (float): Largest output magnitude before the fold.
        relative_error (float): ``||folded - before|| / ||before||`` over
            all outputs of all calibration batches (L2 norms).
        nodes (dict[str, FoldedNode]): Per fusion node, by module name.
    """

    max_abs_diff: float = 0.0
    max_abs_diff_affine: float = 0.0
    max_abs_diff_rounding: float = 0.0
    max_abs_output: float = 0.0
    relative_error: float = 0.0
    nodes: dict[str, FoldedNode] = field(default_factory=dict)


def _default_forward(model: nn.Module, inputs: Any) -> Any:
    return model(inputs)


def flatten_tensors(outputs: Any) -> list[Tensor]:
    """Collect the tensors of nested tuples, lists and dicts in order."""
    if isinstance(outputs, Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    if isinstance(outputs, (list, tuple)):
        return [t for item in outputs for t in flatten_tensors(item)]
    return []


@torch.no_grad()
def _run(model, calib_inputs, forward_fn) -> list[list[Tensor]]:
    return [
        [t.detach().clone() for t in flatten_tensors(forward_fn(model, x))]
        for x in calib_inputs
    ]


def _max_diff(first: list[list[Tensor]], second: list[list[Tensor]]) -> float:
    diffs = [
        (a.float() - b.float()).abs().max().item()
        for batch_a, batch_b in zip(first, second)
        for a, b in zip(batch_a, batch_b)
    ]
    return max(diffs, default=0.0)


def _relative_error(
    reference: list[list[Tensor]], other: list[list[Tensor]]
) -> float:
    squared_diff = 0.0
    squared_ref = 0.0
    for batch_ref, batch_other in zip(reference, other):
        for ref, out in zip(batch_ref, batch_other):
            squared_diff += (out.double() - ref.double()).square().sum().item()
            squared_ref += ref.double().square().sum().item()
    return (squared_diff / max(squared_ref, 1e-300)) ** 0.5


def fold_gabfusion(
    model: nn.Module,
    calib_inputs: Sequence[Any],
    forward_fn: Callable[[nn.Module, Any], Any] = _default_forward,
    sequential: bool = True,
) -> FoldResult:
    """Fold every non-concat GABFusion in ``model`` into its consumers.

    For each node with branch weights ``alpha`` and fused input
    ``x' = concat(alpha_i * F_i)``, the LayerNorm output is replaced by the
    per-channel affine ``a * x' + b`` that fits it best (least squares over
    all calibration pixels). Each consumer must be a 1x1 convolution with
    no padding and one group. Its weight becomes ``W * (a * alpha)`` per
    input channel. The constant ``W @ b`` goes into its bias, or, for a
    bias-free convolution in a ``ConvModule``, into the following
    BatchNorm's ``running_mean``. The node then becomes a plain
    concatenation. Folding ``alpha`` and the affine is exact; the LayerNorm
    to affine step is the only approximation.

    With ``sequential=True`` the nodes are calibrated one at a time in
    execution order, each on the inputs it gets once the nodes before it
    compute their affines, so that a node's fit also absorbs the shift that
    earlier approximations cause. This costs one pass over the calibration
    data per node; ``sequential=False`` calibrates all nodes in one pass
    on the unchanged model.

    ``model`` is changed in place and left in eval mode.

    Args:
        model (nn.Module): A model containing GABFusion modules.
        calib_inputs (Sequence): Calibration batches, each passed to
            ``forward_fn``.
        forward_fn (Callable): ``forward_fn(model, batch)`` runs the model
            and returns tensors (possibly nested in tuples, lists or
            dicts). Defaults to ``model(batch)``.
        sequential (bool): Whether to calibrate node by node, see above.
            Defaults to True.

    Returns:
        FoldResult: Output differences and what was folded per node.

    Raises:
        ValueError: A consumer cannot absorb the affine.
        RuntimeError: The fused tensor has a consumer that the fold did not
            rewrite, which shows as an output change beyond round-off.
    """
    if len(calib_inputs) == 0:
        raise ValueError('fold_gabfusion needs at least one batch')
    nodes = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, GABFusion) and module.mode != 'concat'
    ]
    model.eval()
    result = FoldResult()
    if not nodes:
        return result

    reference, fits, consumers, order = _calibrate(
        model, nodes, calib_inputs, forward_fn
    )
    result.max_abs_output = max(
        (t.abs().max().item() for batch in reference for t in batch),
        default=0.0,
    )
    missing = [name for name, _ in nodes if name not in order]
    if missing:
        raise ValueError(
            f'fold_gabfusion: the fusion nodes {missing} did not run on the '
            f'calibration data, so they cannot be calibrated'
        )
    if sequential:
        solutions = _solve_sequentially(
            model, nodes, order, calib_inputs, forward_fn
        )
    else:
        solutions = {name: fits[name].solve() for name, _ in nodes}

    with _affine_outputs(nodes, solutions):
        affine = _run(model, calib_inputs, forward_fn)
    result.max_abs_diff_affine = _max_diff(reference, affine)

    for name, module in nodes:
        alpha = module.alpha
        scale, shift = solutions[name].scale, solutions[name].shift
        names = consumers.get(name, [])
        if not names:
            raise ValueError(
                f'fold_gabfusion: no convolution consumes the output of '
                f'{name}, so there is nothing to fold it into'
            )
        for conv_name in names:
            _fold_into_consumer(model, conv_name, module, alpha, scale, shift)
        result.nodes[name] = FoldedNode(
            alpha=alpha.tolist(),
            residual_ratio=solutions[name].residual_ratio.mean().item(),
            consumers=names,
        )
        _replace_module(
            model, name, GABFusion(module.in_channels, mode='concat')
        )

    folded = _run(model, calib_inputs, forward_fn)
    result.max_abs_diff = _max_diff(reference, folded)
    result.relative_error = _relative_error(reference, folded)
    result.max_abs_diff_rounding = _max_diff(affine, folded)
    limit = FOLD_ROUNDING_TOLERANCE * max(result.max_abs_output, 1.0)
    if result.max_abs_diff_rounding > limit:
        raise RuntimeError(
            f'fold_gabfusion: folding changed the outputs by '
            f'{result.max_abs_diff_rounding:.3e} beyond the affine model '
            f'(limit {limit:.1e}); a fused tensor has a consumer other '
            f'than the rewritten 1x1 convolutions '
            f'{[n for node in result.nodes.values() for n in node.consumers]}'
        )
    return result


def _calibrate(model, nodes, calib_inputs, forward_fn):
    """Record outputs, LayerNorm-to-affine statistics and consumers."""
    fits = {
        name: ChannelAffineFit(sum(module.in_channels))
        for name, module in nodes
    }
    consumers: dict[str, list[str]] = {}
    latest: dict[str, Tensor] = {}
    order: list[str] = []
    handles = []

    def record_fusion(name):
        def hook(module, args, output):
            fits[name].update(module.scaled_concat(args[0]), output)
            latest[name] = output
            if name not in order:
                order.append(name)

        return hook

    def record_consumer(conv_name):
        def hook(module, args):
            for name, output in latest.items():
                if args[0] is output and conv_name not in consumers.get(
                    name, []
                ):
                    consumers.setdefault(name, []).append(conv_name)

        return hook

    for name, module in nodes:
        handles.append(module.register_forward_hook(record_fusion(name)))
    for conv_name, conv in model.named_modules():
        if isinstance(conv, nn.Conv2d):
            handles.append(
                conv.register_forward_pre_hook(record_consumer(conv_name))
            )
    try:
        reference = []
        with torch.no_grad():
            for batch in calib_inputs:
                outputs = flatten_tensors(forward_fn(model, batch))
                reference.append([t.detach().clone() for t in outputs])
                latest.clear()
    finally:
        for handle in handles:
            handle.remove()
    return reference, fits, consumers, order


def _solve_sequentially(model, nodes, order, calib_inputs, forward_fn):
    """Fit each node's affine with the nodes before it already affine."""
    modules = dict(nodes)
    solutions = {}
    for name in order:
        module = modules[name]
        fit = ChannelAffineFit(sum(module.in_channels))

        def record(module, args, output, fit=fit):
            fit.update(module.scaled_concat(args[0]), output)

        handle = module.register_forward_hook(record)
        solved = [(n, modules[n]) for n in solutions]
        try:
            with _affine_outputs(solved, solutions):
                _run(model, calib_inputs, forward_fn)
        finally:
            handle.remove()
        solutions[name] = fit.solve()
    return solutions


class _affine_outputs:
    """Context in which each node returns ``a * x' + b``, not LayerNorm."""

    def __init__(self, nodes, solutions) -> None:
        self.nodes = nodes
        self.solutions = solutions
        self.handles = []

    def __enter__(self):
        for name, module in self.nodes:
            scale = self.solutions[name].scale
            shift = self.solutions[name].shift

            def hook(module, args, output, scale=scale, shift=shift):
                x = module.scaled_concat(args[0])
                s = scale.to(x).view(1, -1, 1, 1)
                t = shift.to(x).view(1, -1, 1, 1)
                return x * s + t

            self.handles.append(module.register_forward_hook(hook))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self.handles:
            handle.remove()


def _fold_into_consumer(
    model: nn.Module,
    conv_name: str,
    fusion: GABFusion,
    alpha: Tensor,
    scale: Tensor,
    shift: Tensor,
) -> None:
    """Rewrite ``conv(a * concat(alpha_i * F_i) + b)`` as ``conv'(concat)``.

    ``a`` is ``scale`` and ``b`` is ``shift``, per channel; ``conv'`` then
    takes the plain concatenation of the branches.
    """
    conv = model.get_submodule(conv_name)
    channels = sum(fusion.in_channels)
    if (
        tuple(conv.kernel_size) != (1, 1)
        or tuple(conv.padding) != (0, 0)
        or conv.groups != 1
        or conv.in_channels != channels
    ):
        raise ValueError(
            f'fold_gabfusion: {conv_name} consumes a fused tensor but is '
            f'not a 1x1 convolution with padding 0, groups 1 and '
            f'{channels} input channels ({conv}); the fold needs one'
        )
    branch_alpha = torch.repeat_interleave(
        alpha.double(), torch.tensor(fusion.in_channels)
    )
    multiplier = scale.double() * branch_alpha
    weight = conv.weight.detach().double()
    offset = weight[:, :, 0, 0] @ shift.double()

    with torch.no_grad():
        conv.weight.copy_(weight * multiplier.view(1, -1, 1, 1))
        if conv.bias is not None:
            conv.bias.add_(offset.to(conv.bias))
            return
        norm = _following_batch_norm(model, conv_name, conv)
        norm.running_mean.sub_(offset.to(norm.running_mean))


def _following_batch_norm(
    model: nn.Module, conv_name: str, conv: nn.Conv2d
) -> _BatchNorm:
    """Return the BatchNorm that directly follows ``conv`` in a ConvModule."""
    parent_name = conv_name.rpartition('.')[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, ConvModule) and parent.conv is conv:
        order = list(parent.order)
        if parent.with_norm and order.index('norm') == order.index('conv') + 1:
            norm = parent.norm
            if isinstance(norm, _BatchNorm) and norm.track_running_stats:
                return norm
    raise ValueError(
        f'fold_gabfusion: {conv_name} has no bias and is not followed by a '
        f'BatchNorm with running statistics in a ConvModule, so the '
        f'LayerNorm shift has nowhere to go'
    )


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition('.')
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
