"""Load OpenBLAS before MLX on Linux.

The Linux `mlx[cpu]` wheel links a slow reference BLAS; loading OpenBLAS into the global symbol
namespace first makes MLX's float32 matmuls use it (about 17-30x faster here). This must run before
anything imports `mlx`, so `mlx_ttsi/__init__.py` calls it first. Set MLX_TTSI_OPENBLAS=0 to skip,
or to a path to pick a library.
"""

import ctypes
import ctypes.util
import os
import sys
import warnings

_CANDIDATES = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)

loaded_path = None


def preload_openblas():
    """Load OpenBLAS globally if we are on Linux, it exists, and mlx is not imported yet."""
    global loaded_path
    setting = os.environ.get("MLX_TTSI_OPENBLAS", "1")
    if not sys.platform.startswith("linux") or setting == "0":
        return None
    if "mlx.core" in sys.modules:
        warnings.warn(
            "mlx was imported before mlx_ttsi, so OpenBLAS could not be loaded first and float32 "
            "matmuls run on the slow reference BLAS; import mlx_ttsi before mlx",
            stacklevel=3,
        )
        return None
    paths = [setting] if setting not in ("", "1") else list(_CANDIDATES)
    found = ctypes.util.find_library("openblas")
    if found and setting in ("", "1"):
        paths.append(found)
    for path in paths:
        try:
            ctypes.CDLL(path, mode=os.RTLD_GLOBAL)
        except OSError:
            continue
        loaded_path = path
        return path
    return None
