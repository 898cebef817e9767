"""Training pipeline: batch layout, lockstep, determinism, sharding, epoch lengths (U2PL B.3) and config errors."""

import random

import numpy as np
import pytest

from ms_semiseg.config import load_config
from ms_semiseg.data.datasets import read_image
from ms_semiseg.data.transforms import build_transform
from ms_semiseg.errors import UserError
from ms_semiseg.engine.pipeline import build_train_pipeline, iterations_per_epoch, u2pl_entries
from ms_semiseg.engine.train_data import check_train_crop, train_data, unlabeled_list_path
from tests.fixtures import make_voc_fixture
from tests.helpers import tiny_config, write_config

CROP = 33
# 3 labeled, 8 unlabeled images of assorted sizes (some smaller than the crop: padding path)
LABELED = [f"2007_00{i:04d}" for i in range(3)]
UNLABELED = [f"2008_00{i:04d}" for i in range(8)]
SIZES = [(40, 52), (30, 45), (37, 37), (50, 28)]


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("voc") / "VOC2012")
    items = [(sample_id, SIZES[i % len(SIZES)]) for i, sample_id in enumerate(LABELED + UNLABELED)]
    return make_voc_fixture(root, items, lists={"labeled": LABELED, "unlabeled": UNLABELED})


def make_cfg(voc, crop=(CROP, CROP), workers=2):
    cfg = tiny_config()
    train = cfg["dataset"]["train"]
    train["data_root"], train["data_list"] = voc["root"], voc["lists"]["labeled"]
    train["crop"]["size"] = list(crop)
    cfg["dataset"]["workers"] = workers
    return cfg


def batches(cfg, seed=2, epoch=0, batch_size=2, **kwargs):
    return list(build_train_pipeline(train_data(cfg), seed, epoch, batch_size, **kwargs))


def rows(batch_list):
    """Per-sample tuples (image_l, label_l, image_u) in iteration order."""
    out = []
    for batch in batch_list:
        for i in range(len(batch["image_l"])):
            out.append((batch["image_l"][i], batch["label_l"][i], batch["image_u"][i]))
    return out


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for a, b in zip(first, second):
        assert sorted(a) == sorted(b)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def find_row(image, candidates):
    hits = [i for i, other in enumerate(candidates) if np.array_equal(image, other)]
    assert len(hits) == 1
    return hits[0]


def test_batch_layout_and_dtypes(voc):
    cfg = make_cfg(voc)
    pipeline = build_train_pipeline(train_data(cfg), 2, 0, 2)
    out = list(pipeline)
    assert len(pipeline) == len(out) == 8 // 2
    for batch in out:
        assert sorted(batch) == ["image_l", "image_u", "label_l"]
        assert batch["image_l"].shape == batch["image_u"].shape == (2, 3, CROP, CROP)
        assert batch["image_l"].dtype == batch["image_u"].dtype == np.float32
        assert batch["label_l"].shape == (2, CROP, CROP) and batch["label_l"].dtype == np.int32
        assert set(np.unique(batch["label_l"])) <= set(range(21)) | {255}
    assert any(255 in batch["label_l"] for batch in out)  # the fixture's object borders survive augmentation


def test_samples_are_the_transform_of_listed_images(voc):
    """Each labeled row equals the U2PL transform of one labeled image under some (image, rng) pairing: check
    via the unaugmented path (no resize/flip, centre crop), where the result is fully determined."""
    cfg = make_cfg(voc)
    train = cfg["dataset"]["train"]
    del train["rand_resize"], train["flip"]
    train["crop"]["type"] = "center"
    transform = build_transform(cfg["dataset"], "train")
    expected = {}
    for sample_id in LABELED + UNLABELED:
        image = read_image(f"{voc['root']}/JPEGImages/{sample_id}.jpg")
        expected[sample_id] = transform(image, voc["labels"][sample_id])
    out = rows(batches(cfg))
    labeled_ids, unlabeled_ids = set(), set()
    for image_l, label_l, image_u in out:
        sid = next(s for s in LABELED if np.array_equal(expected[s][0], image_l))
        np.testing.assert_array_equal(label_l, expected[sid][1].astype(np.int32))
        labeled_ids.add(sid)
        unlabeled_ids.add(next(s for s in UNLABELED if np.array_equal(expected[s][0], image_u)))
    # 8 labeled slots from 3 images (U2PL repeat): every labeled image used; all 8 unlabeled images once
    assert labeled_ids == set(LABELED) and unlabeled_ids == set(UNLABELED)


def test_deterministic_in_seed_and_epoch_whatever_the_worker_count(voc):
    first = batches(make_cfg(voc, workers=2), seed=5, epoch=1)
    assert_same_batches(first, batches(make_cfg(voc, workers=1), seed=5, epoch=1))
    next_epoch = batches(make_cfg(voc), seed=5, epoch=2)
    assert not np.array_equal(first[0]["image_u"], next_epoch[0]["image_u"])
    other_seed = batches(make_cfg(voc), seed=6, epoch=1)
    assert not np.array_equal(first[0]["image_l"], other_seed[0]["image_l"])


def test_resume_inside_an_epoch_replays_the_remaining_batches(voc):
    cfg = make_cfg(voc)
    full = batches(cfg, seed=3, epoch=4)
    pipeline = build_train_pipeline(train_data(cfg), 3, 4, 2, start_iteration=3)
    assert len(pipeline) == 1
    assert_same_batches(full[3:], list(pipeline))


def test_two_ranks_partition_each_global_batch(voc):
    cfg = make_cfg(voc)
    single = batches(cfg, seed=2, epoch=0, batch_size=4)  # global batch 4: 2 iterations
    ranks = [batches(cfg, seed=2, epoch=0, batch_size=2, rank=r, world_size=2) for r in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 2
    for it, global_batch in enumerate(single):
        global_rows = rows([global_batch])
        taken = []
        for rank in range(2):
            for image_l, label_l, image_u in rows([ranks[rank][it]]):
                index = find_row(image_u, [row[2] for row in global_rows])
                np.testing.assert_array_equal(image_l, global_rows[index][0])
                np.testing.assert_array_equal(label_l, global_rows[index][1])
                taken.append(index)
        assert sorted(taken) == [0, 1, 2, 3]  # each sample of the global batch on exactly one rank


def test_supervised_only_epoch_follows_the_labeled_list(voc):
    cfg = make_cfg(voc)
    pipeline = build_train_pipeline(train_data(cfg), 2, 0, 1, semi=False)
    out = list(pipeline)
    assert len(pipeline) == len(out) == 3 == iterations_per_epoch(train_data(cfg), 1, 1, semi=False)
    assert all(sorted(batch) == ["image_l", "label_l"] for batch in out)
    assert iterations_per_epoch(train_data(cfg), 2, 1, semi=False) == 1  # drop_last: 3 // 2


def test_iterations_per_epoch(voc):
    cfg = make_cfg(voc)
    assert iterations_per_epoch(train_data(cfg), 2, 1) == 4
    assert iterations_per_epoch(train_data(cfg), 3, 1) == 2  # 8 // 3, drop_last
    assert iterations_per_epoch(train_data(cfg), 2, 2) == 2
    assert iterations_per_epoch(train_data(cfg), 3, 2) == 1
    with pytest.raises(UserError, match="dataset.batch_size"):
        iterations_per_epoch(train_data(cfg), 5, 2)


def test_u2pl_labeled_repeat_matches_random_sample_with_the_seed():
    labeled = list(range(3))
    entries = u2pl_entries(labeled, 7, seed=2)
    random.seed(2)  # U2PL voc_dset: random.seed(seed); random.sample(list * ceil(7 / 3), 7)
    assert entries == random.sample(labeled * 3, 7)
    counts = np.bincount(entries, minlength=3)
    assert counts.sum() == 7 and counts.max() <= 3 and counts.min() >= 1
    random.seed(2)
    assert u2pl_entries(range(10), 4, seed=2) == random.sample(list(range(10)), 4)  # longer list: subsampled


def test_unlabeled_list_derived_or_configured(voc, tmp_path):
    cfg = make_cfg(voc)
    assert unlabeled_list_path(train_data(cfg)) == voc["lists"]["unlabeled"]
    other = tmp_path / "mine.txt"
    other.write_text("".join(s + "\n" for s in UNLABELED[:4]))
    config_path = write_config(make_cfg(voc), str(tmp_path / "exp"))
    cfg = load_config(config_path, [f"dataset.train.unlabeled_list={other}"])
    assert unlabeled_list_path(train_data(cfg)) == str(other)
    assert iterations_per_epoch(train_data(cfg), 2, 1) == 2
    cfg["dataset"]["train"].pop("unlabeled_list")
    cfg["dataset"]["train"]["data_list"] = str(other)
    with pytest.raises(UserError, match="dataset.train.data_list.*unlabeled_list"):
        unlabeled_list_path(train_data(cfg))


def test_crop_errors(voc):
    with pytest.raises(UserError, match=r"dataset.train.crop.size: \[33, 41\] is not square"):
        build_train_pipeline(train_data(make_cfg(voc, crop=(33, 41))), 2, 0, 2)
    with pytest.raises(UserError, match="dataset.train.crop.size: 17 is smaller than"):
        check_train_crop(make_cfg(voc, crop=(17, 17)))
    no_proto = make_cfg(voc, crop=(33, 41))
    no_proto["net"].pop("proto_head")
    assert check_train_crop(no_proto) == (33, 41)  # non-square is fine without the patch mask
    no_crop = make_cfg(voc)
    no_crop["dataset"]["train"].pop("crop")
    with pytest.raises(UserError, match="dataset.train.crop: missing"):
        check_train_crop(no_crop)


def test_oracle_label_u_is_the_transformed_true_label_and_changes_no_other_column(voc):
    """`label_u` (trainer.unsupervised.oracle_pseudo_labels): the unlabeled image's label under the image's own
    transform (checked on the unaugmented path, as above); the other columns are the same batches as without it."""
    cfg = make_cfg(voc)
    plain = batches(cfg)
    with_labels = batches(cfg, label_u=True)
    assert all(sorted(batch) == ["image_l", "image_u", "label_l", "label_u"] for batch in with_labels)
    assert_same_batches(plain, [{k: v for k, v in batch.items() if k != "label_u"} for batch in with_labels])
    assert "label_u" not in batches(cfg, semi=False, label_u=True)[0]  # no unlabeled stream, no label column
    train = cfg["dataset"]["train"]
    del train["rand_resize"], train["flip"]
    train["crop"]["type"] = "center"
    transform = build_transform(cfg["dataset"], "train")
    expected = {s: transform(read_image(f"{voc['root']}/JPEGImages/{s}.jpg"), voc["labels"][s]) for s in UNLABELED}
    for batch in batches(cfg, label_u=True):
        assert batch["label_u"].dtype == np.int32 and batch["label_u"].shape == (2, CROP, CROP)
        for image_u, label_u in zip(batch["image_u"], batch["label_u"]):
            sid = next(s for s in UNLABELED if np.array_equal(expected[s][0], image_u))
            np.testing.assert_array_equal(label_u, expected[sid][1].astype(np.int32))


def test_partial_oracle_gives_the_first_rows_their_true_labels_and_keeps_the_teachers_for_the_rest():
    from types import SimpleNamespace
    from mindspore import Tensor
    from ms_semiseg.methods.base import TeacherOutputs
    from ms_semiseg.train.trainer import Trainer
    rng = np.random.default_rng(0)
    label_u = rng.integers(0, 5, (5, 4, 4)).astype(np.int32)
    teacher = TeacherOutputs(Tensor(rng.integers(0, 5, (5, 4, 4)).astype(np.int32)),
                             Tensor(rng.random((5, 4, 4)).astype(np.float32)))
    for rows in (2, 5, 0):  # the first `rows` images get the true labels
        out = Trainer._pseudo_labels(SimpleNamespace(plan=SimpleNamespace(oracle_rows=rows)),
                                     {"label_u": label_u}, teacher)
        pseudo, conf = out["pseudo_u"].asnumpy(), out["conf_u"].asnumpy()
        np.testing.assert_array_equal(pseudo[:rows], label_u[:rows])
        np.testing.assert_array_equal(conf[:rows], 1.0)
        np.testing.assert_array_equal(pseudo[rows:], teacher.pseudo_label.asnumpy()[rows:])
        np.testing.assert_array_equal(conf[rows:], teacher.confidence.asnumpy()[rows:])
    out = Trainer._pseudo_labels(SimpleNamespace(plan=SimpleNamespace(oracle_rows=0)), {}, teacher)
    assert out["pseudo_u"] is teacher.pseudo_label  # no labels read: the method itself


def test_oracle_setting_is_validated_by_the_plan(voc):
    from ms_semiseg.train.plan import plan_from_config
    cfg = make_cfg(voc)
    assert plan_from_config(cfg).oracle_pseudo_labels is False  # default: the teacher's pseudo-labels
    cfg["trainer"]["unsupervised"]["oracle_pseudo_labels"] = True
    assert plan_from_config(cfg).oracle_pseudo_labels is True
    batch = cfg["dataset"]["batch_size"]
    assert plan_from_config(cfg).oracle_rows == batch
    cfg["trainer"]["unsupervised"]["oracle_pseudo_labels"] = 1 / batch  # one image of each batch
    assert plan_from_config(cfg).oracle_rows == 1 and plan_from_config(cfg).oracle_pseudo_labels is True
    cfg["trainer"]["unsupervised"]["oracle_pseudo_labels"] = 0.4 / batch  # rounds to none: refused, not ignored
    with pytest.raises(UserError, match=rf"trainer.unsupervised.oracle_pseudo_labels: {0.4 / batch!r} is not "
                                        rf"valid, expected a share that gives at least one of the {batch} unlabeled"):
        plan_from_config(cfg)
    for bad in ("yes", 1.5):
        cfg["trainer"]["unsupervised"]["oracle_pseudo_labels"] = bad
        with pytest.raises(UserError, match=rf"trainer.unsupervised.oracle_pseudo_labels: {bad!r} is not valid, "
                                            r"expected true or false, or the share of each batch's unlabeled "
                                            r"images in \[0, 1\]"):
            plan_from_config(cfg)


# ------------------------------------------------------------------------------------- end-of-epoch checkpoints


def _checkpoint_recorder(monkeypatch, voc, tmp_path, **trainer_keys):
    """A Trainer without models (its epoch loop, validation and file writers replaced by recorders): returns it and
    the list of ('last', epoch, iteration) / ('best', model) / ('plot',) events in order."""
    from types import SimpleNamespace
    from ms_semiseg.train import trainer as trainer_module
    from ms_semiseg.train.plan import plan_from_config
    cfg = make_cfg(voc)
    cfg["trainer"].update(trainer_keys)
    events = []
    trainer = trainer_module.Trainer.__new__(trainer_module.Trainer)
    trainer.plan = plan_from_config(cfg)
    trainer.meta = {"epoch": 0, "iteration": 0, "best_miou": None, "best_epoch": None, "history": []}
    trainer.stop_request, trainer.skipped = None, []
    trainer.files = SimpleNamespace(best=str(tmp_path / "best.ckpt"), last=str(tmp_path / "last.ckpt"),
                                    path=lambda name: str(tmp_path / name))
    trainer.pair, trainer.log = SimpleNamespace(student="student", teacher="teacher"), SimpleNamespace(rows=[])
    trainer.method, trainer.optimizer = SimpleNamespace(checkpoint_arrays=lambda: None), None
    trainer.dist = SimpleNamespace(is_main=True)
    trainer.run_epoch = lambda epoch, start: None
    trainer.validate = lambda epoch: {"miou": [0.3, 0.5, 0.4, 0.6, 0.2][epoch], "proto_miou": None, "model": "x"}
    trainer.summary = lambda: "summary"
    trainer.resume_command = lambda resume: "resume"
    monkeypatch.setattr(trainer_module, "sync_replicas", lambda pair: None)
    monkeypatch.setattr(trainer_module, "dump_rank_parameters", lambda *args: None)
    monkeypatch.setattr(trainer_module, "save_training_state",
                        lambda path, pair, opt, meta, extra: events.append(("last", meta["epoch"], meta["iteration"])))
    monkeypatch.setattr(trainer_module, "save_model", lambda path, model: events.append(("best", model)))
    monkeypatch.setattr(trainer_module, "plot_curves", lambda *args: events.append(("plot",)))
    return trainer, events


def test_save_epoch_interval_thins_out_last_ckpt_best_ckpt_and_curves(monkeypatch, voc, tmp_path):
    # 5 supervised epochs, every 2nd epoch end saves, and the last one; no validation: best.ckpt goes with last.ckpt
    trainer, events = _checkpoint_recorder(monkeypatch, voc, tmp_path, epochs=5, sup_only_epoch=5, eval_on=False,
                                           save_epoch_interval=2)
    assert [trainer.plan.saves_after(e) for e in range(5)] == [False, True, False, True, True]
    trainer.fit()
    saved = [("best", "student"), ("last", None, None), ("plot",)]
    assert events == [event if event[0] != "last" else ("last", epoch, 0)
                      for epoch in (2, 4, 5) for event in saved] + [("plot",)]
    assert [record["epoch"] for record in trainer.meta["history"]] == [1, 2, 3, 4, 5]
    assert trainer.meta["best_epoch"] == 5


def test_with_validation_best_ckpt_still_follows_every_improvement(monkeypatch, voc, tmp_path):
    trainer, events = _checkpoint_recorder(monkeypatch, voc, tmp_path, epochs=5, sup_only_epoch=5,
                                           save_epoch_interval=3)
    assert trainer.plan.eval_on
    trainer.fit()  # mIoU per epoch 0.3, 0.5, 0.4, 0.6, 0.2: improvements at epochs 1, 2, 4
    assert [event[0] for event in events] == ["best", "best", "last", "plot", "best", "last", "plot", "plot"]
    assert [event for event in events if event[0] == "last"] == [("last", 3, 0), ("last", 5, 0)]
    assert (trainer.meta["best_epoch"], trainer.meta["best_miou"]) == (4, 0.6)


@pytest.mark.parametrize("stop_in_epoch", [0, 1])
def test_a_stop_at_an_epoch_end_the_interval_skipped_still_saves_there(monkeypatch, voc, tmp_path, stop_in_epoch):
    import signal
    from ms_semiseg.errors import Interrupted
    from ms_semiseg.train.interrupt import StopRequest
    trainer, events = _checkpoint_recorder(monkeypatch, voc, tmp_path, epochs=5, sup_only_epoch=5, eval_on=False,
                                           save_epoch_interval=2)
    trainer.stop_request = StopRequest()

    def run_epoch(epoch, start):  # SIGTERM arrives during this epoch
        if epoch == stop_in_epoch:
            trainer.stop_request.signum = signal.SIGTERM
    trainer.run_epoch = run_epoch
    with pytest.raises(Interrupted):
        trainer.fit()
    # epoch 1 ends unsaved (interval 2): the stop saves there; epoch 2's end saved already: not written twice
    assert [event for event in events if event[0] == "last"] == [("last", stop_in_epoch + 1, 0)]
    trainer.save_unsaved(stop_in_epoch + 1, 0)  # a later stop at the same position does not write it again
    assert len([event for event in events if event[0] == "last"]) == 1


def test_save_epoch_interval_must_be_a_positive_int(voc):
    from ms_semiseg.train.plan import plan_from_config
    cfg = make_cfg(voc)
    assert plan_from_config(cfg).save_epoch_interval == 1  # default: every epoch end, as U2PL
    for bad in (0, 1.5, "2"):
        cfg["trainer"]["save_epoch_interval"] = bad
        with pytest.raises(UserError, match=rf"trainer.save_epoch_interval: {bad!r} is not valid, expected an int "
                                            r">= 1"):
            plan_from_config(cfg)
