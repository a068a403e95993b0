"""Tests for YOLOv5BBoxCoder."""

from __future__ import annotations

import math

import torch

from gabfusion_mm.models.task_modules import YOLOv5BBoxCoder


def test_decode_hand_worked():
    # Logits 0: sigmoid 0.5, so centre = (1 - 0.5 + cell) * stride and
    # size = 1^2 * anchor. Cell (5, 3), stride 8, anchor (16, 30):
    # centre (44, 28), box (36, 13, 52, 43).
    # Logits (ln 3, -ln 3, ln 3, 0): sigmoid (0.75, 0.25, 0.75, 0.5), so
    # centre ((1.5 - 0.5 + 5) * 8, (0.5 - 0.5 + 3) * 8) = (48, 24) and
    # size (1.5^2 * 16, 1 * 30) = (36, 30): box (30, 9, 66, 39).
    coder = YOLOv5BBoxCoder()
    log3 = math.log(3)
    pred = torch.tensor(
        [[0.0, 0.0, 0.0, 0.0], [log3, -log3, log3, 0.0]], dtype=torch.float64
    )

    boxes = coder.decode(
        pred,
        torch.tensor([16.0, 30.0], dtype=torch.float64),
        torch.tensor([5.0, 3.0], dtype=torch.float64),
        stride=8,
    )

    expected = torch.tensor(
        [[36.0, 13.0, 52.0, 43.0], [30.0, 9.0, 66.0, 39.0]],
        dtype=torch.float64,
    )
    torch.testing.assert_close(boxes, expected)


def test_decode_ranges():
    # Centre offsets lie in (-0.5, 1.5) cells and sizes in (0, 4) anchors.
    coder = YOLOv5BBoxCoder()
    pred = torch.tensor([[-30.0, 30.0, -30.0, 30.0]])

    box = coder.decode_cxcywh(pred, torch.tensor([2.0, 3.0]), torch.zeros(2))

    torch.testing.assert_close(box, torch.tensor([[-0.5, 1.5, 0.0, 12.0]]))


def test_encode_inverts_decode():
    coder = YOLOv5BBoxCoder()
    generator = torch.Generator().manual_seed(0)
    pred = torch.randn(100, 4, generator=generator, dtype=torch.float64)
    anchors = 4 + 60 * torch.rand(
        100, 2, generator=generator, dtype=torch.float64
    )
    cells = torch.randint(0, 20, (100, 2), generator=generator).double()

    boxes = coder.decode(pred, anchors, cells, stride=16)
    logits = coder.encode(boxes, anchors, cells, stride=16)

    torch.testing.assert_close(logits, pred, rtol=1e-6, atol=1e-6)


def test_encode_clamps_out_of_range_boxes():
    # A box 5 anchors wide has no logit; it encodes to the largest size.
    coder = YOLOv5BBoxCoder(eps=1e-6)

    logits = coder.encode(
        torch.tensor([[0.0, 0.0, 50.0, 10.0]]),
        torch.tensor([10.0, 10.0]),
        torch.zeros(2),
        stride=8,
    )

    assert torch.isfinite(logits).all()
    assert logits[0, 2].item() == torch.logit(torch.tensor(1 - 1e-6)).item()
