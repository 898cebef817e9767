"""`python -m ms_semiseg train`: supervised warm-up, then U2PL's mean teacher with CutMix and PCR's prototype head.

The method follows the config (`ms_semiseg/methods`: supervised only, mean teacher, PCR or BRPG); the trainer
runs the loop. Per epoch: the iterations (`steps.py` graphs and the method's), validation (center-crop protocol;
the teacher once it exists), `best.ckpt` on improvement and `last.ckpt`. At the first semi-supervised epoch the
method prepares (PCR: prototype initialisation) and the teacher takes the student's weights.

Files, in the work dir (default: `saver.main_dir` relative to the repo root): `<saver.snapshot_dir>/last.ckpt`,
`best.ckpt`, `log.csv` (every step), `curves.png`, `config.yaml` (as run, --opts applied), `prototypes_init.pickle`.
"""
import contextlib
import os
import sys
import time

import mindspore as ms
import numpy as np
from mindspore import Tensor, ops
from tqdm import tqdm

from ..config import load_config
from ..data.transforms import normalize
from ..device import set_device
from ..errors import UserError
from ..eval import IoUAccumulator, center_crop, to_class_map
from ..losses import drop_percent_schedule
from ..methods import build_method
from ..methods.base import SemiInputs, step_graphs
from ..engine.console import say
from ..utils.atomic import cleanup_stale_temps, ensure_writable_dir
from ..utils.lock import FolderLock
from .build import build_pair, copy_parameters, ema_pairs
from ..engine.distributed import (context, dump_rank_parameters, is_main_process, main_process_only,
                          merged_iou, requested_world_size, start as start_data_parallel, sync_replicas)
from ..engine.ema import EMAUpdate, ema_decay
from .interrupt import StopRequest, resume_command
from ..engine.masks import cutmix_boxes, dropout_keep_masks, load_dropout_masks
from ..engine.optim import build_optimizer
from ..engine.pipeline import SkippedSamples, build_train_pipeline
from ..engine.seeds import Stream, stream_rng
from .plan import check_data, plan_from_config, pretrained_path, val_dataset
from .records import RunFiles, StepLog, TrainingDiverged, plot_curves, resume_seed, save_run_config
from ..engine.state import load_training_state, save_model, save_training_state
from ..engine.steps import Predictor, SumBuffers, SupervisedStep, scalar
# re-exported: the names other modules, tests and scripts import from here
from .build import load_pretrained  # noqa: F401
from .plan import DEFAULT_LOG_INTERVAL, GlobalBatch, TrainPlan, global_batch, loss_settings  # noqa: F401
from .records import LOG_COLUMNS, REPO_ROOT  # noqa: F401

DEFAULT_SEED = 2  # U2PL's train.sh


# ----------------------------------------------------------------------------------------------------- trainer


class Trainer:
    """Builds the models, graphs and state of one run and executes it epoch by epoch."""

    def __init__(self, plan, files, seed, pretrained=None, data_root=None, resume=False):
        self.plan, self.files, self.seed, self.data_root = plan, files, seed, data_root
        self.dist = context()
        ms.set_seed(seed)
        self.pair, self.student_drop, self.teacher_drop = build_pair(plan, None if resume else pretrained)
        self.optimizer = build_optimizer(plan.optimizer, self.pair.student.trainable_params(), plan.total_updates,
                                         model_prefix="student.", lr_scale=plan.batch.lr_scale)
        criterion = plan.criterion
        self.method = build_method(plan, seed, self.pair.student)  # supervised, mean teacher, PCR or BRPG
        sums = self._accumulation_buffers()
        self.graphs = {"student eval": Predictor(self.pair.student)}
        self.graphs.update(step_graphs("supervised step", lambda **kw: SupervisedStep(
            self.pair, self.optimizer, criterion, plan.losses, grad_sums=sums["grads"], **kw), plan.accumulation))
        if self.method.semi:
            ema = EMAUpdate(*ema_pairs(self.pair))
            self.graphs.update(self.method.graphs(self.pair, self.optimizer, criterion, ema, sums))
            self.graphs["teacher eval"] = Predictor(self.pair.teacher)
        self.compiled = {name: 0 for name in self.graphs}
        self.meta = {"epoch": 0, "iteration": 0, "seed": seed, "best_miou": None, "best_epoch": None,
                     "history": [], "total_steps": plan.total_steps, "iterations_per_epoch": plan.iterations,
                     "grad_accumulation": plan.accumulation}
        if resume:
            self._resume()
        self.log = StepLog(files.path("log.csv"), plan.log_interval, self.global_step(*self.position))
        self.skipped = SkippedSamples(self.meta.get("skipped_images", ()))  # dataset.on_bad_image: skip
        self.stop_request, self.resume_command = None, None  # set by `run`: SIGINT/SIGTERM (interrupt.py)

    def _accumulation_buffers(self):
        """SumBuffers shared by the accumulate and update graphs (trainer.grad_accumulation > 1), else Nones."""
        if self.plan.accumulation == 1:
            return {"grads": None, "stats": None}
        grads = SumBuffers([p.shape for p in self.optimizer.parameters], "grad_sum", 1.0 / self.plan.accumulation)
        shapes = self.method.stat_shapes(self.pair)  # PCR: the prototype sums and counts
        return {"grads": grads, "stats": None if shapes is None else SumBuffers(shapes, "proto_stat_sum")}

    def _step_graph(self, name, iteration):
        return name if self.plan.applies_update(iteration) else f"{name} (accumulate)"

    # -------------------------------------------------------------------------------------- state and records

    @property
    def position(self):
        return self.meta["epoch"], self.meta["iteration"]

    def global_step(self, epoch, iteration):
        return epoch * self.plan.iterations + iteration

    def _resume(self):
        if not os.path.isfile(self.files.last):
            raise UserError(f"{self.files.last}: no checkpoint to resume from, expected a previous run in "
                            f"{self.files.work_dir} (or drop --resume)")
        load_extra = None if not self.method.has_state else (lambda arrays: self.method.load_checkpoint_arrays(
            arrays, self.files.last))
        meta = load_training_state(self.files.last, self.pair, self.optimizer, load_extra)
        for key in ("total_steps", "iterations_per_epoch", "seed", "grad_accumulation"):
            stored = meta.get(key, 1 if key == "grad_accumulation" else None)  # older checkpoints: no accumulation
            if stored != self.meta[key]:
                raise UserError(f"{self.files.last}: the run used {key}={stored}, this config/seed gives "
                                f"{self.meta[key]}, expected the same trainer.epochs, dataset.batch_size, "
                                "trainer.grad_accumulation, splits and --seed")
        self.meta.update(meta)
        say(f"resumed from {self.files.last} at epoch {self.meta['epoch'] + 1}, iteration "
            f"{self.meta['iteration']} (global step {self.global_step(*self.position)})")

    def save_checkpoint(self, epoch, iteration):
        self.meta.update(epoch=epoch, iteration=iteration)
        if len(self.skipped):
            self.meta["skipped_images"] = list(self.skipped.messages.values())
        sync_replicas(self.pair)  # collective: every rank gets here
        extra = self.method.checkpoint_arrays()
        if self.dist.is_main:
            save_training_state(self.files.last, self.pair, self.optimizer, self.meta, extra)

    def save_unsaved(self, epoch, iteration):
        """On a stop: last.ckpt at this position unless it already holds it (also an epoch end that
        trainer.save_epoch_interval skipped). `position` is what last.ckpt holds (a new run: the start)."""
        if self.position != (epoch, iteration):
            self.save_checkpoint(epoch, iteration)

    def _on_bad_loss(self, info, value):
        names = ("total", "sup", "unsup", "proto")
        bad = ", ".join(f"{n}={v}" for n, v in zip(names, value) if not np.isfinite(v))
        kept = (f"{self.files.last} ({self.global_step(*self.position)} iterations done)"
                if os.path.isfile(self.files.last) else "none (no checkpoint was written yet)")
        raise TrainingDiverged(f"loss is not finite at epoch {info['epoch']}, iteration {info['iteration']} (global "
                               f"step {info['step']}): {bad}; training stopped. Last good checkpoint: {kept}. "
                               "Expected finite losses: lower trainer.optimizer.kwargs.lr or check the data")

    # ------------------------------------------------------------------------------------------------ graphs

    def _call(self, name, *args):
        """Runs graph `name`, reporting the first call (compilation) and any later recompilation."""
        graph = self.graphs[name]
        start = time.perf_counter()
        result = graph.run(*args)
        count = len(graph.compile_cache)
        if count != self.compiled[name]:
            kind = "compiled" if self.compiled[name] == 0 else "RECOMPILED (unexpected: an input shape changed)"
            say(f"{kind} the {name} graph in {time.perf_counter() - start:.1f} s")
            self.compiled[name] = count
        return result

    def graph_count(self):
        return sum(self.compiled.values())

    # ----------------------------------------------------------------------------------------------- phases

    def begin_semi_phase(self):
        """The method's preparation (PCR: prototype initialisation, spec C.1), then teacher := student, before the
        first semi-supervised step."""
        self.method.begin_semi_phase(self)
        copy_parameters(*ema_pairs(self.pair))
        say("teacher initialised from the student; semi-supervised training starts")

    # --------------------------------------------------------------------------------------------- iterations

    def _load_dropout_masks(self, epoch, iteration):
        for cells, stream in ((self.student_drop, Stream.STUDENT_DROPOUT), (self.teacher_drop, Stream.TEACHER_DROPOUT)):
            load_dropout_masks(cells, dropout_keep_masks(stream_rng(stream, self.seed, epoch, iteration), cells,
                                                         self.dist.row_shard(self.plan.batch_size)))

    def supervised_iteration(self, batch, epoch, iteration):
        self._load_dropout_masks(epoch, iteration)
        return self._call(self._step_graph("supervised step", iteration), Tensor(batch["image_l"]),
                          Tensor(batch["label_l"]))

    def semi_iteration(self, batch, epoch, iteration):
        plan = self.plan
        extra = self.method.step_inputs(epoch, iteration)  # PCR's patch pixels; BRPG clusters when due
        image_u = Tensor(batch["image_u"])
        teacher = self._call("teacher pseudo-labels", image_u)  # a TeacherOutputs (BRPG: with its features)
        height, width = plan.crop
        boxes = np.zeros((plan.batch_size, 4), np.int32)
        if plan.cutmix:
            boxes = cutmix_boxes(stream_rng(Stream.CUTMIX, self.seed, epoch, iteration),
                                 plan.batch_size * self.dist.world_size, height, width)[self.dist.local_rows(plan.batch_size)]
        # the teacher ramp counts updates (U2PL counts iterations: one update each)
        decay = ema_decay(self.global_step(epoch, iteration) // plan.accumulation,
                          plan.warmup_steps // plan.accumulation, plan.ema_decay)
        self._load_dropout_masks(epoch, iteration)
        inputs = SemiInputs(
            image_l=Tensor(batch["image_l"]), label_l=Tensor(batch["label_l"]),
            # the student (and the teacher's entropy forward) get the strong view when the pipeline makes one
            image_u=Tensor(batch["image_u_strong"]) if "image_u_strong" in batch else image_u,
            **self._pseudo_labels(batch, teacher), boxes=Tensor(boxes),
            drop_percent=scalar(drop_percent_schedule(plan.drop_percent, epoch, plan.epochs)), ema_decay=scalar(decay),
            extra=extra)
        outputs = self._call(self._step_graph("semi step", iteration), *inputs.arguments())
        return self.method.after_step(outputs, teacher, batch["label_l"], epoch, iteration)  # BRPG's CPG sampling

    def _pseudo_labels(self, batch, teacher):
        """The teacher's pseudo-labels and confidences; with trainer.unsupervised.oracle_pseudo_labels (a
        diagnostic, docs/demo.md) the true labels at confidence 1 instead, for the batch's first `oracle_rows`
        unlabeled images."""
        rows = self.plan.oracle_rows
        if rows == 0:
            return {"pseudo_u": teacher.pseudo_label, "conf_u": teacher.confidence}
        true, ones = Tensor(batch["label_u"][:rows]), ops.ones_like(teacher.confidence[:rows])
        if rows == len(batch["label_u"]):
            return {"pseudo_u": true, "conf_u": ones}
        return {"pseudo_u": ops.concat((true, teacher.pseudo_label[rows:])),
                "conf_u": ops.concat((ones, teacher.confidence[rows:]))}

    def _lrs(self, step):
        plan = self.plan
        return plan.optimizer.lrs_at(step // plan.accumulation, plan.total_updates, plan.batch.lr_scale)

    def run_epoch(self, epoch, start_iteration):
        plan = self.plan
        semi = plan.is_semi_epoch(epoch)
        if semi and epoch == plan.sup_only_epoch and start_iteration == 0:
            self.begin_semi_phase()
        pipeline = build_train_pipeline(plan.data, self.seed, epoch, plan.batch_size, self.dist.rank,
                                        self.dist.world_size, semi=plan.semi,
                                        start_iteration=start_iteration, data_root=self.data_root,
                                        iterations=plan.iterations, skipped=self.skipped,
                                        label_u=plan.oracle_pseudo_labels)
        images_per_step = plan.batch_size * self.dist.world_size * (2 if semi else 1)
        phase = "semi" if semi else "supervised"
        bar = tqdm(total=plan.iterations, initial=start_iteration, desc=f"epoch {epoch + 1}/{plan.epochs} {phase}",
                   dynamic_ncols=True, file=sys.stderr, leave=True, disable=not self.dist.is_main)
        run_iteration = self.semi_iteration if semi else self.supervised_iteration
        try:  # the bar is closed before any error message is printed
            for iteration, batch in enumerate(pipeline, start=start_iteration):
                if self.stop_request and iteration % plan.accumulation == 0:  # SIGINT/SIGTERM, between updates
                    self._show(bar, self.log.flush(self._on_bad_loss, images_per_step))
                    self.save_unsaved(epoch, iteration)
                    raise self._interrupted(epoch, iteration)
                step = self.global_step(epoch, iteration)
                losses = run_iteration(batch, epoch, iteration)
                lr, lr_decoder = self._lrs(step)
                info = {"epoch": epoch + 1, "iteration": iteration + 1, "step": step, "phase": phase,
                        "lr": f"{lr:.6g}", "lr_decoder": f"{lr_decoder:.6g}", "graphs": self.graph_count(),
                        "time_s": round(time.time(), 3)}
                if self.log.add(info, losses) or self._mid_epoch_save_due(iteration):
                    self._show(bar, self.log.flush(self._on_bad_loss, images_per_step))
                if self._mid_epoch_save_due(iteration):
                    self.save_checkpoint(epoch, iteration + 1)  # after the flush: only finite losses get saved
                bar.update(1)
            self._show(bar, self.log.flush(self._on_bad_loss, images_per_step))
        finally:
            bar.close()

    def _interrupted(self, epoch, iteration):
        where = f"at epoch {epoch + 1}, iteration {iteration} (global step {self.global_step(epoch, iteration)})"
        kept = (f"{self.files.last} holds the last complete state ({self.global_step(*self.position)} iterations "
                "done)") if os.path.isfile(self.files.last) else None
        return self.stop_request.interrupted(where, kept, self.resume_command)

    def _mid_epoch_save_due(self, iteration):
        interval = self.plan.save_interval  # only between updates: accumulated gradients are not saved
        return (interval > 0 and (iteration + 1) % interval == 0 and iteration + 1 < self.plan.iterations
                and self.plan.applies_update(iteration))

    @staticmethod
    def _show(bar, row):
        if row is not None:
            parts = {k: f"{row[k]:.3f}" for k in ("loss", "sup", "unsup", "proto") if row[k]}
            bar.set_postfix(parts, lr=row["lr"], img_s=f"{row['images_per_s']:.2f}", refresh=False)

    # --------------------------------------------------------------------------------------------- validation

    def validate(self, epoch):
        """Center-crop mIoU of the teacher (semi epochs) or the student: {'miou', 'proto_miou' or None}."""
        num_classes = self.plan.num_classes
        dataset = val_dataset(self.plan.data, self.data_root)
        crop = self.plan.val_crop or self.plan.crop
        graph = "teacher eval" if self.plan.is_semi_epoch(epoch) else "student eval"
        meters = {"pred": IoUAccumulator(num_classes), "proto": IoUAccumulator(num_classes)}

        def predict(batch):
            pred, proto = self._call(graph, Tensor(batch))
            heads = {"pred": pred.asnumpy()}
            if proto is not None:
                heads["proto"] = proto.asnumpy()
            return heads

        mean, std = self.plan.data.mean, self.plan.data.std
        for index in self.dist.shard(len(dataset)):
            image, label, _ = dataset[index]
            logits, cropped = center_crop(predict, normalize(image, mean, std), label, crop)
            for head, meter in meters.items():
                if head in logits:
                    meter.update(to_class_map(logits[head]), cropped)
        meters = {head: merged_iou(meter) for head, meter in meters.items()}  # all ranks' images
        has_proto = self.method.proto_head and self.plan.is_semi_epoch(epoch)
        return {"miou": meters["pred"].miou(), "proto_miou": meters["proto"].miou() if has_proto else None,
                "model": "teacher" if self.plan.is_semi_epoch(epoch) else "student"}

    # ------------------------------------------------------------------------------------------------- loop

    def end_epoch(self, epoch):
        record = {"epoch": epoch + 1}
        sync_replicas(self.pair)  # every rank validates and saves the same model
        model_name = "teacher" if self.plan.is_semi_epoch(epoch) else "student"
        if self.plan.eval_on:
            record.update(self.validate(epoch))
            proto = f", prototype head {100 * record['proto_miou']:.2f}" if record["proto_miou"] is not None else ""
            say(f"epoch {epoch + 1}: validation mIoU ({record['model']}, center crop) {100 * record['miou']:.2f}"
                f"{proto}")
        # Short epochs (the demo's baseline: 5 iterations) would spend more time writing 150 MB of checkpoints and
        # redrawing curves.png than training: trainer.save_epoch_interval thins out those writes (docs/demo.md).
        due = self.plan.saves_after(epoch)  # a stop request saves in `fit`
        if self.plan.eval_on:  # best.ckpt on improvement: the best model is not kept anywhere else
            improved = self.meta["best_miou"] is None or record["miou"] > self.meta["best_miou"]
        else:  # no validation: best.ckpt is the newest model, written with last.ckpt
            improved = due
        if improved:
            main_process_only(save_model)(self.files.best, getattr(self.pair, model_name))
            self.meta.update(best_miou=record.get("miou"), best_epoch=epoch + 1)
        self.meta["history"].append(record)
        if due:
            self.save_checkpoint(epoch + 1, 0)
            plot_curves(self.files.path("curves.png"), self.log.rows, self.meta["history"])

    def fit(self):
        epoch, iteration = self.position
        if epoch >= self.plan.epochs:
            say("the run had already finished")
        while epoch < self.plan.epochs:
            self.run_epoch(epoch, iteration)
            self.end_epoch(epoch)
            epoch, iteration = epoch + 1, 0
            if self.stop_request and epoch < self.plan.epochs:
                self.save_unsaved(epoch, iteration)
                raise self._interrupted(epoch, iteration)
        plot_curves(self.files.path("curves.png"), self.log.rows, self.meta["history"])
        dump_rank_parameters(self.pair, self.method.checkpoint_arrays())  # debug aid
        return self.summary()

    def summary(self):
        lines = self.files.summary(self.meta["best_miou"], self.meta["best_epoch"])
        return "\n".join(lines + self.method.summary_lines(self.files) + self.skipped.summary())


# --------------------------------------------------------------------------------------------------------- CLI


def add_arguments(parser):
    parser.add_argument("--config", required=True, help="experiment config.yaml (upstream U2PL/PCR schema)")
    parser.add_argument("--work-dir", help="output folder (default: saver.main_dir relative to the repo root)")
    parser.add_argument("--pretrained", help="ImageNet backbone .ckpt (convert pth2ckpt) or a segmentor .ckpt to "
                                             "start from (default: saver.pretrain when set)")
    parser.add_argument("--resume", action="store_true", help="continue from <work dir>/checkpoints/last.ckpt")
    parser.add_argument("--device", help="CPU, GPU or Ascend (default: GPU when usable, else CPU)")
    parser.add_argument("--seed", type=int, default=None, help=f"random seed (default {DEFAULT_SEED}; a resumed run "
                                                               "keeps its own)")
    parser.add_argument("--data-root", help="override dataset.train.data_root and dataset.val.data_root")
    parser.add_argument("--opts", nargs="*", default=[], help="config overrides key=value, e.g. trainer.epochs=1")
    parser.add_argument("--distributed", action="store_true",
                        help="data-parallel over the workers of `msrun` (see docs/distributed.md; NPROC=N train.sh)")


def run(args):
    cfg = load_config(args.config, args.opts)
    world_size = requested_world_size(args.distributed)
    plan = plan_from_config(cfg, world_size)  # every setting validated here, with the method's own
    files = RunFiles.from_config(cfg, args.work_dir)
    lock = FolderLock(files.work_dir, "work folder", " (--work-dir)")
    lock.check()  # a run in progress: say so at once (taken below, once the device is up)
    resume = args.resume or (plan.auto_resume and os.path.isfile(files.last))
    if not resume and os.path.isfile(files.last):
        raise UserError(f"{files.last}: a previous run is there, expected --resume to continue it or another "
                        "--work-dir (delete the folder to start over)")
    seed = resume_seed(files, args.seed) if resume else (DEFAULT_SEED if args.seed is None else args.seed)
    pretrained = pretrained_path(args, cfg)
    data_root = os.path.abspath(args.data_root) if args.data_root else None  # relative to where the user is
    check_data(plan, data_root)
    # msrun's scheduler process runs this command too: it joins the cluster before any file is touched
    device = start_data_parallel(args.device, world_size).device if args.distributed else set_device(args.device)
    if not is_main_process():  # rank 0 holds the lock for all ranks
        return _train(args, cfg, plan, files, seed, pretrained, data_root, resume, device, world_size)
    with lock:  # released on any exit; a killed run leaves a stale lock that the next run takes over
        return _train(args, cfg, plan, files, seed, pretrained, data_root, resume, device, world_size)


def _train(args, cfg, plan, files, seed, pretrained, data_root, resume, device, world_size):
    ensure_writable_dir(files.checkpoint_dir, "checkpoint folder")
    if is_main_process():  # another rank could delete rank 0's temporary files while it writes them
        cleanup_stale_temps(files.checkpoint_dir)
        cleanup_stale_temps(files.work_dir)
    ms.set_context(mode=ms.GRAPH_MODE)
    save_run_config(cfg, files)
    devices = f" x {world_size} devices" if world_size > 1 else ""
    say(f"{plan.method.title} on {device}: {plan.epochs} epochs x {plan.iterations} iterations, "
        f"batch {plan.batch_size}{devices}, crop {plan.crop[0]}x{plan.crop[1]}, seed {seed} -> {files.work_dir}")
    say(plan.batch.describe(plan.semi, plan.optimizer.lr))
    if not pretrained and not resume:
        say("note: no --pretrained backbone (nor saver.pretrain): the encoder starts from random weights; U2PL/PCR "
            "start from ImageNet (convert one with `python -m convert pth2ckpt`)")
    trainer = Trainer(plan, files, seed, pretrained, data_root, resume)
    trainer.resume_command = lambda again: resume_command(args, files.work_dir, again)
    # data parallel: the ranks could see a signal between different steps, so they keep the default handlers
    with StopRequest() if world_size == 1 else contextlib.nullcontext() as trainer.stop_request:
        summary = trainer.fit()
    if is_main_process():
        print(summary)
    return 0
