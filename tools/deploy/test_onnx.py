"""Evaluate an exported detector with onnxruntime on a config's test set.

Usage: python tools/deploy/test_onnx.py CONFIG FILE.onnx [--work-dir DIR]
       [--num-threads N] [--cfg-options KEY=VALUE ...]

CONFIG is the config the model was exported from (a detector or QAT
config). Its test dataloader and test evaluator are used, and its head
decodes the raw outputs in PyTorch. The metrics are printed and written,
as tools/test.py writes them, to ``WORK_DIR/TIMESTAMP/TIMESTAMP.json``
and to ``WORK_DIR/onnx_metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import time

from mmengine.config import Config, DictAction
from mmengine.logging import MMLogger

import gabfusion_mm  # noqa: F401  (patches torch for mmrazor first)
from gabfusion_mm.deploy.onnx_eval import evaluate_onnx


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Evaluate an ONNX detector with onnxruntime'
    )
    parser.add_argument('config', help='config the model was exported from')
    parser.add_argument('onnx', help='ONNX file from export_onnx.py')
    parser.add_argument(
        '--work-dir', help='directory for the metrics JSON and the log'
    )
    parser.add_argument(
        '--num-threads',
        type=int,
        help='onnxruntime intra-op threads (default: one per core)',
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, e.g. test_dataloader.batch_size=4',
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        work_dir = args.work_dir
    else:
        name = osp.splitext(osp.basename(args.config))[0]
        work_dir = osp.join('./work_dirs', f'{name}_onnx')

    timestamp = time.strftime('%Y%m%d_%H%M%S', time.localtime())
    log_dir = osp.join(work_dir, timestamp)
    os.makedirs(log_dir, exist_ok=True)
    MMLogger.get_instance(
        f'test_onnx_{timestamp}',
        log_file=osp.join(log_dir, f'{timestamp}.log'),
    )

    metrics = evaluate_onnx(cfg, args.onnx, num_threads=args.num_threads)
    result = dict(metrics, onnx=osp.abspath(args.onnx))
    for path in (
        osp.join(log_dir, f'{timestamp}.json'),
        osp.join(work_dir, 'onnx_metrics.json'),
    ):
        with open(path, 'w') as file:
            json.dump(result, file, indent=2)
    for key, value in metrics.items():
        print(f'{key}: {value}')
    print(f'Wrote {osp.join(work_dir, "onnx_metrics.json")}')


if __name__ == '__main__':
    main()
