"""Float checkpoints in, student-only checkpoints out, for QATDistill."""

from __future__ import annotations

import os.path as osp
from collections import OrderedDict
from collections.abc import Iterable, Mapping

from mmengine.logging import print_log
from mmengine.runner.checkpoint import _load_checkpoint
from torch import Tensor, nn

# How many key names an error message lists before it abbreviates.
_KEYS_SHOWN = 8


def load_float_state_dict(path: str) -> OrderedDict:
    """Read the model weights of a float checkpoint.

    Args:
        path (str): Checkpoint file written by mmengine (with a
            ``state_dict`` entry) or a bare state dict.

    Returns:
        OrderedDict: The weights, without a ``module.`` wrapper prefix.
    """
    if not osp.isfile(path):
        raise FileNotFoundError(
            f'QATDistill: float_checkpoint {path!r} not found; train the '
            'float model first (tools/train.py on its config) and pass its '
            'checkpoint, for example with --cfg-options '
            'model.float_checkpoint=PATH.'
        )
    checkpoint = _load_checkpoint(path, map_location='cpu')
    state = checkpoint.get('state_dict', checkpoint)
    return OrderedDict(
        (key.removeprefix('module.'), value) for key, value in state.items()
    )


def split_student_state_dict(
    state: Mapping[str, Tensor], plain_keys: Iterable[str], prefix: str = ''
) -> tuple[OrderedDict, OrderedDict]:
    """Split a student state dict into plain-detector and other entries.

    Args:
        state (Mapping[str, Tensor]): State dict of the quantized student.
        plain_keys (Iterable[str]): Keys of the plain student detector.
        prefix (str): Prefix of the plain entries in ``state``:
            ``'architecture.'`` when the student wraps the detector (a
            traced quantization algorithm), else ``''``.

    Returns:
        tuple[OrderedDict, OrderedDict]: Plain entries in ``plain_keys``
        order and without ``prefix``, and the remaining entries.
    """
    plain_keys = list(plain_keys)
    missing = [key for key in plain_keys if prefix + key not in state]
    if missing:
        raise KeyError(
            f'The quantized student has no entries for {len(missing)} keys '
            f'of the plain detector, such as {_preview(missing)} (prefix '
            f'{prefix!r}); the quantizer renamed them, so no student-only '
            'checkpoint can be made for this quantizer.'
        )
    plain = OrderedDict((key, state[prefix + key]) for key in plain_keys)
    taken = {prefix + key for key in plain_keys}
    other = OrderedDict(
        (key, value) for key, value in state.items() if key not in taken
    )
    return plain, other


def find_plain_prefix(
    state: Mapping[str, Tensor], plain_keys: Iterable[str]
) -> str:
    """Return the prefix under which ``state`` contains every plain key.

    Args:
        state (Mapping[str, Tensor]): State dict of a student.
        plain_keys (Iterable[str]): Keys of the plain student detector.

    Returns:
        str: ``''`` for an in-place quantized student, or
        ``'architecture.'`` for a student that wraps the detector.
    """
    plain_keys = list(plain_keys)
    for prefix in ('', 'architecture.'):
        if all(prefix + key in state for key in plain_keys):
            return prefix
    missing = [key for key in plain_keys if key not in state]
    raise KeyError(
        f'The student state has no entries for {len(missing)} keys of the '
        f'plain detector, such as {_preview(missing)}; pass the config the '
        'checkpoint was trained with.'
    )


def student_checkpoint(
    plain: Mapping[str, Tensor],
    other: Mapping[str, Tensor],
    meta: dict | None = None,
) -> dict:
    """Assemble a student-only checkpoint.

    Args:
        plain (Mapping[str, Tensor]): Entries of the plain student detector;
            stored as ``state_dict``, which mmengine's ``load_checkpoint``
            reads.
        other (Mapping[str, Tensor]): Remaining student entries (quantizer
            state); stored as ``quantizer_state_dict``.
        meta (dict, optional): Stored as ``meta``.

    Returns:
        dict: The checkpoint, ready for ``torch.save``.
    """
    return dict(
        meta=dict(meta or {}),
        state_dict=OrderedDict(plain),
        quantizer_state_dict=OrderedDict(other),
    )


def load_teacher_strict(
    model: nn.Module, state: Mapping[str, Tensor], path: str
) -> None:
    """Load ``state`` into the teacher and raise on any mismatch."""
    missing, unexpected, mismatched = _compare(model.state_dict(), state)
    problems = []
    if missing:
        problems.append(f'missing keys {_preview(missing)}')
    if unexpected:
        problems.append(f'unexpected keys {_preview(unexpected)}')
    if mismatched:
        problems.append(f'shape mismatches {_preview(mismatched)}')
    if problems:
        raise RuntimeError(
            f'QATDistill: float_checkpoint {path!r} does not match the '
            f'teacher config: {"; ".join(problems)}. Pass the float '
            "model's config as teacher and its checkpoint."
        )
    model.load_state_dict(state, strict=True)


def load_student_float(
    model: nn.Module, state: Mapping[str, Tensor], path: str
) -> None:
    """Load float weights into the student; only new parts may be missing.

    The teacher was loaded strictly from ``state``, so a student key missing
    from ``state`` belongs to a part the float model lacks.
    """
    missing, unexpected, mismatched = _compare(model.state_dict(), state)
    if unexpected or mismatched:
        raise RuntimeError(
            f'QATDistill: float_checkpoint {path!r} does not fit the '
            f'student: unexpected keys {_preview(unexpected)}, shape '
            f'mismatches {_preview(mismatched)}. The student must be the '
            'float model, optionally with new parts.'
        )
    model.load_state_dict(state, strict=False)
    if missing:
        print_log(
            f'QATDistill: {len(missing)} student entries are not in the '
            f'float model and keep their initial values: {_preview(missing)}',
            logger='current',
        )


def _compare(
    model_state: Mapping[str, Tensor], state: Mapping[str, Tensor]
) -> tuple[list[str], list[str], list[str]]:
    missing = [key for key in model_state if key not in state]
    unexpected = [key for key in state if key not in model_state]
    mismatched = [
        f'{key} {tuple(state[key].shape)} vs {tuple(value.shape)}'
        for key, value in model_state.items()
        if key in state and state[key].shape != value.shape
    ]
    return missing, unexpected, mismatched


def _preview(keys: list[str]) -> str:
    if not keys:
        return '[]'
    shown = ', '.join(keys[:_KEYS_SHOWN])
    if len(keys) > _KEYS_SHOWN:
        shown += f', ... ({len(keys)} in total)'
    return f'[{shown}]'
