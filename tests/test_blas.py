"""The OpenBLAS kernel mlx-ttsi names from the CPU flags, the probe that checks it, and doctor's line."""

import json
import os
import subprocess
import sys

from mlx_ttsi import _blas
from mlx_ttsi.cli import cli
from mlx_ttsi.doctor import kernel_line

import pytest
from click.testing import CliRunner

BASE = {"sse3", "avx", "avx2", "fma"}
SKYLAKEX = BASE | {"avx512f", "avx512bw", "avx512vl", "avx512dq"}
LIB = next((p for p in _blas._CANDIDATES if os.path.exists(p)), None)


@pytest.mark.parametrize(
    "flags, coretype",
    [
        (SKYLAKEX | {"avx512_bf16", "amx_tile"}, "Cooperlake"),  # the family-6 model-207 Xeon
        (SKYLAKEX, "SkylakeX"),
        (BASE | {"avx512f"}, "Haswell"),  # AVX-512 without BW/VL/DQ is not enough for SkylakeX
        (SKYLAKEX - {"fma"}, None),
        (BASE, "Haswell"),
        ({"sse3", "avx"}, None),
        (set(), None),  # e.g. aarch64's "Features" line
    ],
)
def test_coretype_for_fake_flags(flags, coretype):
    assert _blas.coretype_for(flags) == coretype


def test_cpu_info_reads_the_first_processor(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 207\n"
        "flags\t\t: fpu avx2 fma avx512f\n\nprocessor\t: 1\nflags\t\t: fpu\n"
    )
    flags, cpu = _blas.cpu_info(cpuinfo)
    assert flags == ["fpu", "avx2", "fma", "avx512f"]
    assert cpu == {"vendor_id": "GenuineIntel", "cpu family": "6", "model": "207"}
    assert _blas.cpu_info(tmp_path / "missing") == ([], {})


def ok(name, error=3e-7):
    return {"corename": name, "error": error}


@pytest.mark.parametrize(
    "own, forced, use, alarming",
    [
        (ok("Prescott"), ok("Cooperlake"), True, False),  # the issue: OpenBLAS falls back, we fix it
        (ok("Cooperlake"), ok("Cooperlake"), False, False),  # OpenBLAS knows this CPU: keep its own
        (ok("SapphireRapids"), ok("Cooperlake"), False, False),  # a newer OpenBLAS knows better
        (ok("Prescott"), {"failed": "exit status -4"}, False, True),  # SIGILL in the child
        (ok("Prescott"), ok("Prescott"), False, False),  # not a dynamic-arch build: the name is ignored
        (ok("Prescott"), ok("Cooperlake", error=0.5), False, True),
        ({"failed": "exit status 1 OSError"}, {"failed": "exit status 1 OSError"}, False, False),
    ],
)
def test_verdict(own, forced, use, alarming):
    got_use, why, got_alarming = _blas.verdict("Cooperlake", {"own": own, "forced": forced})
    assert (got_use, got_alarming) == (use, alarming), why


def fake_machine(monkeypatch, flags, own="Prescott"):
    """Fake CPU flags and a fake probe that counts its runs."""
    runs = []
    monkeypatch.setattr(_blas, "cpu_info", lambda: (sorted(flags), {"model": "207"}))
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    monkeypatch.delenv("MLX_TTSI_OPENBLAS_KERNEL", raising=False)

    def probe(path, coretype):
        runs.append(coretype)
        return {"own": ok(own), "forced": ok(coretype)}

    monkeypatch.setattr(_blas, "probe", probe)
    return runs


def test_choose_kernel_names_and_caches_it(monkeypatch):
    runs = fake_machine(monkeypatch, SKYLAKEX | {"avx512_bf16"})
    assert _blas.choose_kernel("/lib/libopenblas.so.0") == (
        "Cooperlake",
        ("mlx-ttsi", "from the CPU flags; OpenBLAS alone picks Prescott"),
    )
    assert _blas.choose_kernel("/lib/libopenblas.so.0")[0] == "Cooperlake"
    assert runs == ["Cooperlake"]  # the second start read the cached verdict
    assert _blas._cache_file().exists()
    runs = fake_machine(monkeypatch, SKYLAKEX)  # another CPU: probed anew
    assert _blas.choose_kernel("/lib/libopenblas.so.0")[0] == "SkylakeX" and runs == ["SkylakeX"]


def test_choose_kernel_keeps_openblas_own_choice(monkeypatch):
    fake_machine(monkeypatch, SKYLAKEX | {"avx512_bf16"}, own="Cooperlake")
    assert _blas.choose_kernel("/lib/libopenblas.so.0") == (
        None,
        ("OpenBLAS", "as good as Cooperlake, which the CPU flags allow"),
    )
    fake_machine(monkeypatch, {"sse3"})
    assert _blas.choose_kernel("/lib/libopenblas.so.0")[1][0] == "OpenBLAS"


def test_user_setting_wins(monkeypatch):
    runs = fake_machine(monkeypatch, SKYLAKEX | {"avx512_bf16"})
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    assert _blas.choose_kernel("/lib/libopenblas.so.0") == (None, ("user", "OPENBLAS_CORETYPE=Haswell"))
    monkeypatch.setenv("OPENBLAS_CORETYPE", "")  # empty means unset, as for OpenBLAS
    monkeypatch.setenv("MLX_TTSI_OPENBLAS_KERNEL", "0")
    assert _blas.choose_kernel("/lib/libopenblas.so.0") == (None, ("OpenBLAS", "MLX_TTSI_OPENBLAS_KERNEL=0"))
    assert runs == []


def test_failed_probe_warns_once(monkeypatch):
    fake_machine(monkeypatch, SKYLAKEX | {"avx512_bf16"})
    monkeypatch.setattr(
        _blas, "probe", lambda path, coretype: {"own": ok("Prescott"), "forced": {"failed": "exit status -4"}}
    )
    with pytest.warns(UserWarning, match="Cooperlake failed its check"):
        assert _blas.choose_kernel("/lib/libopenblas.so.0")[0] is None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _blas.choose_kernel("/lib/libopenblas.so.0")[1] == (
            "OpenBLAS",
            "Cooperlake failed its check (exit status -4)",
        )


@pytest.mark.skipif(LIB is None, reason="no system OpenBLAS to probe")
def test_probe_runs_the_real_library():
    result = _blas.probe(LIB, "Haswell")
    assert result["forced"]["corename"] == "Haswell" and result["forced"]["error"] < 1e-4
    assert result["own"]["corename"] and result["own"]["error"] < 1e-4


@pytest.mark.skipif(LIB is None, reason="no system OpenBLAS to load")
def test_the_suite_itself_runs_mlx_on_openblas():
    # conftest imports mlx_ttsi before mlx; when an import sorter once put mlx first, every test on an
    # embedded model ran on the reference BLAS, ten times slower (make test: 6.5 min for 3 Qwen tests)
    maps = open("/proc/self/maps").read()
    assert _blas.loaded_path and os.path.realpath(_blas.loaded_path) in maps


@pytest.mark.skipif(LIB is None, reason="no system OpenBLAS to load")
def test_preload_sets_the_kernel_only_while_loading(tmp_path):
    code = (
        "import os, json\n"
        "from mlx_ttsi import _blas\n"  # MLX_TTSI_OPENBLAS=0 here: nothing loaded on import
        "os.environ['MLX_TTSI_OPENBLAS'] = '1'\n"
        "_blas.choose_kernel = lambda path: ('Haswell', ('mlx-ttsi', 'test'))\n"
        "path = _blas.preload_openblas()\n"
        "print(json.dumps([path, _blas.kernel, os.environ.get('OPENBLAS_CORETYPE')]))\n"
    )
    env = {**os.environ, "MLX_TTSI_OPENBLAS": "0", "MLX_TTSI_CACHE": str(tmp_path)}
    env.pop("OPENBLAS_CORETYPE", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    path, kernel, left = json.loads(out.stdout)
    assert path and kernel == {"name": "Haswell", "chosen_by": "mlx-ttsi", "why": "test"}
    assert left is None  # children of mlx-ttsi choose for themselves


def test_doctor_says_which_kernel_and_who_chose_it(monkeypatch):
    assert (
        kernel_line(
            {"name": "Cooperlake", "chosen_by": "mlx-ttsi", "why": "from the CPU flags; OpenBLAS alone picks Prescott"}
        )
        == "Cooperlake (chosen by mlx-ttsi: from the CPU flags; OpenBLAS alone picks Prescott)"
    )
    assert (
        kernel_line({"name": "Haswell", "chosen_by": "user", "why": "OPENBLAS_CORETYPE=Haswell"})
        == "Haswell (set by the user: OPENBLAS_CORETYPE=Haswell)"
    )
    assert kernel_line(None) == "none (no OpenBLAS loaded)"
    monkeypatch.setattr(_blas, "kernel", {"name": "Cooperlake", "chosen_by": "OpenBLAS", "why": "as good"})
    result = CliRunner().invoke(cli, ["doctor"])
    line = next(line for line in result.stdout.splitlines() if line.startswith("blas kernel"))
    if _blas.loaded_path and sys.platform.startswith("linux"):
        assert line.endswith("Cooperlake (OpenBLAS's own choice: as good)")
    else:
        assert line.endswith("none (no OpenBLAS loaded)")
