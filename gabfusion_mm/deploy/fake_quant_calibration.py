"""Re-calibrate a trained fake quantizer on new data.

After a weight or an activation changes (for example when a GABFusion
LayerNorm is folded into the convolution that consumes it), the learned
quantizer parameters no longer fit it. The quantizer is re-initialized
from the new data with its own ``init_from_data``. Then, for LSQ and LSQ+
(Esser et al., arXiv 1902.08153; Bhalgat et al., arXiv 2004.09576), the
step is refined by a grid search that minimizes the quantization error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from gabfusion_mm.models.fake_quants import (
    LowBitFakeQuantize,
    LSQFakeQuantize,
    LSQPlusFakeQuantize,
)

# Step multipliers k / 40 for k = 12 ... 48, i.e. 0.30 to 1.20 by 0.025.
# The grid contains 1.0 exactly, so the search never ends with a larger error
# than the step that init_from_data sets.
STEP_MULTIPLIERS = tuple(k / 40 for k in range(12, 49))

# LSQFakeQuantize clamps its step to at least this value.
_MIN_STEP = 1e-8

# Elements per chunk of the float64 error sums, which bounds their memory.
_CHUNK_ELEMENTS = 1 << 22

# Largest number of values of a per-tensor quantizer's data that the grid
# search evaluates. Larger data is subsampled with a fixed stride.
SEARCH_VALUES = 1 << 21


@dataclass
class StepChange:
    """Quantizer steps before and after a re-calibration.

    Attributes:
        type (str): Class name of the fake quantizer.
        old_step (list[float]): ``scale`` before, one value per channel of
            a per-channel quantizer.
        new_step (list[float]): ``scale`` after.
        multiplier (list[float]): Step multiplier chosen by the grid search
            per step value; empty when the quantizer is only re-initialized.
        init_mse (float): Mean squared quantization error on the data with
            the parameters from ``init_from_data``.
        mse (float): The same error with the final parameters.
    """

    type: str
    old_step: list[float]
    new_step: list[float]
    multiplier: list[float]
    init_mse: float
    mse: float


def recalibrate_fake_quant(
    fake_quant: LowBitFakeQuantize,
    x: Tensor,
    multipliers: Sequence[float] = STEP_MULTIPLIERS,
    max_search_values: int = SEARCH_VALUES,
) -> StepChange:
    """Fit a fake quantizer's parameters to new data ``x``, in place.

    The quantizer first runs its own ``init_from_data(x)``. For LSQ and
    LSQ+ the step ``s`` is then replaced by ``c * s`` with the ``c`` from
    ``multipliers`` that minimizes the summed squared error
    ``(Q(x) - x)^2``, per channel for a per-channel quantizer. The search
    keeps an LSQ+ quantizer's lowest level ``Q_min * s + beta`` (the data
    minimum after initialization) where it is and moves ``beta``.
    PACT, N2UQ and DoReFa quantizers are only re-initialized from data.
    An N2UQ weight quantizer resets its step to the default ``2**(2 -
    bit)``, because it standardizes each channel of the weight. The
    ``initialized`` flag is set, so training does not initialize the
    quantizer again.

    Args:
        fake_quant (LowBitFakeQuantize): The quantizer to re-calibrate.
        x (Tensor): Data in the layout the quantizer receives: a weight
            ``(C_out, C_in, kH, kW)`` or activations ``(N, C, H, W)``.
        multipliers (Sequence[float]): Candidate step multipliers.
            Defaults to :data:`STEP_MULTIPLIERS`.
        max_search_values (int): A per-tensor quantizer's grid search
            uses every ``k``-th value of ``x``, with ``k`` the smallest
            stride that leaves at most this many values. Initialization and
            the reported errors use all of ``x``. Defaults to
            :data:`SEARCH_VALUES`.

    Returns:
        StepChange: Steps before and after, and the quantization errors.
    """
    if not isinstance(fake_quant, LowBitFakeQuantize):
        raise TypeError(
            f'recalibrate_fake_quant: {type(fake_quant).__name__} is not a '
            'LowBitFakeQuantize, so it has no init_from_data; only the fake '
            'quantizers of gabfusion_mm.models.fake_quants are supported.'
        )
    x = x.detach()
    old_step = _step_values(fake_quant)
    with torch.no_grad():
        fake_quant.init_from_data(x)
        init_mse = quantization_mse(fake_quant, x)
        chosen: list[float] = []
        if isinstance(fake_quant, LSQFakeQuantize):
            sample = _search_sample(fake_quant, x, max_search_values)
            chosen = search_lsq_step(fake_quant, sample, multipliers).tolist()
    fake_quant.initialized.fill_(1)
    return StepChange(
        type=type(fake_quant).__name__,
        old_step=old_step,
        new_step=_step_values(fake_quant),
        multiplier=chosen,
        init_mse=init_mse,
        mse=quantization_mse(fake_quant, x),
    )


def search_lsq_step(
    fake_quant: LSQFakeQuantize,
    x: Tensor,
    multipliers: Sequence[float] = STEP_MULTIPLIERS,
) -> Tensor:
    """Scale an LSQ step by the multiplier with the least squared error.

    Candidates are rounded to the parameters' dtype before they are
    evaluated, so the stored parameters are exactly the ones that won. The
    errors are summed in float64, and on ties the smaller multiplier wins.

    Args:
        fake_quant (LSQFakeQuantize): An initialized LSQ or LSQ+ quantizer.
        x (Tensor): The data it quantizes.
        multipliers (Sequence[float]): Candidate multipliers ``c``.

    Returns:
        Tensor: The chosen multiplier per step value, float64, shape
        ``(num_param_channels,)``.
    """
    if len(multipliers) == 0:
        raise ValueError('search_lsq_step: multipliers is empty')
    scales, offsets = lsq_candidates(fake_quant, multipliers)
    errors = torch.stack(
        [
            _squared_error_sums(fake_quant, x, scale, offset)
            for scale, offset in zip(scales, offsets)
        ]
    )
    best = errors.argmin(dim=0)
    index = torch.arange(best.numel())
    with torch.no_grad():
        fake_quant.scale.copy_(scales[best, index].to(fake_quant.scale))
        if offsets[0] is not None:
            offset = torch.stack(offsets)[best, index]
            fake_quant.offset.copy_(offset.to(fake_quant.offset))
    grid = torch.tensor(multipliers, dtype=torch.float64)
    return grid[best]


def lsq_candidates(
    fake_quant: LSQFakeQuantize, multipliers: Sequence[float]
) -> tuple[Tensor, list[Tensor | None]]:
    """Return the candidate steps and LSQ+ offsets of a grid search.

    Returns:
        tuple: Steps of shape ``(K, num_param_channels)`` and a list of
        ``K`` offsets (None for plain LSQ), float64 values rounded to the
        parameters' dtype.
    """
    dtype = fake_quant.scale.dtype
    base = fake_quant.scale.detach().double()
    grid = torch.tensor(multipliers, dtype=torch.float64).view(-1, 1)
    scales = (grid * base).clamp_min(_MIN_STEP).to(dtype).double()
    if not isinstance(fake_quant, LSQPlusFakeQuantize):
        return scales, [None] * len(multipliers)

    # The lowest level Q_min * s + beta stays where initialization put it.
    lowest = fake_quant.offset.detach().double() + fake_quant.quant_min * base
    offsets = [
        (lowest - fake_quant.quant_min * scale).to(dtype).double()
        for scale in scales
    ]
    return scales, offsets


def quantization_mse(fake_quant: LowBitFakeQuantize, x: Tensor) -> float:
    """Mean of ``(Q(x) - x)^2`` with the quantizer's current parameters.

    LSQ and LSQ+ errors are computed in float64 from the formula
    ``round(clip((x - beta) / s, Q_min, Q_max)) * s + beta``. Other
    quantizers run their own ``quantize``.
    """
    if isinstance(fake_quant, LSQFakeQuantize):
        scale = fake_quant.scale.detach().double()
        offset = None
        if isinstance(fake_quant, LSQPlusFakeQuantize):
            offset = fake_quant.offset.detach().double()
        total = _squared_error_sums(fake_quant, x, scale, offset).sum()
        return total.item() / max(x.numel(), 1)
    with torch.no_grad():
        error = fake_quant.quantize(x).double() - x.double()
    return error.square().mean().item()


def _squared_error_sums(
    fake_quant: LSQFakeQuantize,
    x: Tensor,
    scale: Tensor,
    offset: Tensor | None,
) -> Tensor:
    """Sum of float64 squared LSQ errors per step value, shape ``(C,)``."""
    axis = fake_quant.ch_axis % x.dim() if fake_quant.per_channel else None
    dims = fake_quant.reduce_dims(x)
    shape = [1] * x.dim()
    if axis is not None:
        shape[axis] = -1
    scale = scale.to(x.device).view(shape)
    if offset is not None:
        offset = offset.to(x.device).view(shape)

    split_dim = max(
        (d for d in range(x.dim()) if d != axis),
        key=lambda d: x.shape[d],
        default=0,
    )
    rows = max(1, _CHUNK_ELEMENTS * x.shape[split_dim] // max(x.numel(), 1))
    total = torch.zeros(scale.numel(), dtype=torch.float64, device=x.device)
    for chunk in x.split(rows, dim=split_dim):
        values = chunk.double()
        shifted = values if offset is None else values - offset
        levels = torch.clamp(
            shifted / scale, fake_quant.quant_min, fake_quant.quant_max
        ).round()
        restored = levels * scale
        if offset is not None:
            restored = restored + offset
        error = (restored - values).square().sum(dim=dims)
        total += error.reshape(-1)
    return total


def _search_sample(
    fake_quant: LowBitFakeQuantize, x: Tensor, limit: int
) -> Tensor:
    if fake_quant.per_channel or x.numel() <= limit:
        return x
    stride = -(-x.numel() // limit)
    return x.reshape(-1)[::stride]


def _step_values(fake_quant: LowBitFakeQuantize) -> list[float]:
    return fake_quant.scale.detach().double().reshape(-1).tolist()
