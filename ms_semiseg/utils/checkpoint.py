"""MindSpore checkpoint I/O: atomic saves and verified loads (every parameter must load, names listed otherwise)."""
import os

import mindspore as ms
import numpy as np

from ..errors import UserError
from .atomic import atomic_target

# the original PCR MindSpore release stores converted `teacher_state` names, i.e. with DDP's `module.` prefix
KNOWN_PREFIXES = ("module.",)


def save_params_atomic(named_arrays, path, append_dict=None):
    """named_arrays: dict name -> numpy array / Tensor / Parameter, written as a .ckpt atomically."""
    entries = [{"name": name, "data": value if isinstance(value, ms.Tensor) else ms.Tensor(np.asarray(value))}
               for name, value in named_arrays.items()]
    with atomic_target(path, suffix=".ckpt") as tmp:
        ms.save_checkpoint(entries, tmp, append_dict=append_dict)


def read_checkpoint(path):
    """dict name -> Parameter from a .ckpt, with a one-line error for a missing or unreadable file."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: checkpoint not found, expected a MindSpore .ckpt file")
    try:
        return ms.load_checkpoint(path)
    except Exception as exc:  # MindSpore raises ValueError/RuntimeError with multi-line texts for bad files
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a readable MindSpore checkpoint ({reason}), expected a .ckpt written by "
                        "mindspore.save_checkpoint or `python -m convert pth2ckpt`") from None


def strip_prefix(params, prefixes=KNOWN_PREFIXES):
    """Drops a prefix that every name carries (`module.` of the original release, `teacher.` of our train state)."""
    for prefix in prefixes:
        if params and all(name.startswith(prefix) for name in params):
            return {name[len(prefix):]: value for name, value in params.items()}
    return params


def _summarise(names, limit=8):
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" ... and {len(names) - limit} more" if len(names) > limit else "")


def compare_to_model(params, expected_shapes, source):
    """Raises UserError naming missing, unexpected and mis-shaped parameters (by name) of `params` vs the model."""
    missing = set(expected_shapes) - set(params)
    unexpected = set(params) - set(expected_shapes)
    mis_shaped = [f"{n} {tuple(params[n].shape)} != {tuple(expected_shapes[n])}"
                  for n in sorted(set(params) & set(expected_shapes))
                  if tuple(params[n].shape) != tuple(expected_shapes[n])]
    problems = []
    if mis_shaped:
        problems.append(f"{len(mis_shaped)} with a wrong shape: " + "; ".join(mis_shaped[:6])
                        + (" ..." if len(mis_shaped) > 6 else ""))
    if missing:
        problems.append(f"{len(missing)} missing: {_summarise(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected: {_summarise(unexpected)}")
    if problems:
        hint = _class_count_hint(params, expected_shapes)
        raise UserError(f"{source}: does not match the model built from the config ({'; '.join(problems)}){hint}")


def _class_count_hint(params, expected_shapes):
    key = "decoder.classifier.8.bias"
    if key in params and key in expected_shapes and tuple(params[key].shape) != tuple(expected_shapes[key]):
        return (f" - the checkpoint has {params[key].shape[0]} classes, the config's net.num_classes is "
                f"{expected_shapes[key][0]}")
    return ""


def model_shapes(net):
    return {p.name: tuple(p.shape) for p in net.get_parameters()}


def load_into_model(net, path, params=None):
    """Loads a checkpoint into `net`, refusing it unless every parameter of the net is present with its shape."""
    params = strip_prefix(read_checkpoint(path) if params is None else params)
    compare_to_model(params, model_shapes(net), path)
    not_loaded, _ = ms.load_param_into_net(net, params, strict_load=True)
    if not_loaded:  # cannot happen after compare_to_model; kept as a guard against silent partial loads
        raise UserError(f"{path}: parameters not loaded: {_summarise(not_loaded)}")
    return net
