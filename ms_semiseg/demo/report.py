"""What the demo prints and writes at the end: per-class and per-method tables, the prediction figure, the summary
payload and the fixed last line `demo: suponly=<mIoU> pcr=<mIoU> brpg=<mIoU or n/a>`."""
import os
from pathlib import Path

from .specs import LAST_LINE_METHODS

FIGURE_NAME = "predictions.png"
BUDGET_S = 15 * 60  # the README's promise for a 2-core CPU machine


def format_duration(seconds):
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


def percent(value, missing="n/a"):
    return missing if value is None else f"{value:.2f}"


def labels_used(meta, semi):
    counts = meta["counts"]
    labeled = f"{counts['labeled']} of {counts['train']}"
    return labeled, (str(counts["unlabeled"]) if semi else "0")


def table_rows(results, meta):
    header = ["method", "labeled images", "unlabeled images", "iterations", "mIoU linear", "mIoU proto",
              "train time"]
    rows = [header]
    for result in results:
        spec = result.spec
        # a method that did not run used no images: dashes, not the labeled split's size and 0 unlabeled
        labeled, unlabeled = labels_used(meta, spec.semi) if spec else ("-", "-")
        has_proto = spec is not None and "proto_head" in spec.cfg.get("net", {})
        train_time = format_duration(result.train_s) + (" (reused)" if result.reused else "")
        rows.append([result.method.title, labeled, unlabeled, str(result.iterations or "-"), percent(result.miou),
                     percent(result.miou_proto) if has_proto and result.ok else "-",
                     train_time if result.ok else "-"])
    return rows


def format_table(rows):
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def class_table_rows(results, class_names):
    """Per-class IoU of the linear head, one column per method with a result."""
    scored = [r for r in results if r.ok and r.class_iou and len(r.class_iou) == len(class_names)]
    rows = [["class"] + [r.method.title for r in scored]]
    rows += [[name] + [percent(r.class_iou[i]) for r in scored] for i, name in enumerate(class_names)]
    return rows if scored else []


def last_line(results):
    by_name = {result.method.line_name: result for result in results}
    parts = [f"{name}={percent(by_name[name].miou) if name in by_name else 'n/a'}" for name in LAST_LINE_METHODS]
    return "demo: " + " ".join(parts)


def output_paths(results, data_dir, figure_path, summary_path):
    lines = [f"  dataset:        {data_dir} (meta.json, splits/, JPEGImages/, SegmentationClassAug/)"]
    for result in results:
        spec = result.spec
        if spec is None or not os.path.isdir(spec.work_dir):
            continue
        lines.append(f"  {result.method.key}:")
        for label, path in (("config", spec.config_path), ("best.ckpt", spec.best_ckpt),
                            ("log.csv", os.path.join(spec.work_dir, "log.csv")),
                            ("curves.png", os.path.join(spec.work_dir, "curves.png")),
                            ("train log", os.path.join(spec.work_dir, "train.log")),
                            ("metrics.json", os.path.join(spec.eval_dir, "metrics.json")),
                            ("eval log", os.path.join(spec.work_dir, "eval.log")),
                            ("predictions", os.path.join(spec.eval_dir, "color"))):
            if os.path.exists(path):
                lines.append(f"    {label + ':':14s}{path}")
    if figure_path:
        lines.append(f"  figure:         {figure_path}")
    lines.append(f"  summary:        {summary_path}")
    return "\n".join(lines)


def write_figure(results, data_dir, meta, out_dir):
    from ..utils.atomic import ensure_writable_dir
    from .figure import pick_evenly, write_prediction_grid
    shown = [(f"{r.method.title} ({r.miou:.1f})", os.path.join(r.spec.eval_dir, "gray")) for r in results if r.ok]
    if not shown:
        return None
    val_ids = Path(data_dir, "splits", "val.txt").read_text().split()
    ensure_writable_dir(out_dir, "--out-dir folder")
    return write_prediction_grid(os.path.join(out_dir, FIGURE_NAME), data_dir, pick_evenly(val_ids), shown,
                                 meta["classes"])


def summary_payload(results, meta, seed, total_s, figure_path):
    return {"seed": seed, "dataset": meta["args"], "counts": meta["counts"], "total_s": round(total_s, 1),
            "figure": figure_path,
            "methods": {r.method.line_name: {"miou": r.miou, "miou_proto": r.miou_proto, "iterations": r.iterations,
                                             "train_s": r.train_s, "reused": r.reused, "reason": r.reason,
                                             "work_dir": r.spec.work_dir if r.spec else None} for r in results}}


def budget_note(args):
    """What the total time is measured against: the README's budget for the default run only."""
    if args.quick:
        return ""
    if args.long:
        return " (--long: about 2.5x the default run's time; docs/demo.md)"
    return f" (the README's budget: {BUDGET_S // 60} min on 2 CPU cores)"


def print_report(results, meta, outputs, total_s, note):
    per_class = class_table_rows(results, meta["classes"])
    if per_class:
        print("\nIoU per class (%, linear head)\n" + format_table(per_class))
    print("\n" + format_table(table_rows(results, meta)))
    print("mIoU in percent on the val split (whole image, linear classifier; the prototype head where PCR has it).")
    for result in results:
        if result.reason:
            print(f"{result.method.title}: n/a ({result.reason})")
    print(f"\ntotal time {format_duration(total_s)}{note}")
    print("outputs:\n" + outputs)
