"""`mlx-ttsi doctor`: what this machine will run on, in one screen (or one JSON object).

Nothing is loaded or imported: the embedded models are only looked up, so the report is instant and
works on a fresh install.
"""

import ctypes
import importlib.metadata
import platform
import sys

import mlx.core as mx

from . import __version__, _blas, models
from .config import cache_dir, config_path


def blas():
    """The BLAS behind MLX's CPU matmuls: the OpenBLAS _blas.py loaded, Accelerate, or MLX's own."""
    if sys.platform == "darwin":
        return {"name": "Accelerate", "path": None, "kernel": None}
    if _blas.loaded_path is None:
        return {"name": "reference BLAS bundled with mlx (slow float32 matmuls)", "path": None, "kernel": None}
    name = "OpenBLAS"
    try:  # e.g. "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Haswell MAX_THREADS=64"
        get_config = ctypes.CDLL(_blas.loaded_path).openblas_get_config
        get_config.restype = ctypes.c_char_p
        name = get_config().decode().strip() or name
    except (OSError, AttributeError):
        pass
    return {"name": name, "path": _blas.loaded_path, "kernel": dict(_blas.kernel)}


_CHOSEN_BY = {"mlx-ttsi": "chosen by mlx-ttsi", "user": "set by the user", "OpenBLAS": "OpenBLAS's own choice"}


def kernel_line(kernel):
    """Which OpenBLAS kernel runs and who chose it, e.g. "Cooperlake (chosen by mlx-ttsi: ...)"."""
    if not kernel:
        return "none (no OpenBLAS loaded)"
    return (
        f"{kernel['name'] or 'unknown'} ({_CHOSEN_BY.get(kernel['chosen_by'], kernel['chosen_by'])}: {kernel['why']})"
    )


def embedded_models():
    """Each embedded model: is its GGUF installed, and already imported into the cache?"""
    from .embedded import EMBEDDED

    return {name: model.status() for name, model in EMBEDDED.items()}


def version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def report(precision="auto"):
    """Everything `mlx-ttsi doctor` prints, as a dict."""
    from .models import resolve_precision

    dtype = resolve_precision(precision)
    return {
        "backend": models.backend(),
        "device": str(mx.default_device()),
        "blas": blas(),
        "precision": precision,
        "dtype": "the model's own" if dtype == "native" else dtype,
        "cache_dir": str(cache_dir()),
        "config_file": str(config_path()),
        "config_file_exists": config_path().exists(),
        "embedded_models": embedded_models(),
        "versions": {
            "mlx": version("mlx"),
            "mlx-lm": version("mlx-lm"),
            "mlx-ttsi": __version__,  # the code running, installed or not
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
    }


def text(info):
    """The report as aligned `key  value` lines."""
    blas_line = info["blas"]["name"] + (f" ({info['blas']['path']})" if info["blas"]["path"] else "")
    rows = [
        ("backend", f"{info['backend']} ({info['device']})"),
        ("blas", blas_line),
        ("blas kernel", kernel_line(info["blas"]["kernel"])),
        ("dtype", f"{info['dtype']} (--precision {info['precision']})"),
        ("cache dir", info["cache_dir"]),
        ("config file", info["config_file"] + ("" if info["config_file_exists"] else " (none)")),
        *((f"model {name}", _model_line(model)) for name, model in info["embedded_models"].items()),
        *info["versions"].items(),
    ]
    width = max(len(key) for key, _ in rows) + 2
    return "\n".join(f"{key:<{width}}{value if value is not None else 'not installed'}" for key, value in rows)


def _model_line(model):
    line = (
        f"{model['gguf']} ({'imported' if model['imported'] else 'not imported yet'})"
        if model["installed"]
        else "not installed"
    )
    return line + (f"; {model['hint']}" if model["hint"] else "")
