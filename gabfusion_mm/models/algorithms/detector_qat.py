"""Quantization-aware training of mmdet single-stage detectors."""

from __future__ import annotations

import copy
from typing import Any

import torch
from mmdet.models.detectors import SingleStageDetector
from mmdet.models.utils import unpack_gt_instances
from mmengine.logging import print_log
from mmengine.runner.checkpoint import _load_checkpoint
from mmengine.structures import BaseDataElement
from mmrazor.models.algorithms import BaseAlgorithm
from mmrazor.models.algorithms.quantization import MMArchitectureQuant
from mmrazor.registry import MODELS
from mmrazor.structures.quantization import QConfigHandler
from torch import nn
from torch.ao.quantization import (
    disable_observer,
    enable_fake_quant,
)

_TRACED_MODE = 'tensor'


@MODELS.register_module()
class DetectorQAT(MMArchitectureQuant):
    """QAT of an mmdet single-stage detector with mmrazor's quantizers.

    mmrazor's ``MMArchitectureQuant`` traces one graph per forward mode;
    mmdet's dense heads cannot be traced in ``'loss'`` or ``'predict'``
    mode because they iterate over data samples. This algorithm traces at
    most the ``'tensor'`` mode (backbone, neck and head convolutions) and
    runs the head's ``loss_by_feat`` and ``predict_by_feat`` eagerly on the
    traced outputs. With a quantizer that does not trace (``traces_model``
    is False, as for ``TraceFreeQuantizer``), the detector is quantized in
    place and every mode runs it directly.

    QAT starts from a float checkpoint: ``MODELS.build`` does not call
    ``init_weights()``, and from random weights YOLOX's head lacks its
    prior bias and QAT ends at mAP 0. Without ``float_checkpoint`` the
    algorithm raises, unless ``allow_random_init=True``, which calls
    ``init_weights()`` instead.

    With an in-place quantizer, ``architecture`` is the quantized model, so
    mmrazor's ``QATValLoop`` would report it twice; use mmengine's
    ``ValLoop``. With a tracing quantizer, ``QATValLoop`` reports the
    quantized graph and the float ``architecture``.

    Args:
        architecture (dict | SingleStageDetector): The float detector or
            its config (nested mmdet configs need ``_scope_='mmdet'``).
        quantizer (dict | nn.Module): An mmrazor quantizer (TensorRT,
            OpenVINO, native) or ``TraceFreeQuantizer``.
        float_checkpoint (str, optional): Float checkpoint to start from;
            its ``state_dict`` must match the detector exactly.
            Defaults to None.
        allow_random_init (bool): Start from ``init_weights()`` when no
            checkpoint is given. Defaults to False.
        deploy_cfg (str | dict, optional): mmdeploy config for mmrazor's
            rewriter context while tracing. Defaults to None.
        data_preprocessor (dict, optional): Defaults to the detector's.
        forward_modes (tuple): Modes to trace; only ``('tensor',)`` is
            supported. Defaults to ``('tensor',)``.
        input_shapes (tuple): Shape of the dummy input that fixes the
            per-channel parameter shapes of traced fake quantizers.
            Defaults to ``(1, 3, 320, 320)``.
        init_cfg (dict, optional): Initialization config of the algorithm.
    """

    def __init__(
        self,
        architecture: dict | nn.Module,
        quantizer: dict | nn.Module,
        float_checkpoint: str | None = None,
        allow_random_init: bool = False,
        deploy_cfg: str | dict | None = None,
        data_preprocessor: dict | None = None,
        forward_modes: tuple = (_TRACED_MODE,),
        input_shapes: tuple = (1, 3, 320, 320),
        init_cfg: dict | None = None,
    ) -> None:
        # MMArchitectureQuant.__init__ traces every mode; set up here.
        BaseAlgorithm.__init__(self, architecture, data_preprocessor, init_cfg)
        if not isinstance(self.architecture, SingleStageDetector):
            raise TypeError(
                'DetectorQAT: architecture must be an mmdet '
                f'SingleStageDetector, got {type(self.architecture).__name__}.'
            )
        if tuple(forward_modes) != (_TRACED_MODE,):
            raise ValueError(
                f'DetectorQAT: forward_modes={forward_modes!r} is not '
                "supported; mmdet heads trace only in mode 'tensor', so use "
                "forward_modes=('tensor',)."
            )
        self.forward_modes = (_TRACED_MODE,)
        self.input_shapes = tuple(input_shapes)
        self.deploy_cfg = deploy_cfg
        if isinstance(quantizer, dict):
            quantizer = MODELS.build(quantizer)
        self.quantizer = quantizer
        self.trace_free = not getattr(quantizer, 'traces_model', True)
        self.float_checkpoint = float_checkpoint

        self._init_float_weights(float_checkpoint, allow_random_init)
        if self.trace_free:
            self.quantizer.prepare(self.architecture)
            self.qmodels = nn.ModuleDict()
        else:
            self.quantizer.convert_batchnorm2d(self.architecture)
            self.qmodels = self._build_qmodels(self.architecture)
            self.reset_observer_and_fakequant_statistics(self)

    def _init_float_weights(
        self, float_checkpoint: str | None, allow_random_init: bool
    ) -> None:
        if float_checkpoint is None:
            if not allow_random_init:
                raise ValueError(
                    'DetectorQAT: float_checkpoint is not set. QAT from '
                    'random weights ends near mAP 0; give the float model '
                    'with --cfg-options model.float_checkpoint=PATH, or set '
                    'model.allow_random_init=True to start from '
                    'init_weights() on purpose.'
                )
            print_log(
                'DetectorQAT: no float checkpoint; starting QAT from '
                'init_weights() because allow_random_init=True.',
                logger='current',
                level=30,
            )
            self.architecture.init_weights()
        else:
            self._load_float_checkpoint(float_checkpoint)
        # Keeps the runner's init_weights() from overwriting these weights.
        self.architecture._is_init = True

    def _load_float_checkpoint(self, path: str) -> None:
        try:
            checkpoint = _load_checkpoint(path, map_location='cpu')
        except FileNotFoundError as error:
            raise FileNotFoundError(
                f'DetectorQAT: float_checkpoint={path!r} does not exist; '
                'train the float model first or fix the path.'
            ) from error
        state_dict = checkpoint.get('state_dict', checkpoint)
        try:
            result = self.architecture.load_state_dict(
                state_dict, strict=False
            )
        except RuntimeError as error:  # shape mismatches
            raise RuntimeError(
                f'DetectorQAT: float_checkpoint={path!r} does not match the '
                f'detector: {error}'
            ) from error
        if result.missing_keys or result.unexpected_keys:
            raise RuntimeError(
                f'DetectorQAT: float_checkpoint={path!r} does not match the '
                f'detector: {len(result.missing_keys)} missing keys '
                f'(first: {result.missing_keys[:3]}), '
                f'{len(result.unexpected_keys)} unexpected keys (first: '
                f'{result.unexpected_keys[:3]}). Give a checkpoint of the '
                'float detector of this config, not a QAT checkpoint.'
            )
        print_log(
            f'DetectorQAT: loaded float weights from {path}',
            logger='current',
        )

    def _build_qmodels(self, model: nn.Module) -> nn.ModuleDict:
        """Trace the ``'tensor'`` mode; nothing to trace when in place."""
        if self.trace_free:
            return nn.ModuleDict()
        return super()._build_qmodels(model)

    def sync_qparams(self, src_mode: str) -> None:
        """Copy quantization parameters between traced graphs.

        Only one graph is traced, so there is nothing to copy.
        """

    def forward(
        self,
        inputs: torch.Tensor,
        data_samples: list[BaseDataElement] | None = None,
        mode: str = 'tensor',
    ) -> Any:
        """Run the quantized detector in ``mode``.

        Args:
            inputs (Tensor): Images of shape ``(N, 3, H, W)``.
            data_samples (list[DetDataSample], optional): Annotations and
                image metas; required for ``'loss'`` and ``'predict'``.
            mode (str): ``'loss'``, ``'predict'`` or ``'tensor'``.

        Returns:
            dict | list | tuple: Losses, predictions or head outputs.
        """
        if self.trace_free:
            return self.architecture(inputs, data_samples, mode)
        outs = self.qmodels[_TRACED_MODE](inputs, data_samples, _TRACED_MODE)
        head = self.architecture.bbox_head
        if mode == 'tensor':
            return outs
        if mode == 'loss':
            gt_instances, gt_ignore, img_metas = unpack_gt_instances(
                data_samples
            )
            return head.loss_by_feat(*outs, gt_instances, img_metas, gt_ignore)
        if mode == 'predict':
            img_metas = [sample.metainfo for sample in data_samples]
            results = head.predict_by_feat(
                *outs, batch_img_metas=img_metas, rescale=True
            )
            return self.architecture.add_pred_to_datasample(
                data_samples, results
            )
        raise RuntimeError(
            f'DetectorQAT: invalid mode {mode!r}; use loss, predict or tensor.'
        )

    def get_deploy_model(self) -> nn.Module:
        """Return the model to export, with fake quantization fixed.

        In place: a copy of the quantized detector in eval mode with fake
        quantization on and initialization off. Traced: mmrazor's deploy
        preparation of the ``'tensor'`` graph (``MMArchitectureQuant``
        hard-codes the ``'predict'`` mode, which mmdet heads cannot trace).
        """
        if self.trace_free:
            model = copy.deepcopy(self.architecture).eval()
            model.apply(enable_fake_quant)
            model.apply(disable_observer)
            return model
        return self._traced_deploy_model()

    def _traced_deploy_model(self) -> nn.Module:
        device = next(self.parameters()).device
        state_dict = self.qmodels[_TRACED_MODE].state_dict()
        float_model = self.architecture
        self.quantizer.convert_batchnorm2d(float_model)
        observed = self.quantizer.prepare(float_model, {'mode': _TRACED_MODE})
        observed.load_state_dict(state_dict)
        self.quantizer.post_process_for_deploy(
            observed,
            device=device,
            keep_w_fake_quant=True,
            update_weight_with_fakequant=True,
        )
        # Backends expect torch's plain FakeQuantize on activations.
        for node in observed.graph.nodes:
            if 'activation_post_process_' not in node.name:
                continue
            fake_quant = getattr(observed, node.target)
            replacement = QConfigHandler.replace_fakequant(
                fake_quant, self.quantizer.qconfig.a_qscheme
            )
            setattr(observed, node.target, replacement)
        observed.apply(disable_observer)
        return observed
