"""Tests for the ADA distiller on a narrow YOLOX-tiny."""

from __future__ import annotations

import copy

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmrazor.registry import MODELS

from gabfusion_mm.models.distillers import ADADistiller
from gabfusion_mm.models.losses import ADALoss
from tests.conftest import REPO_ROOT

FLOAT_CONFIG = REPO_ROOT / 'configs/yolox/yolox_tiny_1xb8-100e_coco128.py'
NUM_LEVELS = 3


def narrow_yolox_cfg() -> Config:
    """YOLOX-tiny at widen_factor 0.125 (neck outputs with 32 channels)."""
    model = copy.deepcopy(Config.fromfile(FLOAT_CONFIG).model)
    model.backbone.widen_factor = 0.125
    model.neck.in_channels = [32, 64, 128]
    model.neck.out_channels = 32
    model.bbox_head.in_channels = 32
    model.bbox_head.feat_channels = 32
    model._scope_ = 'mmdet'
    return model


@pytest.fixture(scope='module')
def detectors():
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmdet'):
        student = MODELS.build(narrow_yolox_cfg())
        teacher = MODELS.build(narrow_yolox_cfg())
    teacher.eval()
    return student, teacher


def _run(distiller, student, teacher, inputs=None):
    if inputs is None:
        inputs = torch.randn(2, 3, 128, 128, generator=_gen())
    with distiller.teacher_recorders, torch.no_grad():
        teacher.extract_feat(inputs)
    with distiller.student_recorders:
        student_feats = student.extract_feat(inputs)
    with torch.no_grad():
        teacher_feats = teacher.extract_feat(inputs)
    return distiller.compute_distill_losses(), student_feats, teacher_feats


def _gen():
    return torch.Generator().manual_seed(1)


def _build(**kwargs) -> ADADistiller:
    # The scope is explicit: earlier tests may set 'mmdet' as the default.
    return MODELS.build(dict(type='ADADistiller', _scope_='mmrazor', **kwargs))


@pytest.mark.parametrize('level_reduction', ['mean', 'sum'])
def test_one_term_per_level(detectors, level_reduction):
    student, teacher = detectors
    distiller = _build(
        loss_weight=0.5,
        level_reduction=level_reduction,
        divergence='js',
        normalization='sum',
    )
    distiller.prepare_from_student(student)
    distiller.prepare_from_teacher(teacher)
    losses, s_feats, t_feats = _run(distiller, student, teacher)

    assert sorted(losses) == [f'loss_ada_{i}' for i in range(NUM_LEVELS)]
    reference = ADALoss(loss_weight=0.5, divergence='js', normalization='sum')
    scale = 1 / NUM_LEVELS if level_reduction == 'mean' else 1.0
    for level in range(NUM_LEVELS):
        expected = scale * reference(s_feats[level], t_feats[level])
        torch.testing.assert_close(losses[f'loss_ada_{level}'], expected)
        assert losses[f'loss_ada_{level}'].item() > 0


def test_per_level_sources_match_neck(detectors):
    student, teacher = detectors
    whole = _build(loss_weight=1.0)
    per_level = _build(
        loss_weight=1.0,
        student_sources=[f'neck.out_convs.{i}' for i in range(NUM_LEVELS)],
    )
    for distiller in (whole, per_level):
        distiller.prepare_from_student(student)
        distiller.prepare_from_teacher(teacher)
    whole_losses = _run(whole, student, teacher)[0]
    per_level_losses = _run(per_level, student, teacher)[0]
    for name, value in whole_losses.items():
        torch.testing.assert_close(per_level_losses[name], value)


def test_gradient_reaches_student_only(detectors):
    student, teacher = detectors
    distiller = _build()
    distiller.prepare_from_student(student)
    distiller.prepare_from_teacher(teacher)
    student.zero_grad()
    teacher.zero_grad()
    losses = _run(distiller, student, teacher)[0]
    sum(losses.values()).backward()

    neck_grads = [p.grad for p in student.neck.parameters()]
    assert all(grad is not None for grad in neck_grads)
    assert sum(grad.abs().sum() for grad in neck_grads) > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_silent_recorder_raises(detectors):
    student, teacher = detectors
    # The head never runs in extract_feat, so its recorder records nothing.
    distiller = _build(student_sources='bbox_head', teacher_sources='neck')
    distiller.prepare_from_student(student)
    distiller.prepare_from_teacher(teacher)
    with pytest.raises(RuntimeError, match="'bbox_head' recorded 0"):
        _run(distiller, student, teacher)


def test_missing_source_raises(detectors):
    student, _ = detectors
    distiller = _build(student_sources='neck.no_such_module')
    with pytest.raises(ValueError, match='no module'):
        distiller.prepare_from_student(student)


def test_level_count_mismatch_raises(detectors):
    student, teacher = detectors
    distiller = _build(
        student_sources='neck', teacher_sources=['neck.out_convs.0']
    )
    distiller.prepare_from_student(student)
    distiller.prepare_from_teacher(teacher)
    with pytest.raises(RuntimeError, match='3 feature levels'):
        _run(distiller, student, teacher)


def test_invalid_config_raises():
    with pytest.raises(ValueError, match='level_reduction'):
        _build(level_reduction='max')
    with pytest.raises(ValueError, match="version='v2'"):
        _build(quantizer_sources=['bbox_head.x'])
    with pytest.raises(ValueError, match='empty'):
        _build(student_sources=[])
    with pytest.raises(ValueError, match='normalization'):
        _build(normalization='l2')


def test_single_teacher_distill_accepts_it(tmp_path):
    # mmrazor's own distillation algorithm drives the distiller unchanged.
    with DefaultScope.overwrite_default_scope('mmrazor'):
        algorithm = MODELS.build(
            dict(
                type='SingleTeacherDistill',
                architecture=narrow_yolox_cfg(),
                teacher=narrow_yolox_cfg(),
                distiller=dict(type='ADADistiller', loss_weight=0.01),
            )
        )
    inputs = torch.randn(2, 3, 128, 128, generator=_gen())
    samples = _data_samples(2, 128)
    losses = algorithm(inputs, samples, mode='loss')
    for level in range(NUM_LEVELS):
        assert torch.isfinite(losses[f'distill.loss_ada_{level}'])
    assert 'student.loss_cls' in losses


def _data_samples(num: int, size: int) -> list:
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    samples = []
    for _ in range(num):
        sample = DetDataSample(
            metainfo=dict(
                img_shape=(size, size),
                ori_shape=(size, size),
                pad_shape=(size, size),
                batch_input_shape=(size, size),
                scale_factor=(1.0, 1.0),
            )
        )
        sample.gt_instances = InstanceData(
            bboxes=torch.tensor([[10.0, 12.0, 60.0, 90.0]]),
            labels=torch.tensor([3]),
        )
        samples.append(sample)
    return samples
