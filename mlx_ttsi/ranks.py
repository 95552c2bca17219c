"""Which rows this process runs under `mlx.launch`, and the exchange of results at the end.

    ranks = launched_ranks()          # Ranks(0, 1) when not launched
    rows = all_rows[ranks.rank::ranks.size]
    everyone = ranks.gather(my_records)   # a list per rank, in rank order
    ranks.close()
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from .errors import DataError

# what mlx.launch tells each process (ring, jaccl and nccl backends)
LAUNCH_VARIABLES = ("MLX_RANK", "MLX_HOSTFILE", "MLX_WORLD_SIZE", "MLX_IBV_DEVICES", "MLX_JACCL_COORDINATOR",
                    "MLX_JACCL_RING")


class Ranks:
    """One process doing every row (also a stand-in rank for tests: Ranks(1, 2))."""

    def __init__(self, rank=0, size=1):
        self.rank, self.size = rank, size

    def gather(self, records):
        return [records]

    def close(self):
        pass


class LaunchedRanks(Ranks):
    """This process's place under mlx.launch, and the exchange of results at the end.

    mlx-lm's LoRA trainer averages gradients over mx.distributed.init()'s group, so a rank that
    joined the group would mix its adapters with other ranks' rows. MLX's group therefore lives in a
    helper process, started (like the group needs) while every rank starts; this process forgets
    the launcher's variables and trains alone. The helper gathers the results when the rows are done."""

    def __init__(self):
        self.helper = subprocess.Popen(
            [sys.executable, "-c", "from mlx_ttsi.ranks import group_helper; group_helper()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=dict(os.environ), text=True,
        )
        self.saved = {name: os.environ.pop(name) for name in LAUNCH_VARIABLES if name in os.environ}
        reply = self._receive()
        super().__init__(reply["rank"], reply["size"])

    def _receive(self):
        line = self.helper.stdout.readline()
        if not line:
            raise DataError("mlx.launch: could not join the process group (see the error above)")
        return json.loads(line)

    def gather(self, records):
        self.helper.stdin.write(json.dumps(records) + "\n")
        self.helper.stdin.flush()
        return self._receive()

    def close(self):
        self.helper.stdin.close()
        self.helper.wait()
        os.environ.update(self.saved)


def group_helper():
    """The helper process: join MLX's group, report rank and size, gather one list of records."""
    import mlx.core as mx

    reply, sys.stdout = sys.stdout, sys.stderr  # the pipe carries replies only
    group = mx.distributed.init(strict=True)
    print(json.dumps({"rank": group.rank(), "size": group.size()}), file=reply, flush=True)
    line = sys.stdin.readline()
    if line:
        print(json.dumps(gather(json.loads(line), group)), file=reply, flush=True)


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
