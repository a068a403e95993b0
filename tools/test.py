"""Evaluate a checkpoint on the test split of a config.

Usage: python tools/test.py CONFIG CHECKPOINT [--work-dir DIR]
       [--out FILE.pkl] [--show-dir DIR] [--cfg-options KEY=VALUE ...]
       [--launcher {none,pytorch,slurm}]
"""

from __future__ import annotations

import argparse

from mmengine.config import Config, DictAction
from mmengine.evaluator import DumpResults
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

import gabfusion_mm  # noqa: F401  (patches torch for mmrazor first)

from _launch import prepare_launcher, set_local_rank_env, set_work_dir


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir',
        help='directory for the evaluation metrics and logs',
    )
    parser.add_argument(
        '--out',
        type=str,
        help='dump predictions to a pickle file (.pkl) for offline analysis',
    )
    parser.add_argument(
        '--show-dir',
        help='directory, relative to the work directory, where images with '
        'drawn predictions are saved',
    )
    parser.add_argument(
        '--wait-time', type=float, default=2, help='interval of --show (s)'
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, e.g. test_evaluator.classwise=True',
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


def enable_visualization(cfg: Config, show_dir: str) -> None:
    """Turn on mmdet's visualization hook to save drawn predictions."""
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise ValueError(
            '--show-dir needs default_hooks.visualization '
            "(type='DetVisualizationHook') in the config"
        )
    hooks.visualization.draw = True
    hooks.visualization.test_out_dir = show_dir


def main() -> None:
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)

    set_work_dir(cfg, args.work_dir, args.config)

    cfg.load_from = args.checkpoint
    if args.show_dir:
        enable_visualization(cfg, args.show_dir)
    prepare_launcher(cfg, args.launcher)

    if 'runner_type' in cfg:
        runner = RUNNERS.build(cfg)
    else:
        runner = Runner.from_cfg(cfg)

    if args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError(f'--out must end with .pkl, got {args.out}')
        runner.test_evaluator.metrics.append(
            DumpResults(out_file_path=args.out)
        )

    runner.test()


if __name__ == '__main__':
    main()
