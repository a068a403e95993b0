"""Launcher set-up shared by tools/train.py and tools/test.py."""

from __future__ import annotations

import os
import os.path as osp

import torch
import torch.distributed as dist
from mmengine.config import Config


def prepare_launcher(cfg: Config, launcher: str) -> None:
    """Set ``cfg.launcher`` and make CPU-only distributed runs work.

    mmengine's PyTorch launcher calls ``torch.cuda.set_device``, which fails
    on a CPU-only build, and its default DDP wrapper passes GPU device ids.
    Without CUDA this function starts the gloo process group itself from the
    torchrun environment and wraps the model with ``device_ids=None``.
    """
    cfg.launcher = launcher
    if launcher == 'none' or torch.cuda.is_available():
        return

    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = env_cfg.setdefault('dist_cfg', {})
    dist_cfg['backend'] = 'gloo'

    wrapper_cfg = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel',
        broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False),
    )
    wrapper_cfg.setdefault('device_ids', None)
    cfg.model_wrapper_cfg = wrapper_cfg

    if launcher == 'pytorch' and not dist.is_initialized():
        dist.init_process_group(
            backend='gloo',
            rank=int(os.environ['RANK']),
            world_size=int(os.environ['WORLD_SIZE']),
        )


def set_work_dir(cfg: Config, work_dir: str | None, config_path: str) -> None:
    """Set ``cfg.work_dir`` from the flag, the config or the config name."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        name = osp.splitext(osp.basename(config_path))[0]
        cfg.work_dir = osp.join('./work_dirs', name)


def set_local_rank_env(local_rank: int) -> None:
    """Expose ``--local-rank`` (older launchers) as ``LOCAL_RANK``."""
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(local_rank)
