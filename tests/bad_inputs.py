"""The bad inputs users hit, run through the real command lines. Shared by `tests/test_bad_input.py` and by
`python -m tests.bad_inputs`, which prints the robustness table (input, command, the one line the user sees),
followed by the faults met while `train` runs (`tests/run_faults.py`, tested by `tests/test_run_faults.py`), and
writes it in place of the table in docs/robustness.md (`--print-only` leaves the file alone).

Each case builds its input in a fresh folder from a valid workspace (tiny ResNet-18 config, a 4-image VOC fixture,
a matching checkpoint) and returns the command line; the expectation is exit code 2, one `error:` line naming the
culprit, no traceback, and no output left behind.
"""
import os
import shutil
import sys

import cv2
import numpy as np
import yaml

from tests.fixtures import make_voc_fixture
from tests.helpers import run_module, tiny_config, write_config

IDS = {"2007_000001": (40, 52), "2007_000002": (44, 40), "2007_000003": (40, 52), "2007_000004": (36, 48)}


def build_workspace(root):
    """A valid setup: config pointing at a VOC fixture, and a checkpoint of that config's model."""
    import mindspore as ms
    from ms_semiseg.models import create_model
    from ms_semiseg.utils.checkpoint import save_params_atomic
    fixture = make_voc_fixture(os.path.join(root, "voc"), IDS, num_classes=21, seed=0)
    cfg = tiny_config()
    for split, name in (("train", "labeled"), ("val", "val")):
        cfg["dataset"][split].update(data_root=fixture["root"], data_list=fixture["lists"][name])
    cfg["dataset"]["train"]["crop"]["size"] = [32, 32]
    cfg["dataset"]["val"]["crop"]["size"] = [32, 32]
    cfg["trainer"]["epochs"] = 1
    config = write_config(cfg, os.path.join(root, "exp"))
    ms.set_device("CPU")
    net = create_model(cfg["net"])
    ckpt = os.path.join(root, "good.ckpt")
    save_params_atomic({p.name: p.data for p in net.get_parameters()}, ckpt)
    other = tiny_config(arch="resnet34")
    other_ckpt = os.path.join(root, "resnet34.ckpt")
    save_params_atomic({p.name: p.data for p in create_model(other["net"]).get_parameters()}, other_ckpt)
    return {"root": root, "cfg": cfg, "config": config, "ckpt": ckpt, "other_ckpt": other_ckpt,
            "voc": fixture["root"], "val_list": fixture["lists"]["val"]}


def _copy_voc(ws, folder):
    target = os.path.join(folder, "voc")
    shutil.copytree(ws["voc"], target)
    return target


def _config_with(ws, folder, mutate):
    cfg = yaml.safe_load(open(ws["config"], encoding="utf-8"))
    mutate(cfg)
    return write_config(cfg, folder)


def _eval(ws, config=None, ckpt=None, *extra):
    return ["ms_semiseg", "eval", "--config", config or ws["config"], "--ckpt", ckpt or ws["ckpt"],
            "--no-progress", *extra]


def _bytes_file(folder, name, data):
    path = os.path.join(folder, name)
    with open(path, "wb") as handle:
        handle.write(data)
    return path


def _truncated(ws, folder, source, name):
    data = open(source, "rb").read()
    return _bytes_file(folder, name, data[: len(data) // 3])


def _eval_with_voc_change(change):
    """An eval whose dataset copy is changed by `change(voc_root)`."""
    def case(ws, folder):
        voc = _copy_voc(ws, folder)
        change(voc)
        return _eval(ws, None, None, "--data-root", voc)
    return case


def _write_label(voc, array, sample="2007_000002"):
    cv2.imwrite(os.path.join(voc, "SegmentationClassAug", f"{sample}.png"), array)


def _torch_file(folder, obj, name):
    import torch
    path = os.path.join(folder, name)
    torch.save(obj, path)
    return path


def _pth2ckpt(ws, pth, folder):
    return ["convert", "pth2ckpt", "--config", ws["config"], "--pth", pth, "--out", os.path.join(folder, "out.ckpt")]


def _random_pth(ws, folder):
    path = os.path.join(folder, "random.pth")
    result = run_module("convert", "random", "--config", ws["config"], "--out", path)
    assert result.returncode == 0, result.stderr
    return path


CASES = [
    # (id, what the user gave, builder(ws, folder) -> argv, fragment expected in the message)
    ("ckpt_corrupt", "corrupt `.ckpt` (random bytes)",
     lambda ws, d: _eval(ws, None, _bytes_file(d, "x.ckpt", np.random.default_rng(0).bytes(4096))),
     "not a readable MindSpore checkpoint"),
    ("ckpt_truncated", "truncated `.ckpt`", lambda ws, d: _eval(ws, None, _truncated(ws, d, ws["ckpt"], "t.ckpt")),
     "not a readable MindSpore checkpoint"),
    ("ckpt_empty", "empty `.ckpt`", lambda ws, d: _eval(ws, None, _bytes_file(d, "e.ckpt", b"")),
     "not a readable MindSpore checkpoint"),
    ("ckpt_is_pth", "a PyTorch `.pth` given as `--ckpt`",
     lambda ws, d: _eval(ws, None, _torch_file(d, {"a": 1}, "model.pth")), "not a readable MindSpore checkpoint"),
    ("ckpt_missing", "checkpoint path that does not exist", lambda ws, d: _eval(ws, None, os.path.join(d, "no.ckpt")),
     "checkpoint not found"),
    ("ckpt_other_arch", "checkpoint of another architecture (ResNet-34 for a ResNet-18 config)",
     lambda ws, d: _eval(ws, None, ws["other_ckpt"]), "does not match the model built from the config"),
    ("ckpt_other_classes", "checkpoint with another class count",
     lambda ws, d: _eval(ws, _config_with(ws, d, lambda c: c["net"].update(num_classes=19))),
     "the checkpoint has 21 classes, the config's net.num_classes is 19"),
    ("pth_corrupt", "corrupt `.pth` to convert",
     lambda ws, d: _pth2ckpt(ws, _bytes_file(d, "x.pth", np.random.default_rng(1).bytes(4096)), d),
     "not a readable PyTorch checkpoint"),
    ("pth_truncated", "truncated `.pth` to convert",
     lambda ws, d: _pth2ckpt(ws, _truncated(ws, d, _random_pth(ws, d), "t.pth"), d),
     "not a readable PyTorch checkpoint"),
    ("pth_not_checkpoint", "a `.pth` that holds no state_dict (a list)",
     lambda ws, d: _pth2ckpt(ws, _torch_file(d, [1, 2, 3], "list.pth"), d), "holds a list"),
    ("config_unknown_key", "config with an unknown key (`net.encoder.kwargs.multigrid`)",
     lambda ws, d: _eval(ws, _config_with(ws, d, lambda c: c["net"]["encoder"]["kwargs"].update(multigrid=True))),
     "net.encoder.kwargs: unknown key(s) ['multigrid']"),
    ("config_wrong_type", "config value of the wrong type (`net.num_classes: '21'`)",
     lambda ws, d: _eval(ws, _config_with(ws, d, lambda c: c["net"].update(num_classes="21"))),
     "net.num_classes='21' has type str, expected a int"),
    ("config_missing_section", "config without its `net:` section",
     lambda ws, d: _eval(ws, _config_with(ws, d, lambda c: c.pop("net"))), "missing key net"),
    ("config_not_yaml", "config that is not YAML",
     lambda ws, d: _eval(ws, _bytes_file(d, "config.yaml", b"net: [unclosed\n")), "not valid YAML"),
    ("crop_not_square", "non-square training crop with the prototype patch mask",
     lambda ws, d: ["ms_semiseg", "train", "--config", ws["config"], "--work-dir", os.path.join(d, "run"),
                    "--opts", "dataset.train.crop.size=[32, 48]"], "dataset.train.crop.size"),
    ("data_root_missing", "data root that does not exist",
     lambda ws, d: _eval(ws, None, None, "--data-root", os.path.join(d, "nowhere")), "nowhere"),
    ("split_names_missing_file", "split list naming an image that is missing",
     _eval_with_voc_change(lambda voc: os.remove(os.path.join(voc, "JPEGImages", "2007_000003.jpg"))),
     "2007_000003.jpg"),
    ("image_truncated", "truncated JPEG image",
     _eval_with_voc_change(lambda voc: _truncate_in_place(os.path.join(voc, "JPEGImages", "2007_000002.jpg"))),
     "2007_000002.jpg"),
    ("image_unreadable", "image file that is not an image",
     _eval_with_voc_change(lambda voc: open(os.path.join(voc, "JPEGImages", "2007_000004.jpg"), "wb").write(b"no")),
     "2007_000004.jpg"),
    ("label_out_of_range", "label PNG with values outside the classes (40)",
     _eval_with_voc_change(lambda voc: _write_label(voc, np.full((44, 40), 40, np.uint8))), "2007_000002.png"),
    ("label_rgb", "RGB (colour) label image",
     _eval_with_voc_change(lambda voc: _write_label(voc, np.zeros((44, 40, 3), np.uint8))), "single-channel"),
    ("split_empty", "empty split list",
     lambda ws, d: _eval(ws, _config_with(ws, d, lambda c: c["dataset"]["val"].update(
         data_list=_bytes_file(d, "empty.txt", b"")))), "empty.txt"),
    ("opts_unknown_key", "`--opts` with a key that does not exist",
     lambda ws, d: _eval(ws, None, None, "--opts", "trainer.epoch=2"), "--opts trainer.epoch: no such config key"),
    ("device_gpu", "`--device GPU` without a usable GPU",
     lambda ws, d: _eval(ws, None, None, "--device", "GPU"), "--device GPU: MindSpore cannot use a GPU"),
    ("device_unknown", "`--device TPU`", lambda ws, d: _eval(ws, None, None, "--device", "TPU"),
     "--device TPU: unknown device"),
    ("save_dir_not_writable", "output folder that cannot be created (its parent is a file)",
     lambda ws, d: _eval(ws, None, None, "--save-dir", os.path.join(_bytes_file(d, "afile", b"x"), "out")),
     "afile/out"),
    ("resume_nothing", "`--resume` with no checkpoint in the work dir",
     lambda ws, d: ["ms_semiseg", "train", "--config", ws["config"], "--work-dir", os.path.join(d, "empty_run"),
                    "--resume"], "empty_run"),
]


def _truncate_in_place(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def build_case(ws, case_id, folder):
    """Writes the case's bad input under `folder`; returns the command line."""
    _, _, build, _ = next(c for c in CASES if c[0] == case_id)
    os.makedirs(folder, exist_ok=True)
    return build(ws, folder)


def run_case(ws, case_id, folder):
    return run_module(*build_case(ws, case_id, folder), timeout=600)


TABLE_DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "robustness.md")
TABLE_HEADER = "| # | bad input | command | what the user sees |"


def replace_table(text, rows):
    """`text` with the markdown table that starts at TABLE_HEADER replaced by the header and `rows`."""
    lines = text.split("\n")
    if TABLE_HEADER not in lines:
        raise ValueError(f"no line {TABLE_HEADER!r} to replace")
    start = lines.index(TABLE_HEADER)
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[:start] + [TABLE_HEADER, "| --- | --- | --- | --- |"] + list(rows) + lines[end:])


def table_rows(root):
    ws = build_workspace(root)
    rows = []
    for number, (case_id, what, _, _) in enumerate(CASES, 1):
        result = run_case(ws, case_id, os.path.join(root, case_id))
        line = (result.stderr.strip().splitlines() or ["(nothing)"])[-1].replace(root, "…").replace("|", "\\|")
        argv = build_case(ws, case_id, os.path.join(root, case_id + "_argv"))
        command = f"{argv[0]} {argv[1]}"
        rows.append(f"| {number} | {what} | `{command}` | `{line}` (exit {result.returncode}) |")
    from tests.run_faults import table_rows as fault_rows  # faults met while `train` runs (tests/test_run_faults.py)
    rows += [row.replace(root, "…") for row in fault_rows(os.path.join(root, "run_faults"), len(CASES) + 1)]
    return rows


def main(argv=None):
    import tempfile
    argv = sys.argv[1:] if argv is None else argv
    root = tempfile.mkdtemp(prefix="bad_inputs_")
    rows = table_rows(root)
    shutil.rmtree(root, ignore_errors=True)
    print(TABLE_HEADER)
    print("| --- | --- | --- | --- |")
    print("\n".join(rows))
    if "--print-only" not in argv:
        with open(TABLE_DOC, encoding="utf-8") as handle:
            text = replace_table(handle.read(), rows)
        with open(TABLE_DOC, "w", encoding="utf-8") as handle:
            handle.write(text)
        print(f"written to {TABLE_DOC}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
