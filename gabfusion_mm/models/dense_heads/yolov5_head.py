"""Anchor-based coupled detection head of YOLOv5 (v6.0 and later)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.models.dense_heads.base_dense_head import BaseDenseHead
from mmdet.registry import MODELS, TASK_UTILS
from mmdet.utils import (
    ConfigType,
    InstanceList,
    OptConfigType,
    OptInstanceList,
    OptMultiConfig,
)
from mmengine.config import ConfigDict
from mmengine.dist import get_world_size
from torch import Tensor

from ..task_modules.yolov5_assigner import YOLOv5LevelTargets
from ..task_modules.yolov5_ciou import bbox_ciou
from .yolov5_head_predict import YOLOv5PredictMixin

# Anchor (width, height) in input pixels for strides 8, 16 and 32: the
# COCO anchors of YOLOv5 (the YOLOv3 k-means anchors).
YOLOV5_ANCHORS = (
    ((10, 13), (16, 30), (33, 23)),
    ((30, 61), (62, 45), (59, 119)),
    ((116, 90), (156, 198), (373, 326)),
)

# Objectness and class bias priors of YOLOv5: about 8 objects per 640 px
# image, and a 0.6 probability spread over the classes.
PRIOR_OBJECTS_PER_IMAGE = 8.0
PRIOR_IMAGE_SIZE = 640.0
PRIOR_CLASS_PROB = 0.6

BBOX_CODER_CFG = dict(type='YOLOv5BBoxCoder')

# Test settings of YOLOv5's validation: every class above the threshold,
# 30000 candidates at most into NMS, 300 boxes out.
DEFAULT_TEST_CFG = dict(
    multi_label=True,
    score_thr=0.001,
    nms_pre=30000,
    nms=dict(type='nms', iou_threshold=0.6),
    max_per_img=300,
)


@MODELS.register_module()
class YOLOv5Head(YOLOv5PredictMixin, BaseDenseHead):
    """YOLOv5 head: one 1x1 convolution per level predicting, for each of
    A anchors, 4 box logits, 1 objectness logit and C class logits.

    YOLOv5: Jocher et al., https://github.com/ultralytics/yolov5 (v6.0).
    Channel ``a * (5 + C) + k`` of a level's output is item k of anchor a,
    with items ordered (t_x, t_y, t_w, t_h, objectness, classes).

    Loss, per level l with positives from ``YOLOv5Assigner``:

    - box: mean of ``1 - CIoU`` between the decoded positive boxes and
      their targets;
    - objectness: binary cross entropy over all anchors and cells against
      the detached, non-negative CIoU at positives (the largest when a
      cell and anchor take several boxes) and 0 elsewhere, weighted by
      ``obj_level_weights[l]`` (4.0, 1.0, 0.4 for P3-P5 by default);
    - classes: binary cross entropy of the positives against one-hot
      labels, skipped when there is one class.

    The three sums over levels are multiplied by their loss weights and by
    the total batch size (images per device times devices), as YOLOv5
    does, so learning rates tuned for YOLOv5 apply unchanged.

    Args:
        num_classes (int): Number of classes C.
        in_channels (Sequence[int]): Input channels per level.
        anchor_sizes (Sequence[Sequence[tuple]]): Anchor (width, height)
            in input pixels per level, the same count A on every level.
            Defaults to the COCO anchors of YOLOv5.
        strides (Sequence[int]): Stride per level. Defaults to (8, 16, 32).
        bbox_coder (dict): Box coder config.
            Defaults to ``dict(type='YOLOv5BBoxCoder')``.
        loss_bbox_weight (float): Box loss weight. Defaults to 0.05.
        loss_obj_weight (float): Objectness loss weight. Defaults to 1.0.
        loss_cls_weight (float): Class loss weight. Defaults to 0.5.
        obj_level_weights (Sequence[float]): Objectness weight per level.
            Defaults to (4.0, 1.0, 0.4).
        cls_pos_weight (float): BCE weight of positive class targets.
            Defaults to 1.0.
        obj_pos_weight (float): BCE weight of positive objectness targets.
            Defaults to 1.0.
        train_cfg (dict, optional): ``assigner`` config. Defaults to None,
            which uses ``YOLOv5Assigner`` with its defaults.
        test_cfg (dict, optional): ``score_thr``, ``multi_label``,
            ``nms_pre``, ``nms`` and ``max_per_img``. Defaults to None,
            which uses YOLOv5's validation settings (0.001, True, 30000,
            NMS at IoU 0.6, 300).
        init_cfg (dict or list[dict], optional): Initialization config.
            Defaults to None, which keeps PyTorch's Conv2d initialization.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: Sequence[int],
        anchor_sizes: Sequence[Sequence[tuple[float, float]]] = (
            YOLOV5_ANCHORS
        ),
        strides: Sequence[int] = (8, 16, 32),
        bbox_coder: ConfigType = BBOX_CODER_CFG,
        loss_bbox_weight: float = 0.05,
        loss_obj_weight: float = 1.0,
        loss_cls_weight: float = 0.5,
        obj_level_weights: Sequence[float] = (4.0, 1.0, 0.4),
        cls_pos_weight: float = 1.0,
        obj_pos_weight: float = 1.0,
        train_cfg: OptConfigType = None,
        test_cfg: OptConfigType = None,
        init_cfg: OptMultiConfig = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        self._check_levels(
            num_classes, in_channels, anchor_sizes, strides, obj_level_weights
        )
        self.num_classes = num_classes
        self.in_channels = list(in_channels)
        self.strides = [int(s) for s in strides]
        self.num_levels = len(self.strides)
        self.num_anchors = len(anchor_sizes[0])
        self.num_outputs = 5 + num_classes
        self.register_buffer(
            'anchors_wh',
            torch.tensor(anchor_sizes, dtype=torch.float32),
            persistent=False,
        )

        self.loss_bbox_weight = loss_bbox_weight
        self.loss_obj_weight = loss_obj_weight
        self.loss_cls_weight = loss_cls_weight
        self.obj_level_weights = list(obj_level_weights)
        self.cls_pos_weight = cls_pos_weight
        self.obj_pos_weight = obj_pos_weight

        self.bbox_coder = TASK_UTILS.build(bbox_coder)
        self.train_cfg = train_cfg
        self.test_cfg = ConfigDict(
            DEFAULT_TEST_CFG if test_cfg is None else test_cfg
        )
        assigner_cfg = dict(type='YOLOv5Assigner')
        if train_cfg is not None and 'assigner' in train_cfg:
            assigner_cfg = train_cfg['assigner']
        self.assigner = TASK_UTILS.build(assigner_cfg)

        self.convs_pred = nn.ModuleList(
            nn.Conv2d(channels, self.num_anchors * self.num_outputs, 1)
            for channels in self.in_channels
        )

    @staticmethod
    def _check_levels(
        num_classes: int,
        in_channels: Sequence[int],
        anchor_sizes: Sequence[Sequence[tuple[float, float]]],
        strides: Sequence[int],
        obj_level_weights: Sequence[float],
    ) -> None:
        """Raise ``ValueError`` when the per-level settings disagree."""
        if num_classes < 1:
            raise ValueError(
                f'YOLOv5Head: num_classes={num_classes} must be at least 1'
            )
        counts = dict(
            in_channels=len(in_channels),
            anchor_sizes=len(anchor_sizes),
            strides=len(strides),
            obj_level_weights=len(obj_level_weights),
        )
        if len(set(counts.values())) != 1:
            raise ValueError(
                f'YOLOv5Head: per-level settings have different lengths '
                f'{counts}; give one entry per level in each'
            )
        anchor_counts = [len(level) for level in anchor_sizes]
        if len(set(anchor_counts)) != 1 or anchor_counts[0] == 0:
            raise ValueError(
                f'YOLOv5Head: anchor_sizes has {anchor_counts} anchors per '
                'level; every level needs the same non-zero count'
            )

    def init_weights(self) -> None:
        """Initialize, then set the objectness and class bias priors."""
        super().init_weights()
        class_bias = math.log(PRIOR_CLASS_PROB / (self.num_classes - 0.99))
        with torch.no_grad():
            for conv, stride in zip(self.convs_pred, self.strides):
                cells = (PRIOR_IMAGE_SIZE / stride) ** 2
                bias = conv.bias.view(self.num_anchors, self.num_outputs)
                bias[:, 4] = math.log(PRIOR_OBJECTS_PER_IMAGE / cells)
                bias[:, 5:] = class_bias

    def forward(self, feats: Sequence[Tensor]) -> tuple[list[Tensor]]:
        """Predict raw logits on every level.

        Args:
            feats (Sequence[Tensor]): Neck features; level l has shape
                (N, in_channels[l], H_l, W_l).

        Returns:
            tuple[list[Tensor]]: A one-item tuple holding the list of
            prediction maps; level l has shape (N, A * (5 + C), H_l, W_l).
        """
        return ([conv(x) for conv, x in zip(self.convs_pred, feats)],)

    def _split_map(self, pred_map: Tensor) -> Tensor:
        """Reshape (N, A * (5 + C), H, W) to (N, A, H, W, 5 + C)."""
        num_imgs, _, height, width = pred_map.shape
        pred = pred_map.view(
            num_imgs, self.num_anchors, self.num_outputs, height, width
        )
        return pred.permute(0, 1, 3, 4, 2)

    def loss_by_feat(
        self,
        pred_maps: Sequence[Tensor],
        batch_gt_instances: InstanceList,
        batch_img_metas: list[dict],
        batch_gt_instances_ignore: OptInstanceList = None,
    ) -> dict[str, Tensor]:
        """Compute the YOLOv5 losses.

        Ignored instances (COCO crowd boxes) play no part, as in YOLOv5.

        Args:
            pred_maps (Sequence[Tensor]): Output of ``forward``, level l of
                shape (N, A * (5 + C), H_l, W_l).
            batch_gt_instances (list[InstanceData]): Per image ``bboxes``
                (x1, y1, x2, y2) in input pixels, shape (M_i, 4), and
                ``labels``, shape (M_i,).
            batch_img_metas (list[dict]): Meta information per image.
            batch_gt_instances_ignore (list[InstanceData], optional):
                Unused. Defaults to None.

        Returns:
            dict[str, Tensor]: ``loss_cls``, ``loss_bbox`` and ``loss_obj``.
        """
        if len(pred_maps) != self.num_levels:
            raise ValueError(
                f'YOLOv5Head: got {len(pred_maps)} prediction maps, '
                f'expected {self.num_levels}'
            )
        gt_bboxes = torch.cat([gt.bboxes for gt in batch_gt_instances])
        gt_labels = torch.cat([gt.labels for gt in batch_gt_instances])
        img_inds = torch.cat(
            [
                gt_labels.new_full((len(gt),), i)
                for i, gt in enumerate(batch_gt_instances)
            ]
        )
        gt_bboxes = gt_bboxes.to(pred_maps[0])

        # Zero terms built from the predictions keep every loss in the
        # graph when a batch has no positive samples.
        zero = sum(pred.sum() for pred in pred_maps) * 0
        loss_bbox, loss_obj, loss_cls = zero, zero, zero
        for level, pred_map in enumerate(pred_maps):
            pred = self._split_map(pred_map)
            targets = self.assigner.assign(
                gt_bboxes,
                gt_labels,
                img_inds,
                self.anchors_wh[level],
                self.strides[level],
                tuple(pred.shape[2:4]),
            )
            obj_targets = pred.new_zeros(pred.shape[:4])
            if targets.num_pos > 0:
                level_bbox, level_cls = self._loss_positives(
                    pred, targets, obj_targets
                )
                loss_bbox = loss_bbox + level_bbox
                loss_cls = loss_cls + level_cls
            level_obj = F.binary_cross_entropy_with_logits(
                pred[..., 4],
                obj_targets,
                pos_weight=pred.new_tensor(self.obj_pos_weight),
            )
            loss_obj = loss_obj + level_obj * self.obj_level_weights[level]

        batch_size = pred_maps[0].size(0) * get_world_size()
        return dict(
            loss_cls=loss_cls * self.loss_cls_weight * batch_size,
            loss_bbox=loss_bbox * self.loss_bbox_weight * batch_size,
            loss_obj=loss_obj * self.loss_obj_weight * batch_size,
        )

    def _loss_positives(
        self,
        pred: Tensor,
        targets: YOLOv5LevelTargets,
        obj_targets: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Compute the box and class losses of one level's positives.

        Args:
            pred (Tensor): Level logits, shape (N, A, H, W, 5 + C).
            targets (YOLOv5LevelTargets): Positives of the level.
            obj_targets (Tensor): Objectness targets, shape (N, A, H, W),
                filled in place with the CIoU of each positive.

        Returns:
            tuple[Tensor, Tensor]: Box loss and class loss (scalars).
        """
        pos = pred[
            targets.img_inds,
            targets.anchor_inds,
            targets.cells_y,
            targets.cells_x,
        ]
        # Targets are relative to the predicting cell, so cell 0 and
        # stride 1 decode the predictions into the same frame.
        boxes = self.bbox_coder.decode_cxcywh(
            pos[:, :4], targets.anchors_wh, pos.new_zeros(2)
        )
        ciou = bbox_ciou(boxes, targets.boxes)
        loss_bbox = (1 - ciou).mean()

        _, num_anchors, height, width = obj_targets.shape
        flat_inds = (
            (targets.img_inds * num_anchors + targets.anchor_inds) * height
            + targets.cells_y
        ) * width + targets.cells_x
        obj_targets.view(-1).scatter_reduce_(
            0, flat_inds, ciou.detach().clamp(min=0), reduce='amax'
        )

        if self.num_classes == 1:
            return loss_bbox, pos.sum() * 0
        cls_targets = F.one_hot(targets.labels, self.num_classes).to(pos)
        loss_cls = F.binary_cross_entropy_with_logits(
            pos[:, 5:],
            cls_targets,
            pos_weight=pos.new_tensor(self.cls_pos_weight),
        )
        return loss_bbox, loss_cls
