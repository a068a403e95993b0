"""Tests for the GABFusion fold of quantized (QAT) students.

Covers gabfusion_mm/deploy/fold_qat.py, fake_quant_calibration.py,
qat_student.py and the QAT path of tools/deploy/fold_gabfusion.py.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging

import pytest
import torch
from mmdet.models.layers import CSPLayer
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import DefaultScope
from mmengine.runner import load_checkpoint
from mmrazor.registry import MODELS as RAZOR_MODELS
from torch import Tensor, nn
from torch.ao.quantization import FakeQuantizeBase, disable_fake_quant

import gabfusion_mm  # noqa: F401
from gabfusion_mm.deploy import fold_gabfusion, fold_quantized_gabfusion
from gabfusion_mm.deploy.fake_quant_calibration import (
    STEP_MULTIPLIERS,
    recalibrate_fake_quant,
    search_lsq_step,
)
from gabfusion_mm.deploy.fold_qat import (
    fake_quants_disabled,
    weight_seen_by_quantizer,
)
from gabfusion_mm.deploy.qat_student import (
    deployable_qat_config,
    student_state_dict,
)
from gabfusion_mm.models.fake_quants import (
    LowBitFakeQuantize,
    LSQFakeQuantize,
    LSQPlusFakeQuantize,
    N2UQFakeQuantize,
    N2UQWeightFakeQuantize,
    PACTFakeQuantize,
)
from gabfusion_mm.models.layers import GABFusion
from gabfusion_mm.models.quantizers import QuantConv2d
from tests.conftest import REPO_ROOT, requires_coco128


@pytest.fixture(autouse=True)
def mmdet_scope():
    """Build from mmdet's registries whatever scope an earlier test left."""
    with DefaultScope.overwrite_default_scope('mmdet'):
        yield


@pytest.fixture(autouse=True, scope='module')
def one_thread():
    """Run the tiny models on one thread.

    Fake quantization runs many small operations. On a busy 2-core machine
    each of them waits for a second OpenMP thread, which made this file
    about 25 times slower with two threads than with one.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- float64 references ----------------------------------------------------


def lsq_error64(x: Tensor, scale, offset, qmin, qmax, axis) -> Tensor:
    """Per-channel sums of ``(round(clip((x-b)/s)) * s + b - x)^2``."""
    x = x.double()
    shape = [1] * x.dim()
    if axis is not None:
        shape[axis] = -1
    s = torch.as_tensor(scale).double().view(shape)
    b = torch.zeros(()) if offset is None else torch.as_tensor(offset)
    b = b.double().view(shape) if offset is not None else b.double()
    restored = torch.round(torch.clamp((x - b) / s, qmin, qmax)) * s + b
    dims = [d for d in range(x.dim()) if d != axis]
    return (restored - x).square().sum(dim=dims).reshape(-1)


def quantizer_error64(fake_quant: LSQFakeQuantize, x: Tensor) -> Tensor:
    offset = getattr(fake_quant, 'offset', None)
    return lsq_error64(
        x,
        fake_quant.scale.detach(),
        None if offset is None else offset.detach(),
        fake_quant.quant_min,
        fake_quant.quant_max,
        fake_quant.ch_axis if fake_quant.per_channel else None,
    )


def weight_like(seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    spread = torch.rand(12, 1, 1, 1, generator=gen) * 3 + 0.2
    return torch.randn(12, 20, 3, 3, generator=gen) * spread


def activation_like(seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    pre = torch.randn(4, 16, 10, 10, generator=gen) * 2
    return pre * torch.sigmoid(pre)


QUANTIZER_CASES = [
    ('lsq_per_channel', lambda: LSQFakeQuantize(4, per_channel=True), 0),
    ('lsq_signed', lambda: LSQFakeQuantize(4, signed=True), None),
    ('lsq_plus', lambda: LSQPlusFakeQuantize(4), None),
    ('lsq_plus_signed', lambda: LSQPlusFakeQuantize(3, signed=True), None),
]


def case_data(name: str, seed: int) -> Tensor:
    return (
        weight_like(seed) if 'per_channel' in name else activation_like(seed)
    )


# -- re-calibration of one quantizer ---------------------------------------


@pytest.mark.parametrize('name,build,axis', QUANTIZER_CASES)
def test_recalibration_mse_not_above_init(name, build, axis):
    x = case_data(name, 0)
    recalibrated = build()
    initialized = build()

    change = recalibrate_fake_quant(recalibrated, x)
    initialized.init_from_data(x)

    got = quantizer_error64(recalibrated, x)
    init = quantizer_error64(initialized, x)
    assert (got <= init).all()
    assert got.sum() < init.sum()
    assert change.mse == pytest.approx(got.sum().item() / x.numel())
    assert change.init_mse == pytest.approx(init.sum().item() / x.numel())
    assert recalibrated.initialized.item() == 1


@pytest.mark.parametrize('name,build,axis', QUANTIZER_CASES)
def test_grid_search_picks_brute_force_optimum(name, build, axis):
    x = case_data(name, 1)
    fake_quant = build()
    fake_quant.init_from_data(x)
    base = fake_quant.scale.detach().double().clone()
    is_plus = isinstance(fake_quant, LSQPlusFakeQuantize)
    lowest = None
    if is_plus:
        lowest = fake_quant.offset.detach().double() + (
            fake_quant.quant_min * base
        )

    errors, candidates = [], []
    for c in STEP_MULTIPLIERS:
        # Candidates are float32 parameters, as the quantizer stores them.
        scale = (c * base).float().double()
        offset = None
        if is_plus:
            offset = (lowest - fake_quant.quant_min * scale).float().double()
        candidates.append((scale, offset))
        errors.append(
            lsq_error64(
                x,
                scale,
                offset,
                fake_quant.quant_min,
                fake_quant.quant_max,
                axis,
            )
        )
    best = torch.stack(errors).argmin(dim=0)
    expected = torch.stack(
        [candidates[k][0][i] for i, k in enumerate(best.tolist())]
    )

    chosen = search_lsq_step(fake_quant, x)

    grid = torch.tensor(STEP_MULTIPLIERS, dtype=torch.float64)
    assert torch.equal(chosen, grid[best])
    assert torch.equal(fake_quant.scale.detach().double(), expected)
    if is_plus:
        # The lowest level stays where initialization put it.
        new_lowest = fake_quant.offset.detach().double() + (
            fake_quant.quant_min * fake_quant.scale.detach().double()
        )
        torch.testing.assert_close(new_lowest, lowest, rtol=0, atol=1e-5)


def test_grid_search_keeps_init_step_when_optimal():
    # Values on the integer grid of the initial step quantize exactly.
    fake_quant = LSQFakeQuantize(4, signed=True)
    levels = torch.arange(-8.0, 8.0).repeat(50)
    fake_quant.scale.data.fill_(0.25)
    chosen = search_lsq_step(fake_quant, levels * 0.25)
    assert chosen.tolist() == [1.0]
    assert fake_quant.scale.item() == 0.25


def test_search_subsamples_large_per_tensor_data():
    x = activation_like(2)
    full = LSQPlusFakeQuantize(4)
    sampled = LSQPlusFakeQuantize(4)
    reference = LSQPlusFakeQuantize(4)

    recalibrate_fake_quant(full, x)
    recalibrate_fake_quant(sampled, x, max_search_values=x.numel() // 3)
    reference.init_from_data(x)
    search_lsq_step(reference, x.reshape(-1)[::3])

    assert torch.equal(sampled.scale, reference.scale)
    assert torch.equal(sampled.offset, reference.offset)
    assert full.scale.item() == pytest.approx(sampled.scale.item(), rel=0.1)


@pytest.mark.parametrize(
    'build',
    [
        lambda: PACTFakeQuantize(4),
        lambda: N2UQFakeQuantize(4),
        lambda: N2UQWeightFakeQuantize(4),
    ],
)
def test_other_quantizers_only_reinitialized(build):
    x = activation_like(3)
    fake_quant = build()
    with torch.no_grad():
        for param in fake_quant.parameters():
            param.mul_(1.7)
    expected = build()
    expected.init_from_data(x)

    change = recalibrate_fake_quant(fake_quant, x)

    assert change.multiplier == []
    assert fake_quant.initialized.item() == 1
    for got, want in zip(fake_quant.parameters(), expected.parameters()):
        assert torch.equal(got, want)


def test_recalibration_rejects_torch_fake_quant():
    with pytest.raises(TypeError, match='not a LowBitFakeQuantize'):
        recalibrate_fake_quant(
            torch.ao.quantization.FakeQuantize(), torch.randn(4)
        )


# -- models ----------------------------------------------------------------


def tiny_yolox(neck_type: str = 'GABYOLOXPAFPN') -> dict:
    """YOLOX with widen factor 0.125 (neck levels of 32, 64, 128)."""
    neck = dict(
        type=neck_type,
        in_channels=[32, 64, 128],
        out_channels=32,
        num_csp_blocks=1,
    )
    if neck_type == 'GABYOLOXPAFPN':
        neck['fusion_cfg'] = dict(mode='learnable')
    return dict(
        type='YOLOX',
        data_preprocessor=dict(type='DetDataPreprocessor'),
        backbone=dict(
            type='CSPDarknet', deepen_factor=0.33, widen_factor=0.125
        ),
        neck=neck,
        bbox_head=dict(
            type='YOLOXHead', num_classes=4, in_channels=32, feat_channels=32
        ),
        test_cfg=dict(
            score_thr=0.01, nms=dict(type='nms', iou_threshold=0.65)
        ),
    )


def quantizer_cfg(**kwargs) -> dict:
    return dict(
        _scope_='mmrazor',
        type='TraceFreeQuantizer',
        use_compile=False,
        **kwargs,
    )


def images(count: int, seed: int, size: int = 128) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.rand(2, 3, size, size, generator=gen) * 255 for _ in range(count)
    ]


def calibrate_batch_norms(model: nn.Module, batches, forward) -> None:
    """Set running statistics from ``batches``, as a trained model has."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    with torch.no_grad():
        for batch in batches:
            forward(model, batch)
    for norm in norms:
        norm.momentum = 0.1
        norm.eval()


def randomize_fusions(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, GABFusion) and m.mode != 'concat':
                m.branch_logits.copy_(torch.randn(2, generator=gen))
                size = m.norm.weight.shape
                m.norm.weight.copy_(torch.rand(size, generator=gen) + 0.5)
                m.norm.bias.copy_(torch.randn(size, generator=gen) * 0.3)


def init_fake_quants(model: nn.Module, batch, forward) -> None:
    """Initialize every fake quantizer from one batch, nothing else."""
    model.eval()
    for m in model.modules():
        if isinstance(m, LowBitFakeQuantize):
            m.train()
    with torch.no_grad():
        forward(model, batch)
    model.eval()


def tensor_forward(model, batch):
    return model(batch, mode='tensor')


def prepared_detector(fold_bn: bool = False, seed: int = 0):
    """A float tiny YOLOX with GABFusion and its initialized QAT twin."""
    torch.manual_seed(seed)
    float_model = MODELS.build(tiny_yolox())
    float_model.init_weights()
    calibrate_batch_norms(float_model, images(2, seed + 10), tensor_forward)
    randomize_fusions(float_model, seed)
    float_model.eval()

    quantized = copy.deepcopy(float_model)
    RAZOR_MODELS.build(quantizer_cfg(fold_bn=fold_bn)).prepare(quantized)
    init_fake_quants(quantized, images(1, seed + 20)[0], tensor_forward)
    return float_model, quantized


def float_state(model: nn.Module) -> dict[str, Tensor]:
    return {
        key: value
        for key, value in model.state_dict().items()
        if 'fake_quant' not in key
    }


def outputs(model: nn.Module, batches) -> list[Tensor]:
    with torch.no_grad():
        return [t for b in batches for t in flatten(tensor_forward(model, b))]


def flatten(value) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    return [t for item in value for t in flatten(item)]


# -- the quantized fold ----------------------------------------------------


@pytest.mark.parametrize('fold_bn', [False, True])
def test_quantized_fold_equals_float_fold(fold_bn):
    float_model, quantized = prepared_detector(fold_bn=fold_bn)
    batches = images(2, 5)

    expected = fold_gabfusion(float_model, batches, tensor_forward)
    result = fold_quantized_gabfusion(quantized, batches, tensor_forward)

    assert result.float_fold == expected
    assert len(result.nodes) == 4
    assert len(result.consumers) == 8
    got_state = float_state(quantized)
    assert got_state.keys() == float_model.state_dict().keys()
    for key, value in float_model.state_dict().items():
        assert torch.equal(got_state[key], value), key

    quantized.apply(disable_fake_quant)
    for got, want in zip(
        outputs(quantized, batches), outputs(float_model, batches)
    ):
        assert torch.equal(got, want)


def test_fold_with_fake_quants_off_is_float_fold():
    float_model, quantized = prepared_detector(seed=1)
    quantized.apply(disable_fake_quant)
    batches = images(2, 6)

    expected = fold_gabfusion(float_model, batches, tensor_forward)
    result = fold_quantized_gabfusion(quantized, batches, tensor_forward)

    # With every quantizer off the reference is the float model, so the
    # errors are those of the float fold.
    assert result.relative_error == pytest.approx(expected.relative_error)
    assert result.relative_error_without_recalibration == pytest.approx(
        expected.relative_error
    )
    assert result.max_abs_diff == pytest.approx(expected.max_abs_diff)


def test_weight_quantizer_sees_folded_batch_norm_weight():
    _, quantized = prepared_detector(fold_bn=True, seed=2)
    conv = quantized.neck.top_down_blocks[0].main_conv.conv
    bn = quantized.neck.top_down_blocks[0].main_conv.bn

    seen = weight_seen_by_quantizer(conv)

    factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(
        seen, conv.weight * factor.view(-1, 1, 1, 1), rtol=0, atol=0
    )


def test_fake_quant_states_restored_exactly():
    _, quantized = prepared_detector(seed=3)
    fake_quants = [
        m for m in quantized.modules() if isinstance(m, FakeQuantizeBase)
    ]
    with torch.no_grad():
        for index, module in enumerate(fake_quants):
            module.fake_quant_enabled.fill_(index % 3 != 0)
            module.observer_enabled.fill_(index % 2)
    before = [
        (m.fake_quant_enabled.clone(), m.observer_enabled.clone())
        for m in fake_quants
    ]

    fold_quantized_gabfusion(quantized, images(1, 7), tensor_forward)

    for module, (enabled, observer) in zip(fake_quants, before):
        assert torch.equal(module.fake_quant_enabled, enabled)
        assert torch.equal(module.observer_enabled, observer)
    assert not quantized.training


def test_fake_quants_disabled_restores_after_error():
    fake_quant = LSQFakeQuantize(4)
    model = nn.Sequential(fake_quant)
    with pytest.raises(RuntimeError, match='inside'):
        with fake_quants_disabled(model):
            assert fake_quant.fake_quant_enabled.item() == 0
            raise RuntimeError('inside')
    assert fake_quant.fake_quant_enabled.item() == 1
    assert fake_quant.observer_enabled.item() == 1


@pytest.mark.parametrize('sequential', [True, False])
def test_recalibrated_quantizers_stay_initialized(sequential):
    _, quantized = prepared_detector(seed=4)
    result = fold_quantized_gabfusion(
        quantized, images(2, 8), tensor_forward, sequential=sequential
    )

    for name, change in result.consumers.items():
        conv = quantized.get_submodule(name)
        assert isinstance(conv, QuantConv2d)
        assert change.weight.new_step != change.weight.old_step
        assert change.input.new_step != change.input.old_step
        assert conv.weight_fake_quant.initialized.item() == 1
        assert conv.input_fake_quant.initialized.item() == 1
    assert result.relative_error < result.relative_error_without_recalibration


class QuantFusionBlock(nn.Module):
    """A GABFusion node feeding a quantized CSP block."""

    def __init__(self) -> None:
        super().__init__()
        self.fusion = GABFusion([8, 8])
        self.block = CSPLayer(16, 16, num_blocks=1, add_identity=False)

    def forward(self, feats):
        return self.block(self.fusion(list(feats)))


def affine_exact_batches(fusion: GABFusion, count: int) -> list:
    """Branches whose LayerNorm is exactly a per-channel affine.

    The scaled concat has one mean and one standard deviation at every
    pixel, so the float fold is exact and only the quantizers change.
    """
    gen = torch.Generator().manual_seed(9)
    batches = []
    for _ in range(count):
        x = torch.randn(4, 16, 6, 6, generator=gen)
        x = (x - x.mean(1, keepdim=True)) / x.std(1, keepdim=True) * 3 + 1
        parts = x.split(list(fusion.in_channels), dim=1)
        batches.append([p / a for p, a in zip(parts, fusion.alpha)])
    return batches


def test_recalibration_removes_most_fold_error():
    torch.manual_seed(0)
    block = QuantFusionBlock()
    randomize_fusions(block, 0)
    # Branches of similar range, as BN + SiLU outputs are, because the
    # per-tensor input quantizer gets them unscaled after the fold.
    block.fusion.branch_logits.data = torch.tensor([0.2, -0.2])
    batches = affine_exact_batches(block.fusion, 3)
    calibrate_batch_norms(block, batches, lambda m, b: m(b))
    RAZOR_MODELS.build(quantizer_cfg(first_conv=dict())).prepare(block)
    init_fake_quants(block, batches[0], lambda m, b: m(b))

    result = fold_quantized_gabfusion(block, batches)

    assert result.float_fold.relative_error < 1e-5
    assert result.relative_error_without_recalibration > 0.05
    assert result.relative_error < 0.5 * (
        result.relative_error_without_recalibration
    )


def test_dead_channel_keeps_weight_steps_bounded():
    torch.manual_seed(0)
    block = QuantFusionBlock()
    randomize_fusions(block, 1)
    gen = torch.Generator().manual_seed(3)
    batches = [
        [torch.randn(2, 8, 6, 6, generator=gen) for _ in range(2)]
        for _ in range(2)
    ]
    for batch in batches:
        # A dead channel: SiLU of a very negative input, about 1e-25.
        batch[0][:, 0] = torch.randn(2, 6, 6, generator=gen) * 1e-25
    RAZOR_MODELS.build(quantizer_cfg(first_conv=dict())).prepare(block)
    init_fake_quants(block, batches[0], lambda m, b: m(b))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        result = fold_quantized_gabfusion(block, batches)
    finally:
        logger.removeHandler(handler)

    # The dead channel gets a zero slope in the affine fit, so no consumer's
    # weight step grows enough to trigger the warning.
    messages = [
        r.getMessage() for r in records if r.levelno == logging.WARNING
    ]
    assert not any('grew' in m for m in messages)
    assert result.relative_error < 1.0


def test_model_without_fusion_left_unchanged():
    torch.manual_seed(0)
    model = MODELS.build(tiny_yolox('YOLOXPAFPN'))
    RAZOR_MODELS.build(quantizer_cfg()).prepare(model)
    state = copy.deepcopy(model.state_dict())

    result = fold_quantized_gabfusion(model, images(1, 0), tensor_forward)

    assert result.nodes == {}
    assert result.consumers == {}
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


# -- deployable config -----------------------------------------------------


def test_folded_state_loads_into_deployable_config():
    cfg = Config(
        dict(
            model=dict(
                _scope_='mmrazor',
                type='DetectorQAT',
                architecture=dict(tiny_yolox(), _scope_='mmdet'),
                quantizer=quantizer_cfg(),
                float_checkpoint=None,
                allow_random_init=True,
            ),
            custom_hooks=[
                dict(type='GABFusionHook'),
                dict(type='EMAHook', momentum=0.0001),
            ],
        )
    )
    algorithm = MODELS.build(cfg.model)
    student = algorithm.architecture
    with fake_quants_disabled(student):
        calibrate_batch_norms(student, images(2, 1), tensor_forward)
    randomize_fusions(student, 1)
    init_fake_quants(student, images(1, 2)[0], tensor_forward)
    batches = images(2, 3)
    fold_quantized_gabfusion(student, batches, tensor_forward)

    out_cfg = deployable_qat_config(cfg, algorithm)
    deployed = MODELS.build(out_cfg.model).eval()
    before = outputs(deployed.architecture, batches)
    deployed.load_state_dict(student_state_dict(student), strict=True)

    assert out_cfg.model.architecture.neck.type == 'YOLOXPAFPN'
    assert out_cfg.model.allow_random_init is True
    assert [h['type'] for h in out_cfg.custom_hooks] == ['EMAHook']
    assert cfg.model.architecture.neck.type == 'GABYOLOXPAFPN'
    expected = outputs(student, batches)
    got = outputs(deployed.architecture, batches)
    assert not all(torch.equal(a, b) for a, b in zip(before, expected))
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


# -- the command-line tool -------------------------------------------------

QAT_CONFIG = (
    'configs/gabfusion_qat/yolox_nano_w4a4-lsq_gabfusion-ada_coco128.py'
)
# Train images resized to 128 px by the Resize at index 2 of the pipeline.
SMALL_RUN = (
    'model.quantizer.use_compile=False',
    'train_dataloader.batch_size=2',
    'train_dataloader.dataset.pipeline.2.scale=(128,128)',
)


def make_qat_checkpoint(folder) -> tuple[str, str]:
    """Write a float and a QATDistill checkpoint of the nano GABFusion arm."""
    cfg = Config.fromfile(REPO_ROOT / QAT_CONFIG)
    cfg.model.quantizer.use_compile = False
    torch.manual_seed(0)
    teacher = MODELS.build(cfg.model.teacher)
    teacher.init_weights()
    calibrate_batch_norms(teacher, images(2, 11), tensor_forward)
    float_path = str(folder / 'float.pth')
    torch.save(dict(state_dict=teacher.state_dict()), float_path)

    cfg.model.float_checkpoint = float_path
    algorithm = MODELS.build(cfg.model)
    randomize_fusions(algorithm.architecture, 0)
    init_fake_quants(algorithm.architecture, images(1, 12)[0], tensor_forward)
    qat_path = str(folder / 'qat.pth')
    torch.save(dict(state_dict=algorithm.state_dict()), qat_path)
    return float_path, qat_path


def load_tool_module():
    spec = importlib.util.spec_from_file_location(
        'fold_gabfusion_tool', REPO_ROOT / 'tools/deploy/fold_gabfusion.py'
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@requires_coco128()
def test_fold_tool_on_qat_distill_config(run_tool, tmp_path):
    float_path, qat_path = make_qat_checkpoint(tmp_path)
    out = tmp_path / 'folded.pth'
    out_config = tmp_path / 'folded_config.py'
    report_path = tmp_path / 'report.json'
    options = (f'model.float_checkpoint={float_path}', *SMALL_RUN)

    proc = run_tool(
        'tools/deploy/fold_gabfusion.py',
        QAT_CONFIG,
        qat_path,
        '--calib-batches',
        '1',
        '--out',
        str(out),
        '--out-config',
        str(out_config),
        '--report',
        str(report_path),
        '--cfg-options',
        *options,
        env={'OMP_NUM_THREADS': '1'},
    )

    assert 'without quantizer re-calibration' in proc.stdout
    report = json.loads(report_path.read_text())
    meta = torch.load(out, weights_only=False)['meta']['gabfusion_fold']
    assert meta == report
    assert len(report['nodes']) == 4
    assert len(report['consumers']) == 8
    assert report['deployed_max_abs_diff'] == 0.0

    written = Config.fromfile(str(out_config))
    assert written.model.architecture.neck.type == 'YOLOXPAFPN'
    assert 'distiller' not in written.model
    assert 'GABFusionHook' not in [h['type'] for h in written.custom_hooks]
    deployed = MODELS.build(written.model).eval()
    load_checkpoint(deployed, str(out), map_location='cpu', strict=True)

    # The deployed student reproduces the reported error against the
    # unfolded student on the tool's calibration batch.
    cfg = Config.fromfile(REPO_ROOT / QAT_CONFIG)
    cfg.model.float_checkpoint = float_path
    cfg.model.quantizer.use_compile = False
    cfg.train_dataloader.batch_size = 2
    cfg.train_dataloader.dataset.pipeline[2].scale = (128, 128)
    algorithm = MODELS.build(cfg.model).eval()
    load_checkpoint(algorithm, qat_path, map_location='cpu', strict=True)
    inputs = load_tool_module().load_calibration_inputs(
        cfg, algorithm, 'train', 1
    )
    reference = outputs(algorithm.architecture, inputs)
    folded = outputs(deployed.architecture, inputs)
    squared_diff = sum(
        (a - b).double().square().sum() for a, b in zip(folded, reference)
    )
    squared_ref = sum(b.double().square().sum() for b in reference)
    error = (squared_diff / squared_ref).sqrt().item()
    assert error == pytest.approx(report['relative_error'], rel=1e-6)
