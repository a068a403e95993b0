"""Target assignment of YOLOv5 (v6.0 and later)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from mmdet.registry import TASK_UTILS
from mmdet.structures.bbox import bbox_xyxy_to_cxcywh
from torch import Tensor


@dataclass
class YOLOv5LevelTargets:
    """Positive samples of one pyramid level, one row per sample.

    Attributes:
        img_inds (Tensor): Image index in the batch, shape (P,).
        anchor_inds (Tensor): Anchor index within the level, shape (P,).
        cells_y (Tensor): Row of the predicting cell, shape (P,).
        cells_x (Tensor): Column of the predicting cell, shape (P,).
        boxes (Tensor): Target (cx, cy, w, h) in cells, with the centre
            relative to the top-left corner of the predicting cell, so it
            lies in [-0.5, 1.5]. Shape (P, 4).
        labels (Tensor): Class index, shape (P,).
        anchors_wh (Tensor): Size of the matched anchor in cells, shape
            (P, 2).
        gt_inds (Tensor): Index of the ground-truth box in the flat input,
            shape (P,).
    """

    img_inds: Tensor
    anchor_inds: Tensor
    cells_y: Tensor
    cells_x: Tensor
    boxes: Tensor
    labels: Tensor
    anchors_wh: Tensor
    gt_inds: Tensor

    @property
    def num_pos(self) -> int:
        """Number of positive samples."""
        return int(self.img_inds.numel())


@TASK_UTILS.register_module()
class YOLOv5Assigner:
    """Assign ground-truth boxes to anchors and cells as YOLOv5 does.

    YOLOv5 (Jocher et al., https://github.com/ultralytics/yolov5, v6.0)
    assigns by shape, not IoU. On each level:

    1. A box matches every anchor whose width and height ratios to it,
       taken in whichever direction exceeds 1, both stay below
       ``anchor_ratio_thr``: ``max(r, 1 / r) < thr`` with
       ``r = box_wh / anchor_wh``. A box may match several anchors on
       several levels, or none.
    2. Each match is predicted by the cell that contains the box centre and
       by up to two neighbours: the left (upper) cell when the centre lies
       in the left (upper) ``neighbour_margin`` of its cell, the right
       (lower) cell when it lies in the right (lower) margin. Neighbours
       are skipped within one cell of the feature map border, which keeps
       every predicting cell inside the map.

    With the default margin of 0.5, a centre more than one cell from the
    map border and on no cell border or centre line gets exactly three
    cells.

    Args:
        anchor_ratio_thr (float): Largest allowed ratio between a box side
            and the matching anchor side. Must be above 1. Defaults to 4.0,
            the range of the decoded size (0, 4) anchors.
        neighbour_margin (float): Fraction of a cell from its border within
            which the centre also goes to the neighbour across that border.
            0 keeps the centre cell only. Defaults to 0.5.
    """

    def __init__(
        self, anchor_ratio_thr: float = 4.0, neighbour_margin: float = 0.5
    ) -> None:
        if anchor_ratio_thr <= 1:
            raise ValueError(
                f'YOLOv5Assigner: anchor_ratio_thr={anchor_ratio_thr} must '
                'be above 1, because a ratio of 1 is an exact match'
            )
        if not 0 <= neighbour_margin <= 0.5:
            raise ValueError(
                f'YOLOv5Assigner: neighbour_margin={neighbour_margin} must '
                'lie in [0, 0.5], because a centre can be near only one '
                'border of a cell along each axis'
            )
        self.anchor_ratio_thr = anchor_ratio_thr
        self.neighbour_margin = neighbour_margin

    def assign(
        self,
        gt_bboxes: Tensor,
        gt_labels: Tensor,
        img_inds: Tensor,
        anchors_wh: Tensor,
        stride: float,
        featmap_size: tuple[int, int],
    ) -> YOLOv5LevelTargets:
        """Assign the boxes of a batch to the anchors of one level.

        Args:
            gt_bboxes (Tensor): Boxes (x1, y1, x2, y2) in input pixels of
                every image of the batch, shape (M, 4).
            gt_labels (Tensor): Class index of each box, shape (M,).
            img_inds (Tensor): Image index of each box, shape (M,).
            anchors_wh (Tensor): Anchor sizes of the level in input pixels,
                shape (A, 2).
            stride (float): Input pixels per cell of the level.
            featmap_size (tuple[int, int]): Height and width of the level
                in cells.

        Returns:
            YOLOv5LevelTargets: The positive samples.
        """
        anchors_cells = anchors_wh.to(gt_bboxes) / stride
        gt_cells = bbox_xyxy_to_cxcywh(gt_bboxes) / stride

        # Step 1: shape matching, anchor-major as in YOLOv5.
        ratio = gt_cells[None, :, 2:] / anchors_cells[:, None]
        worst = torch.max(ratio, 1 / ratio).amax(dim=-1)
        anchor_inds, gt_inds = (worst < self.anchor_ratio_thr).nonzero(
            as_tuple=True
        )

        # Step 2: the centre cell and its near neighbours.
        centres = gt_cells[gt_inds, :2]
        cells, keep = self._predicting_cells(centres, featmap_size)
        num_cells = keep.size(0)
        anchor_inds = anchor_inds.repeat(num_cells, 1)[keep]
        gt_inds = gt_inds.repeat(num_cells, 1)[keep]
        centres = centres.repeat(num_cells, 1, 1)[keep]

        boxes = torch.cat([centres - cells, gt_cells[gt_inds, 2:]], dim=1)
        return YOLOv5LevelTargets(
            img_inds=img_inds[gt_inds].long(),
            anchor_inds=anchor_inds,
            cells_y=cells[:, 1],
            cells_x=cells[:, 0],
            boxes=boxes,
            labels=gt_labels[gt_inds].long(),
            anchors_wh=anchors_cells[anchor_inds],
            gt_inds=gt_inds,
        )

    def _predicting_cells(
        self, centres: Tensor, featmap_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor]:
        """Find the centre cell and the near neighbours of each centre.

        Args:
            centres (Tensor): Box centres (x, y) in cells, shape (P, 2).
            featmap_size (tuple[int, int]): Height and width in cells.

        Returns:
            tuple[Tensor, Tensor]: The chosen cells (column, row) as
            int64, shape (Q, 2), grouped by the candidate they come from
            (centre, left, up, right, down), and the mask of chosen
            candidates, shape (5, P).
        """
        height, width = featmap_size
        margin = self.neighbour_margin
        size = centres.new_tensor([width, height])
        from_far_side = size - centres

        near_low = (centres % 1 < margin) & (centres > 1)
        near_high = (from_far_side % 1 < margin) & (from_far_side > 1)
        keep = torch.stack(
            [
                torch.ones_like(near_low[:, 0]),
                near_low[:, 0],
                near_low[:, 1],
                near_high[:, 0],
                near_high[:, 1],
            ]
        )

        # Shifting the centre by the margin and flooring gives the cell
        # across the near border. A centre exactly on a border counts as
        # near both sides; its "high" candidate floors back to its own
        # cell, as in YOLOv5.
        shifts = centres.new_tensor(
            [[0, 0], [margin, 0], [0, margin], [-margin, 0], [0, -margin]]
        )
        cells = (centres[None] - shifts[:, None]).floor().long()[keep]
        cells[:, 0].clamp_(0, width - 1)
        cells[:, 1].clamp_(0, height - 1)
        return cells, keep
