"""Adapter memory for the server (opt-in, beyond the paper): reuse the LoRA of a close past request.

An entry is the LoRA trained for one uncertain request, keyed by its tool set (the same tools in the
same order, since the frozen prefix the LoRA was trained on depends on both) and an embedding of the
request. A new request with the same tools whose embedding has cosine similarity >= `similarity`
with an entry's is answered with that entry's LoRA: no synthesis, no training.

On disk, under cache_dir()/adapters/<model key>/: one `<id>.safetensors` per entry and `index.json`
(tool keys, embeddings, last use). Every file is written to a temporary name and renamed into place,
the index is bounded to `size` entries (least recently used evicted), and an entry that cannot be
read is skipped with a warning on stderr.
"""

import base64
import hashlib
import json
import logging
import time
import uuid
from pathlib import Path

import mlx.core as mx
import numpy as np

from ..config import cache_dir
from ..errors import TTSIError
from ..files import atomic_write, staged
from ..settings import default

SIMILARITY = default("memory_similarity")  # calibrated on SmolLM2-135M; see docs/server.md
SIZE = default("memory_size")  # entries; one SmolLM2-135M adapter (rank 8, all layers) is about 10 MB
STALE_SECONDS = 3600  # unreferenced files older than this are left-overs of a crash

log = logging.getLogger(__name__)


def warn(message):
    log.warning("adapter memory: %s", message)


def tools_key(tools):
    """A hash of the parsed tools, canonical JSON in the order given."""
    text = json.dumps([t.as_plain() for t in tools], sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def model_key(agent):
    """Entries only fit the model and LoRA shape they were trained with: one folder per pair."""
    return hashlib.sha256(json.dumps(agent.identity()).encode()).hexdigest()[:16]


def _pack(vector):
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()


def _unpack(text):
    return np.frombuffer(base64.b64decode(text, validate=True), dtype="<f4")


class AdapterMemory:
    def __init__(self, directory, shapes, size=SIZE, similarity=SIMILARITY):
        """`shapes` {weight name: shape} of the agent's LoRA, to reject entries that do not fit."""
        if size < 1:
            raise TTSIError("the adapter memory size must be at least 1")
        self.directory = Path(directory)
        self.shapes = {name: tuple(shape) for name, shape in shapes.items()}
        self.size = size
        self.similarity = similarity
        self.directory.mkdir(parents=True, exist_ok=True)
        self.entries = self._read_index()
        self._evict()
        self._sweep()

    @classmethod
    def for_agent(cls, agent, size=SIZE, similarity=SIMILARITY, root=None):
        shapes = agent.adapter_shapes()
        root = Path(root) if root else cache_dir() / "adapters"
        return cls(root / model_key(agent), shapes, size, similarity)

    def __len__(self):
        return len(self.entries)

    def lookup(self, tools, embedding):
        """(entry id, LoRA weights, similarity) of the closest usable entry, or None."""
        candidates = []
        for entry in self.entries:
            if entry["tools"] == tools and len(entry["vector"]) == len(embedding):
                similarity = float(np.dot(entry["vector"], embedding))
                if similarity >= self.similarity:
                    candidates.append((similarity, entry))
        for similarity, entry in sorted(candidates, key=lambda c: -c[0]):
            weights = self._load(entry)
            if weights is not None:
                entry["used"] = time.time()
                entry["hits"] += 1
                self._write_index()
                return entry["id"], weights, round(similarity, 4)
        return None

    def store(self, tools, embedding, weights, method="ttsi"):
        """Keep an adapter; evicts the least recently used entries beyond `size`. Returns its id
        (None when it could not be written: the answer does not depend on it)."""
        entry_id = uuid.uuid4().hex[:16]
        path = self.directory / f"{entry_id}.safetensors"
        try:
            with staged(path, suffix=".safetensors") as staging:  # in place before the index names them
                mx.save_safetensors(str(staging), dict(weights))
        except (OSError, RuntimeError) as error:  # a full disk, a read-only cache
            warn(f"cannot store an adapter in {self.directory}: {error}")
            return None
        now = time.time()
        vector = np.asarray(embedding, dtype=np.float32)
        self.entries.append(
            {"id": entry_id, "tools": tools, "vector": vector, "method": method, "created": now, "used": now, "hits": 0}
        )
        self._evict()
        self._write_index()
        return entry_id

    def _load(self, entry):
        path = self.directory / f"{entry['id']}.safetensors"
        try:
            weights = mx.load(str(path))
            shapes = {name: tuple(value.shape) for name, value in weights.items()}
            if shapes != self.shapes:
                raise ValueError("its weights do not match this model's LoRA layers")
            mx.eval(list(weights.values()))
            return weights
        except Exception as error:  # a truncated or foreign file: drop it, answer without it
            warn(f"ignoring corrupt entry {entry['id']}: {error}")
            self._drop(entry)
            return None

    def _drop(self, entry):
        self.entries = [e for e in self.entries if e is not entry]
        self._write_index()
        (self.directory / f"{entry['id']}.safetensors").unlink(missing_ok=True)

    def _evict(self):
        while len(self.entries) > self.size:
            self._drop(min(self.entries, key=lambda e: e["used"]))

    def _read_index(self):
        path = self.directory / "index.json"
        if not path.exists():
            return []
        try:
            raw = json.loads(path.read_text())["entries"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            warn(f"ignoring unreadable index {path}: {error}")
            return []
        entries = []
        for item in raw if isinstance(raw, list) else []:
            try:
                entry = {
                    "id": str(item["id"]),
                    "tools": str(item["tools"]),
                    "vector": _unpack(item["embedding"]),
                    "method": str(item.get("method", "ttsi")),
                    "created": float(item["created"]),
                    "used": float(item["used"]),
                    "hits": int(item.get("hits", 0)),
                }
                if not entry["id"].isalnum():
                    raise ValueError("bad id")
                entries.append(entry)
            except (KeyError, TypeError, ValueError) as error:
                warn(f"ignoring corrupt index entry: {error!r}")
        return entries

    def _write_index(self):
        data = {
            "version": 1,
            "entries": [
                {
                    "id": e["id"],
                    "tools": e["tools"],
                    "embedding": _pack(e["vector"]),
                    "method": e["method"],
                    "created": e["created"],
                    "used": e["used"],
                    "hits": e["hits"],
                }
                for e in self.entries
            ],
        }
        try:
            atomic_write(self.directory / "index.json", json.dumps(data))
        except OSError as error:  # kept in memory; written again with the next change
            warn(f"cannot write {self.directory / 'index.json'}: {error}")

    def _sweep(self):
        """Remove old files no entry names (left by a crash between the two writes)."""
        known = {f"{e['id']}.safetensors" for e in self.entries} | {"index.json"}
        cutoff = time.time() - STALE_SECONDS
        for path in self.directory.iterdir():
            try:
                if path.name not in known and path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
            except OSError:
                pass
