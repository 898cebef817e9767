"""`python -m ms_semiseg demo`: the --quick run end to end (tiny data, supervised-only and PCR for a few iterations),
reuse of finished work on a second call, the report helpers, and user errors."""
import csv
import json
import os
import re
from types import SimpleNamespace

import cv2
import pytest

from helpers import assert_user_error, run_module
from ms_semiseg.demo import report, runs, specs
from ms_semiseg.demo import run as demo
from ms_semiseg.demo.figure import pick_evenly
from ms_semiseg.errors import UserError

BY_KEY = {method.key: method for method in specs.METHODS}
LAST_LINE = re.compile(r"^demo: suponly=(\d+\.\d\d) pcr=(\d+\.\d\d) brpg=n/a$")
QUICK_VAL_IMAGES = 4  # ms_semiseg.demo.run.QUICK_DATA
QUICK_LABELED, QUICK_TRAIN, QUICK_UNLABELED = 4, 12, 8


def quick_demo(root):
    return run_module("ms_semiseg", "demo", "--quick", "--methods", "suponly", "ours", "--device", "CPU",
                      "--data-dir", root / "data", "--out-dir", root / "out", timeout=1800)


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    """The quick demo twice in the same folders: the first run trains and evaluates, the second reuses both."""
    root = tmp_path_factory.mktemp("demo")
    first = quick_demo(root)
    assert first.returncode == 0, (first.stdout[-3000:], first.stderr[-3000:])
    second = quick_demo(root)
    assert second.returncode == 0, (second.stdout[-3000:], second.stderr[-3000:])
    return root, first, second


def table_row(stdout, title):
    """The cells of the summary-table row that starts with `title` (cells are separated by 2+ spaces)."""
    for line in stdout.splitlines():
        if line.startswith(title + "  "):
            return re.split(r"\s{2,}", line.strip())
    raise AssertionError(f"no table row for {title!r} in:\n{stdout[-3000:]}")


def read_json(path):
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def logged_steps(work_dir):
    with open(os.path.join(work_dir, "log.csv"), newline="", encoding="utf-8") as handle:
        return [int(row["step"]) for row in csv.DictReader(handle)]


def test_last_line_reports_the_evaluated_miou(demo_runs):
    root, first, _ = demo_runs
    last = first.stdout.strip().splitlines()[-1]
    match = LAST_LINE.match(last)
    assert match, last
    for value, method in zip(match.groups(), ("suponly", "ours")):
        metrics = read_json(root / "out" / method / "eval" / "metrics.json")
        assert value == f"{metrics['miou']:.2f}"


def test_table_rows_compare_methods_at_equal_iterations(demo_runs):
    root, first, _ = demo_runs
    sup = table_row(first.stdout, "supervised only")
    pcr = table_row(first.stdout, "PCR (ours)")
    # method, labeled images, unlabeled images, iterations, mIoU linear, mIoU proto, train time
    assert sup[1] == pcr[1] == f"{QUICK_LABELED} of {QUICK_TRAIN}"
    assert (sup[2], pcr[2]) == ("0", str(QUICK_UNLABELED))
    steps = {method: logged_steps(root / "out" / method) for method in ("suponly", "ours")}
    assert steps["suponly"] == steps["ours"] == list(range(len(steps["ours"])))  # one log row per iteration
    assert sup[3] == pcr[3] == str(len(steps["ours"]))
    proto = read_json(root / "out" / "ours" / "eval" / "metrics.json")["miou_proto"]
    assert (sup[5], pcr[5]) == ("-", f"{proto:.2f}")
    assert re.fullmatch(r"\d+:\d\d", sup[6]) and re.fullmatch(r"\d+:\d\d", pcr[6])
    brpg = table_row(first.stdout, "BRPG")
    assert brpg[1:4] == ["-", "-", "-"]  # a method that did not run used no images
    assert "BRPG: n/a (not in the default run, which fits the budget: add it with --methods suponly ours brpg)" \
        in first.stdout


def test_figure_has_a_column_per_method_and_a_row_per_val_image(demo_runs):
    root, first, _ = demo_runs
    figure = root / "out" / "predictions.png"
    assert f"figure:         {figure}" in first.stdout
    image = cv2.imread(str(figure))
    columns, rows = 4, QUICK_VAL_IMAGES  # image, ground truth, supervised only, PCR
    # render_grid: cell_inches 1.9 per cell plus the 0.35-inch legend, at 100 dpi
    assert image.shape[:2] == (round((1.9 * rows + 0.35) * 100), round(1.9 * columns * 100))


def test_every_listed_output_exists(demo_runs):
    _, first, _ = demo_runs
    listed = re.findall(r"^\s+[\w .]+:\s+(/\S+)", first.stdout, flags=re.MULTILINE)
    assert len(listed) >= 2 + 2 * 6  # dataset, figure, summary + per method ckpt/logs/metrics/...
    missing = [path for path in listed if not os.path.exists(path)]
    assert not missing


def test_second_run_reuses_training_and_evaluation(demo_runs):
    root, first, second = demo_runs
    output = second.stdout + second.stderr
    assert "up to date, reused" in output
    for method in ("suponly", "ours"):
        assert f"{method}: reusing the finished run in {root / 'out' / method}" in output
    assert not re.search(r"^== .*: (training|evaluating)", output, flags=re.MULTILINE)
    assert second.stdout.strip().splitlines()[-1] == first.stdout.strip().splitlines()[-1]
    assert "(reused)" in table_row(second.stdout, "PCR (ours)")[6]
    summary = read_json(root / "out" / "summary.json")
    assert summary["methods"]["pcr"]["reused"] and summary["methods"]["brpg"]["miou"] is None


def test_run_fingerprint_follows_seed_and_overrides(demo_runs):
    root, _, _ = demo_runs
    data_opts = demo.data_opts(str(root / "data"))
    method = BY_KEY["ours"]
    base = specs.load_spec(method, data_opts, str(root / "x"), seed=0)
    assert specs.load_spec(method, data_opts, str(root / "x"), seed=0).fingerprint() == base.fingerprint()
    assert specs.load_spec(method, data_opts, str(root / "x"), seed=1).fingerprint() != base.fingerprint()
    changed = specs.load_spec(method, data_opts + ["trainer.epochs=5"], str(root / "x"), seed=0)
    per_epoch = base.iterations // 4  # experiments/demo/ours/config.yaml: 4 epochs
    assert changed.fingerprint() != base.fingerprint() and changed.iterations == 5 * per_epoch


def test_long_gives_every_method_two_and_a_half_times_the_iterations(tmp_path):
    from ms_semiseg.demo.make_data import make_dataset
    make_dataset(tmp_path / "data", **dict(demo.QUICK_DATA, seed=0))
    # batch 2 on the quick data: 8 unlabeled / 2 = 4 semi-supervised iterations per epoch, 4 labeled / 2 = 2
    common = demo.data_opts(str(tmp_path / "data")) + ["dataset.batch_size=2"]
    default = specs.load_spec(BY_KEY["ours"], common, str(tmp_path / "x"), seed=0)
    assert default.iterations == 4 * 4  # experiments/demo/ours/config.yaml: 4 epochs
    per_method = demo.with_preset(demo.split_opts(["meanteacher:net.ema_decay=0.9"]), demo.LONG_OPTS)
    built = {spec.method.key: spec for spec in specs.build_specs(["suponly", "meanteacher", "ours"], per_method,
                                                                  common, str(tmp_path / "x"), seed=0)}
    assert built["ours"].iterations == built["meanteacher"].iterations == 10 * 4
    assert built["suponly"].iterations == 40 and built["suponly"].cfg["trainer"]["epochs"] == 20  # sized from PCR
    assert built["ours"].cfg["trainer"]["sup_only_epoch"] == 2  # the same warm-up, a longer semi-supervised phase
    assert built["meanteacher"].cfg["net"]["ema_decay"] == 0.9  # the method's own --opts stay
    mine = demo.with_preset(demo.split_opts(["ours:trainer.epochs=5"]), demo.LONG_OPTS)
    assert specs.build_specs(["ours"], mine, common, str(tmp_path / "x"), seed=0)[0].iterations == 5 * 4


def test_long_and_quick_exclude_each_other(tmp_path):
    result = run_module("ms_semiseg", "demo", "--quick", "--long", "--out-dir", tmp_path)
    assert result.returncode == 2 and "argument --long: not allowed with argument --quick" in result.stderr
    assert "Traceback" not in result.stderr and not list(tmp_path.iterdir())  # rejected before any work


def test_split_opts_applies_prefixed_overrides_to_one_method():
    per_method = demo.split_opts(["trainer.epochs=4", "ours:net.proto_head.loss_weight=0.5"])
    assert per_method["suponly"] == per_method["brpg"] == ["trainer.epochs=4"]
    assert per_method["ours"] == ["trainer.epochs=4", "net.proto_head.loss_weight=0.5"]
    with pytest.raises(UserError, match="unknown method prefix 'pcr'"):
        demo.split_opts(["pcr:trainer.epochs=4"])


def test_baseline_epochs_match_the_reference_iterations():
    # demo defaults: 25 labeled / batch 5 = 5 iterations per epoch; PCR: 4 epochs x 775 unlabeled / 5 = 620
    baseline = SimpleNamespace(iterations=124 * 5, cfg={"trainer": {"epochs": 124}})
    assert specs.baseline_epochs(baseline, SimpleNamespace(iterations=620)) == 124
    assert specs.baseline_epochs(baseline, SimpleNamespace(iterations=310)) == 62
    assert specs.baseline_epochs(baseline, SimpleNamespace(iterations=3)) == 1


def test_last_line_marks_missing_methods_na():
    results = [runs.Result(BY_KEY["suponly"], miou=41.234), runs.Result(BY_KEY["meanteacher"], miou=45.0),
               runs.Result(BY_KEY["ours"], miou=50.0),
               runs.Result(BY_KEY["brpg"], reason="BRPG is not wired into the trainer yet")]
    # the mean-teacher ablation is in the tables, not in the fixed-format last line
    assert report.last_line(results) == "demo: suponly=41.23 pcr=50.00 brpg=n/a"
    assert report.last_line(results[:1]) == "demo: suponly=41.23 pcr=n/a brpg=n/a"


def test_pick_evenly_spreads_rows_over_the_val_list():
    ids = [f"id{i}" for i in range(200)]
    # linspace(0, 199, 6) = 0, 39.8, 79.6, 119.4, 159.2, 199
    assert pick_evenly(ids, 6) == ["id0", "id40", "id80", "id119", "id159", "id199"]
    assert pick_evenly(ids[:3], 6) == ids[:3]


def test_unknown_method_prefix_is_a_user_error(tmp_path):
    result = run_module("ms_semiseg", "demo", "--quick", "--out-dir", tmp_path, "--opts", "pcr:trainer.epochs=1")
    assert_user_error(result, "--opts pcr:trainer.epochs=1", "unknown method prefix")
    assert not (tmp_path / "data").exists()  # rejected before any work


def test_foreign_folder_in_the_run_place_is_not_deleted(tmp_path):
    keep = tmp_path / "out" / "suponly" / "notes.txt"
    keep.parent.mkdir(parents=True)
    keep.write_text("mine")
    result = run_module("ms_semiseg", "demo", "--quick", "--methods", "suponly", "--device", "CPU",
                        "--out-dir", tmp_path / "out")
    assert_user_error(result, str(keep.parent), "not a training run folder")
    assert keep.read_text() == "mine"
