"""Training hook for GABFusion: feedback update, logging and plots."""

from __future__ import annotations

import json
import logging
import math
import os.path as osp

import torch
from mmengine.dist import all_reduce, is_main_process
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS
from torch import Tensor, nn

from gabfusion_mm.models.layers import GABFusion


def find_fusion_modules(model: nn.Module) -> list[tuple[str, GABFusion]]:
    """Return ``(name, module)`` for every GABFusion module in ``model``.

    The search walks ``model.named_modules()``, so it also works through
    wrappers such as DDP or an mmrazor algorithm around a detector. A
    leading ``module.`` that DDP adds is removed from the names.
    """
    found = []
    for name, module in model.named_modules():
        if isinstance(module, GABFusion):
            found.append((name.removeprefix('module.'), module))
    return found


def branch_log_ratios(grad_norms: Tensor, eps: float) -> Tensor:
    """Return the log gradient-norm ratios logged for one fusion node.

    Two branches give one value, ``log(G_0 / G_1)``. More branches give
    ``log G_i - mean_j log G_j`` per branch.
    """
    logs = torch.log(grad_norms + eps)
    if logs.numel() == 2:
        return (logs[0] - logs[1]).reshape(1)
    return logs - logs.mean()


class _NodeStats:
    """Running sums of one node's statistics between two log points."""

    def __init__(self) -> None:
        self.count = 0
        self.grad_norm: Tensor | None = None
        self.log_ratio: Tensor | None = None
        self.alpha: Tensor | None = None

    def add(self, grad_norm: Tensor, log_ratio: Tensor, alpha: Tensor | None):
        self.count += 1
        if self.grad_norm is None:
            self.grad_norm = grad_norm.clone()
            self.log_ratio = log_ratio.clone()
            self.alpha = None if alpha is None else alpha.clone()
            return
        self.grad_norm += grad_norm
        self.log_ratio += log_ratio
        if alpha is not None:
            self.alpha += alpha

    def means(self) -> dict[str, list[float]]:
        result = {
            'grad_norm': (self.grad_norm / self.count).tolist(),
            'log_ratio': (self.log_ratio / self.count).tolist(),
        }
        if self.alpha is not None:
            result['alpha'] = (self.alpha / self.count).tolist()
        return result


@HOOKS.register_module()
class GABFusionHook(Hook):
    """Apply the GABFusion feedback update and record the branch balance.

    GABFusion (gradient-aware balanced feature fusion; Wang and
    Wang, arXiv:2511.05898). The hook finds every
    :class:`~gabfusion_mm.models.layers.GABFusion` in ``runner.model``
    (through any wrapper) and turns on their gradient-norm recording, so the
    branch balance is also measured in ``'concat'`` mode.

    When: the feedback update runs in ``after_train_iter``. By then the
    iteration's backward pass has recorded ``G_i = ||dL/dF_i||`` and the
    optimizer has stepped, so ``lambda`` changes between two forward
    passes. Each forward pass therefore uses one ``alpha``, and the update
    never writes a tensor that autograd saved for a backward pass still to
    come (an in-place write there makes the backward pass fail). Under
    distributed training the norms are averaged over processes first, so
    every process keeps the same ``lambda``.

    Logging: every ``interval`` iterations, and at the last one, the hook
    averages per node ``grad_norm_i``, ``log_ratio`` (``log(G_0 / G_1)``
    for two branches) and ``alpha_i`` (not in ``'concat'`` mode) over the
    iterations since the last log. It writes them to the visualizer under
    ``gabfusion/<node>/<name>`` and one line per node to the logger. At the
    end of training the main process saves ``<out_name>.png`` (alpha and
    the log ratio over the iterations) and ``<out_name>.json`` (the same
    values) in ``runner.work_dir``.

    Args:
        interval (int): Iterations between two log points. Defaults to 10.
        plot (bool): Whether to save the PNG and JSON at the end of
            training. Defaults to True.
        out_name (str): File name stem of the PNG and JSON. Defaults to
            ``'gabfusion_balance'``.
    """

    priority = 'NORMAL'

    def __init__(
        self,
        interval: int = 10,
        plot: bool = True,
        out_name: str = 'gabfusion_balance',
    ) -> None:
        if not isinstance(interval, int) or interval < 1:
            raise ValueError(
                f'GABFusionHook: interval={interval!r}, expected an int >= 1'
            )
        self.interval = interval
        self.plot = plot
        self.out_name = out_name
        self.nodes: list[tuple[str, GABFusion]] = []
        self.history: dict = dict(iter=[], nodes={})
        self._stats: dict[str, _NodeStats] = {}

    def before_train(self, runner) -> None:
        self.nodes = find_fusion_modules(runner.model)
        if not self.nodes:
            print_log(
                'GABFusionHook: the model has no GABFusion module, so there '
                'is nothing to update or log',
                logger='current',
                level=logging.WARNING,
            )
        for name, module in self.nodes:
            module.track_grad_norms = True
            self._stats[name] = _NodeStats()
            self.history['nodes'][name] = dict(
                mode=module.mode, grad_norm=[], log_ratio=[], alpha=[]
            )

    def after_train_iter(
        self, runner, batch_idx: int, data_batch=None, outputs=None
    ) -> None:
        for name, module in self.nodes:
            grad_norms = module.pop_grad_norms()
            if grad_norms is None:
                continue
            if module.mode == 'feedback':
                grad_norms = grad_norms.clone()
                all_reduce(grad_norms, op='mean')
                module.feedback_update(grad_norms)
            log_ratio = branch_log_ratios(grad_norms, module.eps)
            self._stats[name].add(grad_norms, log_ratio, module.alpha)

        if self.every_n_train_iters(
            runner, self.interval
        ) or self.is_last_train_iter(runner):
            self._log(runner)

    def after_train(self, runner) -> None:
        if not (self.plot and self.history['iter'] and is_main_process()):
            return
        stem = osp.join(runner.work_dir, self.out_name)
        with open(stem + '.json', 'w') as file:
            json.dump(self.history, file)
        save_balance_plot(self.history, stem + '.png')
        print_log(
            f'GABFusionHook: saved {stem}.png and {stem}.json',
            logger='current',
        )

    def _log(self, runner) -> None:
        if not any(self._stats[name].count for name, _ in self.nodes):
            return
        step = runner.iter + 1
        self.history['iter'].append(step)
        scalars = {}
        for name, _ in self.nodes:
            stats = self._stats[name]
            means = stats.means() if stats.count else {}
            self._stats[name] = _NodeStats()
            record = self.history['nodes'][name]
            for key in ('grad_norm', 'log_ratio', 'alpha'):
                values = means.get(key, [])
                record[key].append(values)
                for i, value in enumerate(values):
                    single = key == 'log_ratio' and len(values) == 1
                    tag = key if single else f'{key}_{i}'
                    scalars[f'gabfusion/{name}/{tag}'] = value
            if means:
                runner.logger.info(_format_node(name, means))
        runner.visualizer.add_scalars(scalars, step=step)


def _format_node(name: str, means: dict[str, list[float]]) -> str:
    parts = [f'GABFusion {name}:']
    if 'alpha' in means:
        alphas = ', '.join(f'{a:.4f}' for a in means['alpha'])
        parts.append(f'alpha=({alphas})')
    norms = ', '.join(f'{g:.3e}' for g in means['grad_norm'])
    parts.append(f'grad_norm=({norms})')
    ratios = ', '.join(f'{r:+.3f}' for r in means['log_ratio'])
    parts.append(f'log_ratio={ratios}')
    return ' '.join(parts)


def save_balance_plot(history: dict, path: str) -> None:
    """Plot alpha and the log gradient-norm ratio per node over iterations.

    Args:
        history (dict): ``GABFusionHook.history``.
        path (str): Output PNG file.
    """
    from matplotlib.figure import Figure

    iters = history['iter']
    nodes = history['nodes']
    has_alpha = any(any(record['alpha']) for record in nodes.values())
    rows = 2 if has_alpha else 1
    figure = Figure(figsize=(8, 3.2 * rows), layout='constrained')
    axes = figure.subplots(rows, 1, squeeze=False)[:, 0]

    ratio_axis = axes[-1]
    for name, record in nodes.items():
        ratios = [v[0] if v else math.nan for v in record['log_ratio']]
        ratio_axis.plot(iters, ratios, label=name)
    ratio_axis.axhline(0.0, color='gray', linewidth=0.8)
    ratio_axis.set_ylabel('log(G_0 / G_1)')
    ratio_axis.set_xlabel('iteration')
    ratio_axis.legend(fontsize='small')

    if has_alpha:
        alpha_axis = axes[0]
        for name, record in nodes.items():
            if not any(record['alpha']):
                continue
            alphas = [v[0] if v else math.nan for v in record['alpha']]
            alpha_axis.plot(iters, alphas, label=name)
        alpha_axis.set_ylabel('alpha_0 (branch 0 weight)')
        alpha_axis.legend(fontsize='small')

    figure.savefig(path, dpi=100)
