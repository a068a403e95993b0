"""Evaluate an exported detector with onnxruntime on a config's test set.

onnxruntime runs the network up to the raw head outputs (the ``'tensor'``
mode of an mmdet detector). The boxes are decoded and filtered by NMS in
PyTorch with the head's own ``predict_by_feat``, and the config's test
evaluator (for COCO128, mmdet's ``CocoMetric``) computes the metrics, so
the numbers compare directly with ``tools/test.py`` on the PyTorch model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort
import torch
from mmengine.config import Config
from mmengine.evaluator import Evaluator
from mmengine.logging import print_log
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from torch import Tensor, nn

# Key of the ONNX metadata entry that stores how the flat graph outputs
# group into the tuple of per-level lists that the head's forward returns.
OUTPUT_GROUPS_KEY = 'gabfusion_mm.output_groups'


def detector_config(cfg: Config) -> dict:
    """Return the plain detector config of a detector or algorithm config.

    Algorithm configs (QAT, QAT with distillation) hold the detector as
    ``model.architecture``; plain mmdet configs are returned unchanged.

    Args:
        cfg (Config): A full config.

    Returns:
        dict: The detector's model config.
    """
    model_cfg = cfg.model
    if 'architecture' in model_cfg:
        return model_cfg.architecture
    return model_cfg


def build_float_detector(cfg: Config) -> nn.Module:
    """Build the unquantized detector of a config, in eval mode.

    Only its data preprocessor and its head's decoding are used for ONNX
    evaluation, so no weights are loaded.

    Args:
        cfg (Config): A detector or algorithm config.

    Returns:
        nn.Module: The mmdet detector.
    """
    from mmdet.registry import MODELS

    init_default_scope(cfg.get('default_scope', 'mmdet'))
    return MODELS.build(detector_config(cfg)).eval()


def group_outputs(
    outputs: Sequence[Tensor], groups: Sequence[int]
) -> tuple[list[Tensor], ...]:
    """Split flat graph outputs into the head's tuple of per-level lists.

    Args:
        outputs (Sequence[Tensor]): Graph outputs in order.
        groups (Sequence[int]): Number of tensors in each group.

    Returns:
        tuple[list[Tensor], ...]: For YOLOX, ``(cls_scores, bbox_preds,
        objectnesses)``, each a list of ``(N, C, H_i, W_i)`` tensors.
    """
    if sum(groups) != len(outputs):
        raise ValueError(
            f'The ONNX model has {len(outputs)} outputs but its '
            f'{OUTPUT_GROUPS_KEY} metadata {list(groups)} adds up to '
            f'{sum(groups)}; export the model again with '
            'gabfusion_mm.deploy.export_detector_onnx.'
        )
    grouped = []
    start = 0
    for size in groups:
        grouped.append(list(outputs[start : start + size]))
        start += size
    return tuple(grouped)


class ONNXDetector:
    """An exported detector run by onnxruntime and decoded in PyTorch.

    Args:
        onnx_path (str): Model written by
            :func:`gabfusion_mm.deploy.export_detector_onnx`, whose metadata
            stores the output grouping.
        detector (nn.Module): The mmdet detector of the same config; its
            ``data_preprocessor`` prepares the images and its
            ``bbox_head.predict_by_feat`` decodes the outputs.
        num_threads (int, optional): onnxruntime intra-op threads. Defaults
            to None (onnxruntime's default, one per core).
        providers (Sequence[str]): onnxruntime execution providers.
            Defaults to ``('CPUExecutionProvider',)``.
    """

    def __init__(
        self,
        onnx_path: str,
        detector: nn.Module,
        num_threads: int | None = None,
        providers: Sequence[str] = ('CPUExecutionProvider',),
    ) -> None:
        options = ort.SessionOptions()
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        self.session = ort.InferenceSession(
            onnx_path, options, providers=list(providers)
        )
        graph_input = self.session.get_inputs()[0]
        self.input_name = graph_input.name
        # Fixed dimensions are ints; dynamic ones are names or None.
        self.input_shape = list(graph_input.shape)
        metadata = self.session.get_modelmeta().custom_metadata_map
        if OUTPUT_GROUPS_KEY not in metadata:
            raise ValueError(
                f'{onnx_path} has no {OUTPUT_GROUPS_KEY!r} metadata, so its '
                'outputs cannot be mapped to the head; export it with '
                'tools/deploy/export_onnx.py.'
            )
        self.output_groups = json.loads(metadata[OUTPUT_GROUPS_KEY])
        self.detector = detector.eval()

    def forward(self, inputs: Tensor) -> tuple[list[Tensor], ...]:
        """Run the graph on preprocessed images.

        Args:
            inputs (Tensor): Images of shape (N, 3, H, W), as the data
                preprocessor returns them.

        Returns:
            tuple[list[Tensor], ...]: The raw head outputs, grouped as the
            head's ``forward`` returns them.
        """
        for axis in (1, 2, 3):
            fixed = self.input_shape[axis]
            if isinstance(fixed, int) and fixed != inputs.shape[axis]:
                raise ValueError(
                    f'The ONNX model takes inputs of shape {self.input_shape}'
                    f', got {list(inputs.shape)}. Its height and width are '
                    'fixed at export; use a test pipeline that pads every '
                    'image to that size (e.g. Pad with pad_to_square=True).'
                )
        array = inputs.detach().cpu().numpy().astype(np.float32)
        outputs = self.session.run(None, {self.input_name: array})
        tensors = [torch.from_numpy(out) for out in outputs]
        return group_outputs(tensors, self.output_groups)

    @torch.no_grad()
    def predict(self, data: dict, rescale: bool = True) -> list:
        """Detect objects in a batch from a test dataloader.

        Args:
            data (dict): A batch with ``inputs`` and ``data_samples``.
            rescale (bool): Map boxes back to the original image size.
                Defaults to True.

        Returns:
            list[DetDataSample]: The data samples with ``pred_instances``.
        """
        data = self.detector.data_preprocessor(data, False)
        samples = data['data_samples']
        outs = self.forward(data['inputs'])
        metas = [sample.metainfo for sample in samples]
        results = self.detector.bbox_head.predict_by_feat(
            *outs, batch_img_metas=metas, rescale=rescale
        )
        return self.detector.add_pred_to_datasample(samples, results)


def evaluate_onnx(
    cfg: Config, onnx_path: str, num_threads: int | None = None
) -> dict[str, float]:
    """Evaluate an exported detector on the test set of ``cfg``.

    Args:
        cfg (Config): Config with ``test_dataloader`` and
            ``test_evaluator``; its model (or ``model.architecture``) is the
            detector that was exported.
        onnx_path (str): The exported model.
        num_threads (int, optional): onnxruntime intra-op threads.
            Defaults to None.

    Returns:
        dict[str, float]: The evaluator's metrics, e.g.
        ``coco/bbox_mAP`` and ``coco/bbox_mAP_50``.
    """
    detector = build_float_detector(cfg)
    runner = ONNXDetector(onnx_path, detector, num_threads=num_threads)
    dataloader = Runner.build_dataloader(cfg.test_dataloader)
    evaluator = Evaluator(cfg.test_evaluator)
    evaluator.dataset_meta = dataloader.dataset.metainfo

    total = len(dataloader)
    log_every = max(1, total // 10)
    start = time.perf_counter()
    for index, batch in enumerate(dataloader, 1):
        samples = runner.predict(batch)
        evaluator.process(data_samples=samples, data_batch=batch)
        if index % log_every == 0 or index == total:
            elapsed = time.perf_counter() - start
            eta = elapsed / index * (total - index)
            print_log(
                f'ONNX evaluation: batch {index}/{total}, '
                f'{elapsed:.0f} s elapsed, ETA {eta:.0f} s',
                logger='current',
            )
    return evaluator.evaluate(len(dataloader.dataset))
