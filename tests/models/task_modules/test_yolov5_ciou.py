"""Tests for the CIoU of YOLOv5 against float64 references."""

from __future__ import annotations

import math

import pytest
import torch

from gabfusion_mm.models.task_modules import bbox_ciou


def _reference_ciou(box1: list[float], box2: list[float]) -> float:
    """CIoU of two (cx, cy, w, h) boxes, written from the definition."""
    (cx1, cy1, w1, h1), (cx2, cy2, w2, h2) = box1, box2
    inter_w = max(
        0.0, min(cx1 + w1 / 2, cx2 + w2 / 2) - max(cx1 - w1 / 2, cx2 - w2 / 2)
    )
    inter_h = max(
        0.0, min(cy1 + h1 / 2, cy2 + h2 / 2) - max(cy1 - h1 / 2, cy2 - h2 / 2)
    )
    inter = inter_w * inter_h
    iou = inter / (w1 * h1 + w2 * h2 - inter)
    enclose_w = max(cx1 + w1 / 2, cx2 + w2 / 2) - min(
        cx1 - w1 / 2, cx2 - w2 / 2
    )
    enclose_h = max(cy1 + h1 / 2, cy2 + h2 / 2) - min(
        cy1 - h1 / 2, cy2 - h2 / 2
    )
    rho_sq = (cx1 - cx2) ** 2 + (cy1 - cy2) ** 2
    c_sq = enclose_w**2 + enclose_h**2
    v = 4 / math.pi**2 * (math.atan(w2 / h2) - math.atan(w1 / h1)) ** 2
    alpha = v / (v - iou + 1)
    return iou - rho_sq / c_sq - alpha * v


def test_ciou_matches_reference_float64():
    generator = torch.Generator().manual_seed(0)
    centres = torch.rand(64, 2, 2, generator=generator, dtype=torch.float64)
    sizes = 0.05 + torch.rand(
        64, 2, 2, generator=generator, dtype=torch.float64
    )
    boxes = torch.cat([centres * 3, sizes], dim=-1)

    ciou = bbox_ciou(boxes[:, 0], boxes[:, 1], eps=0.0)

    expected = torch.tensor(
        [
            _reference_ciou(pair[0].tolist(), pair[1].tolist())
            for pair in boxes
        ],
        dtype=torch.float64,
    )
    torch.testing.assert_close(ciou, expected, rtol=1e-12, atol=1e-12)
    assert (ciou < 0).any(), 'no disjoint pair: the test is too easy'


def test_ciou_hand_worked_pair():
    # Same centre, (1 x 1) inside (2 x 1): IoU 1/2, no centre distance,
    # v = 4 / pi^2 (atan 2 - atan 1)^2 = 0.0419565,
    # alpha = v / (v + 1/2) = 0.0774167, CIoU = 1/2 - alpha v = 0.4967519.
    ciou = bbox_ciou(
        torch.tensor([[0.5, 0.5, 1.0, 1.0]], dtype=torch.float64),
        torch.tensor([[0.5, 0.5, 2.0, 1.0]], dtype=torch.float64),
        eps=0.0,
    )
    assert ciou.item() == pytest.approx(0.4967519, abs=1e-7)


def test_ciou_identical_boxes_is_one():
    boxes = torch.tensor([[3.0, 4.0, 2.0, 5.0], [0.0, 0.0, 1.0, 1.0]])
    torch.testing.assert_close(bbox_ciou(boxes, boxes), torch.ones(2))


def _ciou_terms(box1: torch.Tensor, box2: torch.Tensor):
    """IoU, rho^2 / c^2 and v of (cx, cy, w, h) boxes, differentiable."""
    (cx1, cy1, w1, h1), (cx2, cy2, w2, h2) = box1.unbind(-1), box2.unbind(-1)
    inter_w = (
        torch.min(cx1 + w1 / 2, cx2 + w2 / 2)
        - torch.max(cx1 - w1 / 2, cx2 - w2 / 2)
    ).clamp(0)
    inter_h = (
        torch.min(cy1 + h1 / 2, cy2 + h2 / 2)
        - torch.max(cy1 - h1 / 2, cy2 - h2 / 2)
    ).clamp(0)
    inter = inter_w * inter_h
    iou = inter / (w1 * h1 + w2 * h2 - inter)
    enclose_w = torch.max(cx1 + w1 / 2, cx2 + w2 / 2) - torch.min(
        cx1 - w1 / 2, cx2 - w2 / 2
    )
    enclose_h = torch.max(cy1 + h1 / 2, cy2 + h2 / 2) - torch.min(
        cy1 - h1 / 2, cy2 - h2 / 2
    )
    distance = ((cx1 - cx2) ** 2 + (cy1 - cy2) ** 2) / (
        enclose_w**2 + enclose_h**2
    )
    v = 4 / math.pi**2 * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    return iou, distance, v


BOX1 = [[0.4, 0.6, 1.3, 0.7], [1.0, 1.0, 2.0, 3.0]]
BOX2 = [[0.5, 0.5, 1.0, 1.2], [1.5, 0.2, 2.5, 1.0]]


def test_ciou_gradient_holds_alpha_constant():
    box1 = torch.tensor(BOX1, dtype=torch.float64, requires_grad=True)
    box2 = torch.tensor(BOX2, dtype=torch.float64)
    with torch.no_grad():
        iou, _, v = _ciou_terms(box1, box2)
        alpha = v / (v - iou + 1)

    def ciou_with_fixed_alpha(b1: torch.Tensor) -> torch.Tensor:
        iou, distance, v = _ciou_terms(b1, box2)
        return iou - distance - alpha * v

    # The reference is correct: its autograd matches finite differences.
    assert torch.autograd.gradcheck(ciou_with_fixed_alpha, (box1,))

    (expected,) = torch.autograd.grad(ciou_with_fixed_alpha(box1).sum(), box1)
    (actual,) = torch.autograd.grad(bbox_ciou(box1, box2, eps=0.0).sum(), box1)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    assert (v > 1e-3).all(), 'v near 0 would hide a gradient through alpha'


def test_ciou_gradcheck_equal_shapes():
    # Equal aspect ratios give v = 0 and dv = 0, so the constant alpha
    # changes nothing and CIoU's autograd is its exact gradient.
    box1 = torch.tensor(
        [[0.4, 0.6, 1.3, 0.7], [1.0, 1.0, 2.0, 3.0]],
        dtype=torch.float64,
        requires_grad=True,
    )
    box2 = torch.tensor(
        [[0.5, 0.5, 1.3, 0.7], [1.5, 0.2, 2.0, 3.0]], dtype=torch.float64
    )
    assert torch.autograd.gradcheck(
        lambda b1: bbox_ciou(b1, box2, eps=0.0), (box1,)
    )


def test_ciou_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match='same shape'):
        bbox_ciou(torch.zeros(3, 4), torch.zeros(2, 4))
