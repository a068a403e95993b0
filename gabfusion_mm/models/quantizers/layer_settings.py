"""Per-convolution quantization settings and their validation."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from mmrazor.registry import MODELS

from ..fake_quants.base import LowBitFakeQuantize, check_bit

SETTING_KEYS = (
    'quantize',
    'quantize_input',
    'w_bits',
    'a_bits',
    'w_fake_quant',
    'a_fake_quant',
)


@dataclass
class ConvQuantSetting:
    """Quantization setting of one convolution.

    Attributes:
        quantize (bool): Replace the convolution at all.
        quantize_input (bool): Fake-quantize the input activation.
        w_bits (int): Weight bit width.
        a_bits (int): Input activation bit width.
        w_fake_quant (dict): Config of the weight fake quantizer, no ``bit``.
        a_fake_quant (dict): Config of the input fake quantizer, no ``bit``.
        rules (list[str]): Names of the rules that changed the default.
    """

    quantize: bool
    quantize_input: bool
    w_bits: int
    a_bits: int
    w_fake_quant: dict
    a_fake_quant: dict
    rules: list[str] = field(default_factory=list)

    def updated(self, rule: str, changes: dict) -> ConvQuantSetting:
        """Return a copy with ``changes`` applied and ``rule`` recorded."""
        setting = copy.deepcopy(self)
        for key, value in changes.items():
            setattr(setting, key, copy.deepcopy(value))
        setting.rules.append(rule)
        return setting


def check_setting(owner: str, changes: dict) -> dict:
    """Validate a partial setting: known keys, bit widths, fake quant types.

    Args:
        owner (str): Name used in error messages, e.g. ``'overrides[0]'``.
        changes (dict): Keys from :data:`SETTING_KEYS`.

    Returns:
        dict: ``changes`` itself.

    Raises:
        ValueError: On an unknown key, an unsupported width or a fake
            quantizer config that sets ``bit``.
        KeyError: On a fake quantizer type missing from mmrazor's MODELS.
        TypeError: On a type that is not a ``LowBitFakeQuantize``.
    """
    unknown = sorted(set(changes) - set(SETTING_KEYS))
    if unknown:
        raise ValueError(
            f'TraceFreeQuantizer: {owner} has unknown keys {unknown}; '
            f'valid keys are {list(SETTING_KEYS)}.'
        )
    for key in ('w_bits', 'a_bits'):
        if key in changes:
            check_bit(f'TraceFreeQuantizer: {owner}', changes[key], key)
    for key in ('w_fake_quant', 'a_fake_quant'):
        if key in changes:
            check_fake_quant_cfg(f'{owner}.{key}', changes[key])
    return changes


def check_fake_quant_cfg(owner: str, cfg: Any) -> type:
    """Return the fake quantizer class named by ``cfg['type']``."""
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise ValueError(
            f'TraceFreeQuantizer: {owner}={cfg!r} must be a dict with a '
            "'type' key, e.g. dict(type='LSQFakeQuantize')."
        )
    if 'bit' in cfg:
        raise ValueError(
            f'TraceFreeQuantizer: {owner} sets bit={cfg["bit"]!r}; set the '
            'width with w_bits or a_bits instead.'
        )
    fake_quant_type = cfg['type']
    fake_quant_cls = fake_quant_type
    if isinstance(fake_quant_type, str):
        fake_quant_cls = MODELS.get(fake_quant_type)
    if fake_quant_cls is None:
        raise KeyError(
            f'TraceFreeQuantizer: {owner} type {fake_quant_type!r} is not '
            "in mmrazor's MODELS registry; use one of "
            f'{sorted(available_fake_quants())}.'
        )
    if not (
        isinstance(fake_quant_cls, type)
        and issubclass(fake_quant_cls, LowBitFakeQuantize)
    ):
        raise TypeError(
            f'TraceFreeQuantizer: {owner} type {fake_quant_type!r} is not a '
            'LowBitFakeQuantize; use one of '
            f'{sorted(available_fake_quants())}.'
        )
    return fake_quant_cls


def available_fake_quants() -> list[str]:
    """Names of the registered ``LowBitFakeQuantize`` subclasses."""
    return [
        name
        for name, cls in MODELS.module_dict.items()
        if isinstance(cls, type) and issubclass(cls, LowBitFakeQuantize)
    ]


def compile_pattern(owner: str, pattern: Any) -> re.Pattern:
    """Compile a module-name regular expression or raise ValueError."""
    if not isinstance(pattern, str):
        raise ValueError(
            f'TraceFreeQuantizer: {owner}.pattern={pattern!r} must be a '
            'regular expression string.'
        )
    try:
        return re.compile(pattern)
    except re.error as error:
        raise ValueError(
            f'TraceFreeQuantizer: {owner}.pattern={pattern!r} is not a valid '
            f'regular expression ({error}).'
        ) from error
