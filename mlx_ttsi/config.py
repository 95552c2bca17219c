"""Where mlx-ttsi keeps things (and where the Hugging Face hub cache is), and the optional config file.

Settings come from flags > environment (MLX_TTSI_*) > config file > defaults, as in simonw/llm.
"""

import os
import shutil
import time
from pathlib import Path

from .errors import TTSIError
from .files import read_json


def cache_dir():
    """Imported models and the adapter memory live here (MLX_TTSI_CACHE, else XDG cache)."""
    if os.environ.get("MLX_TTSI_CACHE"):
        return Path(os.environ["MLX_TTSI_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mlx-ttsi"


def hub_cache():
    """The hub cache directory, from the environment as it is now (huggingface-hub reads it once, on import)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache") / "huggingface"
    return Path(home).expanduser() / "hub"


def staging_prefix(kind):
    """The name a staging file or folder in the cache starts with: its kind and this process's id, so a
    later process can tell one left by a process that was killed (sweep_staging)."""
    return f".{kind}-{os.getpid()}-"


def sweep_staging(folder, kind):
    """Remove what processes that no longer run left staging in `folder` (a killed import or join
    leaves hundreds of MB): entries named by staging_prefix(kind) whose process id is gone, and ones
    named without an id (by earlier versions) untouched for an hour."""
    folder = Path(folder)
    for path in folder.glob(f".{kind}-*") if folder.is_dir() else []:
        pid = path.name.split("-")[1]
        if not _running(int(pid)) if pid.isdigit() else time.time() - path.stat().st_mtime > 3600:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def _running(pid):
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # exists, but is another user's
        return True
    return True


def config_path():
    if os.environ.get("MLX_TTSI_CONFIG"):
        return Path(os.environ["MLX_TTSI_CONFIG"]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base).expanduser() / "mlx-ttsi" / "config.json"


def load_config():
    """The config file as a dict of option defaults, e.g. {"model": ..., "threshold": 0.9}."""
    path = config_path()
    if not path.exists():
        return {}
    message = "cannot read config file {path}: {error}"
    data = read_json(path, "config file", unreadable=message, invalid=message)
    if not isinstance(data, dict):
        raise TTSIError(f"config file {path} must hold a JSON object")
    return {key.replace("-", "_"): value for key, value in data.items()}
