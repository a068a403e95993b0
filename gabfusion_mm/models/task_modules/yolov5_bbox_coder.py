"""Box coder of YOLOv5 (v6.0 and later)."""

from __future__ import annotations

import torch
from mmdet.models.task_modules.coders import BaseBBoxCoder
from mmdet.registry import TASK_UTILS
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy, bbox_xyxy_to_cxcywh
from torch import Tensor


@TASK_UTILS.register_module()
class YOLOv5BBoxCoder(BaseBBoxCoder):
    """Map YOLOv5 box logits to boxes and back.

    YOLOv5 (Jocher et al., https://github.com/ultralytics/yolov5, v6.0)
    bounds both parts of a box prediction with a sigmoid:

        centre = (2 * sigmoid(t_xy) - 0.5 + cell_xy) * stride
        size = (2 * sigmoid(t_wh))^2 * anchor_wh

    A centre may therefore lie up to half a cell outside its cell, so the
    two neighbouring cells that the assigner adds can predict it. A size
    lies in (0, 4) times its anchor, which matches the assigner's default
    anchor-ratio limit of 4.

    Args:
        eps (float): Margin that keeps ``encode`` away from the infinite
            logits at the ends of the ranges above. Defaults to 1e-6.
    """

    def __init__(self, eps: float = 1e-6, **kwargs) -> None:
        super().__init__(**kwargs)
        self.eps = eps

    def decode_cxcywh(
        self,
        pred: Tensor,
        anchors_wh: Tensor,
        cells_xy: Tensor,
        stride: float = 1.0,
    ) -> Tensor:
        """Decode logits to (cx, cy, w, h) boxes.

        Args:
            pred (Tensor): Box logits (t_x, t_y, t_w, t_h), shape (..., 4).
            anchors_wh (Tensor): Anchor sizes in the unit of the output,
                broadcastable to (..., 2).
            cells_xy (Tensor): Cell column and row, broadcastable to
                (..., 2).
            stride (float): Cell size in the unit of the output. Use 1 and
                anchors in cells to get boxes in cells. Defaults to 1.

        Returns:
            Tensor: Boxes (cx, cy, w, h), shape (..., 4).
        """
        scaled = 2 * pred.sigmoid()
        centre = (scaled[..., :2] - 0.5 + cells_xy) * stride
        size = scaled[..., 2:] ** 2 * anchors_wh
        return torch.cat([centre, size], dim=-1)

    def decode(
        self,
        pred: Tensor,
        anchors_wh: Tensor,
        cells_xy: Tensor,
        stride: float = 1.0,
    ) -> Tensor:
        """Decode logits to (x1, y1, x2, y2) boxes.

        Args:
            pred (Tensor): Box logits, shape (..., 4).
            anchors_wh (Tensor): Anchor sizes, broadcastable to (..., 2).
            cells_xy (Tensor): Cell column and row, broadcastable to
                (..., 2).
            stride (float): Cell size. Defaults to 1.

        Returns:
            Tensor: Boxes (x1, y1, x2, y2), shape (..., 4).
        """
        boxes = self.decode_cxcywh(pred, anchors_wh, cells_xy, stride)
        return bbox_cxcywh_to_xyxy(boxes)

    def encode(
        self,
        bboxes: Tensor,
        anchors_wh: Tensor,
        cells_xy: Tensor,
        stride: float = 1.0,
    ) -> Tensor:
        """Encode (x1, y1, x2, y2) boxes to the logits that decode to them.

        A centre more than half a cell outside its cell, or a size of 4
        anchors or more, has no exact logit and is clamped to the range.

        Args:
            bboxes (Tensor): Boxes (x1, y1, x2, y2), shape (..., 4).
            anchors_wh (Tensor): Anchor sizes, broadcastable to (..., 2).
            cells_xy (Tensor): Cell column and row, broadcastable to
                (..., 2).
            stride (float): Cell size. Defaults to 1.

        Returns:
            Tensor: Logits (t_x, t_y, t_w, t_h), shape (..., 4).
        """
        boxes = bbox_xyxy_to_cxcywh(bboxes)
        centre_prob = (boxes[..., :2] / stride - cells_xy + 0.5) / 2
        size_prob = (boxes[..., 2:] / anchors_wh).sqrt() / 2
        prob = torch.cat([centre_prob, size_prob], dim=-1)
        return torch.logit(prob.clamp(self.eps, 1 - self.eps))
