"""Evaluation, inference and export: mIoU parity of a converted model against the PyTorch reference pipeline
(VOC whole image, Cityscapes sliding window), eval.sh end to end, checkpoint handling, compile strategies,
infer outputs and the MindIR round trip. Tiny ResNet-18 models and tiny images keep it fast.

mIoU parity is stated so that it holds on any CPU: our class map equals the reference's at every decisive pixel
(top-2 margin of the reference logits above the float32 tolerance of the logits, measured against the model in
float64), near-tie pixels are few and may go either way, and the reported IoUs are U2PL's formula over our own
class maps. A fixed mIoU tolerance would hold only while no near-tie pixel flips."""
import copy
import json
import os
import re
import subprocess

import cv2
import numpy as np
import pytest
import torch

from ms_semiseg.config import load_config, net_config
from ms_semiseg.data import VOC_PALETTE, build_dataset, build_transform
from ms_semiseg.errors import UserError
from tests.fixtures import make_cityscapes_fixture, make_voc_fixture
from tests.helpers import (CITY_CONFIG, REPO_ROOT, VOC_CONFIG, assert_user_error, float32_tol, run_module,
                           tiny_config, top2_margin, write_config)

VOC_SIZES = [(41, 53), (53, 37)]
VOC_IDS = [f"2007_{index:06d}" for index in range(6)]
CITY_NAMES = ["val/lindau/lindau_000000_000019"]
CITY_SIZE = (40, 72)
CITY_PROTOCOL = dict(crop=(33, 33), base_size=64, flip=True)  # 36x64 after resizing: 2x3 windows of 33
NEAR_TIES = 1e-3  # at most this fraction of the pixels may be near ties, so that decisive agreement means much
LAST_LINE = re.compile(r"^mIoU: (\d+\.\d\d) \(proto: (\d+\.\d\d|n/a)\)$")


# ------------------------------------------------------------------------------------------------ fixtures

def _setup_mindspore():
    from ms_semiseg.eval.predictor import prepare_device
    prepare_device("CPU")


def _save_converted(torch_model, path, prefix=""):
    """The converter's mapping (BatchNorm renames) from the torch state_dict to a MindSpore .ckpt."""
    from convert import mapping
    from ms_semiseg.utils.checkpoint import save_params_atomic
    params = mapping.torch_to_ms({k: v.detach().numpy() for k, v in torch_model.state_dict().items()})
    save_params_atomic({prefix + name: value for name, value in params.items()}, path)
    return path


def _relabel_from_reference(dataset, reference_logits):
    """Labels the model partly agrees with: its linear-head argmax on the left half, its proto-head argmax on the
    right half, the fixture's objects (with 255 outlines) on top. Random weights would otherwise score ~0."""
    for index in range(len(dataset)):
        _, label_path = dataset.sample_paths(index)[1:]
        original = cv2.imread(label_path, cv2.IMREAD_UNCHANGED)
        logits = reference_logits(index)
        pred, proto = (logits[head][0].argmax(0).numpy() for head in ("pred", "proto"))
        left = np.arange(original.shape[1])[None, :] < original.shape[1] // 2
        label = np.where(left, pred, proto).astype(np.uint8)
        label[original != 0] = original[original != 0]
        cv2.imwrite(label_path, label)


def _build_setup(folder, base_config, make_fixture, reference_logits_fn, seed):
    """Config + fixture + random torch model + converted checkpoint + labels derived from the model."""
    from convert.reference import random_reference_model
    from ms_semiseg.eval.evaluate import resolved_dataset_config
    from ms_semiseg.eval.reference import to_tensor
    fixture = make_fixture(str(folder / "data"))
    cfg = tiny_config(base_config)
    cfg["dataset"]["val"].update(data_root=fixture["root"], data_list=fixture["lists"]["val"])
    config_path = write_config(cfg, str(folder / "exp"))
    cfg = load_config(config_path)
    torch_model = random_reference_model(net_config(cfg), seed=seed)
    dataset_cfg = resolved_dataset_config(cfg)
    transform = build_transform(dataset_cfg, "val")
    dataset = build_dataset(dataset_cfg, "val", num_classes=net_config(cfg)["num_classes"])

    cache = {}

    def logits(index):
        if index not in cache:
            x = to_tensor(dataset[index][0], transform.mean, transform.std)
            cache[index] = reference_logits_fn(torch_model, x)
        return cache[index]
    _relabel_from_reference(dataset, logits)
    ckpt = _save_converted(torch_model, str(folder / "model.ckpt"))
    return dict(cfg=cfg, config=config_path, ckpt=ckpt, torch_model=torch_model, dataset=dataset,
                transform=transform, fixture=fixture, logits=logits, folder=folder)


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    from ms_semiseg.eval.reference import torch_predict, whole_image
    folder = tmp_path_factory.mktemp("voc_eval")
    sizes = [(sample_id, VOC_SIZES[index % 2]) for index, sample_id in enumerate(VOC_IDS)]
    return _build_setup(folder, VOC_CONFIG, lambda root: make_voc_fixture(root, sizes),
                        lambda model, x: whole_image(torch_predict(model), x), seed=3)


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    from ms_semiseg.eval.reference import sliding_window, torch_predict
    folder = tmp_path_factory.mktemp("city_eval")
    return _build_setup(folder, CITY_CONFIG, lambda root: make_cityscapes_fixture(root, CITY_NAMES, CITY_SIZE),
                        lambda model, x: sliding_window(torch_predict(model), x, **CITY_PROTOCOL), seed=5)


def _ours(setup, protocol, strategy="static"):
    """mIoU (percent) per head through our pipeline with the converted model, the accumulators and the class maps
    ({sample_id: {head: map}})."""
    from convert.parity import ms_model_from_torch
    from ms_semiseg.eval.evaluate import evaluate_dataset
    from ms_semiseg.eval.predictor import Predictor
    _setup_mindspore()
    model = ms_model_from_torch(setup["cfg"], setup["torch_model"])
    predictor = Predictor(model, strategy, max_cached_shapes=protocol.shapes_per_image)
    maps = {}
    accumulators = evaluate_dataset(setup["dataset"], predictor, protocol, setup["transform"].mean,
                                    setup["transform"].std, on_prediction=maps.__setitem__, progress=False)
    return {head: 100.0 * accumulator.miou() for head, accumulator in accumulators.items()}, accumulators, maps


def _logit_tolerance(setup):
    """How far a correct float32 port may be from the reference logits: for one forward of the reference model on
    each fixture image, |ours - ref32| <= |ours - fp64| + |ref32 - fp64| <= 2 * helpers.float32_tol (2x torch's
    float32 floor + 8 ulps; the parity tests hold MindSpore to that). The largest over images and heads."""
    if "logit_tol" not in setup:
        from ms_semiseg.eval.reference import to_tensor, torch_predict
        predict32 = torch_predict(setup["torch_model"])
        predict64 = torch_predict(copy.deepcopy(setup["torch_model"]).double())
        tol = 0.0
        for index in range(len(setup["dataset"])):
            x = to_tensor(setup["dataset"][index][0], setup["transform"].mean, setup["transform"].std)
            out32, out64 = predict32(x), predict64(x.double())
            tol = max([tol] + [2 * float32_tol(out32[h].numpy(), out64[h].numpy()) for h in out32])
        setup["logit_tol"] = tol
    return setup["logit_tol"]


def _near_tie_miou_bound(intersection, union, near_ties):
    """Largest change (percent) of U2PL's mIoU when `near_ties` labelled pixels change class: a class's
    intersection and union each move by at most n pixels, so its IoU by at most 2n / (union - n); and a pixel
    changes the counts of two classes only, so the IoUs change by at most 2n / (smallest union - n) in all."""
    present = union > 0
    if near_ties == 0 or not present.any():
        return 0.0
    per_class = np.minimum(2.0 * near_ties / np.maximum(union[present] - near_ties, 1), 1.0).sum()
    per_pixel = 2.0 * near_ties / max(union[present].min() - near_ties, 1)
    return 100.0 * float(min(per_class, per_pixel)) / len(union)


def _reference_view(setup, head, forwards=1):
    """The reference's side of a parity check, per head: {sample_id: (argmax map, decisive mask, label)}, U2PL's
    (intersection, union) of its maps and the number of labelled near-tie pixels. Decisive: top-2 margin of the
    reference logits above twice the port's logit tolerance (a flip needs both to move by the margin's half);
    `forwards`: logits summed per pixel (2 with flip), each with its own rounding."""
    key = ("reference_view", head, forwards)
    if key not in setup:
        from ms_semiseg.eval.reference import intersection_and_union
        dataset, margin_tol = setup["dataset"], 2 * forwards * _logit_tolerance(setup)
        maps, counts, near_ties, pixels = {}, [0, 0], 0, 0
        for index in range(len(dataset)):
            _, label, sample_id = dataset[index]
            logits = setup["logits"](index)[head][0].numpy()
            decisive = top2_margin(logits, axis=0) > margin_tol
            maps[sample_id] = (logits.argmax(0), decisive, label)
            labelled = label != dataset.ignore_label
            near_ties += int((~decisive & labelled).sum())
            pixels += int(labelled.sum())
            intersection, union = intersection_and_union(maps[sample_id][0], label, dataset.num_classes,
                                                         dataset.ignore_label)
            counts = [counts[0] + intersection, counts[1] + union]
        print(f"{head}: {near_ties} of {pixels} labelled pixels are near ties (margin <= {margin_tol:.1e})")
        assert near_ties <= NEAR_TIES * pixels, (head, near_ties, pixels)  # the decisive check covers nearly all
        setup[key] = (maps, counts[0], counts[1], near_ties)
    return setup[key]


def _assert_decisive_agreement(setup, head, class_maps, forwards=1):
    """Our class maps ({sample_id: map}) equal the reference's argmax at every decisive pixel."""
    reference = _reference_view(setup, head, forwards)[0]
    assert sorted(class_maps) == sorted(reference)
    for sample_id, (ref_map, decisive, _) in reference.items():
        disagree = decisive & (np.asarray(class_maps[sample_id]).astype(np.int64) != ref_map)
        assert not disagree.any(), (head, sample_id, f"{int(disagree.sum())} decisive pixels disagree")


def _assert_miou_parity(setup, head, miou, iou, class_maps=None, forwards=1, reference=None):
    """Our mIoU is the reference's up to what its near-tie pixels can move. With our class maps, more: they equal
    the reference's at every decisive pixel, and our IoUs are U2PL's formula over them. `reference`: the reference
    pipeline's {head: {'miou'}}, the same torch computation as the logits used here (so equal to 1e-9)."""
    from ms_semiseg.eval.reference import intersection_and_union
    maps, ref_i, ref_u, near_ties = _reference_view(setup, head, forwards)
    if class_maps is not None:
        _assert_decisive_agreement(setup, head, class_maps, forwards)
        counts = [intersection_and_union(np.asarray(class_maps[sample_id]).astype(np.int64), label,
                                         setup["dataset"].num_classes, setup["dataset"].ignore_label)
                  for sample_id, (_, _, label) in maps.items()]
        u2pl_iou = sum(c[0] for c in counts) / (sum(c[1] for c in counts) + 1e-10)
        np.testing.assert_allclose(iou, u2pl_iou, rtol=0, atol=1e-12, err_msg=head)
        assert abs(miou - 100.0 * float(np.mean(u2pl_iou))) <= 1e-9, (head, miou)
    reference_miou = 100.0 * float(np.mean(ref_i / (ref_u + 1e-10)))
    if reference is not None:
        assert abs(reference[head]["miou"] - reference_miou) <= 1e-9, (head, reference[head]["miou"], reference_miou)
    bound = _near_tie_miou_bound(ref_i, ref_u, near_ties)
    print(f"{head}: mIoU ours {miou:.6f} reference {reference_miou:.6f}, near-tie bound {bound:.4f}")
    assert abs(miou - reference_miou) <= bound + 1e-9, (head, miou, reference_miou, bound)


def _assert_meaningful(setup, reference):
    """Random weights could predict one class everywhere, which would make any two pipelines agree."""
    for head in ("pred", "proto"):
        predicted = set()
        for index in range(len(setup["dataset"])):
            predicted.update(np.unique(setup["logits"](index)[head][0].argmax(0).numpy()).tolist())
        assert len(predicted) >= 3, (head, predicted)
        assert reference[head]["iou"].max() >= 20.0, (head, reference[head]["iou"])


# ------------------------------------------------------------------------------------------------ mIoU parity

@pytest.mark.numeric
def test_voc_whole_image_miou_matches_pytorch_reference(voc):
    from ms_semiseg.eval.evaluate import Protocol
    from ms_semiseg.eval.reference import evaluate_reference
    reference = evaluate_reference(voc["torch_model"], voc["dataset"], voc["transform"].mean, voc["transform"].std,
                                   "whole")
    ours, accumulators, maps = _ours(voc, Protocol("whole"))
    _assert_meaningful(voc, reference)
    assert sorted(ours) == ["pred", "proto"]
    for head in ours:
        _assert_miou_parity(voc, head, ours[head], accumulators[head].iou(),
                            {sample: heads[head] for sample, heads in maps.items()}, reference=reference)


@pytest.mark.numeric
def test_cityscapes_sliding_window_miou_matches_pytorch_reference(city):
    from ms_semiseg.eval.evaluate import Protocol
    from ms_semiseg.eval.reference import evaluate_reference
    reference = evaluate_reference(city["torch_model"], city["dataset"], city["transform"].mean,
                                   city["transform"].std, "sliding", **CITY_PROTOCOL)
    protocol = Protocol("sliding", flip=True, crop_size=CITY_PROTOCOL["crop"], base_size=CITY_PROTOCOL["base_size"])
    ours, accumulators, maps = _ours(city, protocol)
    _assert_meaningful(city, reference)
    for head in ours:  # flip: every logit is the sum of two forwards
        _assert_miou_parity(city, head, ours[head], accumulators[head].iou(),
                            {sample: heads[head] for sample, heads in maps.items()}, forwards=2, reference=reference)


# ------------------------------------------------------------------------------------------------ strategies

def _two_implementations_tol(setup, x):
    """How far two correct float32 implementations of the model (graph vs PyNative, MindIR vs the Cell) may be
    apart on input x, per head: each may be helpers.float32_tol from the float64 result of the torch reference."""
    from ms_semiseg.eval.reference import torch_predict
    out32 = torch_predict(setup["torch_model"])(torch.from_numpy(x))
    out64 = torch_predict(copy.deepcopy(setup["torch_model"]).double())(torch.from_numpy(x).double())
    return {head: 2 * float32_tol(out32[head].numpy(), out64[head].numpy()) for head in out32}


@pytest.mark.numeric
def test_compile_strategies_agree_to_float32_and_bound_the_cache(voc):
    """Static graph vs PyNative: two code paths (bit-equal here, but a compiled graph may fuse and order a reduction
    otherwise), so equal to the float32 tolerance of the model on that input."""
    from convert.parity import ms_model_from_torch
    from ms_semiseg.eval.predictor import Predictor
    _setup_mindspore()
    model = ms_model_from_torch(voc["cfg"], voc["torch_model"])
    static, pynative = Predictor(model, "static", max_cached_shapes=1), Predictor(model, "pynative")
    rng = np.random.default_rng(0)
    for height, width in [(33, 41), (41, 33), (33, 41)]:
        x = rng.normal(size=(1, 3, height, width)).astype(np.float32)
        got, expected = static(x), pynative(x)
        assert sorted(got) == ["pred", "proto"] and got["pred"].shape == (1, 21, height, width)
        for head, tol in _two_implementations_tol(voc, x).items():
            diff = float(np.abs(got[head] - expected[head]).max())
            assert diff <= tol, (head, (height, width), diff, tol)
    # one cached shape: the third call's shape was dropped when the second arrived, so it compiled again
    assert static.compile_count == 3 and static.compiled_shapes == [(1, 3, 33, 41)]


def test_auto_strategy_gives_the_static_logits_and_miou_exactly(voc, tmp_path):
    """`auto` runs frequent sizes as a graph and rare ones op by op; its logits, class maps and IoUs must equal the
    static strategy's bit for bit (a list with 3 images of one size and 1 of the other: one of each path)."""
    from convert.parity import ms_model_from_torch
    from ms_semiseg.data import build_dataset
    from ms_semiseg.eval.evaluate import Protocol, evaluate_dataset, resolved_dataset_config
    from ms_semiseg.eval.predictor import Predictor
    _setup_mindspore()
    dataset_cfg = resolved_dataset_config(voc["cfg"])
    with open(dataset_cfg["val"]["data_list"], encoding="utf-8") as handle:
        rows = handle.read().splitlines()
    subset = tmp_path / "val_subset.txt"
    subset.write_text("\n".join(rows[index] for index in (0, 1, 2, 4)) + "\n", encoding="utf-8")
    dataset_cfg["val"]["data_list"] = str(subset)
    dataset = build_dataset(dataset_cfg, "val", num_classes=voc["dataset"].num_classes)
    model = ms_model_from_torch(voc["cfg"], voc["torch_model"])
    protocol, transform = Protocol("whole"), voc["transform"]
    results = {}
    for strategy in ("static", "auto"):
        predictor, maps = Predictor(model, strategy, max_cached_shapes=1, static_pixels=4000), {}
        accumulators = evaluate_dataset(dataset, predictor, protocol, transform.mean, transform.std,
                                        on_prediction=maps.__setitem__, progress=False)
        results[strategy] = (predictor, maps, {head: acc.iou() for head, acc in accumulators.items()})
    (static, static_maps, static_iou), (auto, auto_maps, auto_iou) = results["static"], results["auto"]
    # 3 x 41x53 = 6519 pixel-forwards: a graph; 1 x 53x37 = 1961: op by op
    assert auto.stats()["compiles"] == 1 and auto.stats()["pynative_calls"] == 1
    assert static.stats()["compiles"] == 2 and static.stats()["pynative_calls"] == 0
    assert auto.compiled_shapes == []  # the 41x53 graph was released before the op-by-op 53x37 forward
    assert static_maps.keys() == auto_maps.keys() and len(auto_maps) == 4
    for sample_id, maps in static_maps.items():
        for head, class_map in maps.items():
            assert np.array_equal(class_map, auto_maps[sample_id][head]), (sample_id, head)
    for head, iou in static_iou.items():
        assert np.array_equal(iou, auto_iou[head]), head
    rng = np.random.default_rng(1)
    for height, width in ((41, 53), (53, 37)):  # one size per path: the raw logits, bit for bit
        x = rng.normal(size=(1, 3, height, width)).astype(np.float32)
        assert auto.uses_graph((height, width)) == (height == 41)
        expected, got = static(x), auto(x)
        assert all(np.array_equal(expected[head], got[head]) for head in expected)


def test_auto_strategy_plans_from_the_protocol_sizes():
    from ms_semiseg.eval.evaluate import Protocol
    assert Protocol("whole", scales=(0.5, 1.0), flip=True).forward_sizes(41, 53) == [(20, 26)] * 2 + [(41, 53)] * 2
    assert Protocol("sliding", crop_size=(33, 33)).forward_sizes(200, 300) == [(33, 33)]
    assert Protocol("center-crop", crop_size=(33, 33), flip=False).forward_sizes(5, 5) == [(33, 33)]


def test_order_by_size_groups_sizes_and_keeps_list_order(voc):
    from ms_semiseg.eval.evaluate import order_by_size
    paths = [voc["dataset"].sample_paths(index)[1] for index in range(len(voc["dataset"]))]
    order = order_by_size(paths)
    assert order == [0, 2, 4, 1, 3, 5]  # sizes alternate (41x53, 53x37): each size together, in list order


def test_auto_order_puts_graph_sizes_before_op_by_op_ones(voc):
    from ms_semiseg.eval.evaluate import Protocol, planned_order

    class GraphFor5337:  # an `auto` predictor that compiles 53x37 only
        def expect(self, calls):
            self.calls = calls

        def uses_graph(self, size):
            return tuple(size) == (53, 37)

    paths = [voc["dataset"].sample_paths(index)[1] for index in range(len(voc["dataset"]))]
    predict = GraphFor5337()
    assert planned_order(paths, predict, Protocol("whole")) == [1, 3, 5, 0, 2, 4]
    assert predict.calls == {(41, 53): 3, (53, 37): 3}


@pytest.mark.parametrize("overrides, culprit", [
    (dict(protocol="center-crop", scales=[0.5, 1.0]), "--protocol center-crop"),
    (dict(scales=[1.0, -0.5]), "--scales -0.5"),
    (dict(crop_size=[10, 20, 30]), "--crop-size 10 20 30"),
])
def test_protocol_argument_errors(voc, overrides, culprit):
    import argparse
    from ms_semiseg.eval.evaluate import protocol_from_args
    args = argparse.Namespace(**{**dict(protocol=None, scales=[1.0], flip=False, crop_size=None, base_size=2048),
                                 **overrides})
    with pytest.raises(UserError, match=re.escape(culprit)):
        protocol_from_args(args, voc["transform"], "pascal")


# ------------------------------------------------------------------------------------------------ checkpoints

def test_module_prefixed_checkpoint_loads_like_the_plain_one(voc, tmp_path):
    from ms_semiseg.eval.predictor import load_model
    _setup_mindspore()
    prefixed = _save_converted(voc["torch_model"], str(tmp_path / "module.ckpt"), prefix="module.")
    plain = {p.name: p.asnumpy() for p in load_model(voc["cfg"], voc["ckpt"]).get_parameters()}
    loaded = {p.name: p.asnumpy() for p in load_model(voc["cfg"], prefixed).get_parameters()}
    assert sorted(loaded) == sorted(plain)
    for name, value in plain.items():
        np.testing.assert_array_equal(loaded[name], value, err_msg=name)


def test_checkpoint_missing_a_parameter_is_refused_with_its_name(voc, tmp_path):
    from ms_semiseg.utils.checkpoint import read_checkpoint, save_params_atomic
    params = {k: v.asnumpy() for k, v in read_checkpoint(voc["ckpt"]).items() if k != "decoder.classifier.8.bias"}
    partial = str(tmp_path / "partial.ckpt")
    save_params_atomic(params, partial)
    result = run_module("ms_semiseg", "eval", "--config", voc["config"], "--ckpt", partial, "--device", "CPU")
    assert_user_error(result, partial, "missing", "decoder.classifier.8.bias")


def test_weights_picks_the_teacher_or_the_student_of_a_training_state(voc, tmp_path):
    """A last.ckpt holds `student.*` and `teacher.*` (and optimizer slots): --weights loads either, exactly; the
    default is the teacher; a one-model checkpoint refuses --weights with a one-line error."""
    from ms_semiseg.eval.predictor import load_model
    from ms_semiseg.utils.checkpoint import read_checkpoint, save_params_atomic
    _setup_mindspore()
    model = {k: v.asnumpy() for k, v in read_checkpoint(voc["ckpt"]).items()}
    state = {f"student.{k}": v for k, v in model.items()}
    state.update({f"teacher.{k}": v + np.float32(0.5) for k, v in model.items()})  # a different teacher
    state["optimizer.moments.student.decoder.classifier.8.bias"] = np.zeros(1, np.float32)
    last = str(tmp_path / "last.ckpt")
    save_params_atomic(state, last)
    for weights, offset in (("student", 0.0), ("teacher", 0.5), (None, 0.5)):
        loaded = {p.name: p.asnumpy() for p in load_model(voc["cfg"], last, weights=weights).get_parameters()}
        for name, value in model.items():
            np.testing.assert_array_equal(loaded[name], value + np.float32(offset), err_msg=f"{weights} {name}")
    result = run_module("ms_semiseg", "eval", "--config", voc["config"], "--ckpt", voc["ckpt"], "--weights",
                        "student", "--device", "CPU")
    assert_user_error(result, voc["ckpt"], "one model's weights", "--weights student")


def test_device_gpu_without_gpu_is_a_one_line_error(voc):
    from ms_semiseg.device import gpu_unavailable_reason
    if gpu_unavailable_reason() is None:
        pytest.skip("a GPU is usable here; the error path needs a machine without one")
    result = run_module("ms_semiseg", "eval", "--config", voc["config"], "--ckpt", voc["ckpt"], "--device", "GPU")
    assert_user_error(result, "--device GPU")


def test_eval_on_gpu_matches_cpu(voc, tmp_path):
    from ms_semiseg.device import gpu_unavailable_reason
    reason = gpu_unavailable_reason()
    if reason is not None:
        pytest.skip(f"MindSpore cannot use a GPU here: {reason}")
    results = {}
    for device in ("CPU", "GPU"):
        metrics = tmp_path / f"{device}.json"
        result = run_module("ms_semiseg", "eval", "--config", voc["config"], "--ckpt", voc["ckpt"], "--device",
                            device, "--metrics", metrics, "--no-progress")
        assert result.returncode == 0, result.stderr[-3000:]
        results[device] = json.loads(metrics.read_text())
    assert results["GPU"]["device"] == "GPU"
    for key in ("miou", "miou_proto"):
        assert abs(results["GPU"][key] - results["CPU"][key]) <= 0.05


# ------------------------------------------------------------------------------------------------ eval.sh

@pytest.mark.numeric
def test_eval_sh_end_to_end(voc, tmp_path):
    """eval.sh of the VOC 92 experiment (encoder swapped for the tiny one via --opts) on the 6-image fixture."""
    script = os.path.join(REPO_ROOT, "experiments", "pascal", "92", "ours", "eval.sh")
    save_dir = tmp_path / "results"
    env = dict(os.environ, CKPT=voc["ckpt"], DATA_ROOT=voc["fixture"]["root"], DEVICE="CPU")
    result = subprocess.run(
        ["bash", script, "--opts", "net.encoder.type=core.models.resnet.resnet18",
         f"dataset.val.data_list={voc['fixture']['lists']['val']}", "--save-dir", str(save_dir)],
        cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    match = LAST_LINE.match(last)
    assert match, last
    assert "linear head" in result.stdout and "proto head" in result.stdout and "aeroplane" in result.stdout

    metrics = json.loads((save_dir / "metrics.json").read_text())
    assert (metrics["num_images"], metrics["protocol"], metrics["dataset"]) == (6, "whole", "pascal")
    assert metrics["checkpoint"] == voc["ckpt"] and metrics["data_root"] == voc["fixture"]["root"]
    assert len(metrics["heads"]["linear"]["iou"]) == 21 and metrics["heads"]["linear"]["iou"]["background"] >= 0
    assert match.groups() == (f"{metrics['miou']:.2f}", f"{metrics['miou_proto']:.2f}")  # one run's own figures

    grays = {}
    for sample_id in VOC_IDS:
        grays[sample_id] = cv2.imread(str(save_dir / "gray" / f"{sample_id}.png"), cv2.IMREAD_UNCHANGED)
        color = cv2.cvtColor(cv2.imread(str(save_dir / "color" / f"{sample_id}.png")), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(color, VOC_PALETTE[grays[sample_id]])
    linear_iou = np.array(list(metrics["heads"]["linear"]["iou"].values())) / 100.0
    _assert_miou_parity(voc, "pred", metrics["miou"], linear_iou, grays)  # gray/: the linear head's class maps
    _assert_miou_parity(voc, "proto", metrics["miou_proto"], None)


# ------------------------------------------------------------------------------------------------ infer, export

@pytest.mark.numeric
def test_infer_writes_masks_and_overlays(voc, tmp_path):
    images = os.path.join(voc["fixture"]["root"], "JPEGImages")
    out = tmp_path / "infer"
    result = run_module("ms_semiseg", "infer", "--config", voc["config"], "--ckpt", voc["ckpt"], "--device", "CPU",
                        "--images", images, os.path.join(images, f"{VOC_IDS[0]}.jpg"), "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    written = sorted(os.listdir(out))
    assert len(written) == 14 and f"{VOC_IDS[0]}_2_mask.png" in written  # the image named twice is not overwritten
    for sample_id in VOC_IDS:
        mask = cv2.cvtColor(cv2.imread(str(out / f"{sample_id}_mask.png")), cv2.COLOR_BGR2RGB)
        overlay = cv2.cvtColor(cv2.imread(str(out / f"{sample_id}_overlay.png")), cv2.COLOR_BGR2RGB)
        image = cv2.cvtColor(cv2.imread(os.path.join(images, f"{sample_id}.jpg")), cv2.COLOR_BGR2RGB)
        ref_map, decisive, _ = _reference_view(voc, "pred")[0][sample_id]
        assert np.all(np.all(mask == VOC_PALETTE[ref_map], axis=-1)[decisive]), sample_id  # near ties may differ
        blend = 0.5 * image.astype(np.float32) + 0.5 * mask.astype(np.float32)
        assert np.abs(overlay.astype(np.float32) - blend).max() <= 0.5 + 1e-6


def test_infer_missing_image_is_a_user_error(voc, tmp_path):
    missing = str(tmp_path / "nope.jpg")
    result = run_module("ms_semiseg", "infer", "--config", voc["config"], "--ckpt", voc["ckpt"], "--device", "CPU",
                        "--images", missing, "--out", tmp_path / "out")
    assert_user_error(result, missing)


@pytest.mark.numeric
def test_export_mindir_runs_with_the_same_logits(voc, tmp_path):
    import mindspore as ms
    from mindspore import nn
    from ms_semiseg.eval.predictor import load_model
    from ms_semiseg.models import SegmentationInference
    out = tmp_path / "model"
    result = run_module("ms_semiseg", "export", "--config", voc["config"], "--ckpt", voc["ckpt"], "--out", out,
                        "--height", 33, "--width", 41, "--device", "CPU")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "model.mindir").is_file()
    _setup_mindspore()
    graph = nn.GraphCell(ms.load(str(tmp_path / "model.mindir")))
    network = SegmentationInference(load_model(voc["cfg"], voc["ckpt"]))
    x = np.random.default_rng(1).normal(size=(1, 3, 33, 41)).astype(np.float32)
    exported, expected = graph(ms.Tensor(x)), network(ms.Tensor(x))
    assert len(exported) == 2
    tols = _two_implementations_tol(voc, x)
    for head, got, want in zip(("pred", "proto"), exported, expected):
        assert got.shape == want.shape == (1, 21, 33, 41)
        diff = float(np.abs(got.asnumpy() - want.asnumpy()).max())
        print(f"{head}: MindIR vs Cell {diff:.2e}, float32 tolerance {tols[head]:.2e}")
        assert diff <= tols[head], (head, diff, tols[head])
