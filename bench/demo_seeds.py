"""The demo's result over several training seeds: mean and spread of each method's mIoU (the README's table).

Runs `python -m ms_semiseg demo --seed S --out-dir <out>/seed<S>` for every seed (one after the other, each with the
whole machine; finished seeds are reused, so an interrupted measurement continues where it stopped), reads each
run's summary.json and prints, per method, the mean, the sample standard deviation, min and max of the linear-head
(and prototype-head) mIoU, the PCR - supervised gap per seed, and the mean train time. The dataset is the same
bundled one for every seed (its generator is deterministic); only the training seed changes.

    python bench/demo_seeds.py [--seeds 0 1 2] [--data-seed N] [--long] [--out DIR] [--device CPU] [-- demo options...]

Takes about 3 x the demo's time (about 45 minutes on 2 CPU cores; with --long, the 1550-iteration run, about 2.5x
that). The last line is
`demo seeds: n=<k> suponly=<mean>±<std> pcr=<mean>±<std> brpg=<mean>±<std or n/a>`.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = (("suponly", "supervised only"), ("meanteacher", "mean teacher (no prototypes)"), ("pcr", "PCR (ours)"),
           ("brpg", "BRPG"))
DEFAULT_METHODS = ["suponly", "meanteacher", "ours"]  # demo --methods keys; brpg with -- --methods ... brpg


def run_seed(seed, data_seed, out_dir, device, extra):
    command = [sys.executable, "-m", "ms_semiseg", "demo", "--seed", str(seed), "--data-seed", str(data_seed),
               "--out-dir", out_dir, *extra]
    if "--methods" not in extra:
        command += ["--methods", *DEFAULT_METHODS]
    if device:
        command += ["--device", device]
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    print(f"\n### seed {seed}: {' '.join(command[1:])}", flush=True)
    code = subprocess.call(command, cwd=REPO_ROOT, env=env)
    if code != 0:
        sys.exit(f"seed {seed}: the demo failed with exit code {code}")
    with open(os.path.join(out_dir, "summary.json"), encoding="utf-8") as handle:
        return json.load(handle)


def spread(values):
    """(mean, sample std, min, max) of the values that exist; None when there are none."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.mean(values), std, min(values), max(values)


def format_spread(stats, digits=2):
    if stats is None:
        return "n/a"
    mean, std, low, high = stats
    return f"{mean:.{digits}f} ± {std:.{digits}f} ({low:.{digits}f} .. {high:.{digits}f})"


def method_rows(summaries):
    """One markdown row per method: mIoU linear, mIoU proto, mean train time; and the per-method linear stats."""
    rows, linear = [], {}
    for key, title in METHODS:
        entries = [s["methods"].get(key, {}) for s in summaries]
        linear[key] = spread([e.get("miou") for e in entries])
        proto = spread([e.get("miou_proto") for e in entries])
        train = spread([e.get("train_s") for e in entries])
        iterations = sorted({e.get("iterations") for e in entries if e.get("iterations")})
        reasons = sorted({e.get("reason") for e in entries if e.get("reason")})
        rows.append(f"| {title} | {', '.join(map(str, iterations)) or '-'} | {format_spread(linear[key])} | "
                    f"{format_spread(proto) if proto else '-'} | "
                    f"{'-' if train is None else f'{train[0] / 60:.1f} min'} |"
                    + (f" {'; '.join(reasons)}" if linear[key] is None and reasons else ""))
    return rows, linear


def gap_line(summaries, key, title, head="miou"):
    """`<title> - supervised per seed: ...` for the seeds where both numbers exist (head: miou or miou_proto)."""
    gaps = [s["methods"][key][head] - s["methods"]["suponly"]["miou"] for s in summaries
            if s["methods"].get(key, {}).get(head) is not None
            and s["methods"].get("suponly", {}).get("miou") is not None]
    per_seed = ", ".join(f"{g:+.2f}" for g in gaps)
    return f"{title} - supervised per seed: {per_seed} (mean {format_spread(spread(gaps))})" if gaps else None


def default_out(data_seed, long_run):
    """outputs/demo_seeds[_data<N>][_long]: a folder per setting, so that one never retrains over another."""
    name = "demo_seeds" + (f"_data{data_seed}" if data_seed else "") + ("_long" if long_run else "")
    return os.path.join(REPO_ROOT, "outputs", name)


def short(stats):
    return "n/a" if stats is None else f"{stats[0]:.2f}±{stats[1]:.2f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-seed", type=int, default=0,
                        help="generated dataset (0: the one the demo was tuned on; 101, 202: the held-out ones)")
    parser.add_argument("--long", action="store_true",
                        help="the demo's --long run (1550 iterations, where PCR's gain shows on the tuning data; "
                             "about 2.5x the time)")
    parser.add_argument("--out", default=None, help="default outputs/demo_seeds (outputs/demo_seeds_data<N> for "
                                                     "--data-seed N; _long appended with --long)")
    parser.add_argument("--device", default=None)
    parser.add_argument("extra", nargs="*", help="more demo options after `--`, e.g. -- --methods suponly ours")
    args = parser.parse_args()
    out = args.out or default_out(args.data_seed, args.long)
    extra = (["--long"] if args.long else []) + args.extra
    summaries = [run_seed(seed, args.data_seed, os.path.join(os.path.abspath(out), f"seed{seed}"), args.device,
                          extra) for seed in args.seeds]
    rows, linear = method_rows(summaries)
    print(f"\ndata seed {args.data_seed}, training seeds {args.seeds}: mean ± sample std (min .. max) of the val "
          "mIoU (%)")
    print("| method | iterations | mIoU linear | mIoU proto | train time (mean) |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    for key, title, head in (("meanteacher", "mean teacher", "miou"), ("pcr", "PCR linear", "miou"),
                             ("pcr", "PCR prototype head", "miou_proto"), ("brpg", "BRPG", "miou")):
        gap = gap_line(summaries, key, title, head)
        if gap:
            print(gap)
    print(f"demo seeds: n={len(summaries)} " + " ".join(f"{key}={short(linear[key])}" for key, _ in METHODS))


if __name__ == "__main__":
    main()
