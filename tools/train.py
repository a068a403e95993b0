"""Train a detector (float, QAT or QAT with distillation) from a config.

Usage: python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]]
       [--amp] [--auto-scale-lr] [--cfg-options KEY=VALUE ...]
       [--launcher {none,pytorch,slurm}]
"""

from __future__ import annotations

import argparse
import os

from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import gabfusion_mm  # noqa: F401  (patches torch for mmrazor first)

from _launch import prepare_launcher, set_local_rank_env, set_work_dir


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument(
        '--work-dir',
        help='directory for logs and checkpoints; defaults to '
        './work_dirs/<config name>',
    )
    parser.add_argument(
        '--resume',
        nargs='?',
        type=str,
        const='auto',
        help='resume from CKPT, or from the latest checkpoint in the work '
        'directory when no path is given',
    )
    parser.add_argument(
        '--amp',
        action='store_true',
        help='enable automatic mixed precision training',
    )
    parser.add_argument(
        '--auto-scale-lr',
        action='store_true',
        help='scale the learning rate by total batch size over '
        'auto_scale_lr.base_batch_size',
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, e.g. train_cfg.max_epochs=2; a list '
        'is written key="[a,b]"',
    )
    parser.add_argument(
        '--launcher',
        choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none',
        help='job launcher',
    )
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    set_local_rank_env(args.local_rank)
    return args


def build_config(args: argparse.Namespace) -> Config:
    """Load the config and apply the command-line overrides."""
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)

    set_work_dir(cfg, args.work_dir, args.config)

    if args.amp:
        optim_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
        if optim_type == 'AmpOptimWrapper':
            print('AMP training is already enabled in the config.')
        elif optim_type != 'OptimWrapper':
            raise ValueError(
                f'--amp needs optim_wrapper.type OptimWrapper, got '
                f'{optim_type}; set AmpOptimWrapper in the config instead'
            )
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'

    if args.auto_scale_lr:
        if not cfg.get('auto_scale_lr', {}).get('base_batch_size'):
            raise ValueError(
                '--auto-scale-lr needs auto_scale_lr.base_batch_size in the '
                'config, e.g. auto_scale_lr = dict(base_batch_size=64)'
            )
        cfg.auto_scale_lr.enable = True

    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        cfg.resume = True
        cfg.load_from = args.resume

    prepare_launcher(cfg, args.launcher)
    return cfg


def main() -> None:
    args = parse_args()
    cfg = build_config(args)
    os.makedirs(cfg.work_dir, exist_ok=True)

    if 'runner_type' in cfg:
        runner = RUNNERS.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)
    runner.train()


if __name__ == '__main__':
    main()
