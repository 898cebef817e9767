"""BRPG inside `python -m ms_semiseg train` (issue 5): a tiny config (ResNet-18, crop 33, 3 classes) runs the
warm-up, the sampling window, the clustering and the prototype loss; a run stopped after the window resumes across
the clustering to the uninterrupted weights; BRPG's 0.5 * CE + 0.5 * OHEM criterion; the PCR/BRPG switch."""
import os
import shutil
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mindspore import Tensor

from fixtures import make_voc_fixture
from helpers import REPO_ROOT, tiny_config, write_config
from test_train import last_step_logged, load_params, read_log, start_training, train

from ms_semiseg.config import load_config
from ms_semiseg.errors import UserError
from ms_semiseg.losses import supervised_criterion
from ms_semiseg.train.brpg_step import BRPGTraining, check_brpg_config
from ms_semiseg.train.trainer import plan_from_config

BRPG_CONFIG = os.path.join(REPO_ROOT, "experiments", "pascal", "92", "brpg", "config.yaml")
PCR_CONFIG = os.path.join(REPO_ROOT, "experiments", "pascal", "92", "ours", "config.yaml")
IDS = [f"2007_{i:06d}" for i in range(10)]
CLASSES = 3
EPOCHS, ITERATIONS = 3, 3  # 6 unlabeled images, batch 2: warm-up, sampling window, clustering + L_pro
WINDOW_END = 2 * ITERATIONS  # global step of the clustering (epoch 3, iteration 1)


def tiny_brpg_config(root):
    """The VOC-92 BRPG config on a tiny dataset, with small queues, budgets and loss samples."""
    sizes = {sample: (36 + 3 * (k % 3), 44 - 2 * (k % 4)) for k, sample in enumerate(IDS)}
    data = make_voc_fixture(str(root / "voc"), sizes, num_classes=CLASSES,
                            lists={"labeled": IDS[:4], "unlabeled": IDS[4:], "val": IDS[:3]})
    cfg = tiny_config(base=BRPG_CONFIG)
    dataset = cfg["dataset"]
    dataset["train"].update(data_root=data["root"], data_list=data["lists"]["labeled"],
                            crop={"type": "rand", "size": [33, 33]})
    dataset["val"].update(data_root=data["root"], data_list=data["lists"]["val"],
                          crop={"type": "center", "size": [33, 33]})
    dataset.update(workers=1, batch_size=2, n_sup=4)
    cfg["net"]["num_classes"] = CLASSES
    cfg["trainer"].update(epochs=EPOCHS, sup_only_epoch=1, log_interval=1, save_interval=2)
    cfg["trainer"]["optimizer"]["kwargs"]["lr"] = 0.01
    cfg["trainer"]["prototype"].update(sample_pixel_num=20, queue_len=32, grid_num=8, unsup_sample_num=50,
                                       pseudo_ramp_start_epoch=None)  # the published 5 is past this run's end
    cfg["criterion_2"]["kwargs"]["min_kept"] = 500  # some hard-pixel selection on 2 x 33 x 33 labels
    cfg["saver"]["main_dir"] = str(root / "default_work_dir")
    return cfg


def snapshot_after_step(process, work, step, target, timeout=900):
    """Copies last.ckpt and then log.csv of a running training into `target` once log.csv shows `step`: what a
    kill at that moment would leave behind (checkpoints are renamed into place, so the copy is a whole one; rows
    before a checkpoint's step are flushed before it is written). Returns the last logged step."""
    deadline = time.time() + timeout
    while process.poll() is None and time.time() < deadline and last_step_logged(work) < step:
        time.sleep(0.05)
    logged = last_step_logged(work)
    os.makedirs(target / "checkpoints")
    shutil.copy(work / "checkpoints" / "last.ckpt", target / "checkpoints" / "last.ckpt")
    shutil.copy(work / "log.csv", target / "log.csv")
    return logged


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Run 'A' uninterrupted; 'B', a copy of A's files taken when the last step of the sampling window is logged
    (before the clustering), resumed with --resume while A finishes."""
    root = tmp_path_factory.mktemp("brpg_train")
    cfg = tiny_brpg_config(root)
    config = write_config(cfg, str(root))
    run_a = start_training(config, root, "A")
    logged = snapshot_after_step(run_a, root / "A", WINDOW_END - 1, root / "B")
    stopped = load_params(root / "B" / "checkpoints" / "last.ckpt")
    resumed = start_training(config, root, "B", "--resume")
    for process in (run_a, resumed):
        process.wait(timeout=900)
    outputs = {name: (process.returncode, (root / f"{name}.out").read_text(), (root / f"{name}.err").read_text())
               for name, process in (("A", run_a), ("B", resumed))}
    return {"config": config, "root": root, "cfg": cfg, "logged": logged, "stopped": stopped, "runs": outputs}


def test_trains_through_warmup_sampling_window_clustering_and_prototype_loss(tiny_run):
    returncode, stdout, stderr = tiny_run["runs"]["A"]
    assert returncode == 0, stderr[-3000:]
    rows = read_log(tiny_run["root"] / "A")
    assert [int(r["step"]) for r in rows] == list(range(EPOCHS * ITERATIONS))
    assert [r["phase"] for r in rows] == ["supervised"] * ITERATIONS + ["semi"] * (EPOCHS - 1) * ITERATIONS
    proto = [float(r["proto"]) for r in rows]
    assert proto[:WINDOW_END] == [0.0] * WINDOW_END  # warm-up and sampling window: no L_pro
    assert all(value > 0.01 for value in proto[WINDOW_END:]), proto  # active from the clustering step on
    assert all(float(r["unsup"]) > 0 for r in rows[ITERATIONS:])
    for row in rows:  # total = sup + unsup + proto (lambda_u = lambda_pro = 1)
        assert float(row["loss"]) == pytest.approx(float(row["sup"]) + float(row["unsup"]) + float(row["proto"]),
                                                   rel=1e-5)
    assert "mean teacher + BRPG prototype loss" in stderr
    assert stderr.count("BRPG: clustering the sampled features at epoch 3, iteration 1") == 1
    assert "BRPG clustering: APO (cos_sim)" in stderr and "RECOMPILED" not in stderr
    assert "validation mIoU (teacher" in stderr and "best.ckpt" in stdout


def test_checkpoints_hold_the_prototypes_and_best_loads_into_the_model(tiny_run):
    from ms_semiseg.models import create_model
    from ms_semiseg.utils.checkpoint import load_into_model
    work = tiny_run["root"] / "A" / "checkpoints"
    model = load_into_model(create_model(tiny_run["cfg"]["net"]), str(work / "best.ckpt"))
    assert "decoder.representation.0.weight" in {p.name for p in model.get_parameters()}
    last = load_params(work / "last.ckpt")
    assert int(last["extra.brpg.clustered"].asnumpy()) == 1
    assert "extra.brpg.queue_rows" not in last  # the queues are freed by the clustering
    valid = last["extra.brpg.proto_valid"].asnumpy()
    assert valid.shape == (CLASSES, 6) and valid.sum() >= 2  # 2+2 prototypes per class, +1+1 for APO's class
    assert np.abs(last["extra.brpg.protos"].asnumpy()).sum() > 0


def test_stopped_after_the_window_resumes_across_the_clustering_to_the_same_weights(tiny_run):
    returncode, _, stderr = tiny_run["runs"]["B"]
    assert returncode == 0, stderr[-3000:]
    stopped = tiny_run["stopped"]
    assert int(stopped["extra.brpg.clustered"].asnumpy()) == 0  # saved inside or at the end of the window
    assert stopped["extra.brpg.queue_fill"].asnumpy().sum() > 0
    assert "resumed from" in stderr and "BRPG: clustering the sampled features" in stderr
    expected = load_params(tiny_run["root"] / "A" / "checkpoints" / "last.ckpt")
    actual = load_params(tiny_run["root"] / "B" / "checkpoints" / "last.ckpt")
    assert set(actual) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(actual[name].asnumpy(), value.asnumpy(), err_msg=name)
    columns = ("step", "loss", "sup", "unsup", "proto")
    assert [[r[c] for c in columns] for r in read_log(tiny_run["root"] / "B")] == [
        [r[c] for c in columns] for r in read_log(tiny_run["root"] / "A")]


# ------------------------------------------------------------------------------------------ config switch


def brpg_cfg_with(tmp_path, **changes):
    """The tiny BRPG config (on its own tiny dataset) with dotted keys set, as `load_config` returns it."""
    cfg = tiny_brpg_config(tmp_path)
    for dotted, value in changes.items():
        node = cfg
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value
    return load_config(write_config(cfg, str(tmp_path)))


def test_pcr_head_and_brpg_loss_together_is_an_error_naming_both_keys(tmp_path):
    proto_head = load_config(PCR_CONFIG)["net"]["proto_head"]
    cfg = brpg_cfg_with(tmp_path, **{"net.proto_head": proto_head})
    with pytest.raises(UserError) as error:
        check_brpg_config(cfg, plan_from_config(cfg))
    assert "trainer.prototype" in str(error.value) and "net.proto_head" in str(error.value)


def test_brpg_needs_the_semi_supervised_trainer(tmp_path):
    cfg = brpg_cfg_with(tmp_path, **{"trainer.sup_only_epoch": EPOCHS})
    with pytest.raises(UserError, match="trainer.prototype: BRPG trains inside the mean teacher"):
        check_brpg_config(cfg, plan_from_config(cfg))


def test_a_last_checkpoint_without_brpg_state_is_refused(tmp_path):
    cfg = brpg_cfg_with(tmp_path)
    brpg = BRPGTraining(cfg, plan_from_config(cfg), seed=2)
    with pytest.raises(UserError, match="^last.ckpt: BRPG state lacks"):
        brpg.load_checkpoint_arrays({"student.encoder.conv1.weight": np.zeros(1)})
    saved = brpg.checkpoint_arrays()
    assert set(saved) == {"brpg.clustered", "brpg.confidence_ema", "brpg.protos", "brpg.proto_valid"}
    brpg.load_checkpoint_arrays(saved)  # no queues yet: restored as empty ones
    assert brpg.state.queues is None and not brpg.state.clustered


# ------------------------------------------------------------------------------- supervised criterion


def torch_ohem(logits, target, thresh, min_kept):
    """U2PL/BRPG OhemCrossEntropy2dTensor: CE over the valid pixels whose GT-class probability is at most
    max(thresh, min_kept-th smallest such probability); all valid pixels when fewer than min_kept are valid."""
    flat = target.reshape(-1)
    valid = flat != 255
    prob = torch.softmax(logits, 1).permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
    gt_prob = torch.where(valid, prob[torch.arange(len(flat)), flat.clamp(max=logits.shape[1] - 1)],
                          torch.ones_like(flat, dtype=prob.dtype))
    if valid.sum() >= min_kept:
        threshold = max(thresh, gt_prob.sort().values[min(len(flat), min_kept) - 1].item())
        flat = flat.masked_fill(gt_prob > threshold, 255)
    return F.cross_entropy(logits, flat.reshape(target.shape), ignore_index=255)


def test_brpg_supervised_criterion_is_weighted_ce_plus_ohem():
    rng = np.random.default_rng(0)
    logits = (3 * rng.standard_normal((2, 4, 9, 9))).astype(np.float32)
    target = rng.integers(0, 4, (2, 9, 9)).astype(np.int32)
    target[:, :2] = 255
    cfg = load_config(BRPG_CONFIG)
    cfg["criterion"]["weight"], cfg["criterion_2"]["weight"] = 0.3, 0.7
    cfg["criterion_2"]["kwargs"] = {"thresh": 0.7, "min_kept": 50}
    ours = supervised_criterion(cfg)(Tensor(logits), Tensor(target)).asnumpy()
    x, y = torch.from_numpy(logits), torch.from_numpy(target).long()
    expected = 0.3 * F.cross_entropy(x, y, ignore_index=255) + 0.7 * torch_ohem(x, y, 0.7, 50)
    assert float(ours) == pytest.approx(expected.item(), rel=1e-5)
    del cfg["criterion_2"], cfg["criterion"]["weight"]  # the U2PL/PCR schema: one criterion, weight 1
    plain = supervised_criterion(cfg)(Tensor(logits), Tensor(target)).asnumpy()
    assert float(plain) == pytest.approx(F.cross_entropy(x, y, ignore_index=255).item(), rel=1e-5)


@pytest.mark.parametrize("section, value, culprit", [
    ("criterion_2", {"type": "ohem", "weight": -1}, "criterion_2.weight"),
    ("criterion_2", {"type": "ohem", "kwargs": {"min_keep": 5}}, "criterion_2.kwargs.min_keep"),
    ("criterion_2", {"type": "dice"}, "criterion_2.type"),
])
def test_criterion_errors_name_the_section(section, value, culprit):
    cfg = load_config(BRPG_CONFIG)
    cfg[section] = value
    with pytest.raises(UserError, match=culprit):
        supervised_criterion(cfg)
