"""Tests for YOLOv5Assigner on hand-made boxes and anchors.

Every expected value below is worked out by hand in the comments. Box
sizes and centres are given in cells of the level (stride 8 px). Ratios
are box side / anchor side, and a ratio r counts as max(r, 1 / r).
"""

from __future__ import annotations

import pytest
import torch

from gabfusion_mm.models.task_modules import YOLOv5Assigner

STRIDE = 8
FEATMAP_SIZE = (10, 10)  # an 80 x 80 px input
# Anchors in px; in cells: (1, 1), (4, 1), (10, 10).
ANCHORS = torch.tensor([[8.0, 8.0], [32.0, 8.0], [80.0, 80.0]])


def _box(cx: float, cy: float, w: float, h: float) -> list[float]:
    """(x1, y1, x2, y2) in px of a box given in cells."""
    return [
        (cx - w / 2) * STRIDE,
        (cy - h / 2) * STRIDE,
        (cx + w / 2) * STRIDE,
        (cy + h / 2) * STRIDE,
    ]


# Box A, image 0, label 3: centre (4.25, 4.75), size (3, 2).
#   anchor 0 (1, 1): r = (3, 2), worst 3 < 4, match.
#   anchor 1 (4, 1): r = (0.75, 2) -> (1.33, 2), worst 2, match.
#   anchor 2 (10, 10): r = (0.3, 0.2) -> (3.33, 5), worst 5, no match.
#   x: 4.25 % 1 = 0.25 < 0.5 and 4.25 > 1, so the left cell x = 3 too.
#   y: 4.75 % 1 = 0.75, not near the top; (10 - 4.75) % 1 = 0.25 < 0.5 and
#      10 - 4.75 > 1, so the lower cell y = 5 too.
#   Cells (x, y) and centre offsets: (4, 4) -> (0.25, 0.75),
#   (3, 4) -> (1.25, 0.75), (4, 5) -> (0.25, -0.25). 2 x 3 = 6 positives.
# Box D, image 0, label 7: centre (7.5, 7.5), size (4, 4).
#   anchor 0: worst 4, not < 4; anchor 1: r = (1, 4), worst 4, no match;
#   anchor 2: r = 0.4 -> 2.5, match.
#   7.5 % 1 = 0.5 is not < 0.5 and (10 - 7.5) % 1 = 0.5 neither: the
#   centre cell (7, 7) only, offset (0.5, 0.5). 1 positive.
# Box B, image 1, label 1: centre (0.25, 9.75), size (0.5, 0.5).
#   anchor 0: r = 0.5 -> 2, match; anchor 1: r = (0.125, 0.5) -> 8, no;
#   anchor 2: 20, no.
#   x: 0.25 % 1 < 0.5 but 0.25 <= 1 (the left cell is outside the map);
#   y: (10 - 9.75) = 0.25 <= 1 (the lower cell is outside). Centre cell
#   (0, 9) only, offset (0.25, 0.75). 1 positive.
# Box C, image 1, label 2: centre (6.625, 2.125), size (3, 3.5).
#   anchor 0: worst 3.5; anchor 1: r = (0.75, 3.5), worst 3.5;
#   anchor 2: r = (0.3, 0.35) -> (3.33, 2.86), worst 3.33: all match.
#   x: 6.625 % 1 = 0.625, not left; (10 - 6.625) % 1 = 0.375 < 0.5, so the
#      right cell x = 7. y: 2.125 % 1 = 0.125 < 0.5 and 2.125 > 1, so the
#      upper cell y = 1.
#   Cells and offsets: (6, 2) -> (0.625, 0.125), (7, 2) -> (-0.375, 0.125),
#   (6, 1) -> (0.625, 1.125). 3 x 3 = 9 positives.
GT_BOXES = [
    _box(4.25, 4.75, 3, 2),  # A
    _box(7.5, 7.5, 4, 4),  # D
    _box(0.25, 9.75, 0.5, 0.5),  # B
    _box(6.625, 2.125, 3, 3.5),  # C
]
GT_LABELS = [3, 7, 1, 2]
IMG_INDS = [0, 0, 1, 1]
A, D, B, C = range(4)
ANCHOR_CELLS = [(1, 1), (4, 1), (10, 10)]

# (image, anchor, cell_y, cell_x, gt, offset_x, offset_y)
EXPECTED = (
    [(0, a, 4, 4, A, 0.25, 0.75) for a in (0, 1)]
    + [(0, a, 4, 3, A, 1.25, 0.75) for a in (0, 1)]
    + [(0, a, 5, 4, A, 0.25, -0.25) for a in (0, 1)]
    + [(0, 2, 7, 7, D, 0.5, 0.5)]
    + [(1, 0, 9, 0, B, 0.25, 0.75)]
    + [(1, a, 2, 6, C, 0.625, 0.125) for a in (0, 1, 2)]
    + [(1, a, 2, 7, C, -0.375, 0.125) for a in (0, 1, 2)]
    + [(1, a, 1, 6, C, 0.625, 1.125) for a in (0, 1, 2)]
)
GT_SIZES = {A: (3, 2), D: (4, 4), B: (0.5, 0.5), C: (3, 3.5)}


def _rows(targets) -> list[tuple]:
    """Positives as sorted (image, anchor, y, x, gt, off_x, off_y) rows."""
    rows = zip(
        targets.img_inds.tolist(),
        targets.anchor_inds.tolist(),
        targets.cells_y.tolist(),
        targets.cells_x.tolist(),
        targets.gt_inds.tolist(),
        targets.boxes[:, 0].tolist(),
        targets.boxes[:, 1].tolist(),
    )
    return sorted(rows)


def _assign(
    assigner: YOLOv5Assigner,
    boxes=GT_BOXES,
    labels=GT_LABELS,
    img_inds=IMG_INDS,
):
    return assigner.assign(
        torch.tensor(boxes, dtype=torch.float32),
        torch.tensor(labels),
        torch.tensor(img_inds),
        ANCHORS,
        STRIDE,
        FEATMAP_SIZE,
    )


def test_assigner_hand_worked_positives():
    targets = _assign(YOLOv5Assigner())

    assert targets.num_pos == 17
    assert _rows(targets) == sorted(EXPECTED)


def test_assigner_hand_worked_sizes_labels_anchors():
    targets = _assign(YOLOv5Assigner())

    for i in range(targets.num_pos):
        gt = targets.gt_inds[i].item()
        anchor = targets.anchor_inds[i].item()
        assert targets.boxes[i, 2:].tolist() == list(GT_SIZES[gt])
        assert targets.labels[i].item() == GT_LABELS[gt]
        assert targets.anchors_wh[i].tolist() == list(ANCHOR_CELLS[anchor])


def test_assigner_without_neighbours():
    # Margin 0: only the centre cells, 2 + 1 + 1 + 3 = 7 positives.
    targets = _assign(YOLOv5Assigner(neighbour_margin=0.0))

    expected = [
        row
        for row in EXPECTED
        if row[5:] in {(0.25, 0.75), (0.5, 0.5), (0.625, 0.125)}
    ]
    assert len(expected) == 7
    assert _rows(targets) == sorted(expected)


def test_assigner_lower_ratio_threshold():
    # Threshold 3: A keeps anchor 1 only (worst ratios 3 and 2), D keeps
    # anchor 2 (2.5), B keeps anchor 0 (2), C loses all (3.5, 3.5, 3.33).
    targets = _assign(YOLOv5Assigner(anchor_ratio_thr=3.0))

    expected = [
        row
        for row in EXPECTED
        if row[4] in (D, B) or (row[4] == A and row[1] == 1)
    ]
    assert _rows(targets) == sorted(expected)


def test_assigner_centre_on_cell_border():
    # Centre (3, 5.5), size (1, 1), anchor 0 only. x: 3 % 1 = 0 < 0.5, so
    # the left cell 2; (10 - 3) % 1 = 0 < 0.5 also counts as near the right
    # border, but 3 + 0.5 floors back to cell 3: YOLOv5 then assigns the
    # centre cell twice. y: 5.5 is on the centre line, no neighbour.
    targets = _assign(
        YOLOv5Assigner(), boxes=[_box(3, 5.5, 1, 1)], labels=[0], img_inds=[0]
    )

    assert _rows(targets) == sorted(
        [
            (0, 0, 5, 3, 0, 0.0, 0.5),
            (0, 0, 5, 2, 0, 1.0, 0.5),
            (0, 0, 5, 3, 0, 0.0, 0.5),
        ]
    )


def test_assigner_other_stride():
    # Stride 16 on a 5 x 5 map. Box A becomes centre (2.125, 2.375), size
    # (1.5, 1) in cells, and the anchors (0.5, 0.5), (2, 0.5), (5, 5).
    # Ratios: anchor 0 (3, 2) match, anchor 1 (1.33, 2) match, anchor 2
    # (3.33, 5) no match.
    # x: 0.125 < 0.5, so the left cell 1. y: 0.375 < 0.5, so the upper
    # cell 1. 2 anchors x 3 cells = 6 positives.
    targets = YOLOv5Assigner().assign(
        torch.tensor([GT_BOXES[A]]),
        torch.tensor([3]),
        torch.tensor([0]),
        ANCHORS,
        16,
        (5, 5),
    )

    expected = []
    for anchor in (0, 1):
        expected += [
            (0, anchor, 2, 2, 0, 0.125, 0.375),
            (0, anchor, 2, 1, 0, 1.125, 0.375),
            (0, anchor, 1, 2, 0, 0.125, 1.375),
        ]
    assert _rows(targets) == sorted(expected)


def test_assigner_no_boxes():
    targets = YOLOv5Assigner().assign(
        torch.zeros(0, 4),
        torch.zeros(0, dtype=torch.long),
        torch.zeros(0, dtype=torch.long),
        ANCHORS,
        STRIDE,
        FEATMAP_SIZE,
    )

    assert targets.num_pos == 0
    assert targets.boxes.shape == (0, 4)


@pytest.mark.parametrize(
    'kwargs, message',
    [
        (dict(anchor_ratio_thr=1.0), 'anchor_ratio_thr=1.0'),
        (dict(neighbour_margin=0.7), 'neighbour_margin=0.7'),
    ],
)
def test_assigner_rejects_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        YOLOv5Assigner(**kwargs)
