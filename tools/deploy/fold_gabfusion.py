"""Fold the GABFusion nodes of a detector into a stock-neck checkpoint.

Usage: python tools/deploy/fold_gabfusion.py CONFIG CHECKPOINT
       --out FILE [--calib-batches N] [--split {train,val}]
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
from mmengine.runner import Runner, load_checkpoint
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

    result = fold_gabfusion(model, inputs, tensor_forward)

    stock_cfg = stock_model_config(cfg.model)
    stock = MODELS.build(stock_cfg)
    load_state_dict(stock, model.state_dict(), strict=True)
    stock.eval()
    with torch.no_grad():
        stock_diff = max(
            (a - b).abs().max().item()
            for x in inputs
            for a, b in zip(
                flatten_tensors(tensor_forward(stock, x)),
                flatten_tensors(tensor_forward(model, x)),
            )
        )

    meta = dict(
        source_config=osp.abspath(args.config),
        source_checkpoint=osp.abspath(args.checkpoint),
        neck_type=stock_cfg['neck']['type'],
        calib_batches=len(inputs),
        calib_split=args.split,
        max_abs_diff=result.max_abs_diff,
        nodes={
            name: dict(
                alpha=node.alpha,
                residual_ratio=node.residual_ratio,
                consumers=node.consumers,
            )
            for name, node in result.nodes.items()
        },
    )
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    torch.save(
        dict(meta=dict(gabfusion_fold=meta), state_dict=stock.state_dict()),
        args.out,
    )
    if args.out_config:
        stock_full = copy.deepcopy(cfg)
        stock_full.model = stock_cfg
        stock_full.dump(args.out_config)

    print(
        f'Folded {len(result.nodes)} GABFusion nodes on {len(inputs)} '
        f'{args.split} batches'
    )
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
        f'{result.max_abs_diff:.6g} (LayerNorm as affine: '
        f'{result.max_abs_diff_affine:.6g}, fold round-off: '
        f'{result.max_abs_diff_rounding:.3g}; largest output '
        f'{result.max_abs_output:.4g})'
    )
    print(
        f'Stock {stock_cfg["neck"]["type"]} model loaded the folded '
        f'weights strictly; its largest difference to the folded model: '
        f'{stock_diff:.3g}'
    )
    print(f'Saved {args.out}')


if __name__ == '__main__':
    main()
