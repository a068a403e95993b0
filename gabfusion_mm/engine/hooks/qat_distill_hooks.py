"""Hooks for QAT with a float teacher: teacher metric and student export."""

from __future__ import annotations

import os.path as osp

import torch
from mmengine.hooks import EMAHook, Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from torch import nn

from gabfusion_mm.models.algorithms.qat_checkpoint import student_checkpoint


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if is_model_wrapper(model) else model


@HOOKS.register_module()
class StudentCheckpointHook(Hook):
    """Write a student-only checkpoint at the end of training.

    The file's ``state_dict`` contains the plain (unquantized) student
    detector's entries, so it loads into the student's mmdet config without
    missing or unexpected keys; ``quantizer_state_dict`` contains the rest of
    the student's state (fake-quant steps and similar). When an
    :class:`~mmengine.hooks.EMAHook` is registered, the averaged weights are
    written, as they are the ones validated and saved in full checkpoints.

    The model must provide ``student_state_dict()``, as
    :class:`~gabfusion_mm.models.algorithms.QATDistill` does.

    Args:
        filename (str): File name inside the work directory. Defaults to
            ``'student_final.pth'``.
        use_ema (bool): Whether to write the EMA weights when an EMAHook is
            registered. Defaults to True.
    """

    priority = 'VERY_LOW'

    def __init__(
        self, filename: str = 'student_final.pth', use_ema: bool = True
    ) -> None:
        self.filename = filename
        self.use_ema = use_ema

    def after_train(self, runner) -> None:
        """Save the student of the final (or EMA) model."""
        model = _unwrap(runner.model)
        source = model
        if self.use_ema:
            for hook in runner.hooks:
                if isinstance(hook, EMAHook):
                    source = hook.ema_model.module
        if not callable(getattr(source, 'student_state_dict', None)):
            raise TypeError(
                f'StudentCheckpointHook: {type(source).__name__} has no '
                'student_state_dict(); use it with QATDistill.'
            )

        plain, other = source.student_state_dict()
        meta = dict(epoch=runner.epoch, iter=runner.iter)
        dataset = getattr(runner.train_dataloader, 'dataset', None)
        if dataset is not None and hasattr(dataset, 'metainfo'):
            meta['dataset_meta'] = dataset.metainfo
        path = osp.join(runner.work_dir, self.filename)
        torch.save(student_checkpoint(plain, other, meta), path)
        print_log(
            f'StudentCheckpointHook: wrote {len(plain)} student entries and '
            f'{len(other)} quantizer entries to {path}',
            logger='current',
        )


@HOOKS.register_module()
class TeacherValHook(Hook):
    """Evaluate the float teacher once, before training starts.

    The teacher is the float reference of a quantized student, so its
    metric is computed once on the validation set and logged under
    ``teacher/`` keys. It goes through the validation loop's dataloader and
    evaluator directly, without the ``before_val``/``after_val`` hooks, so
    it does not count as a validation of the student (no best-checkpoint
    bookkeeping, no EMA swap). Models without a ``teacher`` are skipped.
    """

    priority = 'LOW'

    def before_train(self, runner) -> None:
        """Run the teacher over the validation set and log its metrics."""
        model = _unwrap(runner.model)
        teacher = getattr(model, 'teacher', None)
        if teacher is None:
            print_log(
                'TeacherValHook: the model has no teacher; skipped.',
                logger='current',
            )
            return
        loop = runner.val_loop
        if loop is None:
            print_log(
                'TeacherValHook: no validation loop is configured; skipped.',
                logger='current',
            )
            return

        was_training = model.training
        model.eval()
        with torch.no_grad():
            for data_batch in loop.dataloader:
                data = model.data_preprocessor(data_batch, False)
                outputs = teacher(**data, mode='predict')
                loop.evaluator.process(
                    data_samples=outputs, data_batch=data_batch
                )
        metrics = loop.evaluator.evaluate(len(loop.dataloader.dataset))
        model.train(was_training)

        teacher_metrics = {f'teacher/{k}': v for k, v in metrics.items()}
        scalars = {
            k: v
            for k, v in teacher_metrics.items()
            if isinstance(v, (int, float))
        }
        runner.visualizer.add_scalars(scalars, step=runner.iter)
        summary = '  '.join(f'{k}: {v}' for k, v in teacher_metrics.items())
        print_log(f'TeacherValHook: {summary}', logger='current')
