"""The benches' own logic (no timing): eval_speed's image-size mixes and argument errors, train_speed's trainer
config. Speed and memory targets live in the bench scripts' printed ratios, never in tests."""
import os
import subprocess
import sys
from types import SimpleNamespace

from tests.helpers import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "bench"))
import eval_speed  # noqa: E402
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
