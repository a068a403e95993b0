"""Fake quantizers as autograd Functions with hand-written backward passes.

They compute what the formulas in :mod:`.functional` compute, in fewer
passes over the tensor: autograd through the composed formulas runs one
kernel per elementary operation in both directions (and, for N2UQ, an
indexed scatter per element). Timed with benchmarks/bench_qat_step.py on
a busy 2-core CPU, a YOLOX-tiny QAT step with the composed formulas took
about 1.75 (LSQ) and 10 (N2UQ) times as long as a float step.
``torch.compile`` of the composed formulas is the other fast path (see
``get_kernel``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _weighted_sum(values: Tensor, weights: Tensor, like: Tensor) -> Tensor:
    """Sum ``values * weights`` over the dimensions ``like`` broadcasts."""
    weights = weights.to(values.dtype)
    if like.numel() == 1:
        total = torch.dot(values.reshape(-1), weights.reshape(-1))
        return total.reshape(like.shape)
    dims = [d for d in range(values.dim()) if like.shape[d] == 1]
    return (values * weights).sum(dim=dims, keepdim=True)


def _sum_to(values: Tensor, like: Tensor) -> Tensor:
    """Sum ``values`` over the dimensions ``like`` broadcasts."""
    if like.numel() == 1:
        return values.sum().reshape(like.shape)
    dims = [d for d in range(values.dim()) if like.shape[d] == 1]
    return values.sum(dim=dims, keepdim=True)


class LSQFunction(torch.autograd.Function):
    """LSQ / LSQ+ fake quantization; see ``functional.lsq_quantize``.

    Inputs are ``x``, then ``scale`` and ``offset`` (or None), each with a
    single element or with as many dimensions as ``x``, then the integer
    range and the gradient scale. With
    ``t = (x - offset) / scale`` the backward pass uses ``dy/dx = 1`` inside
    the range, ``dy/dscale = round(t) - t`` inside and the end level
    outside, and ``dy/doffset = 1`` outside, as LSQ and LSQ+ define.
    """

    @staticmethod
    def forward(ctx, x, scale, offset, quant_min, quant_max, grad_factor):
        if offset is not None:
            scaled = (x - offset).div_(scale)
        else:
            scaled = x / scale
        clipped = scaled.clamp(quant_min, quant_max)
        inside = clipped == scaled
        del scaled
        out = clipped.round().mul_(scale)
        if offset is not None:
            out.add_(offset)
        ctx.save_for_backward(clipped, inside, scale)
        ctx.has_offset = offset is not None
        ctx.grad_factor = grad_factor
        return out

    @staticmethod
    def backward(ctx, grad_out):
        clipped, inside, scale = ctx.saved_tensors
        grad_x = grad_out * inside
        # Inside: round(t) - t; outside: the end level round(clip(t)).
        grad_scale = _weighted_sum(grad_out, clipped.round(), scale)
        grad_scale -= _weighted_sum(grad_x, clipped, scale)
        grad_scale *= ctx.grad_factor
        grad_offset = None
        if ctx.has_offset:
            grad_offset = _sum_to(grad_out, scale) - _sum_to(grad_x, scale)
            grad_offset *= ctx.grad_factor
        return grad_x, grad_scale, grad_offset, None, None, None


class PACTFunction(torch.autograd.Function):
    """PACT fake quantization; see ``functional.pact_quantize``.

    Inputs: ``x``, ``lower`` and ``upper`` of shape ``(1,)`` and the number
    of steps. ``dy/dx = 1`` for ``lower < x < upper``,
    ``dy/dupper = 1`` for ``x >= upper`` and ``dy/dlower = 1`` for
    ``x <= lower``.
    """

    @staticmethod
    def forward(ctx, x, lower, upper, num_steps):
        step = (upper - lower) / num_steps
        out = torch.clamp(x, lower, upper)
        out.sub_(lower).div_(step).round_().mul_(step).add_(lower)
        # 0 at or below lower, 1 inside, 2 at or above upper.
        region = (x > lower).to(torch.uint8).add_(x >= upper)
        ctx.save_for_backward(region)
        ctx.needs_lower = lower.requires_grad
        return out

    @staticmethod
    def backward(ctx, grad_out):
        (region,) = ctx.saved_tensors
        grad_x = grad_out * (region == 1)
        grad_upper = _weighted_sum(grad_out, region == 2, grad_out.new_ones(1))
        grad_lower = None
        if ctx.needs_lower:
            grad_lower = _weighted_sum(
                grad_out, region == 0, grad_out.new_ones(1)
            )
        return grad_x, grad_lower, grad_upper, None


def _tables(knots: Tensor, widths: Tensor) -> tuple[Tensor, Tensor]:
    """Per-interval tables indexed by ``k`` in ``[0, n + 1]``.

    ``k = 0`` is below ``T'_0``, ``k = i`` is interval ``i`` and
    ``k = n + 1`` is at or above ``T'_n``.

    Returns:
        tuple[Tensor, Tensor]: ``base[k]``, the level at the left end of
        ``k``, and ``mid[k]``, the threshold inside ``k`` that adds one
        level (``+inf`` outside the knots).
    """
    num_steps = widths.numel()
    base = torch.arange(-1, num_steps + 1, dtype=widths.dtype)
    base = base.clamp(0, num_steps).to(widths.device)
    inf = widths.new_full((1,), float('inf'))
    mid = torch.cat([inf, knots[:-1] + widths / 2, inf])
    return base, mid


def _padded(values: Tensor) -> Tensor:
    """``values`` (length n) with a zero before and after (length n + 2)."""
    zero = values.new_zeros(1)
    return torch.cat([zero, values, zero])


class N2UQFunction(torch.autograd.Function):
    """``start + scale * q`` with the generalized STE of N2UQ.

    Inputs: ``x`` of any shape, ``start`` of shape ``(1,)``, the positive
    interval ``widths`` of shape ``(n,)`` and ``scale`` of shape ``(1,)``.
    The level ``q`` counts the thresholds ``T_i = T'_{i-1} + a_i / 2`` that
    ``x`` reaches. For ``x`` in interval ``i`` the backward pass uses
    ``dy/dx = scale / a_i``, ``dy/da_j = -scale / a_i`` for ``j < i``,
    ``dy/da_i = -scale (x - T'_{i-1}) / a_i**2`` and
    ``dy/dstart = 1 - scale / a_i``; outside the knots only
    ``dy/dstart = 1``; and ``dy/dscale = q`` everywhere (Liu et al.,
    arXiv 2111.14826).
    """

    @staticmethod
    def forward(
        ctx, x: Tensor, start: Tensor, widths: Tensor, scale: Tensor
    ) -> Tensor:
        knots = start + torch.cat([widths.new_zeros(1), widths.cumsum(0)])
        # int32 indices: index_select and index_add_ take them directly,
        # at half the memory of int64.
        index = torch.bucketize(x, knots, right=True, out_int32=True)
        flat = index.reshape(-1)
        base, mid = _tables(knots, widths)
        reached = x >= mid.index_select(0, flat).view_as(x)
        level = base.index_select(0, flat).view_as(x).add_(reached)
        ctx.save_for_backward(x, index, reached, knots, widths, scale, start)
        return level.mul_(scale).add_(start)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, index, reached, knots, widths, scale, start = ctx.saved_tensors
        num_bins = widths.numel() + 2
        index = index.reshape(-1)
        grad = grad_out.reshape(-1)

        slope = _padded(scale / widths)
        grad_x = grad * slope.index_select(0, index)
        offset = x.reshape(-1) - _padded(knots[:-1]).index_select(0, index)

        def per_bin(values: Tensor) -> Tensor:
            return values.new_zeros(num_bins).index_add_(0, index, values)

        # S_k = sum of grad * scale / a_k over interval k; P_k the same
        # weighted by the distance to the interval's left knot.
        slope_sums = per_bin(grad_x)[1:-1]
        weighted_sums = per_bin(offset.mul_(grad_x))[1:-1]
        later = slope_sums.flip(0).cumsum(0).flip(0) - slope_sums
        grad_widths = -later - weighted_sums / widths

        grad_start = grad.sum() - slope_sums.sum()

        base, _ = _tables(knots, widths)
        grad_scale = (base * per_bin(grad)).sum()
        grad_scale = (
            grad_scale + torch.where(reached.reshape(-1), grad, 0).sum()
        )

        return (
            grad_x.view_as(x),
            grad_start.reshape(start.shape),
            grad_widths,
            grad_scale.reshape(scale.shape),
        )
