"""Tests for QATDistill: a quantized student taught by its float teacher."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.runner import load_checkpoint
from mmrazor.registry import MODELS
from torch.ao.quantization import disable_fake_quant

from tests.conftest import REPO_ROOT, requires_coco128

FLOAT_CONFIG = REPO_ROOT / 'configs/yolox/yolox_tiny_1xb8-100e_coco128.py'
ARM_DIR = REPO_ROOT / 'configs/gabfusion_qat'
SIZE = 128
LEVELS = 3
QUANTIZER = dict(type='TraceFreeQuantizer', w_bits=4, a_bits=4)
CLS_INPUT_QUANT = 'bbox_head.multi_level_cls_convs.{}.0.conv.input_fake_quant'


def narrow_yolox_cfg(widen_factor: float = 0.125) -> Config:
    """YOLOX-tiny at a small width, neck outputs of 256 * widen channels."""
    model = copy.deepcopy(Config.fromfile(FLOAT_CONFIG).model)
    channels = [int(c * widen_factor) for c in (256, 512, 1024)]
    model.backbone.widen_factor = widen_factor
    model.neck.in_channels = channels
    model.neck.out_channels = channels[0]
    model.bbox_head.in_channels = channels[0]
    model.bbox_head.feat_channels = channels[0]
    model.test_cfg.score_thr = 0.0
    model._scope_ = 'mmdet'
    return model


def build(**kwargs):
    with DefaultScope.overwrite_default_scope('mmrazor'):
        return MODELS.build(dict(type='QATDistill', **kwargs))


def build_detector(cfg):
    with DefaultScope.overwrite_default_scope('mmdet'):
        return MODELS.build(cfg)


@pytest.fixture(scope='module')
def float_ckpt(tmp_path_factory):
    """A float checkpoint of the narrow YOLOX, with the head prior bias."""
    torch.manual_seed(0)
    model = build_detector(narrow_yolox_cfg())
    model.bbox_head.init_weights()
    path = tmp_path_factory.mktemp('float') / 'float.pth'
    torch.save(dict(state_dict=model.state_dict(), meta={}), path)
    return str(path)


def batch(num: int = 2):
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData

    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(num, 3, SIZE, SIZE, generator=gen)
    samples = []
    for _ in range(num):
        sample = DetDataSample(
            metainfo=dict(
                img_shape=(SIZE, SIZE),
                ori_shape=(SIZE, SIZE),
                pad_shape=(SIZE, SIZE),
                batch_input_shape=(SIZE, SIZE),
                scale_factor=(1.0, 1.0),
            )
        )
        sample.gt_instances = InstanceData(
            bboxes=torch.tensor([[8.0, 10.0, 70.0, 90.0]]),
            labels=torch.tensor([2]),
        )
        samples.append(sample)
    return inputs, samples


def ada_distiller(**kwargs) -> dict:
    return dict(type='ADADistiller', loss_weight=0.01, **kwargs)


def test_loss_prefixes_and_terms(float_ckpt):
    model = build(
        architecture=narrow_yolox_cfg(),
        float_checkpoint=float_ckpt,
        quantizer=QUANTIZER,
        distiller=ada_distiller(),
    )
    model.train()
    losses = model(*batch(), mode='loss')

    student = {k for k in losses if k.startswith('student.')}
    distill = {k for k in losses if k.startswith('distill.')}
    assert student == {
        'student.loss_cls',
        'student.loss_bbox',
        'student.loss_obj',
    }
    assert distill == {f'distill.loss_ada_{i}' for i in range(LEVELS)}
    assert student | distill == set(losses)
    for value in losses.values():
        assert torch.isfinite(value)


def test_teacher_frozen_and_eval(float_ckpt):
    model = build(
        architecture=narrow_yolox_cfg(),
        float_checkpoint=float_ckpt,
        quantizer=QUANTIZER,
        distiller=ada_distiller(),
    )
    model.train()
    assert model.student.training
    assert not any(m.training for m in model.teacher.modules())
    assert not any(p.requires_grad for p in model.teacher.parameters())

    before = copy.deepcopy(model.teacher.state_dict())
    losses = model(*batch(), mode='loss')
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    student_grads = [p.grad for p in model.student.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in student_grads)
    for key, value in model.teacher.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_distill_gradient_reaches_student_only(float_ckpt):
    model = build(
        architecture=narrow_yolox_cfg(),
        float_checkpoint=float_ckpt,
        quantizer=QUANTIZER,
        distiller=ada_distiller(),
    )
    model.train()
    losses = model(*batch(), mode='loss')
    distill = sum(v for k, v in losses.items() if k.startswith('distill.'))
    distill.backward()

    neck_grads = [p.grad for p in model.student.neck.parameters()]
    assert sum(g.abs().sum() for g in neck_grads if g is not None) > 0
    # The head comes after the distilled neck outputs.
    head_grads = [p.grad for p in model.student.bbox_head.parameters()]
    assert all(g is None for g in head_grads)
    assert all(p.grad is None for p in model.teacher.parameters())


def test_weights_come_from_checkpoint(float_ckpt):
    model = build(
        architecture=narrow_yolox_cfg(),
        float_checkpoint=float_ckpt,
        quantizer=QUANTIZER,
        distiller=ada_distiller(),
    )
    float_state = torch.load(float_ckpt)['state_dict']
    for key, value in model.teacher.state_dict().items():
        assert torch.equal(value, float_state[key]), key
    plain, _ = model.student_state_dict()
    for key, value in plain.items():
        assert torch.equal(value, float_state[key]), key


def test_fake_quant_off_equals_float(float_ckpt):
    model = build(
        architecture=narrow_yolox_cfg(),
        float_checkpoint=float_ckpt,
        quantizer=QUANTIZER,
    )
    model.eval()
    model.apply(disable_fake_quant)
    reference = build_detector(narrow_yolox_cfg())
    load_checkpoint(reference, float_ckpt, strict=True, logger='silent')
    reference.eval()

    inputs, samples = batch()
    with torch.no_grad():
        outputs = model(inputs, samples, mode='tensor')
        expected = reference(inputs, samples, mode='tensor')
    for out_level, ref_level in zip(outputs, expected):
        for out, ref in zip(out_level, ref_level):
            assert torch.equal(out, ref)


def test_predict_runs_student(float_ckpt):
    model = build(
        architecture=narrow_yolox_cfg(),
        float_checkpoint=float_ckpt,
        quantizer=QUANTIZER,
        distiller=ada_distiller(),
    )
    model.train()
    model(*batch(), mode='loss')  # initializes the fake quants from data
    model.eval()
    inputs, samples = batch()
    with torch.no_grad():
        predicted = model(inputs, copy.deepcopy(samples), mode='predict')
        student = model.student(inputs, copy.deepcopy(samples), 'predict')
        teacher = model.teacher(inputs, copy.deepcopy(samples), 'predict')
    for ours, theirs in zip(predicted, student):
        assert torch.equal(
            ours.pred_instances.scores, theirs.pred_instances.scores
        )
    assert not all(
        torch.equal(ours.pred_instances.scores, t.pred_instances.scores)
        for ours, t in zip(predicted, teacher)
    )


def test_without_distiller_is_plain_qat(float_ckpt):
    model = build(
        architecture=narrow_yolox_cfg(),
        float_checkpoint=float_ckpt,
        quantizer=QUANTIZER,
    )
    assert model.teacher is None
    assert model.distiller is None
    model.train()
    losses = model(*batch(), mode='loss')
    assert all(key.startswith('student.') for key in losses)


def test_missing_checkpoint_raises():
    with pytest.raises(FileNotFoundError, match='no_such.pth'):
        build(
            architecture=narrow_yolox_cfg(),
            float_checkpoint='/nonexistent/no_such.pth',
        )


def _edited_checkpoint(float_ckpt, tmp_path, edit) -> str:
    state = dict(torch.load(float_ckpt)['state_dict'])
    edit(state)
    path = tmp_path / 'edited.pth'
    torch.save(dict(state_dict=state), path)
    return str(path)


@pytest.mark.parametrize(
    'edit, message',
    [
        (lambda s: s.pop('neck.out_convs.0.conv.weight'), 'missing keys'),
        (lambda s: s.update(extra=torch.zeros(1)), 'unexpected keys'),
        (
            lambda s: s.update({'neck.out_convs.0.bn.bias': torch.zeros(3)}),
            'shape mismatches',
        ),
    ],
)
def test_mismatched_checkpoint_raises(float_ckpt, tmp_path, edit, message):
    path = _edited_checkpoint(float_ckpt, tmp_path, edit)
    with pytest.raises(RuntimeError, match=message):
        build(
            architecture=narrow_yolox_cfg(),
            float_checkpoint=path,
            distiller=ada_distiller(),
        )


def test_other_width_checkpoint_raises(tmp_path):
    wide = build_detector(narrow_yolox_cfg(widen_factor=0.25))
    path = tmp_path / 'wide.pth'
    torch.save(dict(state_dict=wide.state_dict()), path)
    with pytest.raises(RuntimeError, match='shape mismatches'):
        build(architecture=narrow_yolox_cfg(), float_checkpoint=str(path))


def test_gabfusion_student_keeps_new_parts(float_ckpt):
    student = narrow_yolox_cfg()
    student.neck.type = 'GABYOLOXPAFPN'
    model = build(
        architecture=student,
        teacher=narrow_yolox_cfg(),
        float_checkpoint=float_ckpt,
        quantizer=QUANTIZER,
        distiller=ada_distiller(),
    )
    fusions = [
        m for n, m in model.student.named_modules() if n.endswith('fusions')
    ]
    assert fusions
    assert type(model.teacher.neck).__name__ == 'YOLOXPAFPN'
    plain, _ = model.student_state_dict()
    float_state = torch.load(float_ckpt)['state_dict']
    new_keys = set(plain) - set(float_state)
    assert new_keys
    assert all('fusions' in key for key in new_keys)


def test_gabfusion_teacher_mismatch_raises(float_ckpt):
    student = narrow_yolox_cfg()
    student.neck.type = 'GABYOLOXPAFPN'
    # Without a teacher config the teacher copies the GABFusion student,
    # and the float checkpoint has no fusion keys.
    with pytest.raises(RuntimeError, match='teacher'):
        build(
            architecture=student,
            float_checkpoint=float_ckpt,
            distiller=ada_distiller(),
        )


def test_invalid_arguments_raise(float_ckpt):
    with pytest.raises(ValueError, match='teacher_forward'):
        build(
            architecture=narrow_yolox_cfg(),
            float_checkpoint=float_ckpt,
            teacher_forward='predict',
        )
    with pytest.raises(TypeError, match='teacher is required'):
        build(
            architecture=build_detector(narrow_yolox_cfg()),
            float_checkpoint=float_ckpt,
        )
    with pytest.raises(TypeError, match='no prepare'):
        build(
            architecture=narrow_yolox_cfg(),
            float_checkpoint=float_ckpt,
            quantizer=object(),
        )


def test_student_state_dict_loads_into_plain(float_ckpt):
    model = build(
        architecture=narrow_yolox_cfg(),
        float_checkpoint=float_ckpt,
        quantizer=QUANTIZER,
        distiller=ada_distiller(),
    )
    model.train()
    model(*batch(), mode='loss')
    plain, other = model.student_state_dict()

    detector = build_detector(narrow_yolox_cfg())
    result = detector.load_state_dict(plain, strict=True)
    assert not result.missing_keys
    assert not result.unexpected_keys
    assert other
    assert all('fake_quant' in key for key in other)


def test_v2_reads_quantizer_step(float_ckpt):
    sources = [CLS_INPUT_QUANT.format(i) for i in range(LEVELS)]
    model = build(
        architecture=narrow_yolox_cfg(),
        float_checkpoint=float_ckpt,
        quantizer=QUANTIZER,
        distiller=ada_distiller(version='v2', quantizer_sources=sources),
    )
    model.train()
    losses = model(*batch(), mode='loss')
    for level in range(LEVELS):
        assert torch.isfinite(losses[f'distill.loss_ada_{level}'])

    # The distortion term changes the loss: compare with no quantizer.
    plain_v2 = build(
        architecture=narrow_yolox_cfg(),
        float_checkpoint=float_ckpt,
        quantizer=QUANTIZER,
        distiller=ada_distiller(version='v2'),
    )
    plain_v2.load_state_dict(model.state_dict())
    plain_v2.train()
    other = plain_v2(*batch(), mode='loss')
    assert not torch.equal(
        other['distill.loss_ada_0'], losses['distill.loss_ada_0']
    )


def test_v2_wrong_quantizer_raises(float_ckpt):
    # Level 1's quantizer does not read level 0's feature map.
    sources = [CLS_INPUT_QUANT.format(i) for i in (1, 1, 2)]
    model = build(
        architecture=narrow_yolox_cfg(),
        float_checkpoint=float_ckpt,
        quantizer=QUANTIZER,
        distiller=ada_distiller(version='v2', quantizer_sources=sources),
    )
    model.train()
    with pytest.raises(RuntimeError, match='does not quantize'):
        model(*batch(), mode='loss')


def test_mmrazor_quantizer_student(float_ckpt):
    # mmrazor's FX quantizers go through DetectorQAT (tensor mode traced).
    quantizer = dict(
        type='TensorRTQuantizer',
        global_qconfig=dict(
            w_observer=dict(type='mmrazor.PerChannelMinMaxObserver'),
            a_observer=dict(type='mmrazor.MovingAverageMinMaxObserver'),
            w_fake_quant=dict(type='mmrazor.FakeQuantize'),
            a_fake_quant=dict(type='mmrazor.FakeQuantize'),
            w_qscheme=dict(qdtype='qint8', bit=8, is_symmetry=True),
            a_qscheme=dict(qdtype='quint8', bit=8, is_symmetry=True),
        ),
    )
    # The traced graph calls SiLU as a function, so both sides record the
    # output of the last conv + BN of each level, before the activation.
    sources = [
        f'qmodels.tensor.neck.out_convs.{i}.conv' for i in range(LEVELS)
    ]
    model = build(
        architecture=narrow_yolox_cfg(),
        float_checkpoint=float_ckpt,
        quantizer=quantizer,
        distiller=ada_distiller(
            student_sources=sources,
            teacher_sources=[f'neck.out_convs.{i}.bn' for i in range(LEVELS)],
        ),
    )
    assert type(model.student).__name__ == 'DetectorQAT'
    model.train()
    losses = model(*batch(), mode='loss')
    assert {f'distill.loss_ada_{i}' for i in range(LEVELS)} <= set(losses)

    plain, other = model.student_state_dict()
    detector = build_detector(narrow_yolox_cfg())
    detector.load_state_dict(plain, strict=True)
    assert other


def _train_options(float_ckpt: str, work_dir) -> list[str]:
    return [
        '--work-dir',
        str(work_dir),
        '--cfg-options',
        f'model.float_checkpoint={float_ckpt}',
        'train_cfg.max_epochs=1',
        'train_cfg.val_interval=1',
        'train_dataloader.batch_size=2',
        'train_dataloader.num_workers=0',
        'train_dataloader.persistent_workers=False',
        'train_dataloader.dataset.indices=4',
        'val_dataloader.batch_size=2',
        'val_dataloader.num_workers=0',
        'val_dataloader.persistent_workers=False',
        'val_dataloader.dataset.indices=4',
        'model.architecture.test_cfg.score_thr=0.0',
        'model.teacher.test_cfg.score_thr=0.0',
        'default_hooks.logger.interval=1',
    ]


@requires_coco128()
def test_train_two_iterations(run_tool, tmp_path):
    """Train the GABFusion + ADA arm for two iterations with tools/train.py."""
    config = ARM_DIR / 'yolox_tiny_w4a4-lsq_gabfusion-ada_coco128.py'
    cfg = Config.fromfile(config)
    float_model = build_detector(cfg.model.teacher)
    float_model.bbox_head.init_weights()
    float_ckpt = tmp_path / 'float.pth'
    torch.save(dict(state_dict=float_model.state_dict()), float_ckpt)

    work_dir = tmp_path / 'work'
    proc = run_tool(
        'tools/train.py',
        str(config),
        *_train_options(str(float_ckpt), work_dir),
    )
    log = proc.stdout + proc.stderr

    for key in (
        'student.loss_cls',
        'distill.loss_ada_0',
        'distill.loss_ada_2',
    ):
        assert re.search(rf'{re.escape(key)}: [0-9.]+', log), key
    assert re.search(r'teacher/coco/bbox_mAP: ', log)
    assert re.search(r'Epoch\(val\).*coco/bbox_mAP: ', log)
    student_ckpt = work_dir / 'student_final.pth'
    assert student_ckpt.is_file()

    # The student-only checkpoint loads into the plain student config.
    detector = build_detector(cfg.model.architecture)
    checkpoint = torch.load(student_ckpt)
    result = detector.load_state_dict(checkpoint['state_dict'], strict=True)
    assert not result.missing_keys
    assert not result.unexpected_keys
    assert checkpoint['quantizer_state_dict']

    # The same student comes out of the last full checkpoint (EMA weights).
    extracted = tmp_path / 'extracted.pth'
    run_tool(
        'tools/deploy/extract_student.py',
        str(config),
        str(work_dir / 'epoch_1.pth'),
        str(extracted),
    )
    from_tool = torch.load(extracted)
    for name in ('state_dict', 'quantizer_state_dict'):
        assert from_tool[name].keys() == checkpoint[name].keys()
        for key, value in checkpoint[name].items():
            assert torch.equal(from_tool[name][key], value), key
