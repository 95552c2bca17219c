"""Which rows this process runs under `mlx.launch`, and the exchange of results at the end.

ranks = launched_ranks()          # Ranks(0, 1) when not launched
rows = all_rows[ranks.rank::ranks.size]
everyone = ranks.gather(my_records)   # a list per rank, in rank order
ranks.close()
"""

import json
import os
from pathlib import Path

from ..errors import DataError

# what mlx.launch tells each process (ring, jaccl and nccl backends)
LAUNCH_VARIABLES = (
    "MLX_RANK",
    "MLX_HOSTFILE",
    "MLX_WORLD_SIZE",
    "MLX_IBV_DEVICES",
    "MLX_JACCL_COORDINATOR",
    "MLX_JACCL_RING",
)


class Ranks:
    """One process doing every row (also a stand-in rank for tests: Ranks(1, 2))."""

    def __init__(self, rank=0, size=1):
        self.rank, self.size = rank, size

    def gather(self, records):
        return [records]

    def close(self):
        pass


class LaunchedRanks(Ranks):
    """This process's place in MLX's process group under mlx.launch.

    Only the final gather talks to the other ranks: each rank adapts to its own rows alone (the
    LoRA training loop never reduces over the group)."""

    def __init__(self):
        import mlx.core as mx

        try:
            self.group = mx.distributed.init(strict=True)
        except RuntimeError as error:
            raise DataError(f"mlx.launch: could not join the process group: {error}") from None
        super().__init__(self.group.rank(), self.group.size())

    def gather(self, records):
        return gather(records, self.group)


def gather(records, group):
    """Every rank's list of records (JSON bytes exchanged with all_gather), on every rank."""
    import mlx.core as mx
    import numpy as np

    blob = np.frombuffer(json.dumps(records).encode(), dtype=np.uint8)
    sizes = mx.distributed.all_gather(mx.array([blob.size], dtype=mx.int32), group=group, stream=mx.cpu).tolist()
    padded = np.zeros(max(sizes), dtype=np.uint8)
    padded[: blob.size] = blob
    everything = np.array(mx.distributed.all_gather(mx.array(padded), group=group, stream=mx.cpu))
    everything = everything.reshape(group.size(), max(sizes))
    return [json.loads(everything[r, : sizes[r]].tobytes()) for r in range(group.size())]


def launched_ranks():
    if "MLX_RANK" in os.environ:
        hostfile = os.environ.get("MLX_HOSTFILE")
        if hostfile is not None and not _read(hostfile).strip():  # mlx.launch -n 1: one process
            for name in LAUNCH_VARIABLES:
                os.environ.pop(name, None)
            return Ranks()
        return LaunchedRanks()
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE") or os.environ.get("PMI_SIZE") or 1) > 1:
        raise DataError("eval runs under mlx.launch (ring, jaccl or nccl backends), not under MPI")
    return Ranks()


def _read(path):
    try:
        return Path(path).read_text()
    except OSError:
        return "?"  # unreadable: let MLX report it
