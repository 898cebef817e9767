"""`ms-semiseg report [ROOT]` (or `python -m ms_semiseg report`): the tables researchers compare - every metrics.json
that `eval` wrote under ROOT (default ./experiments), set against the published mIoU.

One table per dataset (PASCAL VOC 2012: 92, 183, 366, 732, 1464 labeled; Cityscapes: 186, 372, 744, 1488), a row
per split, method and head (linear classifier, prototype head): our mIoU, the PCR paper's, the original MindSpore
release's and our differences to both; `-` where there is nothing to show. The published numbers and their sources
are in ms_semiseg/eval/published.json.

A metrics.json is placed by the path of its config (as recorded by eval), else by its own path:
`.../<pascal|cityscapes>/<split>/<method>/...` as under experiments/ (eval.sh writes <experiment>/metrics.json), the
split being one of the dataset's; failing that, by the config's dataset.n_sup. When several files give the same
row, the newest (file time) is shown and the row says how many there were. Evaluations that differ from the
published protocol (another --protocol, more scales, flip, not the whole val set) say so in the `eval` column.
"""
import csv
import io
import json
import os
import sys

from ms_semiseg.errors import UserError

PUBLISHED_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "published.json")
HEADS = ("linear", "proto")
METHOD_ORDER = ("ours", "suponly", "brpg")
METHOD_ALIASES = {"semiseg_with_proto": "ours"}  # the release's ckpt/<voc|city>/<split>/<method> folder name
METHOD_LABELS = {"ours": "PCR (ours)", "suponly": "supervised only", "brpg": "BRPG"}
STANDARD_PROTOCOL = {"pascal": "whole", "cityscapes": "sliding"}
COLUMNS = ("split", "method", "head", "mIoU", "paper", "release", "vs paper", "vs release", "eval")
MISSING = "-"


def add_arguments(parser):
    parser.add_argument("root", nargs="?", default="experiments",
                        help="folder searched (recursively) for metrics.json (default: ./experiments)")
    parser.add_argument("--format", choices=("md", "csv"), default="md",
                        help="markdown tables (default) or one CSV with a dataset column")


def load_published(path=PUBLISHED_FILE):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


# ------------------------------------------------------------------------------------------------ finding results

class Result:
    """One eval metrics.json placed in the tables."""

    def __init__(self, path, dataset, split, method, metrics):
        self.path, self.dataset, self.split, self.method, self.metrics = path, dataset, split, method, metrics
        self.mtime = os.path.getmtime(path)
        self.count = 1  # files that gave this row (set when choosing the newest)

    def miou(self, head):
        heads = self.metrics.get("heads") or {}
        value = (heads.get(head) or {}).get("miou")
        if value is None:  # older files: only the top-level numbers
            value = self.metrics.get("miou" if head == "linear" else "miou_proto")
        return None if value is None else float(value)

    def eval_note(self, val_images):
        m, notes = self.metrics, []
        protocol = m.get("protocol")
        if protocol and protocol != STANDARD_PROTOCOL.get(self.dataset):
            notes.append(f"protocol {protocol}")
        scales = m.get("scales") or [1.0]
        if [float(s) for s in scales] != [1.0]:
            notes.append("scales " + "/".join(f"{float(s):g}" for s in scales))
        if m.get("flip"):
            notes.append("flip")
        if val_images and m.get("num_images") not in (None, val_images):
            notes.append(f"{m['num_images']} of {val_images} images")
        if self.count > 1:
            notes.append(f"newest of {self.count} files")
        return "; ".join(notes)


def find_metrics(root):
    """Every file named metrics.json under root, sorted."""
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        if "metrics.json" in files:
            found.append(os.path.join(folder, "metrics.json"))
    return found


def _split_and_method(parts, dataset, splits):
    """(split, method) from path components `.../<dataset>/<split>/<method>/...`, or (split, None), or (None, None)."""
    names = {str(s) for s in splits}
    at = [i for i in range(len(parts)) if parts[i] in names]
    # the innermost split folder right under the dataset's folder (experiments/pascal/92, ckpt/voc/92), else any
    under_dataset = [i for i in at if i > 0 and parts[i - 1] in (dataset, "voc", "city")]
    if not at:
        return None, None
    i = (under_dataset or at)[-1]
    return int(parts[i]), (parts[i + 1] if i + 1 < len(parts) else None)


def _n_sup(config_path):
    try:
        import yaml
        with open(config_path, encoding="utf-8") as handle:
            cfg = yaml.safe_load(handle) or {}
        return int((cfg.get("dataset") or {}).get("n_sup"))
    except Exception:  # missing/unreadable config or no n_sup: the split stays unknown
        return None


def place(path, metrics, published):
    """(Result, None) for a metrics.json that fits a table, else (None, why it was skipped)."""
    if not isinstance(metrics, dict) or "miou" not in metrics or "dataset" not in metrics:
        return None, "not written by eval (no miou/dataset)"
    dataset = metrics["dataset"]
    info = published["datasets"].get(dataset)
    if info is None:
        return None, f"dataset {dataset!r} has no published table"
    classes = metrics.get("num_classes")
    if classes is not None and info.get("num_classes") not in (None, classes):
        return None, f"a {classes}-class model, the {dataset} table is for {info['num_classes']} classes"
    splits = info["splits"]
    candidates = []
    config = metrics.get("config")
    if config:
        candidates.append(os.path.dirname(os.path.abspath(config)))
    candidates.append(os.path.dirname(os.path.abspath(path)))
    split = method = None
    for folder in candidates:
        split, method = _split_and_method(folder.split(os.sep), dataset, splits)
        if split is not None:
            break
    if split is None and config:
        n_sup = _n_sup(config)
        split = n_sup if n_sup in splits else None
    if split is None:
        return None, f"cannot tell its split (one of {', '.join(map(str, splits))}) from its path or config"
    if method is None:
        method = os.path.basename(candidates[0]) or "ours"
    method = METHOD_ALIASES.get(method, method)
    return Result(path, dataset, split, method, metrics), None


def collect(root, published):
    """({(dataset, split, method): Result}, [(path, why skipped)])."""
    chosen, skipped = {}, []
    for path in find_metrics(root):
        try:
            with open(path, encoding="utf-8") as handle:
                metrics = json.load(handle)
        except (OSError, ValueError) as exc:
            skipped.append((path, f"unreadable ({type(exc).__name__})"))
            continue
        result, why = place(path, metrics, published)
        if result is None:
            skipped.append((path, why))
            continue
        key = (result.dataset, result.split, result.method)
        previous = chosen.get(key)
        if previous is not None:
            newest = max(previous, result, key=lambda r: (r.mtime, r.path))
            newest.count = previous.count + 1
            result = newest
        chosen[key] = result
    return chosen, skipped


# ------------------------------------------------------------------------------------------------ tables

def _fmt(value):
    return MISSING if value is None else f"{value:.2f}"


def _diff(ours, published_value):
    return MISSING if ours is None or published_value is None else f"{ours - published_value:+.2f}"


def _method_order(methods):
    return sorted(methods, key=lambda m: (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m))


def table_rows(dataset, info, results):
    """Rows (dicts keyed by COLUMNS) of one dataset's table, every split listed."""
    rows = []
    for split in info["splits"]:
        methods = set(info["methods"]) | {m for (d, s, m) in results if d == dataset and s == split}
        for method in _method_order(methods):
            published = info["methods"].get(method, {})
            paper = published.get("paper", {}).get(str(split))
            release = published.get("release", {}).get(str(split))
            result = results.get((dataset, split, method))
            for head in HEADS:
                ours = None if result is None else result.miou(head)
                if head == "proto" and ours is None and method != "ours":
                    continue  # a method without a prototype head (supervised only) gets its linear row only
                rows.append({"split": str(split), "method": METHOD_LABELS.get(method, method), "head": head,
                             "mIoU": _fmt(ours), "paper": _fmt(paper), "release": _fmt(release),
                             "vs paper": _diff(ours, paper), "vs release": _diff(ours, release),
                             "eval": (result.eval_note(info.get("val_images")) if result is not None else "")
                             or MISSING})
    return rows


def markdown(published, results):
    lines = []
    for dataset, info in published["datasets"].items():
        lines += [f"### {info['title']}", "", "| " + " | ".join(COLUMNS) + " |",
                  "| " + " | ".join("---" for _ in COLUMNS) + " |"]
        lines += ["| " + " | ".join(row[c] for c in COLUMNS) + " |" for row in table_rows(dataset, info, results)]
        lines.append("")
    lines.append("mIoU in percent on the val set; `vs`: our mIoU minus the published one; `-`: no number.")
    for name, source in published["sources"].items():
        lines.append(f"- {name}: {source}")
    for note in published.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines) + "\n"


def csv_text(published, results):
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("dataset",) + COLUMNS)
    for dataset, info in published["datasets"].items():
        for row in table_rows(dataset, info, results):
            writer.writerow((dataset,) + tuple(row[c] for c in COLUMNS))
    return out.getvalue()


def run(args):
    root = os.path.abspath(os.path.expanduser(args.root))
    if not os.path.isdir(root):
        raise UserError(f"{args.root}: folder not found, expected the experiments folder (or a folder holding "
                        "eval metrics.json files)")
    published = load_published()
    results, skipped = collect(root, published)
    sys.stdout.write(markdown(published, results) if args.format == "md" else csv_text(published, results))
    for path, why in skipped:
        print(f"note: skipped {os.path.relpath(path, root)}: {why}", file=sys.stderr)
    print(f"{len(results)} result(s) from {root}", file=sys.stderr)
    return 0
