"""Export a QAT checkpoint to ONNX with QuantizeLinear/DequantizeLinear.

Usage: python tools/deploy/export_onnx.py CONFIG CHECKPOINT --out FILE.onnx
       [--opset 21] [--batch-size 2] [--static-batch]
       [--cfg-options KEY=VALUE ...]

CONFIG is the QAT config the checkpoint was trained with (DetectorQAT or
QATDistill with an in-place quantizer such as TraceFreeQuantizer). The
graph takes the test pipeline's preprocessed images, of the shape of the
first test batch, and returns the raw head outputs. The tool prints the
exported fake quantizers, the QuantizeLinear/DequantizeLinear counts and
the differences between onnxruntime and the PyTorch fake-quantized model
on the first test batch, and exits with status 1 when the check fails. In the
free-running comparison, rounding flips near ties cascade through the
4-bit layers, so its output difference is only reported. The check runs
teacher forced, with every quantizer fed onnxruntime's inputs. Each
quantized activation must then match within one quantization step and
each head output within float round-off (see
gabfusion_mm/deploy/onnx_check.py).
"""

from __future__ import annotations

import argparse
import json
import os
import os.path as osp
import sys

import torch
from mmengine.config import Config, DictAction
from mmengine.runner import Runner

import gabfusion_mm  # noqa: F401  (patches torch for mmrazor first)
from gabfusion_mm.deploy.onnx_check import (
    MAX_ACTIVATION_STEPS,
    compare_onnx_with_pytorch,
)
from gabfusion_mm.deploy.onnx_export import (
    build_quantized_detector,
    export_detector_onnx,
)
from gabfusion_mm.deploy.qdq_convert import MAX_TIE_FRACTION, format_records
from gabfusion_mm.deploy.qdq_ops import QDQ_OPSET


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Export a fake-quantized detector to ONNX (QDQ)'
    )
    parser.add_argument('config', help='QAT config file path')
    parser.add_argument('checkpoint', help='checkpoint of that config')
    parser.add_argument('--out', required=True, help='output .onnx file')
    parser.add_argument(
        '--opset',
        type=int,
        default=QDQ_OPSET,
        help=f'ONNX opset, at least {QDQ_OPSET} (INT4 QuantizeLinear)',
    )
    parser.add_argument(
        '--batch-size',
        type=int,
        default=2,
        help='images of the first test batch used to export and compare',
    )
    parser.add_argument(
        '--static-batch',
        action='store_true',
        help='fix the batch size of the graph to --batch-size',
    )
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, e.g. model.quantizer.fold_bn=True',
    )
    return parser.parse_args()


def first_test_inputs(cfg: Config, model, batch_size: int) -> torch.Tensor:
    """Preprocess the first ``batch_size`` images of the test set."""
    loader_cfg = cfg.test_dataloader.copy()
    loader_cfg.update(batch_size=batch_size, num_workers=0)
    loader_cfg['persistent_workers'] = False
    dataloader = Runner.build_dataloader(loader_cfg)
    batch = next(iter(dataloader))
    with torch.no_grad():
        return model.data_preprocessor(batch, False)['inputs']


def main() -> int:
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)

    model = build_quantized_detector(cfg, args.checkpoint)
    inputs = first_test_inputs(cfg, model, args.batch_size)
    out_dir = osp.dirname(osp.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    report = export_detector_onnx(
        model,
        inputs,
        args.out,
        opset=args.opset,
        dynamic_batch=not args.static_batch,
    )
    check = compare_onnx_with_pytorch(args.out, model, inputs)

    print(format_records(report.records))
    merged = report.num_fake_quant_calls - report.num_expected_pairs
    forced_diff = max(out.forced_max_abs_diff for out in check.outputs)
    print(
        f'\nWrote {args.out} (opset {report.opset}, input '
        f'{list(inputs.shape)}).\n'
        f'Fake quantizers: {len(report.records)} '
        f'({report.num_fake_quant_calls} calls, {merged} merged as '
        'identical).\n'
        f'QuantizeLinear: {report.num_quantize_nodes}, DequantizeLinear: '
        f'{report.num_dequantize_nodes}.\n'
        f'onnxruntime vs PyTorch fake quantization on {inputs.shape[0]} '
        f'images:\n'
        f'  free running: max |output difference| {check.max_abs_diff:.4g}; '
        f'{100 * check.free.step_fraction:.3g}% of activation elements '
        f'one step or more apart (max {check.free.max_steps:.3g} steps), '
        'from rounding flips that cascade through later layers.\n'
        "  teacher forced (each quantizer gets onnxruntime's inputs): "
        f'activations within {check.forced.max_steps:.3g} steps (limit '
        f'{MAX_ACTIVATION_STEPS:g}), '
        f'{100 * check.forced.step_fraction:.3g}% one step apart (limit '
        f'{100 * MAX_TIE_FRACTION:g}%), max |output difference| '
        f'{forced_diff:.3g}.'
    )
    for output in check.outputs:
        print(
            f'  {output.name}: free {output.max_abs_diff:.4g}, forced '
            f'{output.forced_max_abs_diff:.3g} (limit {output.tolerance:.3g})'
        )
    summary = dict(
        onnx=args.out,
        opset=report.opset,
        input_shape=list(inputs.shape),
        num_fake_quants=len(report.records),
        num_quantize_linear=report.num_quantize_nodes,
        num_dequantize_linear=report.num_dequantize_nodes,
        max_abs_diff=check.max_abs_diff,
        free_max_activation_steps=check.free.max_steps,
        free_activation_step_fraction=check.free.step_fraction,
        forced_max_activation_steps=check.forced.max_steps,
        forced_activation_step_fraction=check.forced.step_fraction,
        forced_max_abs_diff=forced_diff,
        passed=check.passed,
    )
    json_path = osp.splitext(args.out)[0] + '_export.json'
    with open(json_path, 'w') as file:
        json.dump(summary, file, indent=2)
    print(
        f'Check {"passed" if check.passed else "FAILED"}; wrote {json_path}.'
    )
    return 0 if check.passed else 1


if __name__ == '__main__':
    sys.exit(main())
