"""RTMDet's CSPNeXtPAFPN with GABFusion at its four concatenations."""

from __future__ import annotations

from collections.abc import Sequence

from mmdet.models.necks import CSPNeXtPAFPN
from mmdet.registry import MODELS

from .gab_pafpn_mixin import GABPAFPNMixin


@MODELS.register_module()
class GABCSPNeXtPAFPN(GABPAFPNMixin, CSPNeXtPAFPN):
    """CSPNeXtPAFPN whose concatenations are GABFusion nodes.

    GABFusion (gradient-aware balanced feature fusion; Wang and
    Wang, arXiv:2511.05898). The layers and their state dict keys are
    mmdet's ``CSPNeXtPAFPN``. The neck adds ``top_down_fusions`` and
    ``bottom_up_fusions`` (see :class:`GABPAFPNMixin` for the branch
    order). It also crops an upsampled map that is one pixel larger than
    its lateral map, so inputs whose sides are not multiples of 32 work.

    Args:
        in_channels (Sequence[int]): Channels of each input level.
        out_channels (int): Channels of every output level.
        fusion_cfg (dict, optional): Config of every fusion node, passed to
            :func:`~gabfusion_mm.models.layers.build_fusion`.
            ``dict(mode='concat')`` or None gives exactly the stock neck.
            Defaults to ``dict(mode='learnable')``.
        **kwargs: Other arguments of mmdet's ``CSPNeXtPAFPN``
            (``num_csp_blocks``, ``use_depthwise``, ``expand_ratio``,
            ``upsample_cfg``, ``conv_cfg``, ``norm_cfg``, ``act_cfg``,
            ``init_cfg``).
    """

    stock_type = 'CSPNeXtPAFPN'

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        fusion_cfg: dict | None = dict(mode='learnable'),  # noqa: B006
        **kwargs,
    ) -> None:
        super().__init__(in_channels, out_channels, **kwargs)
        self.fusion_cfg = fusion_cfg
        self._build_fusions(fusion_cfg)
