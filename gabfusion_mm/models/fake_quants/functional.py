"""Fake quantization formulas with straight-through gradients.

Every function here is a composition of differentiable torch operations,
so autograd produces the gradients that the papers define: rounding passes
gradients straight through, and clipping stops them outside the range.
The same functions serve as the eager implementation and as the source
that ``torch.compile`` fuses into a single kernel (see
:func:`get_kernel`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from mmengine.logging import print_log
from torch import Tensor

from .autograd_functions import LSQFunction, N2UQFunction, PACTFunction

_COMPILED: dict[str, Callable] = {}
_COMPILE_FAILED: set[str] = set()
_RECOMPILE_LIMIT = 64


def scale_grad(param: Tensor, factor: float) -> Tensor:
    """Return ``param`` unchanged, with its gradient multiplied by factor.

    This is the gradient scale ``g`` of LSQ (Esser et al., arXiv 1902.08153).
    """
    scaled = param * factor
    return param.detach() + (scaled - scaled.detach())


def round_ste(x: Tensor) -> Tensor:
    """Round to the nearest integer; the gradient passes straight through."""
    return x.detach().round() + (x - x.detach())


def floor_ste(x: Tensor) -> Tensor:
    """Round down to an integer; the gradient passes straight through."""
    return x.detach().floor() + (x - x.detach())


def lsq_quantize(
    x: Tensor,
    scale: Tensor,
    offset: Tensor | None,
    quant_min: float,
    quant_max: float,
    grad_factor: float,
) -> Tensor:
    """Fake-quantize with a learned step and an optional learned offset.

    ``y = round(clip((x - offset) / scale, quant_min, quant_max)) * scale +
    offset``, from LSQ (arXiv 1902.08153) and, with the offset, LSQ+
    (arXiv 2004.09576). The gradients of ``scale`` and ``offset`` are
    multiplied by ``grad_factor``.

    Args:
        x (Tensor): Input of any shape.
        scale (Tensor): Step size, broadcastable to ``x``.
        offset (Tensor, optional): Offset beta, broadcastable to ``x``.
        quant_min (float): Lowest integer level.
        quant_max (float): Highest integer level.
        grad_factor (float): Gradient scale for ``scale`` and ``offset``.

    Returns:
        Tensor: Fake-quantized tensor with the shape of ``x``.
    """
    scale = scale_grad(scale, grad_factor)
    if offset is not None:
        offset = scale_grad(offset, grad_factor)
        x = x - offset
    levels = round_ste(torch.clamp(x / scale, quant_min, quant_max))
    y = levels * scale
    if offset is not None:
        y = y + offset
    return y


def pact_quantize(
    x: Tensor, lower: Tensor, upper: Tensor, num_steps: int
) -> Tensor:
    """Clip to ``[lower, upper]`` and quantize uniformly (PACT).

    From PACT (Choi et al., arXiv 1805.06085): ``y = clip(x, lower, upper)``
    is quantized with step ``(upper - lower) / num_steps``. The step is
    treated as a constant in the backward pass, so ``d y / d upper`` is 1
    where ``x >= upper`` and 0 elsewhere, and likewise for ``lower`` where
    ``x <= lower``.

    Args:
        x (Tensor): Input of any shape.
        lower (Tensor): Lower clipping bound, shape ``(1,)``.
        upper (Tensor): Upper clipping bound alpha, shape ``(1,)``.
        num_steps (int): Number of quantization steps, ``2**bit - 1``.

    Returns:
        Tensor: Fake-quantized tensor with the shape of ``x``.
    """
    clipped = torch.minimum(torch.maximum(x, lower), upper)
    step = ((upper - lower) / num_steps).detach()
    base = lower.detach()
    levels = torch.round((clipped.detach() - base) / step)
    return (levels * step + base) + (clipped - clipped.detach())


def dorefa_weight_quantize(
    weight: Tensor, num_steps: int, rescale: Tensor | None
) -> Tensor:
    """Quantize weights as DoReFa-Net does (arXiv 1606.06160).

    ``w_q = 2 * quantize(tanh(w) / (2 max|tanh(w)|) + 1/2) - 1`` with
    ``quantize(r) = round(num_steps * r) / num_steps``. Gradients pass
    through ``tanh`` and the max normalization; rounding is straight
    through.

    Args:
        weight (Tensor): Weight of any shape.
        num_steps (int): Number of quantization steps, ``2**bit - 1``.
        rescale (Tensor, optional): Factor that multiplies the result,
            broadcastable to ``weight``; a constant for autograd.

    Returns:
        Tensor: Quantized weight in ``[-1, 1]`` times ``rescale``.
    """
    t = torch.tanh(weight)
    unit = t / (2 * t.abs().max()) + 0.5
    quantized = round_ste(unit * num_steps) / num_steps
    result = 2 * quantized - 1
    if rescale is not None:
        result = result * rescale.detach()
    return result


def midrise_quantize(
    x: Tensor, scale: Tensor, num_levels: int, grad_factor: float
) -> Tensor:
    """Quantize to ``num_levels`` levels ``(k + 1/2) * scale``, no zero.

    The levels are symmetric around zero, as N2UQ uses for weights
    (Liu et al., arXiv 2111.14826). The step gets the LSQ gradient:
    ``(k + 1/2) - x / scale`` inside the range and the end level outside.

    Args:
        x (Tensor): Input of any shape.
        scale (Tensor): Step size, broadcastable to ``x``.
        num_levels (int): Number of levels, ``2**bit``.
        grad_factor (float): Gradient scale for ``scale``.

    Returns:
        Tensor: Fake-quantized tensor with the shape of ``x``.
    """
    scale = scale_grad(scale, grad_factor)
    half = num_levels / 2
    t = torch.clamp(x / scale, -half, half)
    index = torch.clamp(floor_ste(t), -half, half - 1)
    return (index + 0.5) * scale


def n2uq_ramp(x: Tensor, start: Tensor, intervals: Tensor) -> Tensor:
    """Piecewise-linear surrogate ``r(x)`` of the N2UQ level.

    With knots ``T'_0 = start`` and ``T'_i = start + a_1 + ... + a_i``,
    ``r`` rises from ``i - 1`` to ``i`` across interval ``i`` (slope
    ``1 / a_i``), is 0 below ``T'_0`` and ``n`` above ``T'_n``:
    ``r(x) = sum_i clip((x - T'_{i-1}) / a_i, 0, 1)``. Its derivative is
    the generalized straight-through estimator of N2UQ (Liu et al.,
    arXiv 2111.14826).

    Args:
        x (Tensor): Input of any shape.
        start (Tensor): First knot ``T'_0``, shape ``(1,)``.
        intervals (Tensor): Interval widths ``a_1 .. a_n``, shape ``(n,)``,
            positive.

    Returns:
        Tensor: ``r(x)`` in ``[0, n]``, with the shape of ``x``.
    """
    left_knots = start + intervals.cumsum(0) - intervals
    ramp = torch.zeros_like(x)
    for i in range(intervals.shape[0]):
        ramp = ramp + ((x - left_knots[i]) / intervals[i]).clamp(0, 1)
    return ramp


def n2uq_quantize(
    x: Tensor,
    start: Tensor,
    intervals: Tensor,
    scale: Tensor,
    grad_factor: float,
) -> Tensor:
    """Non-uniform thresholds to uniform levels with the generalized STE.

    From N2UQ (Liu et al., CVPR 2022, arXiv 2111.14826). The forward pass
    outputs ``start + scale * q``, where the level ``q`` counts the
    thresholds ``T_i = T'_{i-1} + a_i / 2`` (interval midpoints) that ``x``
    reaches. The backward pass differentiates ``start + scale * r(x)``
    (:func:`n2uq_ramp`) with respect to ``x``, ``start`` and the widths,
    and ``start + scale * q`` with respect to ``scale``.

    This composition costs ``O(n)`` operations per element. It is the form
    that ``torch.compile`` fuses; the eager kernel is
    :class:`N2UQFunction`, which finds each element's interval by binary
    search and has the same forward values and gradients.

    Args:
        x (Tensor): Input of any shape.
        start (Tensor): First knot ``T'_0``, shape ``(1,)``.
        intervals (Tensor): Interval widths ``a_1 .. a_n``, shape ``(n,)``,
            already clamped positive.
        scale (Tensor): Output step, shape ``(1,)``.
        grad_factor (float): Gradient scale for the three parameters.

    Returns:
        Tensor: Fake-quantized tensor with the shape of ``x``.
    """
    start = scale_grad(start, grad_factor)
    intervals = scale_grad(intervals, grad_factor)
    scale = scale_grad(scale, grad_factor)
    thresholds = (start + intervals.cumsum(0) - intervals / 2).detach()
    level = torch.zeros_like(x)
    for i in range(intervals.shape[0]):
        level = level + (x.detach() >= thresholds[i]).to(x.dtype)
    ramp = n2uq_ramp(x, start, intervals)
    return start + scale * (level + (ramp - ramp.detach()))


def get_kernel(fn: Callable, compiled: bool) -> Callable:
    """Return the fastest available implementation of ``fn``.

    Eager: the autograd Function with a hand-written backward pass when
    there is one (LSQ, PACT, N2UQ), else ``fn`` itself.
    Compiled: ``torch.compile`` of ``fn``, which fuses the elementwise chain
    into one kernel for the forward and one for the backward pass.
    Compilation happens at the first call. If it fails (for example without
    a C++ compiler), a warning is logged once and the eager implementation
    is used from then on.

    Args:
        fn (Callable): One of the quantization functions of this module.
        compiled (bool): Whether to return the compiled version.

    Returns:
        Callable: A function with the signature of ``fn``.
    """
    eager = _EAGER_KERNELS.get(fn.__name__, fn)
    if not compiled or fn.__name__ in _COMPILE_FAILED:
        return eager
    kernel = _COMPILED.get(fn.__name__)
    if kernel is None:
        kernel = _with_eager_fallback(fn, eager)
        _COMPILED[fn.__name__] = kernel
    return kernel


def _lsq_eager(
    x: Tensor,
    scale: Tensor,
    offset: Tensor | None,
    quant_min: float,
    quant_max: float,
    grad_factor: float,
) -> Tensor:
    return LSQFunction.apply(
        x, scale, offset, quant_min, quant_max, grad_factor
    )


def _pact_eager(
    x: Tensor, lower: Tensor, upper: Tensor, num_steps: int
) -> Tensor:
    return PACTFunction.apply(x, lower, upper, num_steps)


def _n2uq_eager(
    x: Tensor,
    start: Tensor,
    intervals: Tensor,
    scale: Tensor,
    grad_factor: float,
) -> Tensor:
    start = scale_grad(start, grad_factor)
    intervals = scale_grad(intervals, grad_factor)
    scale = scale_grad(scale, grad_factor)
    return N2UQFunction.apply(x, start, intervals, scale)


_EAGER_KERNELS: dict[str, Callable] = {
    'lsq_quantize': _lsq_eager,
    'pact_quantize': _pact_eager,
    'n2uq_quantize': _n2uq_eager,
}


def _with_eager_fallback(fn: Callable, eager: Callable) -> Callable:
    # One function serves weights and activations, 1x1 and 3x3 kernels,
    # training and no-grad evaluation: more variants than dynamo's default
    # recompile limit of 8, beyond which it silently runs eager code.
    import torch._dynamo

    dynamo_config = torch._dynamo.config
    dynamo_config.recompile_limit = max(
        dynamo_config.recompile_limit, _RECOMPILE_LIMIT
    )
    compiled_fn = torch.compile(fn, dynamic=True)

    def kernel(*args):
        if fn.__name__ in _COMPILE_FAILED:
            return eager(*args)
        # A float argument would be specialized, so every new gradient
        # scale (one per tensor size) would trigger a recompilation.
        dtype = args[0].dtype
        tensor_args = [
            torch.tensor(a, dtype=dtype) if isinstance(a, float) else a
            for a in args
        ]
        try:
            return compiled_fn(*tensor_args)
        except Exception as error:  # noqa: BLE001
            # torch.compile raises many error types (missing compiler,
            # unsupported operator); any of them leaves eager mode usable.
            _COMPILE_FAILED.add(fn.__name__)
            print_log(
                f'torch.compile of {fn.__name__} failed ({error!r}); '
                'using the eager implementation.',
                logger='current',
                level=30,
            )
            return eager(*args)

    return kernel
