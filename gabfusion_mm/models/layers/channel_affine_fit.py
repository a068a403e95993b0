"""Per-channel least-squares fit of one feature map to another."""

from __future__ import annotations

from typing import NamedTuple

import torch
from mmengine.dist import all_reduce
from torch import Tensor

# Rows of the statistics tensor: sample count, then sums of u, v, u*u, u*v
# and v*v per channel.
_NUM_STATS = 6


class AffineFitResult(NamedTuple):
    """Solution of :class:`ChannelAffineFit`, all of shape ``(C,)``.

    Attributes:
        scale (Tensor): Slope ``s_c``, float64.
        shift (Tensor): Intercept ``t_c``, float64.
        residual_ratio (Tensor): ``E[(v - s u - t)^2] / Var(v)`` per channel,
            i.e. ``1 - R^2``; 0 where ``v`` is constant.
    """

    scale: Tensor
    shift: Tensor
    residual_ratio: Tensor


class ChannelAffineFit:
    """Accumulate statistics for ``v_c ~ s_c * u_c + t_c`` and solve it.

    ``u`` and ``v`` are ``(N, C, H, W)`` tensors. Every sample and pixel is
    one observation of channel ``c``; the fit minimizes the mean squared
    error per channel. The sums are kept in float64 so that the moments
    stay accurate over millions of observations.

    Args:
        num_channels (int): Number of channels ``C``.
        device (torch.device | str, optional): Device of the statistics.
            Defaults to None (CPU).
    """

    def __init__(
        self, num_channels: int, device: torch.device | str | None = None
    ) -> None:
        self.num_channels = num_channels
        self.stats = torch.zeros(
            _NUM_STATS, num_channels, dtype=torch.float64, device=device
        )

    def update(self, source: Tensor, target: Tensor) -> None:
        """Add the observations of one batch.

        Args:
            source (Tensor): ``u``, shape ``(N, C, H, W)``.
            target (Tensor): ``v``, the same shape as ``source``.
        """
        if source.shape != target.shape or source.dim() != 4:
            raise ValueError(
                f'ChannelAffineFit needs two (N, C, H, W) tensors of one '
                f'shape, got {tuple(source.shape)} and {tuple(target.shape)}'
            )
        if source.shape[1] != self.num_channels:
            raise ValueError(
                f'ChannelAffineFit was built for {self.num_channels} '
                f'channels, got a tensor with {source.shape[1]}'
            )
        u = source.detach().to(self.stats)
        v = target.detach().to(self.stats)
        dims = (0, 2, 3)
        self.stats[0] += u.numel() // self.num_channels
        self.stats[1] += u.sum(dims)
        self.stats[2] += v.sum(dims)
        self.stats[3] += (u * u).sum(dims)
        self.stats[4] += (u * v).sum(dims)
        self.stats[5] += (v * v).sum(dims)

    def all_reduce(self) -> None:
        """Sum the statistics over all processes (no-op without a group)."""
        all_reduce(self.stats, op='sum')

    def solve(self) -> AffineFitResult:
        """Return the least-squares ``scale`` and ``shift`` per channel.

        A channel whose ``u`` is constant gets scale 0 and the mean of ``v``
        as its shift. So does a channel whose ``u`` varies by less than
        ``1e-10`` of the median second moment over channels (a dead channel,
        e.g. SiLU outputs near -1e-25). Its least-squares slope could be huge
        (1e22 has been seen) and would then dominate a quantized consumer's
        weight range.
        """
        count = self.stats[0]
        if not bool((count > 0).all()):
            raise RuntimeError('ChannelAffineFit.solve called before update')
        mean_u = self.stats[1] / count
        mean_v = self.stats[2] / count
        var_u = (self.stats[3] / count - mean_u**2).clamp_min(0)
        cov = self.stats[4] / count - mean_u * mean_v
        var_v = (self.stats[5] / count - mean_v**2).clamp_min(0)

        # var_u below float64 round-off of E[u^2] is 0.
        second_u = self.stats[3] / count
        tiny = 1e-12 * second_u.clamp_min(1e-300)
        dead = 1e-10 * second_u.median()
        usable = (var_u > tiny) & (var_u > dead)
        scale = torch.where(usable, cov / var_u.where(usable, 1), 0)
        shift = mean_v - scale * mean_u

        residual = (var_v - scale * cov).clamp_min(0)
        ratio = torch.where(var_v > 0, residual / var_v.where(var_v > 0, 1), 0)
        return AffineFitResult(scale, shift, ratio)
