"""Several requests decoded side by side: their forward passes gathered into one batched pass.

The schema-guided decoder (decoding.py) is plain sequential code over one `ContextState`, and a
request runs many small passes (one token, a few scored options). On a CPU one such pass costs about
one read of the weights whatever the batch, so k requests stepped together cost about what one does:

    group = Lockstep()
    results = group.run([lambda: agent_turn(a), lambda: agent_turn(b)])   # [(value, error), ...]

Each call runs in its own thread, but only one thread runs at a time: a thread that wants a forward
pass (its contexts were made with `forward=group.forward`) hands its inputs over and waits. When
every live thread waits, the small passes (a few tokens each) run as one batch, their KV caches
left-padded into mlx-lm's `BatchKVCache` and cut back apart afterwards, and larger ones (prefill
chunks, drafts) one by one; then each thread goes on in turn. MLX keeps a stream per thread, so
every array that crosses between threads is evaluated first.
"""

import itertools
import threading

import mlx.core as mx
from mlx_lm.models.cache import BatchKVCache, KVCache

from .context import forward_pass, split_model

SMALL_PASS = 32  # tokens up to which a one-row pass joins a batched one; larger ones run alone
BATCH_TOKENS = 256  # at most this many padded tokens in one batched pass


class Pass:
    """One forward pass a thread asked for, and, once run, its logits."""

    def __init__(self, model, inputs, cache, start):
        self.model, self.inputs, self.cache, self.start = model, inputs, cache, start
        self.logits = None
        self.error = None

    def joins(self):
        """Whether this pass can join a batched one: one row of a few tokens, on plain KV caches (a
        pass of several rows, e.g. options scored on copies of one cache, is a batch already)."""
        single = self.inputs.shape[0] == 1 and self.inputs.shape[1] <= SMALL_PASS
        return single and all(isinstance(c, KVCache) for c in self.cache)

    def bucket(self):
        """Passes of one model whose lengths round up to the same power of two run together."""
        return id(self.model), 1 << (self.inputs.shape[1] - 1).bit_length()

    def run_alone(self):
        self.logits = forward_pass(self.model, self.inputs, self.cache, self.start)
        mx.eval(self.logits, [c.state for c in self.cache])


class Worker:
    """A thread running one call, parked whenever it waits for a forward pass."""

    def __init__(self, call):
        self.call = call
        self.value = self.error = None
        self.wanted = None  # the Pass it waits for
        self.done = False
        self._go = threading.Event()
        self._parked = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self):
        self._go.wait()
        try:
            self.value = self.call()
        except BaseException as error:  # handed to the caller of Lockstep.run
            self.error = error
        finally:
            mx.clear_streams()  # this thread's MLX streams; what it handed over was evaluated
        self.done = True
        self._parked.set()

    def resume(self):
        """Let the thread run until it parks again or ends."""
        self._parked.clear()
        if not self.thread.is_alive() and not self.done:
            self.thread.start()
        self._go.set()
        self._parked.wait()

    def park(self, wanted):
        """Called from this worker's thread: wait until `wanted` has run."""
        self.wanted = wanted
        self._go.clear()
        self._parked.set()
        self._go.wait()
        self.wanted = None


class Lockstep:
    """Runs calls side by side, one thread at a time, and their forward passes batched (see the
    module's docstring). `passes` and `batched` count the passes asked for and the batched passes run."""

    def __init__(self):
        self._workers = {}  # thread -> its Worker, while `run` runs
        self.passes = self.batched = 0

    def run(self, calls):
        """[(value, error)] of each call, in order; an error is the exception it raised."""
        workers = [Worker(call) for call in calls]
        self._workers = {worker.thread: worker for worker in workers}
        live = list(workers)
        while live:
            for worker in live:
                worker.resume()
            live = [w for w in live if not w.done]
            self._run([w.wanted for w in live])
        return [(w.value, w.error) for w in workers]

    def forward(self, model, inputs, cache, start=0):
        """`context.forward_pass`, from a worker's thread: its pass runs with the others'."""
        worker = self._workers.get(threading.current_thread())
        if worker is None:  # not one of this group's threads
            return forward_pass(model, inputs, cache, start)
        mx.eval(inputs, [c.state for c in cache if c.keys is not None])  # lazy arrays stay in their thread
        wanted = Pass(model, inputs, cache, start)
        worker.park(wanted)
        if wanted.error is not None:
            raise wanted.error
        self.passes += 1
        return wanted.logits

    def _run(self, wanted):
        """Run the waiting passes: the small ones batched with those of about their length, at most
        BATCH_TOKENS padded tokens at a time, the others alone."""
        buckets = {}
        for p in wanted:
            if p.joins():
                buckets.setdefault(p.bucket(), []).append(p)
            else:
                self._guarded(p.run_alone, [p])
        for (_, length), passes in buckets.items():
            rows = max(1, BATCH_TOKENS // length)
            for start in range(0, len(passes), rows):
                group = passes[start : start + rows]
                self._guarded(lambda: batched_pass(group) if len(group) > 1 else group[0].run_alone(), group)

    def _guarded(self, run, passes):
        try:
            run()
            self.batched += len(passes) > 1
        except Exception as error:  # told to the threads that asked, which raise it
            for p in passes:
                p.error = error


def batched_pass(passes):
    """Run several one-row passes of one model as one: each left-padded to the longest cache and
    right-padded to the longest input; then each pass's logits (only its positions go through the
    vocabulary) and cache are cut back out."""
    model, split = passes[0].model, split_model(passes[0].model)
    length = max(p.inputs.shape[1] for p in passes)
    longest = max(p.cache[0].offset for p in passes)
    inputs = mx.concatenate([mx.pad(p.inputs, [(0, 0), (0, length - p.inputs.shape[1])]) for p in passes])
    merged = [merge([p.cache[layer] for p in passes], longest, length) for layer in range(len(passes[0].cache))]
    if split is None:
        outputs, head = model(inputs, cache=merged), None
    else:
        body, head = split
        outputs = body(inputs, cache=merged)
    picked = [outputs[row, p.start : p.inputs.shape[1]] for row, p in enumerate(passes)]
    if head is not None:  # the wanted positions of every pass through the vocabulary at once
        sizes = [len(x) for x in picked]
        logits = head(mx.concatenate(picked))
        picked = mx.split(logits, list(itertools.accumulate(sizes))[:-1])
    for row, (p, logits) in enumerate(zip(passes, picked)):
        p.logits = logits[None]
        first, n = longest - p.cache[0].offset, p.inputs.shape[1]
        for cache, layer in zip(p.cache, merged):
            end = first + cache.offset + n
            cache.keys = mx.contiguous(layer.keys[row : row + 1, :, first:end])
            cache.values = mx.contiguous(layer.values[row : row + 1, :, first:end])
            cache.offset += n
    mx.eval([p.logits for p in passes], [c.state for p in passes for c in p.cache])


def merge(caches, longest, length):
    """One BatchKVCache of several one-row KV caches, each left-padded to the `longest`, with room
    for `length` more tokens, in one copy."""
    lengths = [c.offset for c in caches]
    batch = BatchKVCache([longest - n for n in lengths])
    like = next((c for c in caches if c.keys is not None), None)
    if like is None:  # nothing cached yet: the cache fills itself
        return batch
    keys, values = [], []
    for c in caches:
        if c.keys is None:
            k = mx.zeros(like.keys.shape[:2] + (0,) + like.keys.shape[3:], like.keys.dtype)
            v = mx.zeros(like.values.shape[:2] + (0,) + like.values.shape[3:], like.values.dtype)
        else:
            k, v = c.keys[..., : c.offset, :], c.values[..., : c.offset, :]
        pad = [(0, 0), (0, 0), (longest - c.offset, length), (0, 0)]
        keys.append(mx.pad(k, pad))
        values.append(mx.pad(v, pad))
    batch.state = (mx.concatenate(keys), mx.concatenate(values), mx.array(lengths), batch.left_padding, longest)
    return batch
