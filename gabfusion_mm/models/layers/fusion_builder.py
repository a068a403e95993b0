"""Argument checks and the builder for neck fusion modules."""

from __future__ import annotations

import math
from collections.abc import Sequence

from mmdet.registry import MODELS
from torch import nn

FUSION_MODES = ('learnable', 'feedback', 'concat')
NORM_INITS = ('default', 'identity')


def check_fusion_args(
    in_channels: Sequence[int],
    mode: str,
    eta: float,
    beta: float,
    eps: float,
    tau: Sequence[float] | None,
    norm_eps: float,
    norm_init: str,
) -> None:
    """Raise a ValueError naming the first invalid GABFusion argument."""
    if mode not in FUSION_MODES:
        raise ValueError(
            f'GABFusion: unknown mode {mode!r}; use one of {FUSION_MODES}'
        )
    if norm_init not in NORM_INITS:
        raise ValueError(
            f'GABFusion: unknown norm_init {norm_init!r}; use one of '
            f'{NORM_INITS}'
        )
    if isinstance(in_channels, (str, int)) or len(in_channels) < 2:
        raise ValueError(
            f'GABFusion: in_channels={in_channels!r}, expected a sequence '
            f'of at least 2 channel counts (one per branch)'
        )
    if any(int(c) <= 0 for c in in_channels):
        raise ValueError(
            f'GABFusion: in_channels={list(in_channels)} has a non-positive '
            f'entry'
        )
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f'GABFusion: eta={eta!r}, expected eta >= 0')
    if not 0 < beta <= 1:
        raise ValueError(f'GABFusion: beta={beta!r}, expected 0 < beta <= 1')
    if not eps > 0:
        raise ValueError(f'GABFusion: eps={eps!r}, expected eps > 0')
    if not norm_eps > 0:
        raise ValueError(
            f'GABFusion: norm_eps={norm_eps!r}, expected norm_eps > 0'
        )
    if tau is not None and len(tau) != len(in_channels):
        raise ValueError(
            f'GABFusion: tau={list(tau)} has {len(tau)} entries, expected '
            f'{len(in_channels)} (one per branch)'
        )


def build_fusion(
    fusion_cfg: dict | None, in_channels: Sequence[int]
) -> nn.Module:
    """Build the fusion module of one fusion node in a neck.

    Necks call this once per concatenation point with the same
    ``fusion_cfg`` and the channel counts of the branches there, in
    concatenation order.

    Args:
        fusion_cfg (dict, optional): Keyword arguments of
            :class:`GABFusion` except ``in_channels``, e.g.
            ``dict(mode='feedback', eta=0.05)``; ``dict()`` builds a
            ``'learnable'`` GABFusion. An optional ``type`` key selects
            another module registered in mmdet's ``MODELS`` that takes
            ``in_channels`` and maps a list of ``K`` tensors to one. None
            builds the plain concatenation (``GABFusion`` in ``'concat'``
            mode, which has no parameters).
        in_channels (Sequence[int]): Channels of each branch.

    Returns:
        nn.Module: The fusion module.
    """
    if fusion_cfg is None:
        fusion_cfg = dict(mode='concat')
    if not isinstance(fusion_cfg, dict):
        raise TypeError(
            f'fusion_cfg must be a dict or None, got '
            f'{type(fusion_cfg).__name__}: {fusion_cfg!r}'
        )
    if 'in_channels' in fusion_cfg:
        raise ValueError(
            f'fusion_cfg sets in_channels={fusion_cfg["in_channels"]!r}; '
            f'remove it, the neck sets the channels of each fusion node'
        )
    cfg = dict(type='GABFusion')
    cfg.update(fusion_cfg)
    cfg['in_channels'] = list(in_channels)
    return MODELS.build(cfg)
