"""Where a training run's wall time went, per phase, from its log.csv (no rerun, no timing of its own).

    python bench/step_times.py outputs/demo/suponly/log.csv outputs/demo/ours/log.csv   # or the run folders

log.csv stamps every step with the wall clock when the step returned (`time_s`), so the difference between two
consecutive rows is one step's cost as the run saw it: the iteration itself, its data loading and whatever the
trainer did in between (an epoch end's checkpoint writes and curves.png, a validation, the first step of a new
graph's compilation). Per phase (supervised / semi, in the order the run went through them) the table gives the
steps, the median and mean step, the phase's sum and its long steps: those over `--long` times the phase median,
which is where saves, evaluations and compilations show. The first row of a run has no predecessor and is left out
(its cost includes start-up). A resumed run keeps its log's earlier rows and continues the step numbers, so the
pause shows as one step far longer than any iteration: differences over `--gap` seconds (default 120) are left
out of the phase figures and listed as gaps. docs/demo.md's per-step figures (ninth round on) are computed this
way.
"""
import argparse
import csv
import os
import statistics
import sys
from dataclasses import dataclass


@dataclass
class PhaseTimes:
    phase: str
    steps: list  # seconds per step, in order

    @property
    def median(self):
        return statistics.median(self.steps)


def read_rows(path):
    if os.path.isdir(path):
        path = os.path.join(path, "log.csv")
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        fail(f"{path}: cannot read ({error.strerror}); expected a run's log.csv or its folder")
    missing = {"step", "phase", "time_s"} - set(rows[0] if rows else {})
    if missing or len(rows) < 2:
        fail(f"{path}: expected at least two rows with columns step, phase, time_s (a log.csv written by "
             "ms_semiseg train)")
    for line, row in enumerate(rows, start=2):
        try:
            row["time_s"] = float(row["time_s"])
        except (TypeError, ValueError):
            fail(f"{path}, line {line}: time_s {row['time_s']!r}; expected seconds since the epoch")
    return path, rows


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def phase_times(rows, gap):
    """Step durations grouped by phase, and the (step, seconds) differences over `gap` left out of them."""
    phases, gaps = [], []
    for previous, row in zip(rows, rows[1:]):
        seconds = row["time_s"] - previous["time_s"]
        if seconds > gap:
            gaps.append((int(row["step"]), seconds))
            continue
        if not phases or phases[-1].phase != row["phase"]:
            phases.append(PhaseTimes(row["phase"], []))
        phases[-1].steps.append(seconds)
    return phases, gaps


def table(path, phases, gaps, long_factor):
    lines = [f"{path}",
             "| phase | steps | median s | mean s | sum s | long steps (count, sum s) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for times in phases:
        long_steps = [s for s in times.steps if s > long_factor * times.median]
        lines.append(f"| {times.phase} | {len(times.steps)} | {times.median:.3f} | "
                     f"{statistics.fmean(times.steps):.3f} | {sum(times.steps):.1f} | "
                     f"{len(long_steps)}, {sum(long_steps):.1f} |")
    total = sum(sum(times.steps) for times in phases)
    lines.append(f"| all | {sum(len(t.steps) for t in phases)} | | | {total:.1f} | |")
    lines += [f"left out: {seconds:.1f} s before step {step} (a stop and resume?)" for step, seconds in gaps]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("logs", nargs="+", help="log.csv files or run folders holding one")
    parser.add_argument("--long", type=float, default=3.0,
                        help="a step longer than this many phase medians is counted as long (default 3)")
    parser.add_argument("--gap", type=float, default=120.0,
                        help="seconds between two rows above which the run is taken to have stopped (default 120)")
    args = parser.parse_args(argv)
    if args.long <= 1:
        fail(f"--long {args.long}: expected a factor above 1")
    for log in args.logs:
        path, rows = read_rows(log)
        print(table(path, *phase_times(rows, args.gap), args.long))
        print()


if __name__ == "__main__":
    sys.exit(main())
