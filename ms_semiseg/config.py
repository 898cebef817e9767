"""Upstream (U2PL/PCR) `config.yaml` loading: relative paths, `--opts key=value` overrides, and type checks."""
import copy
import os

import yaml

from .errors import UserError

# Keys users may set with --opts even when their config omits them (our additions to the upstream schema).
OPTIONAL_KEYS = {
    "dataset.train.unlabeled_list",  # default: data_list with labeled.txt -> unlabeled.txt (U2PL)
    "dataset.class_names",  # one name per class; default VOC/Cityscapes names, else "class <i>"
    "dataset.palette",  # [[r, g, b], ...] one per class; default VOC/Cityscapes palette, else the VOC colormap
    "trainer.unsupervised.loss_type",  # entropy_drop (U2PL, default) or confidence (conf >= confid_thresh)
    "trainer.unsupervised.loss_weight",  # lambda_u, default 1 (U2PL)
    "trainer.unsupervised.oracle_pseudo_labels",  # diagnostic: true labels replace the teacher's (all, or a share), default false
    "trainer.log_interval",  # steps between loss fetches / log.csv writes, default 10
    "trainer.save_interval",  # iterations between mid-epoch checkpoints, default 0 (epoch ends only)
    "trainer.save_epoch_interval",  # epochs between end-of-epoch last.ckpt writes, default 1 (every epoch)
    "trainer.freeze_bn",  # BatchNorm uses its moving statistics in training too and keeps them, default false
    "dataset.train.strong_view",  # unlabeled strong view for the student (BRPG/UniMatch), default false
    "dataset.on_bad_image",  # error (default: stop, naming the file) or skip (train without it, listed at the end)
    "trainer.base_batch_size",  # the global batch the lr was tuned for (docs/distributed.md "Fewer devices")
    "trainer.grad_accumulation",  # micro-batches per optimizer update, default 1
    "trainer.lr_scaling",  # none (default) or linear: lr x global batch / base_batch_size
    "trainer.decoder_lr_times",  # decoder lr / encoder lr, default U2PL's 10 (pascal) or 1 (a from-scratch backbone: 1)
    "net.decoder.kwargs.head_planes",  # width of the stride-4 decoder head, default 256 (U2PL's fixed width)
    "net.encoder.kwargs.stem_pool",  # pytorch (default, the paper) or same (the original PCR MindSpore release)
}

# Expected types of keys that must be present when a section is used (checked with `require`).
NET_SCHEMA = {
    "net.num_classes": int,
    "net.encoder.type": str,
    "net.decoder.type": str,
}


def load_config(path, opts=()):
    """Reads a config file; `opts` are `key.sub=value` strings whose values are parsed as YAML."""
    if not os.path.isfile(path):
        raise UserError(f"{path}: config file not found, expected a config.yaml")
    try:
        with open(path, "r", encoding="utf-8") as handle:
            cfg = yaml.safe_load(handle)
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise UserError(f"{path}: not valid YAML{line}, expected a U2PL/PCR config.yaml") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: top level is {type(cfg).__name__}, expected a mapping with sections net/dataset/...")
    apply_opts(cfg, opts)
    cfg["_config_path"] = os.path.abspath(path)
    return cfg


def config_dir(cfg):
    return os.path.dirname(cfg.get("_config_path", os.path.abspath("config.yaml")))


def resolve_path(cfg, value):
    """Upstream configs hold paths relative to the experiment folder (where eval.sh runs): resolve against it."""
    if value is None or value == "":
        return value
    value = os.path.expanduser(str(value))
    return value if os.path.isabs(value) else os.path.normpath(os.path.join(config_dir(cfg), value))


def check(key, value, ok, expected):
    """The one value check of the settings: `value` (of config key `key`) when `ok`, else a UserError naming both.
    (`require` below checks a schema of types, with messages that name the config file.)"""
    if not ok:
        raise UserError(f"{key}: {value!r} is not valid, expected {expected}")
    return value


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number(cfg, key, default=None, low=None, high=None, kind=float):
    """`key`'s value (or `default`) as `kind`, checked to be a number (an integer for int) within [low, high]."""
    value = get(cfg, key, default)
    ok = is_number(value) and (kind is float or value == int(value))
    ok = ok and (low is None or value >= low) and (high is None or value <= high)
    bounds = f" in [{low}, {high}]" if high is not None else (f" >= {low}" if low is not None else "")
    return kind(check(key, value, ok, f"{'an int' if kind is int else 'a number'}{bounds}"))


def get(cfg, dotted, default=None):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def apply_opts(cfg, opts):
    for opt in opts or ():
        if "=" not in opt:
            raise UserError(f"--opts {opt!r}: expected key=value, e.g. trainer.epochs=1")
        key, raw = opt.split("=", 1)
        _set(cfg, key.strip(), parse_value(raw))


def parse_value(raw):
    """YAML value of an --opts string; also reads `1e-3` as a float (YAML 1.1 wants `1.0e-3`)."""
    value = yaml.safe_load(raw) if raw.strip() else ""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def _set(cfg, dotted, value):
    parts = dotted.split(".")
    node = cfg
    for i, part in enumerate(parts[:-1]):
        child = node.get(part) if isinstance(node, dict) else None
        if child is None and ".".join(parts[: i + 1]) in _optional_prefixes():
            child = node[part] = {}
        if not isinstance(child, dict):
            raise UserError(f"--opts {dotted}: no such config key ({'.'.join(parts[:i + 1])} is not a section)")
        node = child
    last = parts[-1]
    if last not in node and dotted not in OPTIONAL_KEYS:
        raise UserError(f"--opts {dotted}: no such config key, expected one of {sorted(node)} under "
                        f"{'.'.join(parts[:-1]) or 'the top level'}")
    old = node.get(last)
    if old is not None and not _compatible(old, value):
        raise UserError(f"--opts {dotted}={value!r}: wrong type {type(value).__name__}, expected "
                        f"{type(old).__name__} like the config's {old!r}")
    node[last] = value


def _optional_prefixes():
    prefixes = set()
    for key in OPTIONAL_KEYS:
        parts = key.split(".")
        prefixes.update(".".join(parts[:i]) for i in range(1, len(parts)))
    return prefixes


def _compatible(old, new):
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if isinstance(old, (int, float)):
        return isinstance(new, (int, float))
    if isinstance(old, (list, tuple)):
        return isinstance(new, (list, tuple))
    if isinstance(old, dict):
        return isinstance(new, dict)
    return isinstance(new, type(old))


def require(cfg, schema, source=None):
    """Checks that each dotted key exists with the expected type; one-line error naming file, key and type."""
    source = source or cfg.get("_config_path", "config")
    for dotted, expected in schema.items():
        value = get(cfg, dotted, _MISSING)
        if value is _MISSING:
            raise UserError(f"{source}: missing key {dotted}, expected a {_type_name(expected)}")
        if not _is_type(value, expected):
            raise UserError(f"{source}: {dotted}={value!r} has type {type(value).__name__}, expected a "
                            f"{_type_name(expected)}")


def _is_type(value, expected):
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def _type_name(expected):
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join({dict: "mapping", list: "list"}.get(t, t.__name__) for t in types)


_MISSING = object()


def net_config(cfg):
    """The `net:` section, checked (types, encoder/decoder keys) with errors naming the config file."""
    from .net_spec import validate_net_config
    require(cfg, {"net": dict})
    require(cfg, NET_SCHEMA)
    try:
        validate_net_config(cfg["net"])
    except UserError as exc:
        raise UserError(f"{cfg.get('_config_path', 'config')}: {exc}") from None
    return copy.deepcopy(cfg["net"])
