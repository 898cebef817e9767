"""Device selection (`--device CPU|GPU|Ascend`, default: the best MindSpore can use) and the `env` report."""
import functools
import os
import shutil
import subprocess

from .errors import UserError

DEVICES = ("CPU", "GPU", "Ascend")


@functools.lru_cache(maxsize=None)
def gpu_unavailable_reason():
    """None when MindSpore can use a GPU, else one line saying why not (see docs/install.md "Running on GPU")."""
    cuda_home = os.environ.get("CUDA_HOME")
    if not shutil.which("nvidia-smi") and not os.path.exists("/dev/nvidia0"):
        return "no NVIDIA GPU/driver found (no nvidia-smi, no /dev/nvidia0)"
    if not cuda_home:
        return "CUDA_HOME is not set; the MindSpore 2.10 wheel needs CUDA_HOME pointing at a CUDA 11.x toolkit with nvcc"
    nvcc = os.path.join(cuda_home, "bin", "nvcc")
    if not os.path.exists(nvcc):
        return f"{nvcc} not found; MindSpore picks its GPU plugin from `nvcc --version` (CUDA 11.x needed)"
    version = _nvcc_release(nvcc)
    if version and not version.startswith("11."):
        return f"CUDA_HOME has CUDA {version}; the MindSpore 2.10 wheel needs CUDA 11.x with cuDNN 8"
    return _probe_mindspore_gpu()


def _nvcc_release(nvcc):
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for token in out.replace(",", " ").split():
        if token[:1].isdigit() and "." in token and "release" in out:
            return token
    return None


def _probe_mindspore_gpu():
    """Runs a tiny GPU op in a child process: a failing GPU plugin can abort the interpreter."""
    code = ("import mindspore as ms, numpy as np; ms.set_device('GPU'); "
            "print(float((ms.Tensor(np.ones(2, np.float32)) * 2).sum()))")
    try:
        res = subprocess.run([_python(), "-c", code], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"GPU probe failed to run ({exc})"
    if res.returncode == 0 and res.stdout.strip().endswith("4.0"):
        return None
    lines = [ln for ln in (res.stderr or res.stdout).splitlines() if ln.strip()]
    return "MindSpore GPU probe failed: " + (lines[-1][:200] if lines else f"exit code {res.returncode}")


def _python():
    import sys
    return sys.executable


def default_device():
    return "GPU" if gpu_unavailable_reason() is None else "CPU"


def set_device(name=None):
    """Selects the MindSpore device; an unusable GPU is a user error with the reason, not a crash later."""
    import mindspore as ms
    name = name or default_device()
    canonical = {d.lower(): d for d in DEVICES}.get(str(name).lower())
    if canonical is None:
        raise UserError(f"--device {name}: unknown device, expected one of {', '.join(DEVICES)}")
    if canonical == "GPU":
        reason = gpu_unavailable_reason()
        if reason:
            raise UserError(f"--device GPU: MindSpore cannot use a GPU here: {reason}")
    ms.set_device(canonical)
    return canonical


def env_report():
    import mindspore as ms
    import numpy as np
    lines = [f"mindspore {ms.__version__}", f"numpy {np.__version__}"]
    try:
        import torch
        cuda = torch.version.cuda or "none (CPU build)"
        lines.append(f"torch {torch.__version__} (CUDA {cuda}, cuda available: {torch.cuda.is_available()})")
    except ImportError:
        lines.append("torch not installed (needed only for conversion and parity)")
    lines.append(f"CUDA_HOME {os.environ.get('CUDA_HOME', '(unset)')}")
    reason = gpu_unavailable_reason()
    usable = ["CPU"] + (["GPU"] if reason is None else [])
    lines.append(f"MindSpore devices usable: {', '.join(usable)}")
    if reason:
        lines.append(f"GPU not usable: {reason}")
    return "\n".join(lines)
