"""Load OpenBLAS before MLX on Linux, with a kernel that fits the CPU.

The Linux `mlx[cpu]` wheel links a slow reference BLAS; loading OpenBLAS into the global symbol
namespace first makes MLX's float32 matmuls use it (about 17-30x faster here). This must run before
anything imports `mlx`, so `mlx_ttsi/__init__.py` calls it first. Set MLX_TTSI_OPENBLAS=0 to skip,
or to a path to pick a library.

Kernel choice. A dynamic-arch OpenBLAS picks its kernels from the CPU when it loads, and an old
one that does not know a new CPU falls back to Prescott (SSE3): Debian's 0.3.21 on a family-6
model-207 Xeon runs a 512x896 @ 896x4864 float32 matmul at 15-19 GFLOP/s instead of 67-104 with
Cooperlake. So, unless the user set OPENBLAS_CORETYPE (theirs always wins), we name a kernel from
the CPU flags (`coretype_for`) and set OPENBLAS_CORETYPE just while the library loads; OpenBLAS
reads it only then, and child processes make their own choice.

A forced kernel the CPU cannot run dies of SIGILL, which no in-process check survives, so the
choice is first tried in two short child processes, side by side: one loads the library with the
kernel and compares a few cblas_sgemm products with numpy's float64 ones (relative error < 1e-4),
the other loads it untouched to learn OpenBLAS's own choice. We set the kernel only if the check
passed and OpenBLAS's own choice ranks lower (`_RANK`: a newer OpenBLAS that knows the CPU keeps
its own). The verdict is cached in the cache dir, keyed by library file, kernel and CPU, so the
probe (0.3-0.5 s of wall time here, both children together) runs once per machine and library;
later starts read /proc/cpuinfo and one small JSON file (about 1.5 ms). `kernel` records what happened, for
doctor. MLX_TTSI_OPENBLAS_KERNEL=0 leaves the kernel to OpenBLAS.
"""

import ctypes
import ctypes.util
import hashlib
import json
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

# x86 kernels we may name, best last; OpenBLAS's own choice is kept when it ranks at least as high.
_RANK = {"haswell": 1, "zen": 1, "skylakex": 2, "cooperlake": 3, "sapphirerapids": 4}
_SKYLAKEX = {"avx512f", "avx512bw", "avx512vl", "avx512dq"}  # what OpenBLAS checks for SkylakeX
_PROBE_VERSION = 1  # bump to drop cached verdicts

loaded_path = None
# The kernel the loaded OpenBLAS runs and who chose it: "mlx-ttsi", "user" or "OpenBLAS".
kernel = {"name": None, "chosen_by": None, "why": None}


def coretype_for(flags):
    """The OpenBLAS kernel (OPENBLAS_CORETYPE) these CPU flags allow, or None for OpenBLAS's own."""
    flags = set(flags)
    if not {"avx2", "fma"} <= flags:
        return None
    if _SKYLAKEX <= flags:
        return "Cooperlake" if "avx512_bf16" in flags else "SkylakeX"
    return "Haswell"


def cpu_info(path="/proc/cpuinfo"):
    """The first CPU's flags and identity (vendor, family, model, stepping) from /proc/cpuinfo."""
    info = {}
    try:
        with open(path) as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("vendor_id", "cpu family", "model", "stepping", "flags", "Features"):
                    info.setdefault(key, value.strip())
                if not line.strip() and info:  # end of the first processor's block
                    break
    except OSError:
        pass
    flags = (info.pop("flags", None) or info.pop("Features", "")).split()
    return flags, info


def user_coretype():
    """The user's OPENBLAS_CORETYPE, if set (an empty value counts as unset)."""
    return os.environ.get("OPENBLAS_CORETYPE") or None


# Run in a child: load the library with argv[2] as OPENBLAS_CORETYPE ("" for none) and print its
# kernel's name and the worst relative error of a few sgemm products against numpy in float64.
_PROBE = r"""
import ctypes, json, os, sys
import numpy as np
path, coretype = sys.argv[1], sys.argv[2]
rng = np.random.default_rng(0)
cases = [(8, 8, 8, False), (67, 131, 257, True), (300, 260, 200, False)]  # small, edges, blocked
data = [(rng.standard_normal((m, k), dtype=np.float32),
         rng.standard_normal((n, k) if t else (k, n), dtype=np.float32), t) for m, k, n, t in cases]
refs = [a.astype(np.float64) @ (b.T if t else b).astype(np.float64) for a, b, t in data]
os.environ.pop("OPENBLAS_CORETYPE", None)
if coretype:
    os.environ["OPENBLAS_CORETYPE"] = coretype
lib = ctypes.CDLL(path)
lib.openblas_get_corename.restype = ctypes.c_char_p
i, f, p = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
lib.cblas_sgemm.argtypes = [i, i, i, i, i, i, f, p, i, p, i, f, p, i]
error = 0.0
for (a, b, t), ref in zip(data, refs):
    m, k, n = a.shape[0], a.shape[1], ref.shape[1]
    c = np.zeros((m, n), dtype=np.float32)
    lib.cblas_sgemm(101, 111, 112 if t else 111, m, n, k, 1.0, a.ctypes.data, k, b.ctypes.data,
                    k if t else n, 0.0, c.ctypes.data, n)
    error = max(error, float(np.linalg.norm(c - ref) / np.linalg.norm(ref)))
print(json.dumps({"corename": lib.openblas_get_corename().decode(), "error": error}))
"""


def _probe(path, coretype):
    """Start a child that loads `path` with `coretype` ("" for OpenBLAS's own) and checks sgemm."""
    import subprocess  # only on a cache miss

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", _PROBE, path, coretype],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(child, timeout=60):
    """A probe child's {"corename", "error"}, or {"failed": why}."""
    import subprocess

    try:
        out, err = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        return {"failed": "timed out", "transient": True}
    if child.returncode != 0:
        last = (err.strip().splitlines() or [""])[-1]
        return {"failed": f"exit status {child.returncode} {last}".strip()}
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"failed": f"unreadable output {out[-200:]!r}"}


def probe(path, coretype):
    """Try `coretype` and OpenBLAS's own choice in two children at once: {"own": ..., "forced": ...}."""
    own, forced = _probe(path, ""), _probe(path, coretype)
    return {"own": _result(own), "forced": _result(forced)}


def verdict(coretype, result):
    """(use it?, why, worth a warning?) from a probe result."""
    own, forced = result["own"], result["forced"]
    own_name = own.get("corename")
    if own_name and _RANK.get(own_name.lower(), 0) >= _RANK[coretype.lower()]:
        return False, f"as good as {coretype}, which the CPU flags allow", False
    if "failed" in forced:  # worth a warning only if the library itself loads
        return False, f"{coretype} failed its check ({forced['failed']})", own_name is not None
    if forced["corename"].lower() != coretype.lower():
        return False, f"this OpenBLAS does not take {coretype} (it runs {forced['corename']})", False
    if not forced["error"] < 1e-4:
        return False, f"{coretype} got sgemm wrong (relative error {forced['error']:.1e})", True
    return True, f"from the CPU flags; OpenBLAS alone picks {own_name}", False


def _cache_key(path, coretype, cpu):
    """A short hash of the library file, the kernel and the CPU (identity and flags)."""
    try:
        real = os.path.realpath(path)
        stat = os.stat(real)
        lib = f"{real}:{stat.st_size}:{stat.st_mtime_ns}"
    except OSError:
        lib = path  # a bare soname for the loader to find
    identity = json.dumps([_PROBE_VERSION, lib, coretype, cpu, sys.executable], sort_keys=True)
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def _cache_file():
    from .config import cache_dir  # no mlx import there

    return cache_dir() / "openblas-kernel.json"


def cached_probe(path, coretype, cpu):
    """(probe(), whether it ran now), remembered in the cache dir per (library, kernel, CPU)."""
    file, key = _cache_file(), _cache_key(path, coretype, cpu)
    try:
        cache = json.loads(file.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache:
        return cache[key], False
    result = probe(path, coretype)
    if not any(r.get("transient") for r in result.values()):  # a timeout may pass next time
        cache[key] = result
        from .files import atomic_write  # no mlx import there

        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(file, json.dumps(cache, indent=1))  # a process starting beside us reads all or nothing
        except OSError:
            pass  # a read-only cache dir: probe again next time
    return result, True


def choose_kernel(path):
    """The OPENBLAS_CORETYPE to load `path` with (None: leave it alone), and who/why for doctor."""
    if user_coretype():
        return None, ("user", f"OPENBLAS_CORETYPE={user_coretype()}")
    if os.environ.get("MLX_TTSI_OPENBLAS_KERNEL") == "0":
        return None, ("OpenBLAS", "MLX_TTSI_OPENBLAS_KERNEL=0")
    flags, cpu = cpu_info()
    coretype = coretype_for(flags)
    if coretype is None:
        return None, ("OpenBLAS", "no AVX2/AVX-512 kernel to name from the CPU flags")
    result, fresh = cached_probe(path, coretype, {**cpu, "flags": sorted(flags)})
    use, why, alarming = verdict(coretype, result)
    if alarming and fresh:  # once, when the probe runs; doctor repeats it
        warnings.warn(f"mlx-ttsi: OpenBLAS kernel {why}; keeping OpenBLAS's own", stacklevel=4)
    if not use:
        return None, ("OpenBLAS", why)
    return coretype, ("mlx-ttsi", why)


def _corename(lib):
    try:
        lib.openblas_get_corename.restype = ctypes.c_char_p
        return lib.openblas_get_corename().decode()
    except AttributeError:
        return None


def _load(path):
    """CDLL `path` globally with the chosen kernel in the environment only while it loads."""
    coretype, (chosen_by, why) = choose_kernel(path)
    if coretype:
        os.environ["OPENBLAS_CORETYPE"] = coretype
    try:
        lib = ctypes.CDLL(path, mode=os.RTLD_GLOBAL)
    finally:
        if coretype:
            del os.environ["OPENBLAS_CORETYPE"]  # children choose for themselves
    name = _corename(lib)
    if coretype and (name or "").lower() != coretype.lower():
        chosen_by, why = "OpenBLAS", f"asked for {coretype}, got {name}"
    kernel.update(name=name, chosen_by=chosen_by, why=why)
    return lib


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
        if os.path.isabs(path) and not os.path.exists(path):
            continue
        try:
            _load(path)
        except OSError:
            continue
        loaded_path = path
        return path
    return None
