"""Complete IoU between matched boxes, in the form YOLOv5 trains with."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def bbox_ciou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-7) -> Tensor:
    """Compute the Complete IoU of matched pairs of boxes.

    CIoU comes from Zheng et al., "Enhancing Geometric Factors in Model
    Learning and Inference for Object Detection and Instance Segmentation"
    (arXiv 2005.03572):

        CIoU = IoU - rho^2 / c^2 - alpha * v
        v = 4 / pi^2 * (atan(w2 / h2) - atan(w1 / h1))^2
        alpha = v / (v - IoU + 1 + eps)

    where rho is the distance between the two centres and c the diagonal of
    the smallest box enclosing both. As in YOLOv5, alpha is a constant of
    the gradient (computed without autograd) and is not gated by IoU > 0.5.

    Args:
        boxes1 (Tensor): Boxes as (cx, cy, w, h), shape (..., 4).
        boxes2 (Tensor): Boxes as (cx, cy, w, h), same shape as ``boxes1``.
        eps (float): Guard against division by zero. Defaults to 1e-7.

    Returns:
        Tensor: CIoU of each pair, shape (...). It lies in (-1.5, 1].
    """
    if boxes1.shape != boxes2.shape or boxes1.shape[-1:] != (4,):
        raise ValueError(
            f'bbox_ciou: boxes1 {tuple(boxes1.shape)} and boxes2 '
            f'{tuple(boxes2.shape)} must have the same shape (..., 4)'
        )

    (cx1, cy1, w1, h1) = boxes1.unbind(-1)
    (cx2, cy2, w2, h2) = boxes2.unbind(-1)
    h1 = h1 + eps
    h2 = h2 + eps

    left1, right1 = cx1 - w1 / 2, cx1 + w1 / 2
    top1, bottom1 = cy1 - h1 / 2, cy1 + h1 / 2
    left2, right2 = cx2 - w2 / 2, cx2 + w2 / 2
    top2, bottom2 = cy2 - h2 / 2, cy2 + h2 / 2

    inter_w = (torch.min(right1, right2) - torch.max(left1, left2)).clamp(0)
    inter_h = (torch.min(bottom1, bottom2) - torch.max(top1, top2)).clamp(0)
    inter = inter_w * inter_h
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union

    enclose_w = torch.max(right1, right2) - torch.min(left1, left2)
    enclose_h = torch.max(bottom1, bottom2) - torch.min(top1, top2)
    diagonal_sq = enclose_w**2 + enclose_h**2 + eps
    centre_dist_sq = (cx2 - cx1) ** 2 + (cy2 - cy1) ** 2

    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (centre_dist_sq / diagonal_sq + alpha * v)
