"""MindSpore checkpoint I/O: atomic saves and verified loads (every parameter must load, names listed otherwise)."""
import os

import mindspore as ms
import numpy as np

from ..errors import UserError
from .atomic import atomic_target

# the original PCR MindSpore release stores converted `teacher_state` names, i.e. with DDP's `module.` prefix
KNOWN_PREFIXES = ("module.",)
RELEASE_PREFIX = "module."
# The release's Aux_Module builds its first conv with MindSpore's default has_bias=False (PyTorch's, and ours, has a
# bias), so its Cityscapes files lack this one name; zeros reproduce its network exactly.
RELEASE_MISSING_BIAS = "auxor.aux.0.bias"

# Entries a training checkpoint may hold besides the model's weights: skipped with a note, never loaded. Optimizer
# slots are recognised by the prefixes MindSpore's optimizers give them, counters by their exact names.
OPTIMIZER_PREFIXES = ("moments.", "accum.", "adam_m.", "adam_v.", "moment1.", "moment2.", "moment3.", "mean_grad.",
                      "mean_square.", "linear.", "vhat.", "optimizer.", "optimizer_flag.")
TRAINING_SCALARS = ("global_step", "learning_rate", "momentum", "weight_decay", "beta1_power", "beta2_power",
                    "epoch_num", "step_num", "epoch", "iteration", "best_miou", "scale_sense", "loss_scale",
                    "current_iterator_step", "last_overflow_iterator_step", "train_state")


CHECKPOINT_FORMATS = ("ckpt", "safetensors")  # MindSpore's two checkpoint formats (mindspore.save_checkpoint)
SAFETENSORS_SUFFIX = ".safetensors"


def output_format(path, requested=None):
    """'ckpt' or 'safetensors' for a checkpoint to write: `requested` (a --format value) when given, else from the
    suffix of `path` (.safetensors -> safetensors, anything else -> ckpt)."""
    if requested is not None:
        if requested not in CHECKPOINT_FORMATS:
            raise UserError(f"--format {requested}: expected one of {', '.join(CHECKPOINT_FORMATS)}")
        return requested
    return "safetensors" if str(path).lower().endswith(SAFETENSORS_SUFFIX) else "ckpt"


def is_safetensors(path):
    """True when the file's bytes are a safetensors file: an 8-byte little-endian header length, then a JSON header
    that starts with `{` and fits in the file (a .ckpt is a protobuf, a .pth a zip or a pickle)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(9)
            size = os.fstat(handle.fileno()).st_size
    except OSError:
        return False
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 8 + int.from_bytes(head[:8], "little") <= size


def save_params_atomic(named_arrays, path, append_dict=None, format="ckpt"):  # noqa: A002 (MindSpore's name)
    """named_arrays: dict name -> numpy array / Tensor / Parameter, written atomically as a MindSpore checkpoint in
    `format` ('ckpt' or 'safetensors', both read by read_checkpoint and mindspore.load_checkpoint)."""
    entries = [{"name": name, "data": value if isinstance(value, ms.Tensor) else ms.Tensor(np.asarray(value))}
               for name, value in named_arrays.items()]
    if format not in CHECKPOINT_FORMATS:
        raise ValueError(f"format {format!r}: expected one of {CHECKPOINT_FORMATS}")
    with atomic_target(path, suffix="." + format) as tmp:  # save_checkpoint appends the suffix otherwise
        ms.save_checkpoint(entries, tmp, append_dict=append_dict, format=format)


def _load_safetensors(path):
    """A safetensors file as {name: Parameter}. MindSpore's reader insists on the .safetensors suffix; a file with
    another name is read with the safetensors package (numpy)."""
    if str(path).lower().endswith(SAFETENSORS_SUFFIX):
        return ms.load_checkpoint(path, format="safetensors")
    from safetensors.numpy import load_file
    return {name: ms.Parameter(ms.Tensor(value), name=name) for name, value in load_file(path).items()}


def read_checkpoint(path):
    """dict name -> Parameter from a MindSpore checkpoint, .ckpt or safetensors (told apart by their bytes), with a
    one-line error for a missing or unreadable file."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: checkpoint not found, expected a MindSpore .ckpt or .safetensors file")
    safetensors = is_safetensors(path)
    try:
        return _load_safetensors(path) if safetensors else ms.load_checkpoint(path)
    except Exception as exc:  # MindSpore raises ValueError/RuntimeError with multi-line texts for bad files
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        kind = "safetensors file" if safetensors else "MindSpore checkpoint"
        raise UserError(f"{path}: not a readable {kind} ({reason}), expected a .ckpt or .safetensors written by "
                        "mindspore.save_checkpoint or `convert pth2ckpt`") from None


TRAIN_STATE_MODELS = ("teacher", "student")  # the models of a training state (last.ckpt), by name prefix


def select_model(params, which, source):
    """One model's weights out of a training state (`last.ckpt`: `student.*`, with a teacher also `teacher.*`, plus
    optimizer slots and counters), without its prefix: `which` ("teacher" or "student"), by default the teacher
    where there is one (the model U2PL/PCR validate), else the student. Any other checkpoint holds one model's
    weights and is returned as it is; asking it for `which` is an error (best.ckpt keeps only the validated model)."""
    present = [m for m in TRAIN_STATE_MODELS if any(name.startswith(m + ".") for name in params)]
    if not present:
        if which:
            raise UserError(f"{source}: holds one model's weights, not a training state with {which}.* weights; "
                            f"expected a last.ckpt for --weights {which}")
        return params
    which = which or present[0]
    if which not in present:
        raise UserError(f"{source}: a training state without {which}.* weights (it has {', '.join(present)}), "
                        f"expected --weights {' or '.join(present)}")
    prefix = which + "."
    return {name[len(prefix):]: value for name, value in params.items() if name.startswith(prefix)}


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


def harmless_kind(name):
    """The kind of a checkpoint entry that is not a model weight ('BatchNorm num_batches_tracked', 'optimizer
    state', 'training counter'), or None for anything else (which must then match the model)."""
    bare = name[len(RELEASE_PREFIX):] if name.startswith(RELEASE_PREFIX) else name
    if bare.endswith(".num_batches_tracked"):
        return "BatchNorm num_batches_tracked"
    if name.startswith(OPTIMIZER_PREFIXES):
        return "optimizer state"
    if bare in TRAINING_SCALARS:
        return "training counter"
    return None


def drop_harmless(params):
    """(params without the entries harmless_kind recognises, {kind: [names dropped]})."""
    kept, dropped = {}, {}
    for name, value in params.items():
        kind = harmless_kind(name)
        if kind is None:
            kept[name] = value
        else:
            dropped.setdefault(kind, []).append(name)
    return kept, dropped


def _describe_dropped(dropped):
    parts = []
    for kind, names in sorted(dropped.items()):
        if kind == "optimizer state":
            prefixes = sorted({name.split(".", 1)[0] + ".*" for name in names})
            parts.append(f"{len(names)} optimizer state ({', '.join(prefixes)})")
        elif kind == "training counter":
            parts.append(f"{len(names)} training counter(s) ({', '.join(sorted(names)[:6])})")
        else:
            parts.append(f"{len(names)} {kind}")
    return "; ".join(parts)


class LoadReport:
    """What `match_checkpoint` found: `release_layout` (every model name had the `module.` prefix of the original
    PCR MindSpore release), `zero_bias` (the release's missing aux-conv bias, filled with zeros), `dropped`
    ({kind: names} skipped as harmless) and `notes` (one line each, printed by the caller)."""

    def __init__(self):
        self.release_layout, self.zero_bias, self.dropped, self.notes = False, False, {}, []


def match_checkpoint(params, expected_shapes, source):
    """Checkpoint entries -> exactly the model's parameters, or a UserError listing what does not match.

    Skips harmless entries (num_batches_tracked, optimizer slots, counters; a note says how many of which kind),
    strips the `module.` prefix when every remaining name has it (the original PCR MindSpore release's layout), and
    in that layout only reads a missing aux-conv bias (`auxor.aux.0.bias`, absent from the release's Cityscapes
    files) as zeros. Returns (params, LoadReport)."""
    report = LoadReport()
    params, report.dropped = drop_harmless(params)
    if report.dropped:
        count = sum(len(names) for names in report.dropped.values())
        report.notes.append(f"note: {source}: skipped {count} entries that are not model weights: "
                            f"{_describe_dropped(report.dropped)}")
    report.release_layout = bool(params) and all(name.startswith(RELEASE_PREFIX) for name in params)
    params = strip_prefix(params)
    if (report.release_layout and RELEASE_MISSING_BIAS in expected_shapes and RELEASE_MISSING_BIAS not in params
            and params.get("auxor.aux.0.weight") is not None):
        shape = tuple(expected_shapes[RELEASE_MISSING_BIAS])
        params = dict(params)
        params[RELEASE_MISSING_BIAS] = ms.Parameter(ms.Tensor(np.zeros(shape, np.float32)), name=RELEASE_MISSING_BIAS)
        report.zero_bias = True
        report.notes.append(f"note: {source}: no {RELEASE_MISSING_BIAS} (the original PCR MindSpore release's aux "
                            "conv has none): read as zeros, exactly the release's network")
    compare_to_model(params, expected_shapes, source)
    return params, report


def load_with_report(net, path, params=None, say=print):
    """Loads a checkpoint into `net`, refusing it unless every parameter of the net is present with its shape
    (harmless extras and the release's missing aux bias aside, see match_checkpoint); `say` gets the notes.
    Returns the LoadReport."""
    params, report = match_checkpoint(read_checkpoint(path) if params is None else params, model_shapes(net), path)
    for note in report.notes:
        say(note)
    not_loaded, _ = ms.load_param_into_net(net, params, strict_load=True)
    if not_loaded:  # cannot happen after compare_to_model; kept as a guard against silent partial loads
        raise UserError(f"{path}: parameters not loaded: {_summarise(not_loaded)}")
    return report


def load_into_model(net, path, params=None, say=print):
    """load_with_report, returning `net`."""
    load_with_report(net, path, params, say)
    return net
