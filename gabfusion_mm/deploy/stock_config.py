"""The stock-neck config that a folded GABFusion checkpoint loads into."""

from __future__ import annotations

import copy


def stock_model_config(model_cfg: dict) -> dict:
    """Return a copy of a detector config with the stock neck.

    A neck class with a ``stock_type`` attribute (the GABFusion versions of
    mmdet necks) is replaced by that type and loses ``fusion_cfg``. Any
    other neck keeps its type and gets ``fusion_cfg=None`` (a plain
    concatenation) when it had a ``fusion_cfg``.

    Args:
        model_cfg (dict): The ``model`` entry of a config.

    Returns:
        dict: The config that a folded checkpoint loads into.
    """
    from mmdet.registry import MODELS

    cfg = copy.deepcopy(dict(model_cfg))
    neck = dict(cfg['neck'])
    neck_class = MODELS.get(neck['type'])
    if neck_class is None:
        raise KeyError(f'neck type {neck["type"]!r} is not registered')
    stock_type = getattr(neck_class, 'stock_type', None)
    if stock_type is not None:
        neck['type'] = stock_type
        neck.pop('fusion_cfg', None)
    elif 'fusion_cfg' in neck:
        neck['fusion_cfg'] = None
    cfg['neck'] = neck
    return cfg
