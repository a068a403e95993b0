"""Fold the GABFusion nodes of a detector into a stock-neck checkpoint.

Usage: python tools/deploy/fold_gabfusion.py CONFIG CHECKPOINT
       --out FILE [--calib-batches N] [--split {train,val}] [--one-pass]
       [--out-config FILE] [--cfg-options KEY=VALUE ...]

Freezes alpha, calibrates each LayerNorm into a per-channel affine on N
batches, folds both into the 1x1 convolutions that consume the fused
tensor and writes a checkpoint for the same config with the stock mmdet
neck (e.g. YOLOXPAFPN for GABYOLOXPAFPN). The checkpoint is checked by
loading it strictly into that stock model and comparing outputs.
"""

from __future__ import annotations

import argparse
import copy
import os
import os.path as osp

import torch
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmengine.runner import Runner, load_checkpoint, set_random_seed
from mmengine.runner.checkpoint import load_state_dict

import gabfusion_mm  # noqa: F401  (registers the GABFusion modules)
from gabfusion_mm.deploy import fold_gabfusion, stock_model_config
from gabfusion_mm.deploy.fold_gabfusion import flatten_tensors


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Fold GABFusion into the stock neck of a detector'
    )

    parser.add_argument('config', help='config of the GABFusion detector')
    parser.add_argument('checkpoint', help='checkpoint of that detector')
    parser.add_argument(
        '--out', required=True, help='output checkpoint for the stock neck'
    )
    parser.add_argument(
        '--calib-batches',
        type=int,
        default=8,
        help='batches used to calibrate each LayerNorm into an affine '
        '(default 8)',
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
    with torch.no_grad():
        diff = max(
            (a - b).abs().max().item()
            for x in inputs
            for a, b in zip(
                flatten_tensors(tensor_forward(stock, x)),
                flatten_tensors(tensor_forward(folded, x)),
            )
        )
    return stock_cfg, stock, diff


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
        nodes={
            name: dict(
                alpha=node.alpha,
                residual_ratio=node.residual_ratio,
                consumers=node.consumers,
            )
            for name, node in result.nodes.items()
        },
    )


def print_summary(result, stock_type: str, stock_diff: float) -> None:
    print('| node | alpha | 1 - R^2 of LN affine | consumers |')
    print('| --- | --- | --- | --- |')
    for name, node in result.nodes.items():
        alpha = ', '.join(f'{a:.4f}' for a in node.alpha)
        print(
            f'| {name} | {alpha} | {node.residual_ratio:.4f} | '
            f'{", ".join(node.consumers)} |'
        )
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


def main() -> None:
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
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
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    torch.save(
        dict(meta=dict(gabfusion_fold=meta), state_dict=stock.state_dict()),
        args.out,
    )
    if args.out_config:
        stock_full = copy.deepcopy(cfg)
        stock_full.model = stock_cfg
        # The folded model has no GABFusion module left for this hook.
        stock_full.custom_hooks = [
            hook
            for hook in stock_full.get('custom_hooks', [])
            if hook.get('type') != 'GABFusionHook'
        ]
        stock_full.dump(args.out_config)

    print(
        f'Folded {len(result.nodes)} GABFusion nodes on {len(inputs)} '
        f'{args.split} batches'
    )
    print_summary(result, stock_cfg['neck']['type'], stock_diff)
    print(f'Saved {args.out}')


if __name__ == '__main__':
    main()
