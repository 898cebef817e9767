"""Training checkpoints: `last.ckpt` (everything a resumed run needs) and `best.ckpt` (the model eval.sh loads).

`last.ckpt` holds, under structural names: `student.*` and `teacher.*` (all parameters: weights, BatchNorm
statistics, the prototype bank), `optimizer.*` (momentum buffers, the global step that indexes the LR lists),
`optimizer_flag.*` (SGD's first-step flags, one scalar each), `extra.*` (state outside the models: BRPG's
`extra.brpg.*` queues and prototypes) and a JSON string `train_state` (position, seed, best mIoU, history).
Dropout keep masks are per-step inputs and are not saved. Writes are atomic (temp file + rename), so a kill
leaves the previous checkpoint intact.
"""
import json

import numpy as np
from mindspore import Tensor

from ..errors import UserError
from ..utils.checkpoint import read_checkpoint, save_params_atomic
from .masks import is_dropout_mask
from .optim import optimizer_flags, optimizer_state

STATE_KEY = "train_state"
OPTIMIZER_PREFIX = "optimizer."
FLAG_PREFIX = "optimizer_flag."
EXTRA_PREFIX = "extra."
FORMAT_VERSION = 1


def model_params(cell, prefix=""):
    """{name: Parameter} of `cell` by structural name (independent of renames by wrappers), without the dropout
    keep masks; `prefix` is dropped from the names (e.g. 'teacher.' for the eval layout)."""
    params = {}
    for name, param in cell.parameters_and_names():
        if is_dropout_mask(name) or not name.startswith(prefix):
            continue
        params[name[len(prefix):]] = param
    return params


def training_params(pair, optimizer):
    params = model_params(pair)
    params.update({OPTIMIZER_PREFIX + name: param for name, param in optimizer_state(optimizer).items()})
    return params


def save_training_state(path, pair, optimizer, meta, extra=None):
    """Atomic `last.ckpt`: every parameter of the pair, the optimizer state and `meta` (a JSON-able dict).

    extra: {name: numpy array} of training state outside the models (BRPG's queues and prototypes), stored as
    `extra.<name>`; zero-size arrays are not stored (MindSpore drops them)."""
    meta = dict(meta, format_version=FORMAT_VERSION)
    entries = dict(training_params(pair, optimizer))
    for name, flag in optimizer_flags(optimizer).items():
        entries[FLAG_PREFIX + name] = _uniform_value(name, flag.asnumpy())
    entries.update({EXTRA_PREFIX + name: value for name, value in (extra or {}).items()})
    save_params_atomic(entries, path, append_dict={STATE_KEY: json.dumps(meta)})


def _uniform_value(name, values):
    if values.size and values.min() != values.max():
        raise RuntimeError(f"optimizer flag {name} is not uniform; cannot store it as one value")
    return np.asarray(values.reshape(-1)[0] if values.size else 0, dtype=values.dtype)


def save_model(path, cell, prefix=""):
    """Atomic `best.ckpt`: the parameters of one model under its own names (the layout `load_into_model` reads)."""
    save_params_atomic(model_params(cell, prefix), path)


def load_training_state(path, pair, optimizer, load_extra=None):
    """Restores a `last.ckpt` written by `save_training_state` into pair and optimizer; returns the meta dict.

    Every saved tensor must match a parameter of the run by name, shape and dtype (a changed config is an error
    naming what differs). load_extra: called with the saved `extra` arrays ({name: numpy array}, {} when none)
    before anything is restored; without it, a checkpoint holding extra state does not match the run."""
    saved = read_checkpoint(path)
    raw_meta = saved.pop(STATE_KEY, None)
    if not isinstance(raw_meta, str):
        raise UserError(f"{path}: no {STATE_KEY} entry, expected a last.ckpt written by `ms_semiseg train`")
    if load_extra is not None:
        load_extra({name[len(EXTRA_PREFIX):]: saved.pop(name).asnumpy() for name in list(saved)
                    if name.startswith(EXTRA_PREFIX)})
    targets = training_params(pair, optimizer)
    flags = {FLAG_PREFIX + name: param for name, param in optimizer_flags(optimizer).items()}
    _check_same_names(path, saved, {**targets, **flags})
    for name, param in flags.items():
        value = saved[name].asnumpy()
        param.set_data(Tensor(np.full(param.shape, value, dtype=value.dtype)))
    for name, param in targets.items():
        value = saved[name].asnumpy()
        dtype = param.asnumpy().dtype
        if value.shape != tuple(param.shape) or value.dtype != dtype:
            raise UserError(f"{path}: {name} is {value.dtype}{list(value.shape)}, the run's config builds "
                            f"{dtype}{list(param.shape)}, expected the config the run started with")
        param.set_data(Tensor(np.ascontiguousarray(value)))
    return json.loads(raw_meta)


def read_meta(path):
    """The `train_state` dict of a last.ckpt, without converting its tensors."""
    import mindspore as ms
    try:
        raw = ms.load_checkpoint(path, choice_func=lambda name: name == STATE_KEY).get(STATE_KEY)
    except Exception:  # unreadable: read_checkpoint raises the one-line UserError
        raw = read_checkpoint(path).get(STATE_KEY)
    if not isinstance(raw, str):
        raise UserError(f"{path}: no {STATE_KEY} entry, expected a last.ckpt written by `ms_semiseg train`")
    return json.loads(raw)


def _check_same_names(path, saved, targets):
    missing = sorted(set(targets) - set(saved))
    unexpected = sorted(set(saved) - set(targets))
    if missing or unexpected:
        raise UserError(f"{path}: does not match this run ({len(missing)} missing, e.g. {missing[:3]}; "
                        f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}), expected the config the run "
                        "started with")
