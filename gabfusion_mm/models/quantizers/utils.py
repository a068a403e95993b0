"""Helpers to inspect and drive a model prepared by TraceFreeQuantizer."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch import nn
from torch.ao.nn.intrinsic.qat import freeze_bn_stats as torch_freeze_bn

from .quantized_conv import QuantConv2d


def quantized_convs(model: nn.Module) -> Iterator[tuple[str, QuantConv2d]]:
    """Yield ``(name, module)`` for every ``QuantConv2d`` of ``model``."""
    for name, module in model.named_modules():
        if isinstance(module, QuantConv2d):
            yield name, module


def find_input_fake_quant(model: nn.Module, module_path: str) -> nn.Module:
    """Return the fake quantizer of the input of the module at a path.

    ``module_path`` names a ``QuantConv2d`` or a module that contains one
    (a ``ConvModule``, a stack of them, a neck stage). For a container, the
    first ``QuantConv2d`` in module order is used. In sequential blocks it
    is the one that consumes the container's input. In mmdet's YOLOX
    head, ``bbox_head.multi_level_cls_convs.0`` gives the quantizer of the
    level-0 neck output on its classification branch (the regression
    branch, ``multi_level_reg_convs.0``, has its own quantizer of the same
    tensor).

    Args:
        model (nn.Module): A model prepared by ``TraceFreeQuantizer``.
        module_path (str): Dotted module name, e.g.
            ``'bbox_head.multi_level_cls_convs.0.0.conv'``.

    Returns:
        nn.Module: The fake quantizer; read its step from ``.scale``.

    Raises:
        LookupError: If the path does not exist, holds no ``QuantConv2d``,
            or its first one leaves the input in float.
    """
    try:
        module = model.get_submodule(module_path)
    except AttributeError as error:
        raise LookupError(
            f'find_input_fake_quant: no module named {module_path!r} '
            f'({error}).'
        ) from error
    convs = [m for m in module.modules() if isinstance(m, QuantConv2d)]
    if not convs:
        raise LookupError(
            f'find_input_fake_quant: {module_path!r} contains no '
            'QuantConv2d; prepare the model with TraceFreeQuantizer first.'
        )
    fake_quant = convs[0].input_fake_quant
    if fake_quant is None:
        raise LookupError(
            f'find_input_fake_quant: the first QuantConv2d in '
            f'{module_path!r} keeps its input in float '
            '(quantize_input=False).'
        )
    return fake_quant


def find_input_fake_quants(
    model: nn.Module, module_paths: Sequence[str]
) -> list[nn.Module]:
    """Apply :func:`find_input_fake_quant` to each path in order."""
    return [find_input_fake_quant(model, path) for path in module_paths]


def freeze_bn_stats(module: nn.Module) -> None:
    """Freeze batch-norm statistics of fused or folded convolutions.

    Works like ``torch.ao.nn.intrinsic.qat.freeze_bn_stats`` (which handles
    only torch's fused modules) and also handles ``QuantConv2d`` with a
    folded batch norm. Use it with ``model.apply(freeze_bn_stats)``.
    """
    if isinstance(module, QuantConv2d):
        module.freeze_bn_stats()
    else:
        torch_freeze_bn(module)


def format_quant_table(rows: Sequence[tuple[str, ...]]) -> str:
    """Format rows of (module, weight, input, rules) as a text table."""
    header = ('module', 'weight', 'input', 'rules')
    widths = [
        max(len(str(row[i])) for row in [header, *rows])
        for i in range(len(header))
    ]
    lines = []
    for row in [header, tuple('-' * w for w in widths), *rows]:
        cells = [str(cell).ljust(width) for cell, width in zip(row, widths)]
        lines.append('  '.join(cells).rstrip())
    return '\n'.join(lines)
