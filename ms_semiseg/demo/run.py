"""`python -m ms_semiseg demo`: the bundled CPU demo end to end (the README's `bash scripts/demo.sh`).

Steps: generate the demo dataset (`ms_semiseg.demo.make_data`: 1000 images of 128x128, 5 classes, 25 labeled =
1/32 of the 800 train images, 775 unlabeled, 200 val; `--data-seed` picks another generated dataset); train the
supervised-only baseline and PCR (and, with `--methods`, the mean teacher without prototypes and BRPG) with the
configs of experiments/demo/{suponly,meanteacher,ours,brpg}/ for the same number of iterations (the baseline's epochs are derived from
PCR's iterations); evaluate each with `ms_semiseg eval` (VOC whole-image protocol); draw a prediction grid; print
a table and the path of every output. The last line is `demo: suponly=<mIoU> pcr=<mIoU> brpg=<mIoU or n/a>`
(linear head, percent).

Work already done is reused: the dataset when its meta.json matches, a training run when its config (with every
override) and seed match (an interrupted run is resumed), an evaluation when its checkpoint is unchanged. `--fresh`
redoes everything. The mean teacher and BRPG are optional: when one cannot run, its row says n/a and why.
`--long` trains every method 1550 iterations instead of 620 (where PCR's gain shows on the tuning data,
docs/demo.md); `--quick` is a one-minute smoke test.
"""
import json
import os
import time
from pathlib import Path

from ..errors import UserError
from .make_data import DEFAULT_LABELED_FRACTION, fraction
from .report import budget_note, last_line, print_report, output_paths, summary_payload, write_figure
from .runs import Result, left_out_reason, remove_tree, run_method
from .specs import BASELINE, DEFAULT_METHODS, METHOD_KEYS, METHODS, REPO_ROOT, build_specs

DEFAULT_DATA_DIR = "data/demo"
DEFAULT_OUT_DIR = "outputs/demo"
QUICK_OUT_DIR = "outputs/demo_quick"  # --quick keeps its tiny dataset in <out-dir>/data
LONG_OUT_DIR = "outputs/demo_long"
DEFAULT_SEED = 0
DATA_SEED = 0  # the bundled dataset; --seed varies the training runs only, --data-seed the generated dataset
SUMMARY_NAME = "summary.json"

# --quick: a smoke test of every step in about a minute of training (tests/test_demo.py); numbers mean nothing.
QUICK_DATA = {"num_images": 16, "size": 48, "num_val": 4, "labeled_fraction": 1 / 3}
QUICK_OPTS = {"all": ["trainer.epochs=3", "dataset.batch_size=4", "dataset.train.crop.size=[32,32]", "dataset.val.crop.size=[48,48]",
                      "dataset.workers=1"],
              "ours": ["net.proto_head.select_granularity=8"],
              "brpg": ["trainer.prototype.sample_pixel_num=50", "trainer.prototype.unsup_sample_num=20",
                       "trainer.prototype.queue_len=500", "trainer.prototype.grid_num=8"]}
# --long: the run length at which PCR's gain over the baseline shows on the tuning data, but not on the held-out
# data (docs/demo.md, twelfth to fourteenth rounds): 10 epochs of 155 iterations = 1550, the same 310 warm-up
# iterations and 1240 semi-supervised ones, about 2.5x the default run's time. The baseline follows PCR's iteration
# count as always, so it gets no preset.
LONG_OPTS = {key: ["trainer.epochs=10"] for key in METHOD_KEYS if key != BASELINE}
FULL_DATA = {"num_images": 1000, "size": 128, "num_val": None, "labeled_fraction": DEFAULT_LABELED_FRACTION}


# ---------------------------------------------------------------------------------------------------- arguments


def add_arguments(parser):
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"training seed (default {DEFAULT_SEED})")
    parser.add_argument("--device", default=None, help="CPU or GPU (default: GPU when MindSpore can use one, else CPU)")
    parser.add_argument("--fresh", action="store_true", help="regenerate the data and retrain everything")
    parser.add_argument("--methods", nargs="+", choices=METHOD_KEYS, default=list(DEFAULT_METHODS),
                        help="which experiments/demo/<method> to run (default: suponly ours, which fit the 15-minute "
                             "budget; add brpg for BRPG, about 13 minutes more; a method left out shows n/a)")
    parser.add_argument("--data-seed", type=int, default=DATA_SEED,
                        help=f"seed of the generated dataset (default {DATA_SEED}, the one the demo was tuned on; "
                             "others are held-out checks, docs/demo.md)")
    parser.add_argument("--data-dir", default=None, help=f"dataset folder (default {DEFAULT_DATA_DIR}, "
                                                         f"{DEFAULT_DATA_DIR}_seed<N> for --data-seed N; "
                                                         "<out-dir>/data with --quick)")
    parser.add_argument("--labeled-fraction", type=fraction, default=FULL_DATA["labeled_fraction"],
                        help="labeled share of the generated train images (default 1/32; another value regenerates "
                             "the dataset folder)")
    parser.add_argument("--out-dir", default=None, help=f"runs, figure and summary (default {DEFAULT_OUT_DIR}; "
                                                        f"{QUICK_OUT_DIR} with --quick, {LONG_OUT_DIR} with --long)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--quick", action="store_true",
                        help="tiny data (16 images of 48x48) and a few iterations: checks the pipeline, not the method")
    length.add_argument("--long", action="store_true",
                        help=f"1550 iterations instead of 620 (about 2.5x the time; default out-dir {LONG_OUT_DIR}): "
                             "where PCR's gain showed on the tuning data, not on the held-out data (docs/demo.md)")
    parser.add_argument("--opts", nargs="*", default=[], metavar="[METHOD:]KEY=VALUE",
                        help="config overrides for every method, or for one with a prefix: ours:trainer.epochs=3")


def _checked_seed(seed, option="--seed"):
    if seed < 0:
        raise UserError(f"{option} {seed}: expected a non-negative integer")
    return seed


def default_data_dir(data_seed):
    return DEFAULT_DATA_DIR if data_seed == DATA_SEED else f"{DEFAULT_DATA_DIR}_seed{data_seed}"


def repo_path(path):
    """Default folders are relative to the repo root (where scripts/demo.sh runs); user paths to the cwd."""
    return os.path.abspath(path if os.path.isabs(path) else os.path.join(REPO_ROOT, path))


def default_out_dir(args):
    return QUICK_OUT_DIR if args.quick else LONG_OUT_DIR if args.long else DEFAULT_OUT_DIR


def with_preset(per_method, preset):
    """`preset` ({method: [key=value, ...]}) before each method's own overrides, so that --opts wins."""
    return {key: preset.get(key, []) + opts for key, opts in per_method.items()}


def split_opts(opts):
    """{method: [key=value, ...]} from `[METHOD:]KEY=VALUE` strings (no prefix: every method)."""
    per_method = {key: [] for key in METHOD_KEYS}
    for opt in opts:
        prefix, sep, rest = opt.partition(":")
        if sep and prefix in per_method and "=" not in prefix:
            per_method[prefix].append(rest)
        elif sep and "=" not in prefix:
            raise UserError(f"--opts {opt}: unknown method prefix {prefix!r}, expected one of {list(METHOD_KEYS)}")
        else:
            for values in per_method.values():
                values.append(opt)
    return per_method


# ---------------------------------------------------------------------------------------------------- dataset


def prepare_data(data_dir, data_args, fresh):
    """The demo dataset (generated, or reused when its meta.json matches); returns its meta dict."""
    from .make_data import GENERATOR, is_up_to_date, make_dataset, read_meta, requested_args, summary_line
    out = Path(data_dir)
    meta = read_meta(out)
    if fresh and meta and meta.get("generator") == GENERATOR:
        remove_tree(data_dir, "dataset")
    start = time.perf_counter()
    reused = is_up_to_date(out, requested_args(**data_args))
    meta = make_dataset(out, **data_args)
    print(summary_line(out, meta, time.perf_counter() - start, reused), flush=True)
    return meta


def data_opts(data_dir):
    """Points a demo config at `data_dir` (the configs name data/demo relative to their folder)."""
    return [f"dataset.train.data_root={data_dir}", f"dataset.train.data_list={data_dir}/splits/labeled.txt",
            f"dataset.val.data_root={data_dir}", f"dataset.val.data_list={data_dir}/splits/val.txt"]


# ---------------------------------------------------------------------------------------------------- command


def run(args):
    from ..utils.atomic import write_text_atomic
    start = time.perf_counter()
    seed = _checked_seed(args.seed)
    out_dir = repo_path(args.out_dir or default_out_dir(args))
    data_dir = repo_path(args.data_dir) if args.data_dir else (
        os.path.join(out_dir, "data") if args.quick else repo_path(default_data_dir(args.data_seed)))
    per_method = split_opts(args.opts)
    data_args = dict(QUICK_DATA if args.quick else FULL_DATA, seed=_checked_seed(args.data_seed, "--data-seed"))
    if not args.quick:
        data_args["labeled_fraction"] = args.labeled_fraction
    meta = prepare_data(data_dir, data_args, args.fresh)
    common = data_opts(data_dir)
    if args.quick:  # presets first, so that --opts can still change them
        common += QUICK_OPTS["all"]
        per_method = with_preset(per_method, QUICK_OPTS)
    elif args.long:
        per_method = with_preset(per_method, LONG_OPTS)
    specs = build_specs(args.methods, per_method, common, out_dir, seed)
    results = [run_method(spec, data_dir, args.device, args.fresh) for spec in specs]
    results += [Result(m, reason=left_out_reason(m)) for m in METHODS if m.key not in args.methods]
    results.sort(key=lambda r: METHOD_KEYS.index(r.method.key))
    figure_path = write_figure(results, data_dir, meta, out_dir)
    total_s = time.perf_counter() - start
    summary_path = os.path.join(out_dir, SUMMARY_NAME)
    write_text_atomic(summary_path, json.dumps(summary_payload(results, meta, seed, total_s, figure_path), indent=2)
                      + "\n")
    print_report(results, meta, output_paths(results, data_dir, figure_path, summary_path), total_s,
                 budget_note(args))
    print(last_line(results), flush=True)
    return 0
