"""Global batch on fewer devices (issue 9): gradient accumulation equals the larger batch, LR scaling, the printed
global batch, and a PCR run with accumulation end to end."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from helpers import assert_user_error, run_module, write_config
from ms_semiseg.errors import UserError
from ms_semiseg.losses import build_criterion
from ms_semiseg.models.layers import conv2d
from ms_semiseg.engine import optim, steps
from ms_semiseg.train.trainer import global_batch

ms.set_device("CPU")



class NoNormSegmentor(nn.Cell):
    """Per-image computation only (no BatchNorm, no dropout): a batch of 8 and four micro-batches of 2 see the
    same gradient, so accumulation must reproduce the large batch exactly."""

    def __init__(self, num_classes=3, dim=6):
        super().__init__()
        self.encoder = nn.SequentialCell([conv2d(3, dim, 3, 2, 1), nn.ReLU()])
        self.decoder = nn.SequentialCell([conv2d(dim, dim, 3, 1, 1, bias=True), nn.ReLU(),
                                          conv2d(dim, num_classes, 1, bias=True)])

    def construct(self, x):
        return self.decoder(self.encoder(x)), None, None, None


def make_pair(seed):
    ms.set_seed(seed)
    return steps.MeanTeacherPair(NoNormSegmentor())


def sgd(pair, updates):
    return optim.build_sgd(pair.student.trainable_params(), 0.05, updates, momentum=0.9, weight_decay=1e-3,
                           power=0.9, decoder_times=10, model_prefix="student.")


def weights(pair):
    return {p.name: p.asnumpy().copy() for p in pair.student.trainable_params()}


@pytest.mark.numeric
def test_accumulated_micro_batches_equal_one_larger_batch(graph_mode):
    """4 micro-batches of 2 per update, 3 updates == batch 8 for 3 updates: weights to 1e-5 (momentum, weight
    decay, the decoder's 10x LR and the poly schedule indexed by updates, not micro-batches)."""
    accumulation, micro, updates = 4, 2, 3
    rng = np.random.default_rng(0)
    images = rng.standard_normal((updates, accumulation * micro, 3, 12, 12)).astype(np.float32)
    labels = rng.integers(0, 3, (updates, accumulation * micro, 12, 12)).astype(np.int32)
    criterion = build_criterion({"type": "CELoss"})  # every pixel labeled: the batch mean is the micro means' mean
    settings = steps.LossSettings(aux_weight=0.0)

    large = make_pair(7)
    large_opt = sgd(large, updates)
    large_step = steps.SupervisedStep(large, large_opt, criterion, settings)
    small = make_pair(7)
    assert all(np.array_equal(a, b) for a, b in zip(weights(large).values(), weights(small).values()))
    small_opt = sgd(small, updates)
    sums = steps.SumBuffers([p.shape for p in small_opt.parameters], "grad_sum", 1.0 / accumulation)
    update = steps.SupervisedStep(small, small_opt, criterion, settings, grad_sums=sums)
    accumulate = steps.SupervisedStep(small, small_opt, criterion, settings, grad_sums=sums, apply_update=False)

    before = weights(small)
    for u in range(updates):
        large_step.run(Tensor(images[u]), Tensor(labels[u]))
        for k in range(accumulation):
            rows = slice(k * micro, (k + 1) * micro)
            graph = update if k == accumulation - 1 else accumulate
            graph.run(Tensor(images[u, rows]), Tensor(labels[u, rows]))
            if u == 0 and k == 0:  # an accumulate call changes no weight
                assert all(np.array_equal(before[n], v) for n, v in weights(small).items())
    ours, expected = weights(small), weights(large)
    moved = max(np.abs(expected[n] - before[n]).max() for n in expected)
    assert moved > 1e-2  # the comparison is not between unchanged weights
    worst = max(np.abs(ours[n] - expected[n]).max() for n in expected)
    print(f"accumulated vs large batch: max|diff| {worst:.2e}, weights moved {moved:.2e}")
    for name in expected:  # ~100 float32 ulps at the weights' scale (<= 1), 1e-4 of how far they moved; the two
        # sums of the same gradients in another order measured 1.5e-8 (oneDNN AVX2) and 7.5e-9 (AVX) apart
        np.testing.assert_allclose(ours[name], expected[name], rtol=0, atol=1e-5, err_msg=name)
    assert int(small_opt.global_step.asnumpy().reshape(-1)[0]) == updates  # the LR schedule advanced per update
    assert all(np.all(buffer.asnumpy() == 0) for buffer in sums.buffers)  # emptied by every update
    assert len(update.compile_cache) == 1 and len(accumulate.compile_cache) == 1


@pytest.mark.numeric
def test_sum_buffers_add_then_take_and_empty(graph_mode):
    class Probe(nn.Cell):
        def __init__(self, buffers, take):
            super().__init__()
            self.sums, self.take = buffers, take

        def construct(self, a, b):
            return self.sums.take((a, b)) if self.take else self.sums.add((a, b))

    buffers = steps.SumBuffers([(2, 3), (2,)], "probe", scale=0.5)
    add, take = Probe(buffers, False), Probe(buffers, True)
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1.0, -2.0], np.float32)
    add(Tensor(a), Tensor(b))
    add(Tensor(2 * a), Tensor(b))
    total_a, total_b = take(Tensor(a), Tensor(b))
    np.testing.assert_allclose(total_a.asnumpy(), 0.5 * (a + 2 * a + a))
    np.testing.assert_allclose(total_b.asnumpy(), 0.5 * 3 * b)
    assert all(np.all(buffer.asnumpy() == 0) for buffer in buffers.buffers)


# ---------------------------------------------------------------------------------------------- settings


def batch_cfg(**trainer):
    return {"trainer": trainer}


def test_global_batch_and_linear_lr_scaling():
    batch = global_batch(batch_cfg(base_batch_size=16, lr_scaling="linear", grad_accumulation=2), 2, 1)
    assert batch.size == 4 and batch.lr_scale == pytest.approx(0.25)
    text = batch.describe(True, 0.001)
    assert "global batch 4 labeled + 4 unlabeled" in text and "0.001 x 4/16 = 0.00025" in text
    kept = global_batch(batch_cfg(base_batch_size=16), 2, 1)
    assert kept.lr_scale == 1.0 and "trainer.lr_scaling=linear" in kept.describe(False, 0.001)
    assert global_batch(batch_cfg(base_batch_size=16, grad_accumulation=8), 2, 1).size == 16
    assert global_batch(batch_cfg(), 2, 8).lr_scale == 1.0  # default: published configs stay exact


@pytest.mark.parametrize("trainer, fragment", [
    ({"lr_scaling": "sqrt", "base_batch_size": 16}, "trainer.lr_scaling: 'sqrt'"),
    ({"lr_scaling": "linear"}, "needs trainer.base_batch_size"),
    ({"grad_accumulation": 0}, "trainer.grad_accumulation: 0"),
    ({"base_batch_size": 2.5}, "trainer.base_batch_size: 2.5")])
def test_bad_global_batch_settings_name_the_key(trainer, fragment):
    with pytest.raises(UserError, match=fragment.replace(".", r"\.").replace("(", r"\(")):
        global_batch(batch_cfg(**trainer), 2, 1)


# ------------------------------------------------------------------------------------------ end to end


def test_pcr_run_with_accumulation_prints_the_global_batch_and_counts_updates(tmp_path):
    """The tiny PCR config of test_train (6 unlabeled images, batch 2: 3 micro-batches per epoch) with 2
    accumulated micro-batches per update: 1 update per epoch (the third micro-batch would start an incomplete
    update and is dropped), 3 epochs = 3 updates, each graph compiled once."""
    from test_train import EPOCHS, load_params, make_tiny_config, read_log
    config, _ = make_tiny_config(tmp_path)
    work = tmp_path / "work"
    result = run_module("ms_semiseg", "train", "--config", config, "--device", "CPU", "--work-dir", work, "--opts",
                        "trainer.grad_accumulation=2", "trainer.base_batch_size=8", "trainer.lr_scaling=linear",
                        "trainer.save_interval=0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "global batch 4 labeled + 4 unlabeled images per update (2 per device x 2 accumulated micro-batches)" \
        in result.stderr and "0.01 x 4/8 = 0.005" in result.stderr
    assert "RECOMPILED" not in result.stderr
    for graph in ("supervised step", "supervised step (accumulate)", "semi step", "semi step (accumulate)"):
        assert f"compiled the {graph} graph" in result.stderr
    state = load_params(work / "checkpoints" / "last.ckpt")
    assert int(np.asarray(state["optimizer.global_step"]).reshape(-1)[0]) == EPOCHS  # one update per epoch
    rows = read_log(work)
    assert [int(r["iteration"]) for r in rows] == [1, 2] * EPOCHS
    assert [float(r["lr"]) for r in rows[:2]] == [0.005] * 2  # the lr moves per update, scaled by 4/8
    assert float(rows[2]["lr"]) < 0.005


def test_brpg_with_accumulation_is_a_clear_error(tmp_path):
    from test_train import make_tiny_config
    _, cfg = make_tiny_config(tmp_path)
    cfg["trainer"].update(prototype={"sample_delay": 1}, grad_accumulation=2)
    del cfg["net"]["proto_head"]
    result = run_module("ms_semiseg", "train", "--config", write_config(cfg, str(tmp_path), "brpg.yaml"), "--device",
                        "CPU", "--work-dir", tmp_path / "work")
    assert_user_error(result, "trainer.grad_accumulation: 2", "BRPG")
