"""BRPG inside `python -m ms_semiseg train` (issue 5): a tiny config (ResNet-18, crop 33, 3 classes) runs the
warm-up, the sampling window, the clustering and the prototype loss; a run stopped after the window resumes across
the clustering to the uninterrupted weights; BRPG's 0.5 * CE + 0.5 * OHEM criterion; the PCR/BRPG switch; the
strong view of the unlabeled images (colour jitter, grayscale, blur)."""
import colorsys
import os
import shutil
import time
from types import SimpleNamespace

import cv2
import mindspore as ms
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mindspore import Tensor, nn
from PIL import Image
from scipy.ndimage import gaussian_filter

from fixtures import make_voc_fixture
from helpers import REPO_ROOT, point_at_data, tiny_config, write_config
from helpers import assert_well_posed, top2_margin
from test_brpg import DECISION_TOL, prototype_margins
from test_losses import ohem_well_posed
from test_train import last_step_logged, load_params, read_log, start_training

from ms_semiseg.config import load_config
from ms_semiseg.data.transforms import apply_strong_view, color_jitter, draw_strong_view
from ms_semiseg.errors import UserError
from ms_semiseg.losses import build_criterion, supervised_criterion
from ms_semiseg.models.layers import batch_norm, conv2d
from ms_semiseg.engine import ema, optim
from ms_semiseg.methods.brpg.method import BRPGTraining, check_brpg_config
from ms_semiseg.methods.brpg.settings import BRPGSettings
from ms_semiseg.engine.steps import CONFIDENCE, LossSettings, MeanTeacherPair
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
    dataset = point_at_data(cfg, data["root"], data["lists"]["labeled"], data["lists"]["val"])
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
    before a checkpoint's step are flushed before it is written)."""
    deadline = time.time() + timeout
    while process.poll() is None and time.time() < deadline and last_step_logged(work) < step:
        time.sleep(0.05)
    assert last_step_logged(work) >= step, f"the run stopped before step {step} (exit code {process.poll()})"
    os.makedirs(target / "checkpoints")
    shutil.copy(work / "checkpoints" / "last.ckpt", target / "checkpoints" / "last.ckpt")
    shutil.copy(work / "log.csv", target / "log.csv")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """Run 'A' uninterrupted; 'B', a copy of A's files taken when the last step of the sampling window is logged
    (before the clustering), resumed with --resume while A finishes."""
    root = tmp_path_factory.mktemp("brpg_train")
    cfg = tiny_brpg_config(root)
    config = write_config(cfg, str(root))
    run_a = start_training(config, root, "A")
    snapshot_after_step(run_a, root / "A", WINDOW_END - 1, root / "B")
    stopped = load_params(root / "B" / "checkpoints" / "last.ckpt")
    resumed = start_training(config, root, "B", "--resume")
    for process in (run_a, resumed):
        process.wait(timeout=900)
    outputs = {name: (process.returncode, (root / f"{name}.out").read_text(), (root / f"{name}.err").read_text())
               for name, process in (("A", run_a), ("B", resumed))}
    return {"config": config, "root": root, "cfg": cfg, "stopped": stopped, "runs": outputs}


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
    # slots: 2+2 per class plus APO's +1+1; the tiny run leaves some queues empty (the logged fallback)
    assert valid.shape == (CLASSES, 6) and valid.sum() >= 2
    assert np.abs(last["extra.brpg.protos"].asnumpy()).sum() > 0


def test_stopped_after_the_window_resumes_across_the_clustering_to_the_same_weights(tiny_run):
    """Bit-identical, on purpose: the resumed run and the uninterrupted one are the same computation on the same
    machine (same code, seed, environment and kernels): a same-machine determinism claim, where any difference is
    BRPG state (queues, prototypes, sampling draws) lost across the resume. Another CPU gives other, equal bits."""
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


# --------------------------------------------------------------------------------------- the compiled step

C, D, B, H = 3, 8, 2, 17  # classes, rep channels, batch, image size


class RepSegmentor(nn.Cell):
    """ModelBuilder's outputs on a few layers: (pred, aux None, rep, rep_clf None), both at stride 2."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.SequentialCell([conv2d(3, D, 3, 2, 1), batch_norm(D), nn.ReLU()])
        self.decoder = nn.SequentialCell([conv2d(D, C, 1, bias=True)])
        self.representation = nn.SequentialCell([conv2d(D, D, 1, bias=True)])

    def construct(self, x):
        feat = self.encoder(x)
        return self.decoder(feat), None, self.representation(feat), None



def clustered_brpg(protos, valid):
    """BRPGTraining of a small config, restored to a state just after the clustering."""
    cfg = {"trainer": {"epochs": 6, "sup_only_epoch": 1,
                       "prototype": {"grid_num": 4, "unsup_sample_num": 40, "pseudo_ramp_start_epoch": None,
                                     "pseudo_threshold": 0.3, "queue_len": 8}},
           "dataset": {"train": {"crop": {"size": [H, H]}}}, "net": {"num_classes": C}}
    plan = SimpleNamespace(iterations=2, batch_size=B, num_classes=C, crop=(H, H), epochs=6)
    brpg = BRPGTraining(BRPGSettings.from_config(cfg, C), plan, seed=0, feat_dim=D)
    brpg.load_checkpoint_arrays({"brpg.clustered": np.array(1, np.int32), "brpg.protos": protos,
                                 "brpg.proto_valid": valid, "brpg.confidence_ema": np.full(C, 0.8, np.float32)})
    return brpg


@pytest.mark.numeric
def test_semi_step_adds_l_pro_and_moves_the_prototypes_only_in_the_loss_phase(graph_mode):
    """The compiled BRPG step against its parts run separately on the student's pre-step forward: L_pro in the
    total, the prototype EMA from the step's own features, the detached labeled outputs; loss_on = 0 leaves
    both the loss and the prototypes untouched. Two code paths (one graph vs PyNative parts), so values agree to
    tolerances, and the matched prototypes and predicted classes are checked to be far from ties."""
    ms.set_seed(0)
    rng = np.random.default_rng(0)
    pair = MeanTeacherPair(RepSegmentor(), RepSegmentor())
    teacher_params, student_params = ema.ema_parameter_pairs(pair.student, pair.teacher)
    for target, source in zip(teacher_params, student_params):
        target.set_data(Tensor(source.asnumpy()))
    optimizer = optim.build_sgd(pair.student.trainable_params(), 0.01, 10, 0.9, 1e-4, 0.9, 10, "student.")
    protos = rng.standard_normal((C, 6, D)).astype(np.float32)
    valid = np.ones((C, 6), np.float32)
    valid[1, 2:] = 0.0
    brpg, reference = clustered_brpg(protos, valid), clustered_brpg(protos, valid)
    graphs = brpg.graphs(pair, optimizer, build_criterion({"type": "CELoss"}),
                         LossSettings(aux_weight=0.0, unsup_type=CONFIDENCE, confid_thresh=0.3),
                         ema.EMAUpdate(teacher_params, student_params))
    x_l, x_u = (rng.standard_normal((B, 3, H, H)).astype(np.float32) for _ in range(2))
    y_l = rng.integers(0, C, (B, H, H)).astype(np.int32)
    y_l[:, :3] = 255
    teacher = graphs["teacher pseudo-labels"].run(Tensor(x_u))
    pseudo, conf = teacher[0], teacher[1]
    pair.teacher.set_train(False)
    teacher_pred, _, teacher_rep, _ = pair.teacher(Tensor(x_u))
    np.testing.assert_allclose(teacher[2].asnumpy(), teacher_pred.asnumpy(), atol=1e-6)
    np.testing.assert_allclose(teacher[3].asnumpy(), teacher_rep.asnumpy(), atol=1e-6)
    extra = brpg.step_inputs(epoch=2, iteration=0)  # the loss phase (sampling window: epoch 1)
    grid, noise, threshold, loss_on = extra
    assert float(loss_on.asnumpy()) == 1.0
    pair.student.set_train(True)
    pred, _, rep, _ = pair.student(Tensor(np.concatenate((x_l, x_u))))
    expected = reference.state.loss_cell(rep[:B], Tensor(y_l), grid, rep[B:], pseudo, conf, noise, threshold)
    feats, target, scores = (value.asnumpy() for value in expected[1:4])
    assert_well_posed(prototype_margins(feats, protos, valid, target), DECISION_TOL, "matched prototype")
    assert_well_posed(top2_margin(scores[target != 255], axis=1), DECISION_TOL, "predicted class (best score)")
    reference.state.ema_update(*expected[1:])

    def step(extra):
        return graphs["semi step"].run(Tensor(x_l), Tensor(y_l), Tensor(x_u), pseudo, conf,
                                       Tensor(np.zeros((B, 4), np.int32)), Tensor(100.0, ms.float32),
                                       Tensor(0.5, ms.float32), extra)

    losses, rep_l, logits_l = step(extra)
    losses = losses.asnumpy()
    assert losses[3] == pytest.approx(float(expected[0].asnumpy()), rel=1e-5) and losses[3] > 0.1
    assert losses[0] == pytest.approx(losses[1] + losses[2] + losses[3], rel=1e-6)
    np.testing.assert_allclose(rep_l.asnumpy(), rep[:B].asnumpy(), atol=1e-5)
    np.testing.assert_allclose(logits_l.asnumpy(), pred[:B].asnumpy(), atol=1e-5)
    moved = brpg.state.bank.protos.asnumpy()
    np.testing.assert_allclose(moved, reference.state.bank.protos.asnumpy(), atol=1e-5)
    assert np.abs(moved - protos).max() > 1e-4
    off = ms.mutable((grid, noise, threshold, Tensor(0.0, ms.float32)))
    losses = step(off)[0].asnumpy()
    assert losses[3] == 0.0 and losses[0] == pytest.approx(losses[1] + losses[2], rel=1e-6)
    np.testing.assert_array_equal(brpg.state.bank.protos.asnumpy(), moved)
    np.testing.assert_array_equal(brpg.state.bank.valid.asnumpy(), valid)
    assert len(graphs["semi step"].compile_cache) == 1


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
    plan = plan_from_config(cfg)
    brpg = BRPGTraining(plan.method_settings, plan, seed=2)
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


@pytest.mark.numeric
def test_brpg_supervised_criterion_is_weighted_ce_plus_ohem():
    rng = np.random.default_rng(0)
    logits = (3 * rng.standard_normal((2, 4, 9, 9))).astype(np.float32)
    target = rng.integers(0, 4, (2, 9, 9)).astype(np.int32)
    target[:, :2] = 255
    ohem_well_posed(logits, target, 0.7, 50)  # OHEM keeps the same pixels in any float32 implementation
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


# ---------------------------------------------------------------------------------- strong view (UniMatch)


def smooth_rgb(seed, size=(30, 40)):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (5, 5, 3)).astype(np.float32)
    smooth = cv2.resize(coarse, size[::-1], interpolation=cv2.INTER_LINEAR) + rng.normal(0, 10, size + (3,))
    return np.clip(smooth, 0, 255).astype(np.uint8)


def luma(rgb):
    """PIL's RGB -> L: ITU-R 601-2 luma, rounded to an integer."""
    return np.floor(rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114 + 0.5)


def jitter_only(rgb, index, factor):
    factors = [1.0, 1.0, 1.0, 0.0]
    factors[index] = factor
    return color_jitter(Image.fromarray(rgb), tuple(factors), (index,))


@pytest.mark.parametrize("index, factor", [(0, 1.3), (1, 0.6), (2, 0.4)])
def test_colour_jitter_blends_towards_black_mean_grey_and_luma(index, factor):
    rgb = smooth_rgb(1)
    image = rgb.astype(np.float64)
    gray = luma(image)[..., None]
    degenerate = (np.zeros_like(image), np.full_like(image, int(gray.mean() + 0.5)), gray)[index]
    expected = np.clip(degenerate + factor * (image - degenerate), 0, 255)
    actual = np.asarray(jitter_only(rgb, index, factor), np.float64)
    assert np.abs(actual - expected).max() <= 1.0


def test_hue_shift_rotates_the_8_bit_hue():
    rgb = np.array([[[255, 0, 0], [0, 200, 0], [40, 60, 220], [90, 90, 90]]], np.uint8)
    factor = -0.3
    actual = np.asarray(jitter_only(rgb, 3, factor), np.float64)
    for pixel, result in zip(rgb[0] / 255.0, actual[0]):
        hue, saturation, value = colorsys.rgb_to_hsv(*pixel)
        hue_byte = (round(hue * 255) + int(factor * 255)) % 256  # PIL's 8-bit hue, which wraps at 256
        expected = colorsys.hsv_to_rgb(hue_byte / 255, saturation, value)
        np.testing.assert_allclose(result, 255 * np.asarray(expected), atol=4)


def test_grayscale_and_blur_of_the_strong_view():
    rgb = smooth_rgb(2)
    gray = apply_strong_view(rgb, {"jitter": None, "grayscale": True, "blur_sigma": None}).astype(np.float64)
    assert np.abs(gray - luma(rgb.astype(np.float64))[..., None]).max() <= 1.0
    blurred = apply_strong_view(rgb, {"jitter": None, "grayscale": False, "blur_sigma": 1.5}).astype(np.float64)
    reference = np.stack([gaussian_filter(rgb[..., c].astype(np.float64), 1.5) for c in range(3)], axis=-1)
    # PIL approximates the Gaussian by box blurs; away from the border it stays within ~2 levels
    assert np.abs(blurred - reference)[4:-4, 4:-4].max() <= 2.5
    assert np.array_equal(apply_strong_view(rgb, {"jitter": None, "grayscale": False, "blur_sigma": None}), rgb)


def test_strong_view_draws_follow_unimatch_probabilities_and_ranges():
    rng = np.random.default_rng(3)
    draws = [draw_strong_view(rng) for _ in range(4000)]
    assert np.mean([d["jitter"] is not None for d in draws]) == pytest.approx(0.8, abs=0.03)
    assert np.mean([d["grayscale"] for d in draws]) == pytest.approx(0.2, abs=0.03)
    assert np.mean([d["blur_sigma"] is not None for d in draws]) == pytest.approx(0.5, abs=0.03)
    factors = np.array([d["jitter"][0] for d in draws if d["jitter"]])
    assert factors[:, :3].min() >= 0.5 and factors[:, :3].max() <= 1.5 and np.abs(factors[:, 3]).max() <= 0.25
    assert all(sorted(d["jitter"][1]) == [0, 1, 2, 3] for d in draws if d["jitter"])
    sigmas = [d["blur_sigma"] for d in draws if d["blur_sigma"] is not None]
    assert 0.1 <= min(sigmas) and max(sigmas) <= 2.0


def test_pipeline_adds_a_reproducible_strong_view_of_the_weak_crop(tmp_path):
    from ms_semiseg.engine.pipeline import build_train_pipeline
    from ms_semiseg.engine.train_data import train_data
    cfg = tiny_brpg_config(tmp_path)
    first = next(iter(build_train_pipeline(train_data(cfg), 2, 1, 2)))
    again = next(iter(build_train_pipeline(train_data(cfg), 2, 1, 2, num_workers=2)))
    assert set(first) == {"image_l", "label_l", "image_u", "image_u_strong"}
    for name in first:
        np.testing.assert_array_equal(first[name], again[name], err_msg=name)
    weak, strong = first["image_u"], first["image_u_strong"]
    assert strong.shape == weak.shape and strong.dtype == np.float32 and not np.allclose(strong, weak, atol=0.1)
    cfg["dataset"]["train"]["strong_view"] = False
    plain = next(iter(build_train_pipeline(train_data(cfg), 2, 1, 2)))
    assert set(plain) == {"image_l", "label_l", "image_u"}
    np.testing.assert_array_equal(plain["image_u"], weak)  # the weak view is unchanged by the option
    cfg["dataset"]["train"]["strong_view"] = "yes"
    with pytest.raises(UserError, match="dataset.train.strong_view"):
        build_train_pipeline(train_data(cfg), 2, 1, 2)
