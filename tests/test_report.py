"""`ms-semiseg report`: fake trees of eval metrics.json -> the VOC and Cityscapes tables (markdown and CSV)."""
import csv
import io
import json
import os
import time

import pytest

from ms_semiseg.cli import main
from ms_semiseg.eval import report
from tests.helpers import assert_user_error, run_module

PUBLISHED = report.load_published()


def write_metrics(folder, dataset, linear, proto=None, config=None, **extra):
    """A metrics.json as `eval` writes it (the fields the report reads, see evaluate.metrics_payload)."""
    os.makedirs(folder, exist_ok=True)
    voc = dataset == "pascal"
    heads = {"linear": {"miou": linear, "iou": {}}}
    if proto is not None:
        heads["proto"] = {"miou": proto, "iou": {}}
    payload = {"config": config or os.path.join(folder, "config.yaml"), "checkpoint": "best.ckpt",
               "dataset": dataset, "num_images": 1449 if voc else 500, "num_classes": 21 if voc else 19,
               "protocol": "whole" if voc else "sliding", "scales": [1.0], "flip": False, "unit": "percent",
               "miou": linear, "miou_proto": proto, "heads": heads}
    payload.update(extra)
    path = os.path.join(folder, "metrics.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle)
    return path


def run_report(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", *map(str, argv)])
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


def md_rows(text):
    """{(table title, split, method, head): {column: cell}} of the markdown output."""
    rows, title, header = {}, None, None
    for line in text.splitlines():
        if line.startswith("### "):
            title, header = line[4:], None
        elif line.startswith("| ") and header is None:
            header = [c.strip() for c in line.strip("|").split("|")]
        elif line.startswith("| ") and not line.startswith("| ---"):
            cells = dict(zip(header, (c.strip() for c in line.strip("|").split("|"))))
            rows[(title, cells["split"], cells["method"], cells["head"])] = cells
    return rows


VOC, CITY = PUBLISHED["datasets"]["pascal"]["title"], PUBLISHED["datasets"]["cityscapes"]["title"]


@pytest.fixture
def tree(tmp_path):
    exp = tmp_path / "experiments"
    write_metrics(exp / "pascal" / "92" / "ours", "pascal", 71.0, 70.5)
    write_metrics(exp / "pascal" / "1464" / "suponly", "pascal", 72.0)
    write_metrics(exp / "cityscapes" / "744" / "ours", "cityscapes", 78.0, 77.25)
    write_metrics(exp / "cityscapes" / "186" / "brpg", "cityscapes", 74.5, 74.0, flip=True, scales=[0.75, 1.0])
    return tmp_path


def test_both_tables_with_every_split_and_missing_cells(tree, capsys, monkeypatch):
    monkeypatch.chdir(tree)  # default ROOT: ./experiments
    code, out, err = run_report(capsys)
    assert code == 0 and "4 result(s)" in err
    rows = md_rows(out)
    assert {(t, s) for t, s, _, _ in rows} == ({(VOC, s) for s in ("92", "183", "366", "732", "1464")}
                                                | {(CITY, s) for s in ("186", "372", "744", "1488")})
    linear = rows[(VOC, "92", "PCR (ours)", "linear")]
    assert (linear["mIoU"], linear["paper"], linear["release"]) == ("71.00", "70.06", "70.78")
    assert (linear["vs paper"], linear["vs release"]) == ("+0.94", "+0.22")
    proto = rows[(VOC, "92", "PCR (ours)", "proto")]
    assert (proto["mIoU"], proto["vs paper"], proto["vs release"]) == ("70.50", "+0.44", "-0.28")
    city = rows[(CITY, "744", "PCR (ours)", "linear")]
    assert (city["paper"], city["release"], city["vs paper"], city["vs release"]) == ("78.40", "78.58", "-0.40",
                                                                                      "-0.58")
    # nothing evaluated: our cells and differences are `-`, the published numbers still shown
    empty = rows[(VOC, "366", "PCR (ours)", "linear")]
    assert (empty["mIoU"], empty["paper"], empty["release"], empty["vs paper"]) == ("-", "77.16", "76.77", "-")
    sup = rows[(VOC, "1464", "supervised only", "linear")]
    assert (sup["mIoU"], sup["paper"], sup["release"], sup["vs paper"]) == ("72.00", "72.50", "-", "-0.50")
    assert (VOC, "1464", "supervised only", "proto") not in rows  # no prototype head, no proto row
    brpg = rows[(CITY, "186", "BRPG", "proto")]
    assert (brpg["mIoU"], brpg["paper"], brpg["eval"]) == ("74.00", "-", "scales 0.75/1; flip")
    assert "HeimingX/semi_seg_proto" in out and "NeurIPS 2022" in out  # the sources are named


def test_csv_has_the_same_cells(tree, capsys):
    code, out, _ = run_report(capsys, tree / "experiments", "--format", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == ["dataset", *report.COLUMNS]
    row = next(r for r in rows if (r["dataset"], r["split"], r["head"]) == ("cityscapes", "744", "proto")
               and r["method"] == "PCR (ours)")
    assert (row["mIoU"], row["paper"], row["vs paper"], row["vs release"]) == ("77.25", "78.40", "-1.15", "-1.33")
    assert {r["dataset"] for r in rows} == {"pascal", "cityscapes"}


def test_placed_by_config_path_then_n_sup_and_newest_wins(tmp_path, capsys):
    root = tmp_path / "results"
    config_dir = tmp_path / "repo" / "experiments" / "pascal" / "183" / "ours"
    # an eval run with --save-dir elsewhere: the recorded config path gives split and method
    write_metrics(root / "run1", "pascal", 60.0, 59.0, config=str(config_dir / "config.yaml"))
    later = write_metrics(root / "run2", "pascal", 75.0, 74.0, config=str(config_dir / "config.yaml"))
    os.utime(later, (time.time() + 10, time.time() + 10))
    # neither path names a split: the config's dataset.n_sup does; the config's folder names the method
    cfg = tmp_path / "mine" / "suponly" / "config.yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text("dataset:\n  n_sup: 732\n")
    write_metrics(root / "run3", "pascal", 70.0, config=str(cfg))
    # the release's checkpoint folders: ckpt/city/<split>/semiseg_with_proto
    write_metrics(root / "ckpt" / "city" / "1488" / "semiseg_with_proto" / "eval", "cityscapes", 79.0, 78.0,
                  config=str(tmp_path / "elsewhere" / "config.yaml"))
    code, out, err = run_report(capsys, root)
    rows = md_rows(out)
    assert code == 0 and "3 result(s)" in err  # four files, two of them for one row
    assert rows[(VOC, "183", "PCR (ours)", "linear")]["mIoU"] == "75.00"
    assert rows[(VOC, "183", "PCR (ours)", "linear")]["eval"] == "newest of 2 files"
    assert rows[(VOC, "732", "supervised only", "linear")]["mIoU"] == "70.00"
    assert rows[(CITY, "1488", "PCR (ours)", "proto")]["vs release"] == "-1.55"


def test_non_standard_evaluations_say_so_and_others_are_skipped(tmp_path, capsys):
    exp = tmp_path / "experiments"
    write_metrics(exp / "pascal" / "366" / "ours", "pascal", 50.0, 49.0, protocol="center-crop", num_images=10)
    write_metrics(exp / "demo" / "ours", "pascal", 60.0, 58.0, num_classes=5)  # the 5-class demo
    write_metrics(exp / "custom" / "ours", "custom", 60.0)
    write_metrics(exp / "pascal" / "nosplit", "pascal", 60.0)  # no split anywhere, config missing
    (exp / "pascal" / "broken").mkdir()
    (exp / "pascal" / "broken" / "metrics.json").write_text("{not json")
    (exp / "train").mkdir()
    (exp / "train" / "metrics.json").write_text(json.dumps({"loss": 1.0}))
    code, out, err = run_report(capsys, exp)
    assert code == 0
    note = md_rows(out)[(VOC, "366", "PCR (ours)", "linear")]["eval"]
    assert note == "protocol center-crop; 10 of 1449 images"
    skipped = [ln for ln in err.splitlines() if ln.startswith("note: skipped")]
    assert len(skipped) == 5, err
    for fragment in ("5-class model", "'custom' has no published table", "cannot tell its split", "unreadable",
                     "not written by eval"):
        assert any(fragment in ln for ln in skipped), (fragment, err)
    assert "1 result(s)" in err


def test_missing_root_is_a_one_line_error(tmp_path):
    result = run_module("ms_semiseg", "report", tmp_path / "nope", cwd=str(tmp_path))
    assert_user_error(result, "nope", "folder not found")


def test_published_file_is_whole():
    assert set(PUBLISHED["sources"]) == {"paper", "release"}
    for dataset, splits in (("pascal", [92, 183, 366, 732, 1464]), ("cityscapes", [186, 372, 744, 1488])):
        info = PUBLISHED["datasets"][dataset]
        assert info["splits"] == splits
        for source in ("paper", "release"):
            assert sorted(map(int, info["methods"]["ours"][source])) == splits
