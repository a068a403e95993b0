"""DetectorQAT with the trace-free quantizer and mmrazor's FX quantizers."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from mmdet.registry import MODELS as MMDET_MODELS
from mmdet.structures import DetDataSample
from mmengine.config import Config
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData
from mmrazor.registry import MODELS
from torch.ao.quantization import disable_fake_quant, disable_observer
from torch.utils._pytree import tree_leaves

from gabfusion_mm.models.algorithms import DetectorQAT
from gabfusion_mm.models.quantizers import quantized_convs
from tests.conftest import TINY_RUN_OPTIONS, requires_coco128

FLOAT_CONFIG = 'configs/yolox/yolox_tiny_1xb8-100e_coco128.py'
LSQ_CONFIG = 'configs/qat/yolox_tiny_w4a4-lsq_qat_coco128.py'
TENSORRT_CONFIG = 'configs/qat/yolox_tiny_w8a8-fx-tensorrt_qat_coco128.py'
OPENVINO_CONFIG = 'configs/qat/yolox_tiny_w8a8-fx-openvino_qat_coco128.py'
SIZE = 128


def narrow_yolox_cfg() -> dict:
    """The float YOLOX-tiny config at widen factor 0.125."""
    model = Config.fromfile(FLOAT_CONFIG).model
    model.backbone.widen_factor = 0.125
    model.neck.in_channels = [32, 64, 128]
    model.neck.out_channels = 32
    model.bbox_head.in_channels = 32
    model.bbox_head.feat_channels = 32
    model['_scope_'] = 'mmdet'
    return model


def save_float_checkpoint(path: Path, model_cfg: dict) -> str:
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MMDET_MODELS.build(copy.deepcopy(model_cfg))
    model.init_weights()
    torch.save(dict(state_dict=model.state_dict()), path)
    return str(path)


def quantizer_from(config: str) -> dict:
    quantizer = Config.fromfile(config).model.quantizer.to_dict()
    if 'use_compile' in quantizer:
        # Compiled kernels are tested in test_functional.py; compiling here
        # would only lengthen the tests.
        quantizer['use_compile'] = False
    return quantizer


def build_qat(checkpoint: str | None, config: str = LSQ_CONFIG, **kwargs):
    cfg = dict(
        type='mmrazor.DetectorQAT',
        architecture=narrow_yolox_cfg(),
        quantizer=quantizer_from(config),
        float_checkpoint=checkpoint,
        input_shapes=(1, 3, SIZE, SIZE),
        **kwargs,
    )
    with DefaultScope.overwrite_default_scope('mmrazor'):
        return MODELS.build(cfg)


def make_batch(num_images: int = 2) -> dict:
    torch.manual_seed(1)
    samples = []
    for _ in range(num_images):
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
            bboxes=torch.tensor([[10.0, 20, 60, 90], [50, 60, 110, 120]]),
            labels=torch.tensor([1, 5]),
        )
        samples.append(sample)
    inputs = [torch.randint(0, 255, (3, SIZE, SIZE), dtype=torch.uint8)]
    return dict(inputs=inputs * num_images, data_samples=samples)


def tensor_outputs(model, inputs) -> list:
    return tree_leaves(model(inputs, None, 'tensor'))


@pytest.fixture(scope='module')
def float_checkpoint(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp('float') / 'float.pth'
    return save_float_checkpoint(path, narrow_yolox_cfg())


def test_refuses_to_start_without_float_checkpoint():
    with pytest.raises(ValueError, match='float_checkpoint is not set'):
        build_qat(None)


def test_allow_random_init_initializes_head_bias():
    model = build_qat(None, allow_random_init=True)
    bias = model.architecture.bbox_head.multi_level_conv_cls[0].bias
    # YOLOX's init_weights sets the prior bias -log((1 - 0.01) / 0.01).
    assert torch.allclose(bias, torch.full_like(bias, -4.59512), atol=1e-4)


def test_missing_or_mismatched_checkpoint_raises(tmp_path, float_checkpoint):
    with pytest.raises(FileNotFoundError, match='no_such.pth'):
        build_qat(str(tmp_path / 'no_such.pth'))

    state_dict = torch.load(float_checkpoint)['state_dict']
    state_dict.pop('neck.out_convs.0.conv.weight')
    state_dict['extra.weight'] = torch.zeros(1)
    partial = tmp_path / 'partial.pth'
    torch.save(dict(state_dict=state_dict), partial)
    with pytest.raises(RuntimeError, match='1 missing keys'):
        build_qat(str(partial))

    wide_cfg = narrow_yolox_cfg()
    wide_cfg.neck.out_channels = 48
    wide_cfg.bbox_head.in_channels = 48
    wide = save_float_checkpoint(tmp_path / 'wide.pth', wide_cfg)
    with pytest.raises(RuntimeError, match='does not match the detector'):
        build_qat(wide)


def test_float_weights_survive_init_weights(float_checkpoint):
    model = build_qat(float_checkpoint)
    model.init_weights()  # what the runner calls before training
    state_dict = torch.load(float_checkpoint)['state_dict']
    arch_state = model.architecture.state_dict()
    for key, value in state_dict.items():
        assert torch.equal(arch_state[key], value), key


def test_trace_free_loss_predict_and_deploy(float_checkpoint):
    model = build_qat(float_checkpoint)
    assert model.trace_free
    assert len(list(quantized_convs(model.architecture))) == 83

    model.train()
    data = model.data_preprocessor(make_batch(), True)
    losses = model(**data, mode='loss')
    assert {'loss_cls', 'loss_bbox', 'loss_obj'} <= set(losses)
    sum(losses.values()).backward()
    scale = model.architecture.neck.out_convs[0].conv.input_fake_quant.scale
    assert scale.grad is not None

    model.eval()
    data = model.data_preprocessor(make_batch(), False)
    with torch.no_grad():
        predictions = model(**data, mode='predict')
    assert len(predictions) == 2
    assert 'bboxes' in predictions[0].pred_instances

    deploy = model.get_deploy_model()
    assert deploy is not model.architecture
    assert not deploy.training
    for _, conv in quantized_convs(deploy):
        assert conv.input_fake_quant.observer_enabled.item() == 0


def test_checkpoint_after_qat_reloads_identically(float_checkpoint, tmp_path):
    from mmengine.optim import OptimWrapper

    model = build_qat(float_checkpoint)
    optim_wrapper = OptimWrapper(torch.optim.SGD(model.parameters(), lr=0.01))
    for _ in range(2):
        model.train_step(make_batch(), optim_wrapper)
    path = tmp_path / 'qat.pth'
    torch.save(dict(state_dict=model.state_dict()), path)

    fresh = build_qat(float_checkpoint)
    fresh.load_state_dict(torch.load(path)['state_dict'], strict=True)
    inputs = model.data_preprocessor(make_batch(), False)['inputs']
    model.eval()
    fresh.eval()
    with torch.no_grad():
        expected = tensor_outputs(model, inputs)
        outputs = tensor_outputs(fresh, inputs)
    for out, ref in zip(outputs, expected):
        assert torch.equal(out, ref)

    # A reloaded quantizer keeps its learned step in training mode.
    fresh.train()
    conv = fresh.architecture.neck.out_convs[0].conv
    before = conv.input_fake_quant.scale.detach().clone()
    with torch.no_grad():
        fresh(inputs, None, 'tensor')
    assert torch.equal(conv.input_fake_quant.scale, before)


def test_fx_tensorrt_disabled_equals_float(float_checkpoint):
    model = build_qat(float_checkpoint, config=TENSORRT_CONFIG)
    assert not model.trace_free
    assert list(model.qmodels) == ['tensor']
    model.eval()
    model.apply(disable_fake_quant)
    model.apply(disable_observer)
    inputs = model.data_preprocessor(make_batch(), False)['inputs']
    with torch.no_grad():
        outputs = tensor_outputs(model, inputs)
        expected = tree_leaves(model.architecture(inputs, mode='tensor'))
    for out, ref in zip(outputs, expected):
        assert torch.allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize('config', [TENSORRT_CONFIG, OPENVINO_CONFIG])
def test_fx_loss_predict_and_deploy(float_checkpoint, config):
    model = build_qat(float_checkpoint, config=config)
    model.train()
    data = model.data_preprocessor(make_batch(), True)
    losses = model(**data, mode='loss')
    assert {'loss_cls', 'loss_bbox', 'loss_obj'} <= set(losses)
    sum(losses.values()).backward()

    model.eval()
    data = model.data_preprocessor(make_batch(), False)
    with torch.no_grad():
        predictions = model(**data, mode='predict')
        quantized = tensor_outputs(model, data['inputs'])
    assert len(predictions) == 2

    deploy = model.get_deploy_model()
    with torch.no_grad():
        deployed = tree_leaves(deploy(data['inputs'], None, 'tensor'))
    assert len(deployed) == len(quantized)
    for out, ref in zip(deployed, quantized):
        assert out.shape == ref.shape
        assert torch.isfinite(out).all()


def test_rejects_unsupported_settings(float_checkpoint):
    with pytest.raises(ValueError, match="forward_modes=\\('tensor', 'loss'"):
        build_qat(float_checkpoint, forward_modes=('tensor', 'loss'))
    assert DetectorQAT.__mro__[1].__name__ == 'MMArchitectureQuant'


def _tool_options(float_checkpoint: str) -> list[str]:
    # The detector's test_cfg sits under model.architecture in QAT configs.
    options = [
        o.replace('model.test_cfg', 'model.architecture.test_cfg')
        for o in TINY_RUN_OPTIONS
    ]
    return [*options, f'model.float_checkpoint={float_checkpoint}']


@requires_coco128()
@pytest.mark.parametrize('config', [LSQ_CONFIG, TENSORRT_CONFIG])
def test_train_two_iterations_with_tool(run_tool, tmp_path, config):
    checkpoint = save_float_checkpoint(
        tmp_path / 'float.pth', Config.fromfile(FLOAT_CONFIG).model
    )
    work_dir = tmp_path / 'work'
    options = _tool_options(checkpoint)
    if config == LSQ_CONFIG:
        options.append('model.quantizer.use_compile=False')
    run_tool(
        'tools/train.py',
        config,
        '--work-dir',
        str(work_dir),
        '--cfg-options',
        *options,
    )

    run_dir = sorted(p for p in work_dir.iterdir() if p.is_dir())[-1]
    lines = (run_dir / 'vis_data' / 'scalars.json').read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r['step'] for r in records if 'loss' in r] == [1, 2]
    assert any(any('bbox_mAP' in key for key in r) for r in records)

    # The saved QAT checkpoint loads into a freshly built algorithm.
    cfg = Config.fromfile(config)
    cfg.model.float_checkpoint = checkpoint
    cfg.model.quantizer = quantizer_from(config)
    with DefaultScope.overwrite_default_scope('mmrazor'):
        fresh = MODELS.build(cfg.model)
    saved = torch.load(work_dir / 'epoch_1.pth', weights_only=False)
    fresh.load_state_dict(saved['state_dict'], strict=True)
