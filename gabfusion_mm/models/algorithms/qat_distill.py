"""Quantization-aware training of a detector taught by its float teacher."""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Mapping
from contextlib import nullcontext

import torch
from mmengine.model import BaseModel
from mmengine.structures import BaseDataElement
from mmrazor.models.algorithms import BaseAlgorithm
from mmrazor.models.utils import add_prefix
from mmrazor.registry import MODELS
from torch import Tensor, nn

from .qat_checkpoint import (
    load_float_state_dict,
    load_student_float,
    load_teacher_strict,
    split_student_state_dict,
)

_TEACHER_FORWARDS = ('extract_feat', 'tensor', 'loss')


@MODELS.register_module()
class QATDistill(BaseAlgorithm):
    """Quantize a detector and optionally distill it from its float teacher.

    This is the training set-up of "GABFusion: Gradient-Aware Balanced
    Feature Fusion for Quantization-Aware Training of YOLO Detectors"
    (Wang and Wang, arXiv 2511.05898): QAT of a detector that starts from
    its float checkpoint, with the same float model as a frozen teacher for
    the ADA feature distillation. mmrazor 1.0 has distillation and
    quantization as separate algorithms; this one composes them.

    Build order:

    1. The student (``architecture``) and the float teacher (``teacher``,
       by default the same config) are built as plain detectors.
    2. ``float_checkpoint`` is loaded into the teacher strictly: a missing
       file, a missing or unexpected key or a shape mismatch raises.
    3. The same weights are loaded into the student. Keys the float model
       lacks (new parts of the student, such as GABFusion fusion weights)
       keep their initial values; any other mismatch raises.
    4. The quantizer quantizes the student. A quantizer with
       ``traces_model = False`` (``TraceFreeQuantizer``) is applied in
       place, so the student keeps its module paths (``neck``,
       ``bbox_head``...). Any other quantizer (mmrazor's FX quantizers) is
       given to ``DetectorQAT``, which traces the tensor mode only and
       becomes the student. Its traced modules are under
       ``qmodels.tensor``, so the distiller's student sources must point
       there.
    5. The distiller's recorders are attached to the quantized student and
       to the teacher.

    Training returns the student's losses prefixed ``student.`` and the
    distiller's prefixed ``distill.``; validation and testing run the
    student only. The teacher stays in eval mode, requires no gradient and
    runs under ``torch.no_grad``. Without a distiller no teacher is kept
    and the algorithm is plain QAT (the checkpoint is still checked against
    the teacher config).

    Args:
        architecture (dict | BaseModel): Config of the float student
            detector (``_scope_='mmdet'`` or ``mmdet.`` types).
        float_checkpoint (str): Float weights of the teacher and the
            student's starting point.
        quantizer (dict | object, optional): Quantizer config (built from
            mmrazor's ``MODELS``) or object with a ``prepare(model)``
            method. None trains the float student. Defaults to None.
        distiller (dict, optional): Distiller config such as
            ``dict(type='ADADistiller', loss_weight=0.01)``. Defaults to None.
        teacher (dict, optional): Config of the float teacher. Defaults to
            None, which uses ``architecture``; set it when the student
            architecture differs from the float checkpoint's.
        teacher_forward (str): How the teacher runs: ``'extract_feat'``
            (backbone and neck, enough for neck distillation),
            ``'tensor'`` or ``'loss'``. Defaults to ``'extract_feat'``.
        data_preprocessor (dict, optional): Defaults to the student's.
        init_cfg (dict, optional): Initialization config. Defaults to None.
    """

    def __init__(
        self,
        architecture: dict | BaseModel,
        float_checkpoint: str,
        quantizer: dict | object | None = None,
        distiller: dict | None = None,
        teacher: dict | None = None,
        teacher_forward: str = 'extract_feat',
        data_preprocessor: dict | nn.Module | None = None,
        init_cfg: dict | None = None,
    ) -> None:
        if teacher_forward not in _TEACHER_FORWARDS:
            raise ValueError(
                f'QATDistill: teacher_forward={teacher_forward!r} is '
                f'invalid, expected one of {list(_TEACHER_FORWARDS)}.'
            )
        if teacher is None:
            if not isinstance(architecture, Mapping):
                raise TypeError(
                    'QATDistill: teacher is required when architecture is a '
                    'built model; pass the float teacher config.'
                )
            teacher = copy.deepcopy(architecture)
        super().__init__(architecture, data_preprocessor, init_cfg)

        float_state = load_float_state_dict(float_checkpoint)
        teacher_model = _build_teacher(teacher)
        load_teacher_strict(teacher_model, float_state, float_checkpoint)
        load_student_float(self.architecture, float_state, float_checkpoint)
        # Keys of the unquantized student, which a student-only checkpoint
        # must reproduce to load into the plain detector config.
        self.plain_student_keys = tuple(self.architecture.state_dict())
        self.plain_prefix = ''

        self.quantizer = _build_quantizer(quantizer)
        if self.quantizer is not None and _quantizes_in_place(self.quantizer):
            self.architecture = _prepare(self.quantizer, self.architecture)
        elif self.quantizer is not None:
            self.architecture = _build_traced_student(
                self.architecture, self.quantizer, float_checkpoint
            )
            self.plain_prefix = 'architecture.'
        # Runner.train calls init_weights(); loaded weights must survive it.
        self.architecture._is_init = True

        self.teacher_forward = teacher_forward
        self.teacher = None
        self.distiller = None
        if distiller is not None:
            self.teacher = teacher_model
            self.distiller = MODELS.build(distiller)
            self.distiller.prepare_from_student(self.architecture)
            self.distiller.prepare_from_teacher(self.teacher)

    @property
    def student(self) -> nn.Module:
        """The quantized student, an alias of ``architecture``."""
        return self.architecture

    def loss(
        self,
        inputs: Tensor,
        data_samples: list[BaseDataElement] | None = None,
    ) -> dict[str, Tensor]:
        """Compute the student's losses and, with a distiller, its terms.

        Args:
            inputs (Tensor): Preprocessed images of shape (N, 3, H, W).
            data_samples (list[BaseDataElement], optional): Annotations.

        Returns:
            dict[str, Tensor]: ``student.*`` and ``distill.*`` losses.
        """
        if self.distiller is None:
            student_losses = self.architecture(inputs, data_samples, 'loss')
            return add_prefix(student_losses, 'student')

        deliveries = getattr(self.distiller, 'deliveries', None)
        if deliveries is not None:
            self.distiller.set_deliveries_override(False)
        with self.distiller.teacher_recorders, _optional(deliveries):
            with torch.no_grad():
                self._run_teacher(inputs, data_samples)

        if deliveries is not None:
            self.distiller.set_deliveries_override(True)
        with self.distiller.student_recorders, _optional(deliveries):
            student_losses = self.architecture(inputs, data_samples, 'loss')

        losses = add_prefix(student_losses, 'student')
        distill_losses = self.distiller.compute_distill_losses()
        losses.update(add_prefix(distill_losses, 'distill'))
        return losses

    def _run_teacher(
        self, inputs: Tensor, data_samples: list[BaseDataElement] | None
    ) -> None:
        if self.teacher_forward == 'extract_feat':
            self.teacher.extract_feat(inputs)
        else:
            self.teacher(inputs, data_samples, self.teacher_forward)

    def train(self, mode: bool = True) -> QATDistill:
        """Set the train mode of the student; the teacher stays in eval."""
        super().train(mode)
        if self.distiller is not None:
            self.teacher.eval()
        return self

    def student_state_dict(self) -> tuple[OrderedDict, OrderedDict]:
        """Split the student's state into plain-detector and other entries.

        Returns:
            tuple[OrderedDict, OrderedDict]: The entries of the plain
            (unquantized) student detector, which load into its mmdet config
            without missing or unexpected keys, and the remaining entries
            (quantizer state such as fake-quant steps).
        """
        return split_student_state_dict(
            self.architecture.state_dict(),
            self.plain_student_keys,
            self.plain_prefix,
        )


def _build_teacher(cfg: dict | BaseModel) -> nn.Module:
    teacher = MODELS.build(cfg) if isinstance(cfg, Mapping) else cfg
    if not isinstance(teacher, BaseModel):
        raise TypeError(
            'QATDistill: teacher must be a detector config or BaseModel, got '
            f'{type(teacher).__name__}.'
        )
    teacher.requires_grad_(False)
    teacher.eval()
    teacher._is_init = True
    return teacher


def _build_quantizer(cfg: dict | object | None) -> object | None:
    if cfg is None:
        return None
    quantizer = MODELS.build(cfg) if isinstance(cfg, Mapping) else cfg
    if not callable(getattr(quantizer, 'prepare', None)):
        raise TypeError(
            f'QATDistill: the quantizer {type(quantizer).__name__} has no '
            'prepare(model) method; use a quantizer from '
            'gabfusion_mm.models.quantizers or mmrazor.'
        )
    return quantizer


def _quantizes_in_place(quantizer: object) -> bool:
    # TraceFreeQuantizer sets traces_model = False; mmrazor's quantizers
    # trace and have no such attribute.
    return not getattr(quantizer, 'traces_model', True)


def _build_traced_student(
    model: BaseModel, quantizer: nn.Module, float_checkpoint: str
) -> BaseModel:
    """Wrap the student in DetectorQAT for a quantizer that traces.

    mmrazor's quantizers trace the whole model, which fails in mmdet's dense
    heads for the loss and predict modes. DetectorQAT traces only the
    tensor mode and runs the head's loss and prediction eagerly.
    """
    return MODELS.build(
        dict(
            type='DetectorQAT',
            architecture=model,
            quantizer=quantizer,
            float_checkpoint=float_checkpoint,
        )
    )


def _prepare(quantizer: object, model: BaseModel) -> BaseModel:
    prepared = quantizer.prepare(model)
    if not isinstance(prepared, BaseModel):
        raise TypeError(
            f'QATDistill: {type(quantizer).__name__}.prepare() returned a '
            f'{type(prepared).__name__}, not a detector with loss and '
            'predict modes. A quantizer with traces_model = False must '
            'quantize the model in place and return it; a quantizer that '
            'traces must not set traces_model = False.'
        )
    return prepared


def _optional(context: object | None) -> object:
    return nullcontext() if context is None else context
