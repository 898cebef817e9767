"""Name mapping between PyTorch state_dicts (U2PL/PCR layout) and MindSpore parameter names.

Only BatchNorm leaves differ: weight/bias/running_mean/running_var <-> gamma/beta/moving_mean/moving_variance, and
num_batches_tracked has no MindSpore counterpart. A BN prefix is recognised by its `running_mean` sibling, never by
shape, so conv biases and 1-d parameters are left alone.
"""
import os

import numpy as np

from ms_semiseg.errors import UserError

TORCH_TO_MS_BN = {"weight": "gamma", "bias": "beta", "running_mean": "moving_mean", "running_var": "moving_variance"}
MS_TO_TORCH_BN = {v: k for k, v in TORCH_TO_MS_BN.items()}
STATE_KEYS = ("teacher_state", "model_state", "state_dict", "model")
OLD_PROTO_PREFIX = "relation_net."  # name of the prototype head in older PCR code


def import_torch():
    """torch, or a one-line UserError saying how to install it (only the converter and parity need it)."""
    try:
        import torch
    except ImportError:
        raise UserError("this command needs PyTorch (CPU is enough): pip install torch, or pip install "
                        "'ms-semiseg[torch]'") from None
    return torch


def read_pth(path, state=None):
    """Returns (state_dict of numpy arrays, the entry it came from) from a U2PL/PCR checkpoint dict, a dict with
    a `state_dict`/`model` entry, or a plain state_dict: a torch.save file or a .safetensors state dict (see
    read_safetensors_state). The teacher is preferred when present."""
    from ms_semiseg.utils.checkpoint import is_safetensors
    torch = import_torch()
    if not os.path.isfile(path):
        raise UserError(f"{path}: file not found, expected a PyTorch .pth or .safetensors checkpoint")
    if is_safetensors(path):
        return read_safetensors_state(path, state)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types (UnpicklingError, KeyError, EOFError...) on bad files
        raise UserError(f"{path}: not a readable PyTorch checkpoint ({_load_failure(exc)}), expected a file "
                        "written by torch.save") from None
    if not isinstance(obj, dict) or not obj:
        raise UserError(f"{path}: holds a {type(obj).__name__}, expected a state_dict or a U2PL checkpoint dict")
    entry, tensors = _select_state(obj, state, path)
    bad = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"{path}: entry {entry!r} is not a state_dict ({bad[0]!r} is a {type(tensors[bad[0]]).__name__}),"
                        f" expected tensors; choose another with --state")
    return {k: _to_numpy(v) for k, v in strip_module(tensors).items()}, entry


def read_safetensors_state(path, state=None):
    """(numpy state_dict, entry) of a safetensors file holding a PyTorch state dict (safetensors.torch.save_file,
    e.g. `model.safetensors` of a hub). The file is flat: `--state NAME` selects the names under `NAME.` (a nested
    checkpoint flattened with dotted keys, e.g. teacher_state.module.encoder...) and strips that prefix; without it
    the whole file is the state dict, or its teacher_state./model_state./state_dict./model. part when every name
    has one of these prefixes."""
    try:
        from safetensors.torch import load_file
        tensors = load_file(path, device="cpu")
    except Exception as exc:  # SafetensorError / OSError with a long text on a corrupt file
        raise UserError(f"{path}: not a readable safetensors file ({_load_failure(exc)}), expected a state dict "
                        "written by safetensors.torch.save_file") from None
    if not tensors:
        raise UserError(f"{path}: holds no tensors, expected a state dict")
    entry = "(plain state_dict, safetensors)"
    if state is None:
        tops = {name.split(".", 1)[0] for name in tensors}
        state = next((key for key in STATE_KEYS if key in tops), None) if tops <= set(STATE_KEYS) else None
    if state is not None:
        prefix = state + "."
        selected = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        if not selected:
            tops = sorted({name.split(".", 1)[0] for name in tensors})[:8]
            raise UserError(f"{path}: no tensors under {prefix!r}, expected names such as {tops} (--state selects "
                            "a name prefix in a safetensors file)")
        tensors, entry = selected, f"{state} (safetensors)"
    return {k: _to_numpy(v) for k, v in strip_module(tensors).items()}, entry


def _to_numpy(tensor):
    import torch
    tensor = tensor.detach().cpu()
    return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()  # numpy has no bfloat16


def _load_failure(exc):
    text = str(exc).strip()
    if text.startswith("Weights only load failed"):
        # torch's text is a long migration note; what matters is that the bytes do not unpickle safely
        return "its content does not unpickle as tensors"
    return (text.splitlines() or [type(exc).__name__])[0][:120]


def _select_state(obj, state, path):
    if state is not None:
        if state not in obj or not isinstance(obj[state], dict):
            raise UserError(f"{path}: no state_dict entry {state!r}, expected one of "
                            f"{sorted(k for k, v in obj.items() if isinstance(v, dict))}")
        return state, obj[state]
    for key in STATE_KEYS:
        if isinstance(obj.get(key), dict):
            return key, obj[key]
    return "(plain state_dict)", obj


def strip_module(state_dict):
    """Removes DistributedDataParallel's `module.` prefix (only where present, never blindly 7 characters)."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state_dict.items()}


def is_imagenet_backbone(state_dict):
    """A bare ResNet checkpoint (deep-stem ImageNet weights or torchvision): `layer1.*` at top level, no `encoder.`."""
    return "layer1.0.conv1.weight" in state_dict and not any(k.startswith("encoder.") for k in state_dict)


def backbone_stem(state_dict):
    """'deep' for the U2PL deep stem (conv1.0/3/6), 'torchvision' for the 7x7 stem (conv1.weight), else None."""
    if "conv1.0.weight" in state_dict or "encoder.conv1.0.weight" in state_dict:
        return "deep"
    if "conv1.weight" in state_dict or "encoder.conv1.weight" in state_dict:
        return "torchvision"
    return None


def check_stem(state_dict, deep_stem, source):
    """One-line explanation when ImageNet weights and the config disagree on the stem."""
    stem = backbone_stem(state_dict)
    if stem == "torchvision" and deep_stem:
        raise UserError(f"{source}: torchvision ResNet weights (7x7 stem conv1.weight) but the config builds the "
                        "deep 3x3 stem; set net.encoder.kwargs.deep_stem: false, or use deep-stem ImageNet weights")
    if stem == "deep" and not deep_stem:
        raise UserError(f"{source}: deep-stem ResNet weights (conv1.0/3/6) but the config has "
                        "net.encoder.kwargs.deep_stem: false; remove that key to build the deep stem")


def backbone_to_encoder(state_dict):
    """ImageNet ResNet -> `encoder.*` names; the classifier `fc.*` is not part of the segmentor."""
    return {"encoder." + k: v for k, v in state_dict.items() if not k.startswith("fc.")}


def torch_to_ms(state_dict):
    """PyTorch names -> MindSpore names (BN leaves renamed, num_batches_tracked dropped, old proto prefix mapped)."""
    bn = {n[: -len(".running_mean")] for n in state_dict if n.endswith(".running_mean")}
    out = {}
    for name, value in state_dict.items():
        if name.startswith(OLD_PROTO_PREFIX):
            name = "proto_net." + name[len(OLD_PROTO_PREFIX):]
        prefix, _, leaf = name.rpartition(".")
        if prefix in bn:
            if leaf == "num_batches_tracked":
                continue
            leaf = TORCH_TO_MS_BN.get(leaf, leaf)
        out[f"{prefix}.{leaf}" if prefix else leaf] = value
    return out


def ms_to_torch(params):
    """MindSpore names -> PyTorch names; num_batches_tracked (not kept by MindSpore) is written as 0."""
    bn = {n[: -len(".moving_mean")] for n in params if n.endswith(".moving_mean")}
    out = {}
    for name, value in params.items():
        prefix, _, leaf = name.rpartition(".")
        if prefix in bn:
            out[f"{prefix}.{MS_TO_TORCH_BN.get(leaf, leaf)}"] = value
            if leaf == "moving_mean":
                out[f"{prefix}.num_batches_tracked"] = np.array(0, dtype=np.int64)
        else:
            out[name] = value
    return out
