"""Tests for YOLOv5Head: shapes, bias priors, the loss and prediction."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.structures import InstanceData

from gabfusion_mm.models.dense_heads import YOLOv5Head

REPO_ROOT = Path(__file__).resolve().parents[3]
CONFIG_N = REPO_ROOT / 'configs/yolov5/yolov5_n_1xb8-100e_coco128.py'
CONFIG_S = REPO_ROOT / 'configs/yolov5/yolov5_s_1xb8-100e_coco128.py'
COCO128_ROOT = REPO_ROOT / 'data' / 'coco128'

requires_coco128 = pytest.mark.skipif(
    not (COCO128_ROOT / 'annotations').is_dir(),
    reason='COCO128 not found under data/coco128',
)


@pytest.fixture(autouse=True)
def mmdet_scope():
    init_default_scope('mmdet')


def _build_detector(config: Path, test_cfg: dict | None = None):
    from mmdet.registry import MODELS

    cfg = Config.fromfile(str(config))
    if test_cfg is not None:
        cfg.model.test_cfg = test_cfg
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def _one_level_head(**kwargs) -> YOLOv5Head:
    """Head with one level (stride 8), one 8 x 8 px anchor, 2 classes."""
    return YOLOv5Head(
        num_classes=2,
        in_channels=[4],
        anchor_sizes=[[(8.0, 8.0)]],
        strides=[8],
        obj_level_weights=[1.0],
        loss_bbox_weight=1.0,
        loss_obj_weight=1.0,
        loss_cls_weight=1.0,
        **kwargs,
    )


@pytest.mark.parametrize(
    'config, channels',
    [(CONFIG_N, (64, 128, 256)), (CONFIG_S, (128, 256, 512))],
)
def test_detector_output_shapes(config, channels):
    # 80 classes x 3 anchors: 3 x (5 + 80) = 255 channels per level.
    model = _build_detector(config)
    model.eval()

    feats = model.extract_feat(torch.rand(2, 3, 160, 160))
    (pred_maps,) = model.bbox_head(feats)

    assert [tuple(f.shape[1:2]) for f in feats] == [(c,) for c in channels]
    assert [tuple(p.shape) for p in pred_maps] == [
        (2, 255, 20, 20),
        (2, 255, 10, 10),
        (2, 255, 5, 5),
    ]


@pytest.mark.parametrize(
    'config, count', [(CONFIG_N, 1_872_157), (CONFIG_S, 7_235_389)]
)
def test_detector_parameter_count(config, count):
    # The counts YOLOv5 v6.0 reports for yolov5n.yaml and yolov5s.yaml with
    # 80 classes, before BN fusion.
    model = _build_detector(config)

    assert sum(p.numel() for p in model.parameters()) == count


def test_head_bias_priors():
    # Objectness bias log(8 / (640 / stride)^2): 8 objects per 640 px
    # image. Class bias log(0.6 / (80 - 0.99)).
    head = YOLOv5Head(num_classes=80, in_channels=[16, 32, 64])
    head.init_weights()

    for conv, stride in zip(head.convs_pred, (8, 16, 32)):
        bias = conv.bias.view(3, 85)
        expected_obj = math.log(8 / (640 / stride) ** 2)
        torch.testing.assert_close(bias[:, 4], torch.full((3,), expected_obj))
        torch.testing.assert_close(
            bias[:, 5:], torch.full((3, 80), math.log(0.6 / 79.01))
        )


def test_loss_hand_worked():
    # Input 32 x 32 px, one level of 4 x 4 cells. Box logits 0 decode to
    # centre offset 2 * 0.5 - 0.5 = 0.5 and size 1 anchor = 1 x 1 cell.
    # The box (4, 8, 20, 16) px is centre (1.5, 1.5), size (2, 1) in
    # cells: it matches the anchor (worst ratio 2) and, on the centre
    # lines, only its own cell (1, 1). Its CIoU with the predicted
    # (0.5, 0.5, 1, 1) is 0.4967519 (worked in the CIoU tests).
    # Objectness logit 1 everywhere: BCE = softplus(1) - t, mean over the
    # 16 cells = softplus(1) - CIoU / 16. Class logits 0 against one-hot
    # labels: log 2 per class.
    head = _one_level_head()
    pred_map = torch.zeros(1, 7, 4, 4)
    pred_map[:, 4] = 1.0
    gt = InstanceData(
        bboxes=torch.tensor([[4.0, 8.0, 20.0, 16.0]]), labels=torch.tensor([1])
    )

    losses = head.loss_by_feat([pred_map], [gt], [dict()])

    ciou = 0.4967519
    assert losses['loss_bbox'].item() == pytest.approx(1 - ciou, abs=1e-5)
    assert losses['loss_obj'].item() == pytest.approx(
        math.log1p(math.e) - ciou / 16, abs=1e-5
    )
    assert losses['loss_cls'].item() == pytest.approx(math.log(2), abs=1e-6)


def test_loss_positive_weights():
    # pos_weight p multiplies the positive term: the class BCE of logit 0
    # becomes (p log 2 + log 2) / 2 for one positive and one negative class.
    head = _one_level_head(cls_pos_weight=0.5)
    pred_map = torch.zeros(1, 7, 4, 4)
    gt = InstanceData(
        bboxes=torch.tensor([[4.0, 8.0, 20.0, 16.0]]), labels=torch.tensor([0])
    )

    losses = head.loss_by_feat([pred_map], [gt], [dict()])

    assert losses['loss_cls'].item() == pytest.approx(
        0.75 * math.log(2), abs=1e-6
    )


def test_loss_scales_with_batch_size():
    # Every term is a mean over the batch times the batch size, so two
    # copies of one image give twice the loss of one.
    head = _one_level_head()
    torch.manual_seed(0)
    pred_map = torch.randn(1, 7, 4, 4)
    gt = InstanceData(
        bboxes=torch.tensor([[3.0, 5.0, 14.0, 20.0]]), labels=torch.tensor([1])
    )

    single = head.loss_by_feat([pred_map], [gt], [dict()])
    double = head.loss_by_feat(
        [pred_map.repeat(2, 1, 1, 1)], [gt, gt], [dict(), dict()]
    )

    for name, value in single.items():
        assert double[name].item() == pytest.approx(
            2 * value.item(), rel=1e-5
        ), name


def test_loss_without_boxes():
    head = YOLOv5Head(num_classes=3, in_channels=[8, 8, 8])
    pred_maps = [
        torch.randn(2, 24, s, s, requires_grad=True) for s in (8, 4, 2)
    ]
    empty = InstanceData(
        bboxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long)
    )

    losses = head.loss_by_feat(pred_maps, [empty, empty], [dict(), dict()])
    sum(losses.values()).backward()

    assert losses['loss_bbox'].item() == 0
    assert losses['loss_cls'].item() == 0
    assert losses['loss_obj'].item() > 0
    assert all(p.grad is not None for p in pred_maps)


def _coco128_batch(model, num_images: int = 2, size: int = 160) -> dict:
    """The first COCO128 training images with boxes, resized to ``size``."""
    from mmdet.datasets import CocoDataset
    from mmengine.dataset import pseudo_collate

    dataset = CocoDataset(
        data_root=str(COCO128_ROOT) + '/',
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='images/train2017/'),
        filter_cfg=dict(filter_empty_gt=True, min_size=1),
        indices=num_images,
        pipeline=[
            dict(type='LoadImageFromFile'),
            dict(type='LoadAnnotations', with_bbox=True),
            dict(type='Resize', scale=(size, size), keep_ratio=True),
            dict(
                type='Pad',
                size=(size, size),
                pad_val=dict(img=(114, 114, 114)),
            ),
            dict(type='PackDetInputs'),
        ],
    )
    batch = pseudo_collate([dataset[i] for i in range(num_images)])
    return model.data_preprocessor(batch, training=True)


@requires_coco128
def test_loss_falls_on_fixed_coco128_batch():
    # Adam, because SGD at YOLOv5's lr 0.01 moves a batch of 2 only
    # slightly in 20 steps: the loss is scaled by the batch size, so a
    # batch of 2 gets 1/32 of the gradient of YOLOv5's nominal batch 64.
    torch.manual_seed(0)
    model = _build_detector(CONFIG_N)
    model.train()
    data = _coco128_batch(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    history = []
    for _ in range(20):
        losses = model(**data, mode='loss')
        assert all(torch.isfinite(v) for v in losses.values()), losses
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        history.append({name: v.item() for name, v in losses.items()})

    totals = [sum(step.values()) for step in history]
    assert sum(totals[-3:]) < 0.8 * sum(totals[:3]), totals
    for name in ('loss_cls', 'loss_bbox', 'loss_obj'):
        assert history[-1][name] < history[0][name], (name, history)


def test_predict_hand_worked():
    # Input 64 x 64 px. Candidate 1: level 0 (stride 8), anchor 1
    # (16 x 30 px), cell (x 5, y 3), box logits 0, class 2. Its centre is
    # (44, 28) and its box (36, 13, 52, 43).
    # Candidate 2: level 2 (stride 32), anchor 2 (373 x 326 px), cell
    # (0, 0), class 0. Its centre is (16, 16) and its box (-170.5, -147,
    # 202.5, 179), which clipping reduces to the image.
    # The original image is 128 wide and 256 high, scaled by (0.5, 0.25) to
    # 64 x 64. Candidate 1 maps to (72, 52, 104, 172) and candidate 2 is
    # clipped to (0, 0, 128, 256).
    head = YOLOv5Head(
        num_classes=3,
        in_channels=[8, 8, 8],
        test_cfg=dict(
            score_thr=0.01,
            nms=dict(type='nms', iou_threshold=0.6),
            max_per_img=10,
        ),
    )
    pred_maps = [torch.full((1, 24, s, s), -20.0) for s in (8, 4, 2)]
    pred_maps[0][0, 8:12, 3, 5] = 0.0  # anchor 1 box logits
    pred_maps[0][0, 12, 3, 5] = 20.0  # anchor 1 objectness
    pred_maps[0][0, 15, 3, 5] = 20.0  # anchor 1 class 2
    pred_maps[2][0, 16:20, 0, 0] = 0.0  # anchor 2 box logits
    pred_maps[2][0, 20, 0, 0] = 20.0  # anchor 2 objectness
    pred_maps[2][0, 21, 0, 0] = 20.0  # anchor 2 class 0
    img_meta = dict(
        img_shape=(64, 64), ori_shape=(256, 128), scale_factor=(0.5, 0.25)
    )

    (raw,) = head.predict_by_feat(pred_maps, [img_meta], rescale=False)
    (rescaled,) = head.predict_by_feat(pred_maps, [img_meta], rescale=True)

    order = raw.labels.argsort(descending=True)
    assert raw.labels[order].tolist() == [2, 0]
    torch.testing.assert_close(
        raw.bboxes[order],
        torch.tensor([[36.0, 13.0, 52.0, 43.0], [0.0, 0.0, 64.0, 64.0]]),
    )
    order = rescaled.labels.argsort(descending=True)
    torch.testing.assert_close(
        rescaled.bboxes[order],
        torch.tensor([[72.0, 52.0, 104.0, 172.0], [0.0, 0.0, 128.0, 256.0]]),
    )
    assert rescaled.scores.min().item() > 0.99


def test_predict_multi_label():
    # One candidate whose two classes both pass the threshold yields two
    # detections with multi_label, one without.
    pred_maps = [torch.full((1, 24, s, s), -20.0) for s in (8, 4, 2)]
    pred_maps[0][0, 0:4, 2, 2] = 0.0
    pred_maps[0][0, 4, 2, 2] = 20.0
    pred_maps[0][0, 5, 2, 2] = 2.0
    pred_maps[0][0, 7, 2, 2] = 1.0
    img_meta = dict(img_shape=(64, 64))
    base_cfg = dict(
        score_thr=0.1, nms=dict(type='nms', iou_threshold=0.6), max_per_img=10
    )

    counts = []
    for multi_label in (True, False):
        head = YOLOv5Head(
            num_classes=3,
            in_channels=[8, 8, 8],
            test_cfg=dict(multi_label=multi_label, **base_cfg),
        )
        (result,) = head.predict_by_feat(pred_maps, [img_meta])
        counts.append(sorted(result.labels.tolist()))

    assert counts == [[0, 2], [0]]


@requires_coco128
def test_detector_predicts_in_original_coordinates():
    model = _build_detector(
        CONFIG_N,
        test_cfg=dict(
            score_thr=0.0,
            nms_pre=1000,
            nms=dict(type='nms', iou_threshold=0.6),
            max_per_img=100,
        ),
    )
    model.eval()
    data = _coco128_batch(model)

    with torch.no_grad():
        results = model(**data, mode='predict')

    for result in results:
        height, width = result.ori_shape
        boxes = result.pred_instances.bboxes
        assert len(boxes) == 100
        assert (boxes[:, 0::2] <= width).all()
        assert (boxes[:, 1::2] <= height).all()
        assert (boxes >= 0).all()
        # The widest box reaches beyond the 160 px input only when mapped
        # back to the larger original image.
        assert boxes[:, 2].max().item() > 160 or max(height, width) <= 160


def test_head_rejects_mismatched_levels():
    with pytest.raises(ValueError, match='different lengths'):
        YOLOv5Head(num_classes=3, in_channels=[8, 8])
    with pytest.raises(ValueError, match='anchors per level'):
        YOLOv5Head(
            num_classes=3,
            in_channels=[8, 8],
            anchor_sizes=[[(1, 1)], [(1, 1), (2, 2)]],
            strides=[8, 16],
            obj_level_weights=[1, 1],
        )


def test_bce_reference_for_loss():
    # The objectness term uses the BCE identity relied on above.
    logits = torch.tensor([1.0, 1.0])
    targets = torch.tensor([0.0, 0.5])
    expected = torch.tensor([math.log1p(math.e), math.log1p(math.e) - 0.5])
    torch.testing.assert_close(
        F.binary_cross_entropy_with_logits(logits, targets, reduction='none'),
        expected,
    )
