"""A quantizer that swaps convolutions in place instead of tracing."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from mmcv.cnn import ConvModule
from mmcv.cnn.bricks.wrappers import Conv2d as MMCVConv2d
from mmengine.logging import print_log
from mmengine.model import BaseModule
from mmrazor.models.quantizers import BaseQuantizer
from mmrazor.registry import MODELS
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .layer_settings import (
    ConvQuantSetting,
    check_fake_quant_cfg,
    check_setting,
    compile_pattern,
)
from .quantized_conv import QuantConv2d
from .utils import format_quant_table

# Convolution classes whose forward is exactly nn.Conv2d's on non-empty
# inputs, so QuantConv2d can stand in for them.
SUPPORTED_CONV_TYPES = (nn.Conv2d, MMCVConv2d)


@MODELS.register_module()
class TraceFreeQuantizer(BaseQuantizer):
    """Quantize every convolution of a model by module replacement.

    mmrazor's FX quantizers trace the model, which mmdet's dense heads do
    not survive. This quantizer needs no trace: :meth:`prepare` replaces
    each ``nn.Conv2d`` (including the ``conv`` of mmcv's ``ConvModule``)
    with a :class:`QuantConv2d` that fake-quantizes its weight and its
    input, so the model keeps its modules, hooks and Python control flow.

    Each convolution starts from the defaults (``w_bits``, ``a_bits``,
    ``w_fake_quant``, ``a_fake_quant``). Then ``first_conv`` applies to the
    first convolution in module order. ``prediction_convs`` applies to the
    convolutions under ``head_prefixes`` that are not wrapped in a
    ``ConvModule``, which are the final prediction layers of mmdet's YOLOX,
    YOLOv3 and RTMDet heads. Last, each entry of ``overrides`` applies in
    order to the convolutions whose full module name matches its regular
    expression ``pattern`` (``re.fullmatch``). A setting is a dict with keys
    ``quantize`` (False leaves the convolution in float),
    ``quantize_input``, ``w_bits``, ``a_bits``, ``w_fake_quant`` and
    ``a_fake_quant``.

    Args:
        w_bits (int): Default weight width, 2 to 8. Defaults to 4.
        a_bits (int): Default input activation width, 2 to 8.
            Defaults to 4.
        w_fake_quant (dict): Default weight fake quantizer config, without
            ``bit``. Defaults to per-channel LSQ.
        a_fake_quant (dict): Default activation fake quantizer config,
            without ``bit``. Defaults to LSQ+.
        first_conv (dict, optional): Setting of the first convolution.
            Defaults to 8-bit weight and input.
        prediction_convs (dict, optional): Setting of the prediction
            convolutions. Defaults to 8-bit weight and input.
        head_prefixes (Sequence[str]): Module-name prefixes of dense heads.
            Defaults to ``('bbox_head',)``.
        overrides (Sequence[dict]): Settings with a ``pattern`` key.
            Defaults to none.
        fold_bn (bool): Fold the batch norm of each ``ConvModule`` into the
            weight before weight quantization. Defaults to False.
        use_compile (bool): Build fake quantizers with ``use_compile=True``
            unless their config sets it. Defaults to False.
        init_cfg (dict, optional): Unused; for ``BaseModule``.
    """

    # Read by the QAT algorithm: prepare() works in place, without a trace.
    traces_model = False

    def __init__(
        self,
        w_bits: int = 4,
        a_bits: int = 4,
        w_fake_quant: dict | None = None,
        a_fake_quant: dict | None = None,
        first_conv: dict | None = None,
        prediction_convs: dict | None = None,
        head_prefixes: Sequence[str] = ('bbox_head',),
        overrides: Sequence[dict] = (),
        fold_bn: bool = False,
        use_compile: bool = False,
        init_cfg: dict | None = None,
    ) -> None:
        # BaseQuantizer.__init__ builds a tracer, which this class never
        # uses; initialize the module directly.
        BaseModule.__init__(self, init_cfg)
        self.tracer = None

        if w_fake_quant is None:
            w_fake_quant = dict(type='LSQFakeQuantize', per_channel=True)
        if a_fake_quant is None:
            a_fake_quant = dict(type='LSQPlusFakeQuantize')
        if first_conv is None:
            first_conv = dict(w_bits=8, a_bits=8)
        if prediction_convs is None:
            prediction_convs = dict(w_bits=8, a_bits=8)
        defaults = dict(
            w_bits=w_bits,
            a_bits=a_bits,
            w_fake_quant=w_fake_quant,
            a_fake_quant=a_fake_quant,
        )
        check_setting('defaults', defaults)

        self.default_setting = ConvQuantSetting(
            quantize=True, quantize_input=True, **copy.deepcopy(defaults)
        )
        self.first_conv = check_setting('first_conv', dict(first_conv))
        self.prediction_convs = check_setting(
            'prediction_convs', dict(prediction_convs)
        )
        self.head_prefixes = tuple(head_prefixes)
        self.overrides = self._check_overrides(overrides)
        self.fold_bn = fold_bn
        self.use_compile = use_compile

    @staticmethod
    def _check_overrides(overrides: Sequence[dict]) -> list:
        checked = []
        for index, override in enumerate(overrides):
            owner = f'overrides[{index}]'
            if not isinstance(override, dict) or 'pattern' not in override:
                raise ValueError(
                    f'TraceFreeQuantizer: {owner}={override!r} must be a '
                    "dict with a 'pattern' key."
                )
            changes = dict(override)
            pattern = compile_pattern(owner, changes.pop('pattern'))
            checked.append((owner, pattern, check_setting(owner, changes)))
        return checked

    # -- mmrazor's quantizer interface -------------------------------------

    def prepare(self, model: nn.Module, concrete_args: Any = None):
        """Replace the convolutions of ``model`` in place and return it.

        Args:
            model (nn.Module): A float model, e.g. an mmdet detector.
            concrete_args: Ignored; kept for mmrazor's interface, where it
                selects the forward mode to trace.

        Returns:
            nn.Module: ``model`` with :class:`QuantConv2d` layers.

        Raises:
            RuntimeError: If ``model`` already contains ``QuantConv2d``
                layers.
            ValueError: If an override pattern matches no convolution.
        """
        if any(isinstance(m, QuantConv2d) for m in model.modules()):
            raise RuntimeError(
                'TraceFreeQuantizer.prepare: the model already contains '
                'QuantConv2d layers; prepare each float model only once.'
            )
        convs, skipped = self._find_convs(model)
        settings = self._resolve_settings(model, convs)
        replacements = {}
        for name, conv in convs:
            setting = settings[name]
            if setting.quantize:
                replacements[id(conv)] = self._quantize_conv(conv, setting)
        self._swap_modules(model, replacements)
        if self.fold_bn:
            self._fold_batch_norms(model)
        for module in model.modules():
            if isinstance(module, ConvModule):
                # mmcv's efficient conv-bn eval path would read the float
                # weight directly and bypass the fake quantizers.
                module.efficient_conv_bn_eval_forward = None
        self._log_table(convs, settings, skipped)
        return model

    def post_process_for_deploy(self, model: nn.Module, **kwargs) -> None:
        """Nothing to convert: the prepared model is already eager."""

    # -- steps of prepare ------------------------------------------------

    @staticmethod
    def _find_convs(model: nn.Module) -> tuple[list, list]:
        convs, skipped = [], []
        for name, module in model.named_modules():
            if type(module) in SUPPORTED_CONV_TYPES:
                convs.append((name, module))
            elif isinstance(module, nn.Conv2d):
                skipped.append((name, type(module).__name__))
        return convs, skipped

    def _resolve_settings(self, model: nn.Module, convs: list) -> dict:
        modules = dict(model.named_modules())
        settings = {name: self.default_setting for name, _ in convs}
        if convs and self.first_conv:
            name = convs[0][0]
            settings[name] = settings[name].updated(
                'first_conv', self.first_conv
            )
        for name, _ in convs:
            if self.prediction_convs and self._is_prediction(name, modules):
                settings[name] = settings[name].updated(
                    'prediction_convs', self.prediction_convs
                )
        for owner, pattern, changes in self.overrides:
            matched = [n for n, _ in convs if pattern.fullmatch(n)]
            if not matched:
                examples = [n for n, _ in convs[:3]]
                raise ValueError(
                    f'TraceFreeQuantizer: {owner}.pattern='
                    f'{pattern.pattern!r} matches no convolution; '
                    f'convolution names look like {examples}.'
                )
            for name in matched:
                settings[name] = settings[name].updated(owner, changes)
        return settings

    def _is_prediction(self, name: str, modules: dict) -> bool:
        if not any(name.startswith(p + '.') for p in self.head_prefixes):
            return False
        parent = modules[name.rsplit('.', 1)[0]]
        return not isinstance(parent, ConvModule)

    def _build_fake_quant(
        self, cfg: dict, bit: int, num_channels: int | None
    ) -> nn.Module:
        fake_quant_cls = check_fake_quant_cfg('fake_quant', cfg)
        cfg = copy.deepcopy(cfg)
        cfg['type'] = fake_quant_cls
        cfg['bit'] = bit
        cfg.setdefault('use_compile', self.use_compile)
        if cfg.get('per_channel', False):
            cfg.setdefault('num_channels', num_channels)
        return MODELS.build(cfg)

    def _quantize_conv(
        self, conv: nn.Conv2d, setting: ConvQuantSetting
    ) -> QuantConv2d:
        weight_fake_quant = self._build_fake_quant(
            setting.w_fake_quant, setting.w_bits, conv.out_channels
        )
        input_fake_quant = None
        if setting.quantize_input:
            input_fake_quant = self._build_fake_quant(
                setting.a_fake_quant, setting.a_bits, conv.in_channels
            )
        return QuantConv2d.from_float(
            conv, weight_fake_quant, input_fake_quant
        )

    @staticmethod
    def _swap_modules(model: nn.Module, replacements: dict) -> None:
        # A convolution shared by several parents (RTMDet shares head
        # convolutions across levels) is replaced everywhere by one module.
        for _, parent in model.named_modules(remove_duplicate=False):
            for child_name, child in list(parent.named_children()):
                replacement = replacements.get(id(child))
                if replacement is not None:
                    setattr(parent, child_name, replacement)

    @staticmethod
    def _fold_batch_norms(model: nn.Module) -> None:
        for module in model.modules():
            if not isinstance(module, ConvModule):
                continue
            conv, norm = module.conv, getattr(module, 'norm', None)
            order = module.order
            if (
                isinstance(conv, QuantConv2d)
                and isinstance(norm, _BatchNorm)
                and norm.affine
                and norm.track_running_stats
                and order.index('conv') + 1 == order.index('norm')
            ):
                conv.fold_bn(norm)

    def _log_table(self, convs: list, settings: dict, skipped: list):
        rows = []
        for name, _ in convs:
            setting = settings[name]
            rows.append(
                (
                    name,
                    _describe(setting, 'w'),
                    _describe(setting, 'a'),
                    ', '.join(setting.rules) or '-',
                )
            )
        for name, type_name in skipped:
            rows.append((name, 'float', 'float', f'unsupported {type_name}'))
        num_quantized = sum(s.quantize for s in settings.values())
        print_log(
            f'TraceFreeQuantizer quantized {num_quantized} of '
            f'{len(convs) + len(skipped)} convolutions:\n'
            + format_quant_table(rows),
            logger='current',
        )


def _describe(setting: ConvQuantSetting, kind: str) -> str:
    if not setting.quantize or (kind == 'a' and not setting.quantize_input):
        return 'float'
    cfg = setting.w_fake_quant if kind == 'w' else setting.a_fake_quant
    bits = setting.w_bits if kind == 'w' else setting.a_bits
    type_name = cfg['type']
    if not isinstance(type_name, str):
        type_name = type_name.__name__
    return f'{type_name.split(".")[-1]} {bits}b'
