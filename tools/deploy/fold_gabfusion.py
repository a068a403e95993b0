"""Fold the GABFusion nodes of a detector or of a QAT student.

Usage: python tools/deploy/fold_gabfusion.py CONFIG CHECKPOINT
       --out FILE [--calib-batches N] [--split {train,val}] [--one-pass]
       [--out-config FILE] [--report FILE.json]
       [--cfg-options KEY=VALUE ...]

A float detector config: freezes alpha, calibrates each LayerNorm into a
per-channel affine on N batches, folds both into the 1x1 convolutions that
consume the fused tensor and writes a checkpoint for the same config with
the stock mmdet neck (e.g. YOLOXPAFPN for GABYOLOXPAFPN). The checkpoint is
checked by loading it strictly into that stock model and comparing outputs.

A QAT config (``model.architecture`` set: QATDistill, or DetectorQAT with
TraceFreeQuantizer): builds the algorithm (its float checkpoint must exist;
DetectorQAT also takes ``model.float_checkpoint=None
model.allow_random_init=True``), loads the ``architecture.*`` entries of
CHECKPOINT strictly into the quantized student, folds it with its fake
quantizers off, then re-calibrates the weight and input quantizers of the
rewritten convolutions. The output ``state_dict`` has ``architecture.*``
keys and loads into the deployable config that --out-config writes: CONFIG
with the stock neck in ``model.architecture``, no ``model.distiller`` and
no GABFusionHook. The tool builds that config's model, loads the output
strictly and compares quantized outputs before it writes anything. Fine-tune
the result with tools/train.py on that config and ``load_from=FILE``.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import os.path as osp
from dataclasses import asdict

import torch
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmengine.runner import Runner, load_checkpoint, set_random_seed
from mmengine.runner.checkpoint import load_state_dict

import gabfusion_mm  # noqa: F401  (registers the GABFusion modules)
from gabfusion_mm.compat import atomic_write_bytes
from gabfusion_mm.deploy import (
    fold_gabfusion,
    fold_quantized_gabfusion,
    stock_model_config,
)
from gabfusion_mm.deploy.fold_gabfusion import flatten_tensors
from gabfusion_mm.deploy.qat_student import (
    deployable_qat_config,
    load_student_state,
    student_state_dict,
    without_fusion_hook,
)
from gabfusion_mm.models.quantizers import QuantConv2d

# Largest output difference between the folded student and the deployable
# config's model, relative to the largest output. Both run the same float32
# operations, so only round-off may separate them.
DEPLOYED_TOLERANCE = 1e-5


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Fold GABFusion into the stock neck of a detector or a '
        'QAT student'
    )

    parser.add_argument('config', help='config of the GABFusion model')
    parser.add_argument('checkpoint', help='checkpoint of that model')
    parser.add_argument(
        '--out', required=True, help='output checkpoint for the stock neck'
    )
    parser.add_argument(
        '--calib-batches',
        type=int,
        default=8,
        help='batches used to calibrate each LayerNorm into an affine and '
        'to re-calibrate fake quantizers (default 8)',
    )
    parser.add_argument(
        '--split',
        choices=['train', 'val'],
        default='train',
        help='dataloader of the config that supplies the calibration '
        'batches (default train)',
    )
    parser.add_argument(
        '--one-pass',
        action='store_true',
        help='calibrate all nodes in one pass over the unchanged model '
        'instead of node by node in execution order',
    )
    parser.add_argument(
        '--out-config',
        help='also write the stock-neck config that the output loads into',
    )
    parser.add_argument(
        '--report', help='also write the fold report to this JSON file'
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, e.g. model.neck.fusion_cfg.mode=...',
    )

    args = parser.parse_args()
    if args.calib_batches < 1:
        parser.error(f'--calib-batches must be >= 1, got {args.calib_batches}')
    return args


def load_calibration_inputs(cfg: Config, model, split: str, count: int):
    """Return ``count`` preprocessed input tensors from the config's data."""
    loader_cfg = copy.deepcopy(cfg.get(f'{split}_dataloader'))
    if loader_cfg is None:
        raise KeyError(f'the config has no {split}_dataloader')
    loader_cfg.num_workers = 0
    loader_cfg.persistent_workers = False
    # Seeds the sampler and the random transforms, so a rerun calibrates on
    # the same batches.
    set_random_seed(0)
    loader = Runner.build_dataloader(loader_cfg, seed=0)

    inputs = []
    with torch.no_grad():
        for batch in loader:
            inputs.append(model.data_preprocessor(batch, False)['inputs'])
            if len(inputs) == count:
                break
    return inputs


def tensor_forward(model, inputs):
    return model(inputs, mode='tensor')


def max_output_diff(first, second, inputs) -> float:
    """Return the largest absolute difference of two models' outputs."""
    with torch.no_grad():
        return max(
            (a - b).abs().max().item()
            for x in inputs
            for a, b in zip(
                flatten_tensors(tensor_forward(first, x)),
                flatten_tensors(tensor_forward(second, x)),
            )
        )


def save_outputs(args, checkpoint: dict, report: dict, out_cfg) -> None:
    """Write the checkpoint, the report and the config, each atomically."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    atomic_write_bytes(buffer.getvalue(), args.out)
    if args.report:
        text = json.dumps(report, indent=2)
        atomic_write_bytes(text.encode(), args.report)
    if args.out_config:
        atomic_write_bytes(out_cfg.pretty_text.encode(), args.out_config)


# -- float detectors -------------------------------------------------------


def build_stock_model(cfg: Config, folded, inputs) -> tuple:
    """Load the folded weights strictly into the stock-neck model.

    Returns:
        tuple: The stock model config, the stock model, and its largest
        output difference to the folded model on ``inputs``.
    """
    from mmdet.registry import MODELS

    stock_cfg = stock_model_config(cfg.model)
    stock = MODELS.build(stock_cfg)
    load_state_dict(stock, folded.state_dict(), strict=True)
    stock.eval()
    return stock_cfg, stock, max_output_diff(stock, folded, inputs)


def fold_metadata(args: argparse.Namespace, result, stock_cfg, count) -> dict:
    """Describe the fold for the ``meta`` entry of the checkpoint."""
    return dict(
        source_config=osp.abspath(args.config),
        source_checkpoint=osp.abspath(args.checkpoint),
        neck_type=stock_cfg['neck']['type'],
        calib_batches=count,
        calib_split=args.split,
        sequential=not args.one_pass,
        max_abs_diff=result.max_abs_diff,
        relative_error=result.relative_error,
        nodes={name: asdict(node) for name, node in result.nodes.items()},
    )


def print_node_table(nodes) -> None:
    print('| node | alpha | 1 - R^2 of LN affine | consumers |')
    print('| --- | --- | --- | --- |')
    for name, node in nodes.items():
        alpha = ', '.join(f'{a:.4f}' for a in node.alpha)
        print(
            f'| {name} | {alpha} | {node.residual_ratio:.4f} | '
            f'{", ".join(node.consumers)} |'
        )


def print_summary(result, stock_type: str, stock_diff: float) -> None:
    print_node_table(result.nodes)
    print(
        f'Largest output difference before vs after the fold: '
        f'{result.max_abs_diff:.6g}, relative L2 error '
        f'{result.relative_error:.4f} (LayerNorm as affine: '
        f'{result.max_abs_diff_affine:.6g}, fold round-off: '
        f'{result.max_abs_diff_rounding:.3g}; largest output '
        f'{result.max_abs_output:.4g})'
    )
    print(
        f'Stock {stock_type} model loaded the folded weights strictly; its '
        f'largest difference to the folded model: {stock_diff:.3g}'
    )


def fold_detector(args: argparse.Namespace, cfg: Config) -> None:
    """Fold a float GABFusion detector into a stock-neck checkpoint."""
    from mmdet.registry import MODELS

    model = MODELS.build(cfg.model)
    load_checkpoint(model, args.checkpoint, map_location='cpu', strict=True)
    model.eval()
    inputs = load_calibration_inputs(
        cfg, model, args.split, args.calib_batches
    )

    result = fold_gabfusion(
        model, inputs, tensor_forward, sequential=not args.one_pass
    )
    stock_cfg, stock, stock_diff = build_stock_model(cfg, model, inputs)

    meta = fold_metadata(args, result, stock_cfg, len(inputs))
    stock_full = copy.deepcopy(cfg)
    stock_full.model = stock_cfg
    stock_full.custom_hooks = without_fusion_hook(cfg.get('custom_hooks'))
    checkpoint = dict(
        meta=dict(gabfusion_fold=meta), state_dict=stock.state_dict()
    )
    save_outputs(args, checkpoint, meta, stock_full)

    print(
        f'Folded {len(result.nodes)} GABFusion nodes on {len(inputs)} '
        f'{args.split} batches'
    )
    print_summary(result, stock_cfg['neck']['type'], stock_diff)
    print(f'Saved {args.out}')


# -- QAT students ----------------------------------------------------------


def build_qat_student(cfg: Config, checkpoint: str) -> tuple:
    """Build the QAT algorithm and load the student of ``checkpoint``.

    Returns:
        tuple: The algorithm and its quantized student detector.
    """
    from mmdet.registry import MODELS

    algorithm = MODELS.build(cfg.model)
    student = algorithm.architecture
    if not any(isinstance(m, QuantConv2d) for m in student.modules()):
        raise ValueError(
            f'{cfg.filename}: the student has no QuantConv2d. Only students '
            'quantized in place (TraceFreeQuantizer) can be folded, not '
            'traced ones.'
        )
    # The state dict of a QAT checkpoint contains the quantizer's state.
    student.load_state_dict(load_student_state(checkpoint), strict=True)
    algorithm.eval()
    return algorithm, student


def check_deployed(out_cfg: Config, state: dict, student, inputs) -> float:
    """Load ``state`` into ``out_cfg``'s model and compare its outputs.

    Returns:
        float: Largest output difference to the folded student.
    """
    from mmdet.registry import MODELS

    deployed = MODELS.build(out_cfg.model)
    result = deployed.load_state_dict(state, strict=False)
    missing = [
        key for key in result.missing_keys if not key.startswith('teacher.')
    ]
    if missing or result.unexpected_keys:
        raise RuntimeError(
            f'The folded state dict does not load into the deployable '
            f'config: missing keys {missing[:5]}, unexpected keys '
            f'{result.unexpected_keys[:5]}. The deployable config must '
            f'build the student of the source config with the stock neck.'
        )
    deployed.eval()
    return max_output_diff(deployed.architecture, student, inputs)


def print_qat_summary(result, deployed_diff: float) -> None:
    print_node_table(result.nodes)
    print(
        '| consumer | weight step (mean) old -> new | input step old -> new |'
    )
    print('| --- | --- | --- |')
    for name, change in result.consumers.items():
        print(f'| {name} | {_steps(change.weight)} | {_steps(change.input)} |')
    print(
        f'Relative L2 error of the quantized outputs against the unfolded '
        f'student: {result.relative_error_without_recalibration:.4f} '
        f'without quantizer re-calibration, {result.relative_error:.4f} '
        f'with it (largest difference '
        f'{result.max_abs_diff_without_recalibration:.4g} -> '
        f'{result.max_abs_diff:.4g}; largest output '
        f'{result.max_abs_output:.4g}; float fold alone '
        f'{result.float_fold.relative_error:.4f})'
    )
    print(
        f'The deployable config loaded the folded weights strictly; its '
        f'largest difference to the folded student: {deployed_diff:.3g}'
    )


def _steps(change) -> str:
    if change is None:
        return 'float'
    old = sum(change.old_step) / len(change.old_step)
    new = sum(change.new_step) / len(change.new_step)
    return f'{old:.4g} -> {new:.4g}'


def fold_qat(args: argparse.Namespace, cfg: Config) -> None:
    """Fold the GABFusion nodes of a QAT student and re-calibrate it."""
    algorithm, student = build_qat_student(cfg, args.checkpoint)
    inputs = load_calibration_inputs(
        cfg, algorithm, args.split, args.calib_batches
    )

    result = fold_quantized_gabfusion(
        student, inputs, tensor_forward, sequential=not args.one_pass
    )
    if not result.nodes:
        raise ValueError(
            f'{args.config}: the student has no GABFusion node outside '
            "'concat' mode, so there is nothing to fold."
        )
    out_cfg = deployable_qat_config(cfg, algorithm)
    state = student_state_dict(student)
    deployed_diff = check_deployed(out_cfg, state, student, inputs)
    limit = DEPLOYED_TOLERANCE * max(result.max_abs_output, 1.0)
    if deployed_diff > limit:
        raise RuntimeError(
            f'The deployable config gives outputs {deployed_diff:.3g} away '
            f'from the folded student (limit {limit:.1e}), so its model '
            f'differs from the folded student in more than the neck.'
        )

    report = asdict(result)
    # The float fold's nodes are the same as the result's.
    report['float_fold'].pop('nodes')
    report.update(
        source_config=osp.abspath(args.config),
        source_checkpoint=osp.abspath(args.checkpoint),
        neck_type=out_cfg.model.architecture['neck']['type'],
        calib_batches=len(inputs),
        calib_split=args.split,
        sequential=not args.one_pass,
        deployed_max_abs_diff=deployed_diff,
    )
    checkpoint = dict(meta=dict(gabfusion_fold=report), state_dict=state)
    save_outputs(args, checkpoint, report, out_cfg)

    print(
        f'Folded {len(result.nodes)} GABFusion nodes of the QAT student on '
        f'{len(inputs)} {args.split} batches'
    )
    print_qat_summary(result, deployed_diff)
    print(f'Saved {args.out}')


def main() -> None:
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    if 'architecture' in cfg.model:
        fold_qat(args, cfg)
    else:
        fold_detector(args, cfg)


if __name__ == '__main__':
    main()
