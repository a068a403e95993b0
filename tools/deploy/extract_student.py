"""Write a student-only checkpoint from a QATDistill training checkpoint.

Usage: python tools/deploy/extract_student.py CONFIG CHECKPOINT OUT
       [--cfg-options KEY=VALUE ...]

CONFIG is the QATDistill config the checkpoint was trained with. The output
``state_dict`` contains exactly the entries of the plain student detector
(``model.architecture`` of CONFIG), so it loads into that mmdet config with
``load_checkpoint(..., strict=True)``; the quantizer's state (fake-quant
steps) goes to ``quantizer_state_dict``. The tool checks the strict load
before writing.
"""

from __future__ import annotations

import argparse
import os
import os.path as osp

import torch
from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope
from mmengine.runner.checkpoint import _load_checkpoint
from mmrazor.registry import MODELS

import gabfusion_mm  # noqa: F401  (patches torch for mmrazor first)
from gabfusion_mm.models.algorithms.qat_checkpoint import (
    find_plain_prefix,
    split_student_state_dict,
    student_checkpoint,
)

# Prefix of the student's entries in a QATDistill state dict.
STUDENT_PREFIX = 'architecture.'


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Extract the student of a QATDistill checkpoint'
    )
    parser.add_argument('config', help='QATDistill config file path')
    parser.add_argument('checkpoint', help='QATDistill checkpoint path')
    parser.add_argument('out', help='output checkpoint path')
    parser.add_argument(
        '--cfg-options',
        nargs='+',
        action=DictAction,
        help='override config entries, e.g. model.architecture.neck.type=X',
    )
    return parser.parse_args()


def build_plain_student(cfg: Config) -> torch.nn.Module:
    """Build the unquantized student detector of a QATDistill config."""
    model_cfg = cfg.model
    if 'architecture' not in model_cfg:
        raise ValueError(
            f'{cfg.filename}: model has no architecture entry; pass the '
            'QATDistill config the checkpoint was trained with.'
        )
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    return MODELS.build(model_cfg.architecture)


def extract(cfg: Config, checkpoint_path: str) -> dict:
    """Build the student-only checkpoint and check its strict load.

    Args:
        cfg (Config): The QATDistill config.
        checkpoint_path (str): A checkpoint of that config.

    Returns:
        dict: The student-only checkpoint.
    """
    checkpoint = _load_checkpoint(checkpoint_path, map_location='cpu')
    state = checkpoint.get('state_dict', checkpoint)
    student_state = {
        key[len(STUDENT_PREFIX) :]: value
        for key, value in state.items()
        if key.startswith(STUDENT_PREFIX)
    }
    if not student_state:
        raise ValueError(
            f'{checkpoint_path} has no {STUDENT_PREFIX!r} entries; it is not '
            'a QATDistill checkpoint.'
        )

    model = build_plain_student(cfg)
    plain_keys = list(model.state_dict())
    # A student quantized by tracing wraps the detector (DetectorQAT).
    prefix = find_plain_prefix(student_state, plain_keys)
    plain, other = split_student_state_dict(student_state, plain_keys, prefix)
    model.load_state_dict(plain, strict=True)

    meta = dict(checkpoint.get('meta', {}))
    meta['student_of'] = osp.abspath(checkpoint_path)
    return student_checkpoint(plain, other, meta)


def main() -> None:
    args = parse_args()
    cfg = Config.fromfile(args.config)
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)

    result = extract(cfg, args.checkpoint)
    out_dir = osp.dirname(osp.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    torch.save(result, args.out)
    print(
        f'Wrote {args.out}: {len(result["state_dict"])} student entries '
        f'(strict load into model.architecture checked), '
        f'{len(result["quantizer_state_dict"])} quantizer entries.'
    )


if __name__ == '__main__':
    main()
