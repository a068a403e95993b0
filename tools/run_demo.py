"""Float YOLOX, W4A4 QAT with and without GABFusion + ADA, fold and ONNX.

Runs on COCO128, every step a tool of this repository in a subprocess:
  1. float: tools/train.py of the float YOLOX from scratch.
  2. qat: W4A4 LSQ QAT of the float model (baseline arm).
  3. gabfusion_ada: the same QAT with GABFusion and ADA (same schedule,
     seed and data).
  4. fold: tools/deploy/fold_gabfusion.py folds GABFusion into the stock
     neck and re-calibrates the quantizers it touches.
  5. finetune: a short task-loss fine-tune of the folded model.
  6. onnx: tools/deploy/export_onnx.py (QuantizeLinear/DequantizeLinear,
     opset 21 INT4) and tools/deploy/test_onnx.py with onnxruntime.
Each model is evaluated with tools/test.py on the held-out protocol
(train2017 -> val2017) and the fit protocol (train2017 -> train2017).
Finished stages are skipped, so a killed run resumes where it stopped.
Writes WORK_DIR/results.{md,json} and WORK_DIR/plots/*.png.

Usage: python tools/run_demo.py [--work-dir DIR] [--model nano|tiny]
       [--schedule default|smoke]
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
import time
from pathlib import Path

from mmengine.logging import MMLogger

import gabfusion_mm  # noqa: F401
from gabfusion_mm.pipeline import StageRunner
from gabfusion_mm.pipeline.demo import (
    PROTOCOLS,
    DemoPlan,
    export_stage,
    fold_stage,
    last_checkpoint,
    onnx_test_stage,
    test_stage,
    train_stage,
)
from gabfusion_mm.pipeline.report import (
    Evaluated,
    build_rows,
    format_tables,
    write_plots,
    write_results,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_STAGES = 6


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        '--work-dir',
        default='work_dirs/demo',
        help='folder for checkpoints, logs, the results table and plots',
    )
    parser.add_argument(
        '--model',
        choices=['nano', 'tiny'],
        default='nano',
        help='YOLOX size (nano: about 8 s per float COCO128 epoch on 2 '
        'cores; tiny is about 2.5 times slower)',
    )
    parser.add_argument(
        '--schedule',
        choices=['default', 'smoke'],
        default='default',
        help="default: the configs' schedules; smoke: one epoch on four "
        'images per training, four images per evaluation',
    )
    return parser.parse_args()


class Pipeline:
    """The stages of the demo and the metrics they produce."""

    def __init__(self, plan: DemoPlan, logger: MMLogger) -> None:
        self.plan = plan
        self.logger = logger
        self.runner = StageRunner(
            plan.work_dir,
            REPO_ROOT,
            plan=dict(model=plan.model, schedule=plan.schedule),
        )
        self.evaluated: list[Evaluated] = []
        self.step = 0
        self.start = time.monotonic()

    def announce(self, what: str) -> None:
        self.step += 1
        minutes = (time.monotonic() - self.start) / 60
        self.logger.info(
            f'[{self.step}/{NUM_STAGES}] {what} '
            f'({minutes:.1f} min into this run)'
        )

    def evaluate(self, model: str, name: str, config: str, options, **kw):
        """Evaluate the latest checkpoint of ``name`` on both protocols."""
        checkpoint = last_checkpoint(self.plan.dir(name))
        self.evaluate_checkpoint(
            model, name, config, checkpoint, options, **kw
        )

    def evaluate_checkpoint(
        self, model, name, config, checkpoint, options, **kw
    ) -> None:
        for protocol in PROTOCOLS:
            stage = test_stage(
                self.plan, name, protocol, config, checkpoint, options
            )
            metrics = self.runner.run(stage)
            self.evaluated.append(
                Evaluated(model, protocol, metrics, _join(stage.command), **kw)
            )

    def train(self, name: str, config: str, options, load_from=None) -> float:
        stage = train_stage(self.plan, name, config, options, load_from)
        return self.runner.run(stage)['seconds']

    def run(self) -> None:
        plan = self.plan
        configs = plan.configs
        tag = f'YOLOX-{plan.model}'

        self.announce('float training and evaluation')
        float_opts = plan.options('float')
        seconds = self.train('float', configs['float'], float_opts)
        self.evaluate(
            f'{tag} float',
            'float',
            configs['float'],
            float_opts,
            train_seconds=seconds,
        )

        self.announce('W4A4 LSQ QAT, baseline arm')
        qat_opts = plan.qat_options()
        seconds = self.train('qat', configs['qat'], qat_opts)
        self.evaluate(
            f'{tag} W4A4 LSQ QAT',
            'qat',
            configs['qat'],
            qat_opts,
            train_seconds=seconds,
        )

        self.announce('W4A4 LSQ QAT with GABFusion and ADA')
        gab_name = f'{tag} W4A4 LSQ QAT + GABFusion + ADA'
        seconds = self.train(
            'gabfusion_ada', configs['gabfusion_ada'], qat_opts
        )
        self.evaluate(
            gab_name,
            'gabfusion_ada',
            configs['gabfusion_ada'],
            qat_opts,
            train_seconds=seconds,
        )

        self.announce('GABFusion fold and quantizer re-calibration')
        gab_ckpt = last_checkpoint(plan.dir('gabfusion_ada'))
        self.runner.run(fold_stage(plan, gab_ckpt))
        folded = plan.dir('folded')
        folded_name = f'{gab_name}, folded'
        self.evaluate_checkpoint(
            folded_name,
            'folded',
            str(folded / 'folded_config.py'),
            folded / 'folded.pth',
            qat_opts,
            fold_of=gab_name,
        )

        self.announce('fine-tune of the folded model')
        seconds = self.train(
            'finetune',
            configs['finetune'],
            qat_opts,
            load_from=folded / 'folded.pth',
        )
        tuned_name = f'{folded_name} + fine-tune'
        self.evaluate(
            tuned_name,
            'finetune',
            configs['finetune'],
            qat_opts,
            train_seconds=seconds,
            fold_of=gab_name,
        )

        self.announce('ONNX export (QDQ, INT4) and onnxruntime evaluation')
        self.deploy_onnx(
            'onnx',
            configs['finetune'],
            last_checkpoint(plan.dir('finetune')),
            tuned_name,
        )
        # The baseline arm too, so the ONNX check also covers a model that
        # was never folded.
        self.deploy_onnx(
            'onnx_qat',
            configs['qat'],
            last_checkpoint(plan.dir('qat')),
            f'{tag} W4A4 LSQ QAT',
        )

    def deploy_onnx(
        self, name: str, config: str, checkpoint: Path, source: str
    ) -> None:
        """Export ``checkpoint`` and evaluate the ONNX model on both
        protocols."""
        plan = self.plan
        self.runner.run(export_stage(plan, name, config, checkpoint))
        onnx_file = plan.dir(name) / 'model.onnx'
        for protocol in PROTOCOLS:
            stage = onnx_test_stage(plan, name, protocol, config, onnx_file)
            metrics = self.runner.run(stage)
            self.evaluated.append(
                Evaluated(
                    f'{source}, ONNX Runtime',
                    protocol,
                    metrics,
                    _join(stage.command),
                    onnx_of=source,
                )
            )

    def report(self) -> str:
        plan = self.plan
        rows = build_rows(self.evaluated)
        tables = format_tables(
            rows, {key: title for key, (title, _) in PROTOCOLS.items()}
        )
        arms = {
            'float': plan.dir('float'),
            'W4A4 QAT': plan.dir('qat'),
            'W4A4 QAT + GABFusion + ADA': plan.dir('gabfusion_ada'),
            'folded + fine-tune': plan.dir('finetune'),
        }
        plots = write_plots(plan.work_dir, arms, plan.dir('gabfusion_ada'))
        fold = _read_json(plan.dir('folded') / 'fold_report.json')
        export = _read_json(plan.dir('onnx') / 'model_export.json')
        export_qat = _read_json(plan.dir('onnx_qat') / 'model_export.json')
        tables += deploy_notes(
            fold,
            {'folded + fine-tune': export, 'W4A4 LSQ QAT': export_qat},
        )
        write_results(
            plan.work_dir,
            rows,
            tables,
            dict(
                model=f'YOLOX-{plan.model}',
                schedule=plan.schedule,
                configs=plan.configs,
                plots=[str(p) for p in plots],
                fold={k: v for k, v in fold.items() if k != 'consumers'},
                onnx_export=export,
                onnx_export_baseline=export_qat,
            ),
        )
        return tables


def deploy_notes(fold: dict, exports: dict[str, dict]) -> str:
    """Markdown lines on the fold's output error and the ONNX checks."""
    lines = []
    if fold:
        lines.append(
            f'Fold: relative L2 error of the head outputs against the '
            f'unfolded quantized student {fold["relative_error"]:.4f} '
            f'after quantizer re-calibration '
            f'({fold["relative_error_without_recalibration"]:.4f} without) '
            f'on {fold["calib_batches"]} training batches.'
        )
    for model, export in exports.items():
        if not export:
            continue
        lines.append(
            f'ONNX of {model}: opset {export["opset"]}, '
            f'{export["num_quantize_linear"]} QuantizeLinear and '
            f'{export["num_dequantize_linear"]} DequantizeLinear nodes for '
            f'{export["num_fake_quants"]} fake quantizers; largest head '
            f'output difference to PyTorch {export["max_abs_diff"]:.3g} '
            f'(teacher forced: {export["forced_max_abs_diff"]:.3g}).'
        )
    return '\n\n'.join(lines) + '\n' if lines else ''


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _join(command) -> str:
    return shlex.join(str(part) for part in command)


def main() -> None:
    args = parse_args()
    work_dir = Path(args.work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    logger = MMLogger.get_instance(
        'gabfusion_demo', log_file=str(work_dir / 'demo.log')
    )
    plan = DemoPlan(work_dir, model=args.model, schedule=args.schedule)
    # SIGTERM unwinds like Ctrl-C, so the running stage is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        pipeline = Pipeline(plan, logger)
        pipeline.run()
    except (RuntimeError, ValueError, FileNotFoundError) as error:
        logger.error(str(error))
        sys.exit(1)
    tables = pipeline.report()
    print('\n' + tables)
    logger.info(
        f'results written to {work_dir}/results.md and .json, plots to '
        f'{work_dir}/plots'
    )


if __name__ == '__main__':
    main()
