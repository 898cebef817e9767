"""The demo's methods and runs: which experiments/demo/<method>/config.yaml, with which overrides and seed, and
the folder each trains into (`RunSpec`); the baseline gets PCR's iteration count."""
import hashlib
import json
import os
from dataclasses import dataclass, field

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPERIMENTS_DIR = os.path.join(REPO_ROOT, "experiments", "demo")
RECORD_NAME = "demo_run.json"
RUN_FOLDER_MARKERS = (RECORD_NAME, "config.yaml", "checkpoints", "log.csv")


@dataclass(frozen=True)
class Method:
    key: str  # experiments/demo/<key>/config.yaml and the output sub-folder
    title: str  # table row and figure column
    line_name: str  # name in the last line
    optional: bool = False  # a failure becomes an n/a row instead of stopping the demo


METHODS = (Method("suponly", "supervised only", "suponly"),
           Method("meanteacher", "mean teacher (no prototypes)", "meanteacher", optional=True),
           Method("ours", "PCR (ours)", "pcr"),
           Method("brpg", "BRPG", "brpg", optional=True))
LAST_LINE_METHODS = ("suponly", "pcr", "brpg")  # the last line's fixed format (scripts and tests read it)
METHOD_KEYS = tuple(method.key for method in METHODS)
# BRPG needs a third epoch (sampling window, then clustering): about 13 more minutes on 2 CPU cores, past the budget
DEFAULT_METHODS = ("suponly", "ours")
BASELINE, REFERENCE = "suponly", "ours"  # the baseline runs as many iterations as PCR


@dataclass
class RunSpec:
    method: Method
    config_path: str
    opts: list
    work_dir: str
    seed: int
    cfg: dict = field(repr=False)
    iterations: int = 0
    semi: bool = False

    @property
    def record_path(self):
        return os.path.join(self.work_dir, RECORD_NAME)

    @property
    def best_ckpt(self):
        return os.path.join(self.work_dir, "checkpoints", "best.ckpt")

    @property
    def last_ckpt(self):
        return os.path.join(self.work_dir, "checkpoints", "last.ckpt")

    @property
    def eval_dir(self):
        return os.path.join(self.work_dir, "eval")

    def fingerprint(self):
        """Changes whenever the run would differ: the whole config after overrides, and the seed."""
        clean = {k: v for k, v in self.cfg.items() if not k.startswith("_")}
        text = json.dumps({"config": clean, "seed": self.seed}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_spec(method, opts, out_dir, seed):
    from ..config import load_config
    from ..train.trainer import plan_from_config
    config_path = os.path.join(EXPERIMENTS_DIR, method.key, "config.yaml")
    cfg = load_config(config_path, opts)
    plan = plan_from_config(cfg)
    return RunSpec(method, config_path, list(opts), os.path.join(out_dir, method.key), seed, cfg,
                   plan.total_steps, plan.semi)


def baseline_epochs(baseline, reference):
    """Epochs that give the baseline the reference's iteration count (its epochs are n_labeled / batch long)."""
    per_epoch = baseline.iterations // int(baseline.cfg["trainer"]["epochs"])
    return max(1, round(reference.iterations / per_epoch))


def build_specs(methods, per_method_opts, common_opts, out_dir, seed):
    """RunSpecs of the selected methods; the baseline's trainer.epochs matches PCR's iterations unless set."""
    specs = {}
    for method in METHODS:
        if method.key in methods or method.key == REFERENCE:
            specs[method.key] = load_spec(method, common_opts + per_method_opts[method.key], out_dir, seed)
    if BASELINE in specs and not any(o.startswith("trainer.epochs=") for o in per_method_opts[BASELINE]):
        epochs = baseline_epochs(specs[BASELINE], specs[REFERENCE])
        opts = common_opts + per_method_opts[BASELINE] + [f"trainer.epochs={epochs}"]
        specs[BASELINE] = load_spec(specs[BASELINE].method, opts, out_dir, seed)
    return [specs[m.key] for m in METHODS if m.key in methods]
