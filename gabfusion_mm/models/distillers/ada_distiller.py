"""Distiller that adds one ADA term per feature pyramid level."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from mmengine.logging import print_log
from mmrazor.models.distillers import ConfigurableDistiller
from mmrazor.registry import MODELS
from torch import Tensor, nn

from ..losses.ada_loss import ADALoss

_LEVEL_REDUCTIONS = ('mean', 'sum')


@MODELS.register_module()
class ADADistiller(ConfigurableDistiller):
    """Record the neck outputs of student and teacher and add ADA per level.

    Implements the distillation side of ADA (Attention Distribution
    Alignment) from "GABFusion: Gradient-Aware Balanced Feature Fusion for
    Quantization-Aware Training of YOLO Detectors" (Wang and Wang, arXiv
    2511.05898): a frozen float teacher's feature maps teach the quantized
    student through :class:`ADALoss`, one term per pyramid level. The terms
    are logged as ``loss_ada_0``, ``loss_ada_1``, ...

    Each level's term is ``loss_weight * D_l / L`` for ``level_reduction=
    'mean'`` (their sum is the level average) or ``loss_weight * D_l`` for
    ``'sum'``.

    A source is the dotted path of a module, recorded through mmrazor's
    ``ModuleOutputs`` recorders. One path (such as ``'neck'``) means that
    module returns a tuple with one tensor per level; a list of paths means
    one module per level. A recorder that recorded nothing during a forward
    raises a RuntimeError, because a module that is not called (for example
    after FX tracing) would otherwise silently switch the loss off.

    For the v2 energy, ``quantizer_sources`` names, per level, the student's
    activation fake quant that quantizes that level's feature map (the input
    quantizer of the first head conv on that level). Its output is Q(x) and
    its ``scale`` attribute, when present, is the step s_c; without it
    sigma_c is used. The distiller checks at every step that the fake
    quant's input is the recorded feature map.

    Examples:
        ADA v1 on the three YOLOX neck outputs (the default sources), and
        v2 with the input quantizers of the first classification convs of
        a student quantized in place by ``TraceFreeQuantizer``:

        >>> distiller = dict(type='ADADistiller', loss_weight=0.1)
        >>> distiller_v2 = dict(
        ...     type='ADADistiller',
        ...     loss_weight=0.1,
        ...     version='v2',
        ...     divergence='js',
        ...     quantizer_sources=[
        ...         f'bbox_head.multi_level_cls_convs.{i}.0.conv'
        ...         '.input_fake_quant' for i in range(3)])

        A student traced by one of mmrazor's quantizers calls SiLU as a
        function, so record the last conv + BN of each level on both sides:
        ``student_sources=['qmodels.tensor.neck.out_convs.0.conv', ...]``
        and ``teacher_sources=['neck.out_convs.0.bn', ...]``.

    Args:
        student_sources (str | Sequence[str]): Student module(s) whose
            outputs are the distilled levels. Defaults to ``'neck'``.
        teacher_sources (str | Sequence[str], optional): The same for the
            teacher. Defaults to None, which uses ``student_sources``.
        quantizer_sources (Sequence[str], optional): Per level, the path of
            the student's activation fake quant applied to that level. Only
            the v2 energy uses it. Defaults to None (no distortion term).
        loss_weight (float): Weight of the ADA loss. Defaults to 1.0.
        level_reduction (str): ``'mean'`` or ``'sum'`` over levels.
            Defaults to ``'mean'``.
        init_cfg (dict, optional): Initialization config. Defaults to None.
        **loss_kwargs: Other :class:`ADALoss` arguments (``version``,
            ``normalization``, ``temperature``, ``divergence``,
            ``kl_direction``, ``lam``, ``gamma``, ``kappa``).
    """

    def __init__(
        self,
        student_sources: str | Sequence[str] = 'neck',
        teacher_sources: str | Sequence[str] | None = None,
        quantizer_sources: Sequence[str] | None = None,
        loss_weight: float = 1.0,
        level_reduction: str = 'mean',
        init_cfg: dict | None = None,
        **loss_kwargs,
    ) -> None:
        if teacher_sources is None:
            teacher_sources = student_sources
        if level_reduction not in _LEVEL_REDUCTIONS:
            raise ValueError(
                f'ADADistiller: level_reduction={level_reduction!r} is '
                f'invalid, expected one of {list(_LEVEL_REDUCTIONS)}.'
            )
        quantizer_sources = list(quantizer_sources or [])
        if quantizer_sources and loss_kwargs.get('version', 'v1') != 'v2':
            raise ValueError(
                'ADADistiller: quantizer_sources is set but the loss version '
                f'is {loss_kwargs.get("version", "v1")!r}; only the v2 '
                "energy has a distortion term. Set version='v2' or drop "
                'quantizer_sources.'
            )

        student_recorders = _feature_recorders(student_sources)
        for level, source in enumerate(quantizer_sources):
            student_recorders[f'quant_in_{level}'] = dict(
                type='ModuleInputs', source=source
            )
            student_recorders[f'quant_out_{level}'] = dict(
                type='ModuleOutputs', source=source
            )
        super().__init__(
            student_recorders=student_recorders,
            teacher_recorders=_feature_recorders(teacher_sources),
            distill_losses=dict(
                loss_ada=dict(
                    type=ADALoss, loss_weight=loss_weight, **loss_kwargs
                )
            ),
            init_cfg=init_cfg,
        )
        self.student_sources = student_sources
        self.teacher_sources = teacher_sources
        self.quantizer_sources = quantizer_sources
        self.level_reduction = level_reduction
        # Plain list, not a ModuleList: the fake quants belong to the
        # student, and registering them here would duplicate their state.
        self._quantizers: list[nn.Module] = []

    def prepare_from_student(self, model: nn.Module) -> None:
        """Attach the student recorders and find the fake quants.

        Args:
            model (nn.Module): The student, after quantization.
        """
        _check_sources(model, self.student_sources, 'student')
        _check_sources(model, self.quantizer_sources, 'student quantizer')
        super().prepare_from_student(model)

        self._quantizers = [
            model.get_submodule(path) for path in self.quantizer_sources
        ]
        for path, quantizer in zip(self.quantizer_sources, self._quantizers):
            if not isinstance(getattr(quantizer, 'scale', None), Tensor):
                print_log(
                    f'ADADistiller: {path} has no tensor attribute `scale`; '
                    'its distortion term is normalized by sigma_c.',
                    logger='current',
                )

    def prepare_from_teacher(self, model: nn.Module) -> None:
        """Attach the teacher recorders.

        Args:
            model (nn.Module): The float teacher.
        """
        _check_sources(model, self.teacher_sources, 'teacher')
        super().prepare_from_teacher(model)

    def compute_distill_losses(self) -> dict[str, Tensor]:
        """Compute one ADA term per level from the last recorded forward.

        Returns:
            dict[str, Tensor]: ``loss_ada_<level>`` scalars.
        """
        s_levels = self._recorded_levels(from_student=True)
        t_levels = self._recorded_levels(from_student=False)
        if len(s_levels) != len(t_levels):
            raise RuntimeError(
                f'ADADistiller: the student has {len(s_levels)} feature '
                f'levels but the teacher has {len(t_levels)}; the sources '
                'must give the same pyramid.'
            )
        if self.quantizer_sources and (
            len(self.quantizer_sources) != len(s_levels)
        ):
            raise RuntimeError(
                'ADADistiller: quantizer_sources has '
                f'{len(self.quantizer_sources)} entries but the student has '
                f'{len(s_levels)} feature levels; give one per level.'
            )

        loss_module = self.distill_losses['loss_ada']
        scale = 1.0 / len(s_levels) if self.level_reduction == 'mean' else 1
        losses = dict()
        for level, (s_feat, t_feat) in enumerate(zip(s_levels, t_levels)):
            quantized, step = self._quantizer_record(level, s_feat)
            loss = loss_module(s_feat, t_feat, quantized, step)
            losses[f'loss_ada_{level}'] = loss * scale
        return losses

    def _recorded_levels(self, from_student: bool) -> list[Tensor]:
        sources = (
            self.student_sources if from_student else self.teacher_sources
        )
        if isinstance(sources, str):
            levels = self._single_record('feats', from_student)
            if isinstance(levels, Tensor):
                levels = [levels]
            return list(levels)
        return [
            self._single_record(f'feat_{level}', from_student)
            for level in range(len(sources))
        ]

    def _single_record(self, name: str, from_student: bool):
        manager = (
            self.student_recorders if from_student else self.teacher_recorders
        )
        recorder = manager.get_recorder(name)
        count = len(recorder.data_buffer)
        if count != 1:
            side = 'student' if from_student else 'teacher'
            raise RuntimeError(
                f'ADADistiller: the {side} recorder on {recorder.source!r} '
                f'recorded {count} outputs in the last forward, expected '
                '1. A module that is never called (for example one replaced '
                'by FX tracing or skipped by the forward mode) records '
                'nothing; record a module that runs once per forward.'
            )
        return recorder.data_buffer[0]

    def _quantizer_record(
        self, level: int, s_feat: Tensor
    ) -> tuple[Tensor | None, Tensor | None]:
        if not self.quantizer_sources:
            return None, None

        quant_input = self._single_record(f'quant_in_{level}', True)[0]
        if quant_input is not s_feat and not (
            quant_input.shape == s_feat.shape
            and torch.equal(quant_input, s_feat)
        ):
            raise RuntimeError(
                'ADADistiller: the fake quant '
                f'{self.quantizer_sources[level]!r} does not quantize '
                f'feature level {level} (its input has shape '
                f'{tuple(quant_input.shape)}, the level '
                f'{tuple(s_feat.shape)}); name the input quantizer of the '
                'first conv that reads this level.'
            )
        quantized = self._single_record(f'quant_out_{level}', True)
        step = getattr(self._quantizers[level], 'scale', None)
        if not isinstance(step, Tensor):
            step = None
        return quantized, step


def _feature_recorders(sources: str | Sequence[str]) -> dict[str, dict]:
    """Build recorder configs for one multi-level module or one per level."""
    if isinstance(sources, str):
        return dict(feats=dict(type='ModuleOutputs', source=sources))
    if not sources:
        raise ValueError(
            'ADADistiller: the list of feature sources is empty; give a '
            "module path such as 'neck' or one path per level."
        )
    return {
        f'feat_{level}': dict(type='ModuleOutputs', source=source)
        for level, source in enumerate(sources)
    }


def _check_sources(
    model: nn.Module, sources: str | Sequence[str], role: str
) -> None:
    """Raise a ValueError that names a source missing from the model."""
    names = {name for name, _ in model.named_modules()}
    for source in [sources] if isinstance(sources, str) else sources:
        if source not in names:
            raise ValueError(
                f'ADADistiller: the {role} has no module {source!r}; use a '
                'dotted path from model.named_modules(), such as '
                "'neck' or 'neck.out_convs.0'."
            )
