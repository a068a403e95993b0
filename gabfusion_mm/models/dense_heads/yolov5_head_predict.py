"""Inference of the YOLOv5 head: decoding, scoring and NMS."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from mmdet.utils import InstanceList
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData
from torch import Tensor


class YOLOv5PredictMixin:
    """``predict_by_feat`` of :class:`YOLOv5Head`.

    Reads the head's ``bbox_coder``, ``anchors_wh``, ``strides``,
    ``num_classes``, ``test_cfg`` and ``_split_map``, and mmdet's
    ``BaseDenseHead._bbox_post_process`` for rescaling and NMS.
    """

    def predict_by_feat(
        self,
        pred_maps: Sequence[Tensor],
        batch_img_metas: list[dict] | None = None,
        cfg: ConfigDict | None = None,
        rescale: bool = False,
        with_nms: bool = True,
    ) -> InstanceList:
        """Decode the prediction maps into scored boxes per image.

        A candidate needs objectness above ``score_thr``. Its score for a
        class is objectness times class probability, which must also exceed
        ``score_thr``. With ``multi_label`` every such class is kept, else
        only the best. Class-aware NMS follows.

        Args:
            pred_maps (Sequence[Tensor]): Output of ``forward``.
            batch_img_metas (list[dict]): Meta information per image;
                ``scale_factor`` and ``ori_shape`` are read with
                ``rescale``, else ``img_shape`` clips the boxes.
            cfg (ConfigDict, optional): Test config; None uses
                ``test_cfg``. Defaults to None.
            rescale (bool): Map boxes to original image pixels.
                Defaults to False.
            with_nms (bool): Apply NMS. Defaults to True.

        Returns:
            list[InstanceData]: Per image ``bboxes`` (K, 4) as (x1, y1, x2,
            y2), ``scores`` (K,) and ``labels`` (K,).
        """
        cfg = ConfigDict(copy.deepcopy(self.test_cfg if cfg is None else cfg))
        boxes, objectness, class_scores = [], [], []
        for level, pred_map in enumerate(pred_maps):
            pred = self._split_map(pred_map)
            height, width = pred.shape[2:4]
            cells_y, cells_x = torch.meshgrid(
                torch.arange(height, device=pred.device),
                torch.arange(width, device=pred.device),
                indexing='ij',
            )
            cells_xy = torch.stack([cells_x, cells_y], dim=-1).to(pred)
            level_boxes = self.bbox_coder.decode(
                pred[..., :4],
                self.anchors_wh[level][:, None, None],
                cells_xy,
                self.strides[level],
            )
            num_imgs = pred.size(0)
            boxes.append(level_boxes.reshape(num_imgs, -1, 4))
            objectness.append(pred[..., 4].reshape(num_imgs, -1).sigmoid())
            class_scores.append(
                pred[..., 5:].reshape(num_imgs, -1, self.num_classes).sigmoid()
            )
        boxes = torch.cat(boxes, dim=1)
        objectness = torch.cat(objectness, dim=1)
        class_scores = torch.cat(class_scores, dim=1)

        return [
            self._predict_single(
                boxes[i],
                objectness[i],
                class_scores[i],
                img_meta,
                cfg,
                rescale,
                with_nms,
            )
            for i, img_meta in enumerate(batch_img_metas)
        ]

    def _predict_single(
        self,
        boxes: Tensor,
        objectness: Tensor,
        class_scores: Tensor,
        img_meta: dict,
        cfg: ConfigDict,
        rescale: bool,
        with_nms: bool,
    ) -> InstanceData:
        """Filter, score and suppress the candidates of one image.

        Args:
            boxes (Tensor): Decoded boxes in input pixels, shape (K, 4).
            objectness (Tensor): Objectness probabilities, shape (K,).
            class_scores (Tensor): Class probabilities, shape (K, C).
            img_meta (dict): Meta information of the image.
            cfg (ConfigDict): Test config.
            rescale (bool): Map boxes to original image pixels.
            with_nms (bool): Apply NMS.

        Returns:
            InstanceData: ``bboxes``, ``scores`` and ``labels``.
        """
        score_thr = cfg.get('score_thr', 0.001)
        keep = objectness > score_thr
        boxes, scores = (
            boxes[keep],
            class_scores[keep] * objectness[keep, None],
        )
        if cfg.get('multi_label', True):
            rows, labels = (scores > score_thr).nonzero(as_tuple=True)
            boxes, scores = boxes[rows], scores[rows, labels]
        else:
            scores, labels = scores.max(dim=1)
            keep = scores > score_thr
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]

        nms_pre = cfg.get('nms_pre', -1)
        if 0 < nms_pre < scores.numel():
            scores, top = scores.topk(nms_pre)
            boxes, labels = boxes[top], labels[top]

        results = InstanceData(bboxes=boxes, scores=scores, labels=labels)
        results = self._bbox_post_process(
            results, cfg, rescale, with_nms, img_meta
        )
        height, width = img_meta['ori_shape' if rescale else 'img_shape'][:2]
        results.bboxes[:, 0::2] = results.bboxes[:, 0::2].clamp(0, width)
        results.bboxes[:, 1::2] = results.bboxes[:, 1::2].clamp(0, height)
        return results
