"""PCR: the mean teacher plus the prototype head (`net.proto_head`). What it adds to `mean_teacher.py`:
- the step's prototype loss on one pixel per patch and the prototype momentum update (`step.py` `PCRStep`, which
  lists the whole step top to bottom), summed over the micro-batches of an update with gradient accumulation;
- the patch pixels of each step (`engine/masks.py` `patch_select_coords`, its own seed stream);
- the prototypes' initialisation before the first semi-supervised step (`proto_init.py`: k-means on the
  student's features, or `net.proto_head.init_proto_path`), written to `prototypes_init.pickle`;
- the prototype head's validation mIoU next to the linear head's.
"""
import os
import time

import mindspore as ms
import numpy as np
from mindspore import Tensor

from ...engine.distributed import broadcast_array, main_process_only
from ...engine.masks import patch_select_coords
from ...engine.seeds import Stream, stream_rng
from ...engine.console import say
from ..mean_teacher import MeanTeacher
from .proto_init import init_prototypes, load_proto_pickle, save_proto_pickle
from .step import PCRStep

PROTOTYPES_FILE = "prototypes_init.pickle"


class PCR(MeanTeacher):
    title = "mean teacher + prototypes (PCR)"
    proto_head = True

    def stat_shapes(self, pair):
        bank = pair.student.proto_net.proto_list
        return [bank.shape, bank.shape[:1]]  # the prototype sums and counts

    def semi_step(self, pair, optimizer, criterion, ema, sums, **kw):
        return PCRStep(pair, optimizer, criterion, self.plan.losses, ema, sums["grads"], sums["stats"], **kw)

    def step_inputs(self, epoch, iteration):
        """The step's patch pixels (`PCRStep`'s `extra`)."""
        coords = patch_select_coords(stream_rng(Stream.PATCH_SELECT, self.seed, epoch, iteration), self.plan.crop[0],
                                     self.plan.granularity)
        return ms.mutable((Tensor(coords),))

    def begin_semi_phase(self, trainer):
        """Prototype initialisation (spec C.1), before teacher := student."""
        pair, proto = trainer.pair, self.plan.proto
        source = proto.init_path
        if source and os.path.isfile(source):
            bank = load_proto_pickle(source, proto.num_classes, proto.k, proto.dim)
            say(f"prototypes loaded from {source}")
        else:
            if source:
                say(f"net.proto_head.init_proto_path {source} not found: initialising by k-means instead")
            start = time.perf_counter()
            # images of varying sizes: eager mode, a graph per image size would recompile for every shape
            ms.set_context(mode=ms.PYNATIVE_MODE)
            try:
                bank, counts = init_prototypes(pair.student, self.plan.data, proto, self.seed,
                                               data_root=trainer.data_root, skipped=trainer.skipped)
            finally:
                ms.set_context(mode=ms.GRAPH_MODE)
                pair.restore_names()
            say(f"prototypes: k-means (K={proto.k}) on student features of {sum(counts.values())} labeled pixels "
                f"({time.perf_counter() - start:.0f} s)")
        bank = broadcast_array(bank)  # data parallel: rank 0's k-means result on every rank
        main_process_only(save_proto_pickle)(trainer.files.path(PROTOTYPES_FILE), bank, proto.num_classes, proto.k)
        pair.student.proto_net.proto_list.set_data(ms.Tensor(np.asarray(bank, np.float32)))

    def summary_lines(self, files):
        return [f"  prototypes:  {files.path(PROTOTYPES_FILE)} (initial bank)"]
