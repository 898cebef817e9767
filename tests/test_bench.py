"""The benches' own logic (no timing): eval_speed's image-size mixes and argument errors, train_speed's trainer
config, step_times' arithmetic on a hand-written log.csv, pseudo_labels' scores and confusion's matrix on hand-made
maps. Speed and memory targets live in the bench scripts' printed ratios, never in tests."""
import os
import subprocess
import sys
from types import SimpleNamespace

from tests.helpers import REPO_ROOT

BENCH = os.path.join(REPO_ROOT, "bench")
sys.path.insert(0, BENCH)
import confusion  # noqa: E402
import eval_speed  # noqa: E402
import pseudo_labels  # noqa: E402
import step_times  # noqa: E402
import train_speed  # noqa: E402


def test_many_size_mix_is_60_images_in_30_sizes_with_a_long_tail():
    sizes = eval_speed.many_sizes()
    counts = sorted((sizes.count(size) for size in set(sizes)), reverse=True)
    assert len(sizes) == 60 and counts == [6] * 5 + [2] * 5 + [1] * 20
    assert set(eval_speed.VOC_SIZES) <= set(sizes)
    assert len(set(eval_speed.image_sizes("many", 60, 0.5))) == 30  # the quick variant keeps every size distinct
    assert eval_speed.image_sizes("5", 7, 1.0) == [eval_speed.VOC_SIZES[i % 5] for i in range(7)]


def test_eval_speed_defaults_and_bad_strategy():
    args = eval_speed.parse_args(["--mix", "many", "--arch", "resnet18", "--strategy", "static", "auto"])
    assert args.images == 60 and args.strategy == ["static", "auto"] and args.opts == ["net.encoder.type=resnet18"]
    assert eval_speed.parse_args([]).images == 20
    out = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "bench", "eval_speed.py"), "--strategy", "fast"],
                         capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 2 and out.stdout == ""
    assert "error: argument --strategy: invalid choice: 'fast'" in out.stderr.strip().splitlines()[-1]


def test_train_speed_builds_the_trainer_plan_of_the_config(tmp_path):
    from ms_semiseg.train.plan import plan_from_config
    args = SimpleNamespace(config=os.path.join(REPO_ROOT, "experiments", "demo", "ours", "config.yaml"),
                           arch="resnet18", crop=48, batch=3)
    plan = plan_from_config(train_speed.trainer_config(args, str(tmp_path)))
    assert plan.semi and plan.use_proto and plan.crop == (48, 48) and plan.batch_size == 3
    assert plan.granularity == 16 and plan.total_updates >= 1000  # the config's grid; no LR schedule run-out


def test_torch_isa_reaches_only_the_pytorch_side_and_bad_values_are_refused():
    args = eval_speed.parse_args(["--torch-isa", "AVX2"])
    assert args.torch_isa == "AVX2" and eval_speed.parse_args([]).torch_isa == "ALL"
    sides = SimpleNamespace(threads=1, torch_isa="AVX2")
    assert train_speed.side_env(sides, True)["ONEDNN_MAX_CPU_ISA"] == "AVX2"
    assert train_speed.side_env(sides, False).get("ONEDNN_MAX_CPU_ISA") == os.environ.get("ONEDNN_MAX_CPU_ISA")
    out = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "bench", "train_speed.py"), "--torch-isa", "SSE"],
                         capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 2 and "argument --torch-isa: invalid choice: 'SSE'" in out.stderr


def test_the_pytorch_side_does_not_import_mindspore():
    """Its peak RSS is PyTorch's: the reference model and the config checks load no MindSpore (~360 MiB)."""
    code = ("import sys; sys.path.insert(0, 'bench'); import argparse, train_speed; "
            "train_speed.build_torch(argparse.Namespace(config='experiments/demo/ours/config.yaml', arch='resnet18', "
            "crop=32, batch=1, threads=1)); import ms_semiseg.eval.reference; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'mindspore'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                         env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_step_times_per_phase_from_a_log_with_a_save_and_a_resume(tmp_path, capsys):
    """Steps 0-4 supervised (1 s each but a 7 s epoch-end save), then semi steps of 2 s with a 9 s compilation,
    the run stopped and resumed before step 7 (400 s later): durations are consecutive differences, the pause
    is listed apart."""
    stamps = [(0, "supervised", 100.0), (1, "supervised", 101.0), (2, "supervised", 102.0),
              (3, "supervised", 109.0), (4, "supervised", 110.0), (5, "semi", 119.0), (6, "semi", 121.0),
              (7, "semi", 521.0), (8, "semi", 523.0)]
    lines = ["epoch,iteration,step,phase,loss,sup,unsup,proto,lr,lr_decoder,images_per_s,graphs,time_s"]
    lines += [f"1,{step + 1},{step},{phase},0,0,0,0,0.01,0.1,5,1,{time_s}" for step, phase, time_s in stamps]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    step_times.main([str(tmp_path)])
    rows = capsys.readouterr().out.splitlines()
    # supervised: 1, 1, 7, 1 -> median 1, mean 2.5, sum 10, the 7 s step long (over 3 x 1);
    # semi: 9, 2, (400 left out), 2 -> median 2, mean 4.333, sum 13, the 9 s step long
    assert rows[3] == "| supervised | 4 | 1.000 | 2.500 | 10.0 | 1, 7.0 |"
    assert rows[4] == "| semi | 3 | 2.000 | 4.333 | 13.0 | 1, 9.0 |"
    assert rows[5] == "| all | 7 | | | 23.0 | |"
    assert rows[6] == "left out: 400.0 s before step 7 (a stop and resume?)"


def test_step_times_refuses_a_file_that_is_not_a_training_log(tmp_path):
    def errors(text):
        (tmp_path / "log.csv").write_text(text)
        out = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "bench", "step_times.py"), str(tmp_path)],
                             capture_output=True, text=True, cwd=REPO_ROOT)
        assert out.returncode == 2 and out.stdout == ""
        return out.stderr.strip()
    assert errors("a,b\n1,2\n") == (f"error: {tmp_path}/log.csv: expected at least two rows with columns step, "
                                     "phase, time_s (a log.csv written by ms_semiseg train)")
    assert errors("step,phase,time_s\n0,semi,1.5\n1,semi,soon\n") == (
        f"error: {tmp_path}/log.csv, line 3: time_s 'soon'; expected seconds since the epoch")


def test_pseudo_label_scores_count_only_confident_labeled_pixels():
    """Six pixels, one ignored (255); at t = 0.8 three are covered: background right, class 1 right, class 2
    predicted 1. Per class I/U: bg 1/1, class 1 1/2, class 2 0/1 -> mIoU 50."""
    import numpy as np
    prediction = np.array([[0, 1, 1], [2, 0, 1]])
    confidence = np.array([[0.9, 0.9, 0.95], [0.5, 0.99, 0.3]])
    label = np.array([[0, 1, 2], [2, 255, 1]])
    score = pseudo_labels.ThresholdScore(0.8, 3)
    score.update(prediction, confidence, label)
    assert score.row() == ["0.8", "60.0", "66.7", "50.0", "33.3", "33.3", "100.0 / 50.0 / 0.0"]


def test_pseudo_label_oracle_share_spreads_true_labels_evenly():
    """--oracle-share: floor(n * share) of the first n images carry their true labels at confidence 1 (0.4: 0-based
    indices 2, 4, 7, 9 of each 10); the others keep the model's prediction and confidence."""
    import numpy as np
    assert [i for i in range(10) if pseudo_labels.oracle_image(i, 0.4)] == [2, 4, 7, 9]
    assert [i for i in range(10) if pseudo_labels.oracle_image(i, 0.2)] == [4, 9]
    assert not any(pseudo_labels.oracle_image(i, 0.0) for i in range(10))
    assert all(pseudo_labels.oracle_image(i, 1.0) for i in range(10))
    prediction, confidence, label = np.array([[0, 1]]), np.array([[0.3, 0.9]]), np.array([[2, 255]])
    kept = pseudo_labels.with_oracle(prediction, confidence, label, False)
    assert kept[0] is prediction and kept[1] is confidence
    true, ones = pseudo_labels.with_oracle(prediction, confidence, label, True)
    assert true.tolist() == [[2, 255]] and ones.tolist() == [[1.0, 1.0]]


def test_pseudo_label_oracle_share_out_of_range_is_a_usage_error():
    result = subprocess.run([sys.executable, os.path.join(BENCH, "pseudo_labels.py"), "--config", "x", "--ckpt", "y",
                             "--oracle-share", "1.5"], capture_output=True, text=True)
    assert result.returncode == 2 and "'1.5': expected a share between 0 and 1" in result.stderr


def test_confusion_rows_are_shares_of_each_true_class_and_255_is_left_out():
    """Truth [[0, 0, 1, 1], [2, 2, 255, 0]], prediction [[0, 1, 1, 0], [2, 0, 1, 0]]: background's 3 pixels go
    2 to background and 1 to class 1; class 1's 2 split 1/1 with background; class 2's 2 split 1/1 with background;
    the 255 pixel counts nowhere."""
    import numpy as np
    table = confusion.Confusion(3)
    table.update(np.array([[0, 1, 1, 0], [2, 0, 1, 0]]), np.array([[0, 0, 1, 1], [2, 2, 255, 0]]))
    assert table.counts.tolist() == [[2, 1, 0], [1, 1, 0], [1, 0, 1]]
    assert np.allclose(table.row_percent(), [[200 / 3, 100 / 3, 0], [50, 50, 0], [50, 0, 50]])
    to_background, false_objects = table.background_shares()
    assert to_background == {1: 50.0, 2: 50.0} and np.isclose(false_objects, 100 / 3)


def test_confusion_reads_eval_maps_against_the_voc_truth_and_names_a_bad_folder(tmp_path):
    import cv2
    import numpy as np
    (tmp_path / "gray").mkdir()
    (tmp_path / "data" / "SegmentationClassAug").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "gray" / "a.png"), np.array([[0, 1], [1, 1]], np.uint8))
    cv2.imwrite(str(tmp_path / "data" / "SegmentationClassAug" / "a.png"), np.array([[0, 0], [1, 255]], np.uint8))
    script = os.path.join(BENCH, "confusion.py")

    def run(pred_dir):
        return subprocess.run([sys.executable, script, str(pred_dir), "--data-root", str(tmp_path / "data"),
                               "--classes", "background", "thing"], capture_output=True, text=True)
    result = run(tmp_path / "gray")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[2:]]
    assert rows == [["background", "50.0", "50.0", "(objects:", "50.0)"], ["thing", "0.0", "100.0", "0.0"]]
    missing = run(tmp_path / "nothing")
    assert missing.returncode == 2 and missing.stderr.strip() == (
        f"error: {tmp_path / 'nothing'}: no .png prediction found, expected the label-index maps of "
        "`ms_semiseg eval --save-dir` (<work dir>/eval/gray)")
    cv2.imwrite(str(tmp_path / "gray" / "a.png"), np.zeros((3, 2), np.uint8))
    resized = run(tmp_path / "gray")
    assert resized.returncode == 2 and "2x3 pixels, expected the size of its ground truth (2x2)" in resized.stderr
