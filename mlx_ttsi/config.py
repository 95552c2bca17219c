"""Where mlx-ttsi keeps things, and the optional config file.

Settings come from flags > environment (MLX_TTSI_*) > config file > defaults, as in simonw/llm.
"""

import json
import os
from pathlib import Path

from .errors import TTSIError


def cache_dir():
    """Imported models and the adapter memory live here (MLX_TTSI_CACHE, else XDG cache)."""
    if os.environ.get("MLX_TTSI_CACHE"):
        return Path(os.environ["MLX_TTSI_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "mlx-ttsi"


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
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise TTSIError(f"cannot read config file {path}: {error}") from None
    if not isinstance(data, dict):
        raise TTSIError(f"config file {path} must hold a JSON object")
    return {key.replace("-", "_"): value for key, value in data.items()}
