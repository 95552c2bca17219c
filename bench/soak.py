"""Soak test of `mlx-ttsi serve`: many clients mixing base, check and TT-SI for minutes against one server.

    python bench/soak.py                          # 8 clients, 180 s, the embedded SmolLM2 in-process
    python bench/soak.py --clients 8 --seconds 300 --json runs/soak.json

Each client sends requests in turn from a fixed cycle of (request, mode): base, check, TT-SI on the
default source, and TT-SI on the twins source (which trains a LoRA on every request); every third
request (the second, fifth ...) is streamed and abandoned after its first progress line (the client closes its socket).
Afterwards each distinct (request, mode) is sent again alone, and the figures say:
- how many requests were answered, refused (503), abandoned, failed otherwise;
- how many answers equal the same request sent alone (they must all);
- whether the base model's logits on a fixed input are bit-exact against before the soak and the
  LoRA is reset (nothing leaks from one request into the next);
- the process's resident memory, MLX's active memory and thread count before and after.
"""

import argparse
import json
import os
import sys
import threading
import time
import urllib.error
from collections import Counter
from pathlib import Path

from load import QUERIES, body, calls_of, get, lines, open_stream, post

MODES = ("base", "check", "ttsi", "ttsi-twins")  # ttsi-twins: mode ttsi, examples from twins (always trains)


def payload(query, kind, model):
    if kind == "ttsi-twins":
        return body(query, "ttsi", model, ttsi={"examples_from": "twins", "examples": 2})
    return body(query, kind, model)


def cycle(client):
    """Client `client`'s endless cycle of (query index, kind, abandon)."""
    step = 0
    while True:
        i = (client * 3 + step) % len(QUERIES)
        yield i, MODES[(client + step) % len(MODES)], step % 3 == 1
        step += 1


def client_loop(url, model, client, deadline, outcomes):
    for i, kind, abandon in cycle(client):
        if time.perf_counter() > deadline:
            return
        data = payload(QUERIES[i], kind, model)
        try:
            if abandon:
                connection, response, _ = open_stream(url, data)
                next(iter(lines(response)), None)  # the first progress line: the request is running
                connection.sock.shutdown(2)
                connection.close()
                outcomes.append(("abandoned", i, kind, None))
            else:
                outcomes.append(("answered", i, kind, calls_of(post(url, data)[1])))
        except urllib.error.HTTPError as error:
            outcomes.append((f"http {error.code}", i, kind, None))
            time.sleep(float(error.headers.get("Retry-After") or 1))
        except OSError as error:
            outcomes.append((f"error {type(error).__name__}", i, kind, None))


def process_figures():
    """Resident memory (MB), MLX's active memory (MB) and thread count of this process."""
    import mlx.core as mx

    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    rss = int(status["VmRSS"].split()[0]) / 1024 if "VmRSS" in status else float("nan")
    return {
        "rss_mb": round(rss, 1),
        "mlx_active_mb": round(mx.get_active_memory() / 2**20, 1),
        "mlx_cache_mb": round(mx.get_cache_memory() / 2**20, 1),  # freed buffers MLX keeps for reuse
        "threads": threading.active_count(),
    }


def base_logits(agent):
    import mlx.core as mx

    ids = agent.loaded.tokenizer.encode("What is the weather in Paris?", add_special_tokens=False)
    out = agent.loaded.model(mx.array(ids)[None])
    mx.eval(out)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=180)
    parser.add_argument("--max-queue", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2, help="LoRA epochs (short trainings: more of them)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from mlx_ttsi.agent import Agent  # mlx_ttsi first: it loads OpenBLAS before mlx
    from mlx_ttsi.serve.http import make_server
    from mlx_ttsi.settings import LoRASettings, Settings

    import mlx.core as mx

    agent = Agent.load(args.model, settings=Settings(lora=LoRASettings(epochs=args.epochs)))
    server = make_server(agent, "127.0.0.1", 0, max_queue=args.max_queue, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url, model, load_before = server.url, agent.name, os.getloadavg()
    try:
        for kind in MODES:  # warm-up: every path once, so that lazily made things exist before "before"
            post(url, payload(QUERIES[0], kind, model))
        logits, before = base_logits(agent), process_figures()
        outcomes, deadline = [], time.perf_counter() + args.seconds
        started = time.perf_counter()
        clients = [
            threading.Thread(target=client_loop, args=(url, model, c, deadline, outcomes)) for c in range(args.clients)
        ]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()
        wall = time.perf_counter() - started
        time.sleep(2)  # abandoned requests finish cancelling; connection threads end
        alone = {(i, kind): calls_of(post(url, payload(QUERIES[i], kind, model))[1]) for _, i, kind, _ in outcomes}
        health, after = get(url, "/health"), process_figures()
    finally:
        server.shutdown()
        server.server_close()
    leaked = not (mx.array_equal(base_logits(agent), logits).item() and agent.adapter.is_reset())
    answered = [(i, kind, calls) for what, i, kind, calls in outcomes if what == "answered"]
    same = sum(calls == alone[(i, kind)] for i, kind, calls in answered)
    counts = Counter(what for what, *_ in outcomes)
    figures = {
        "model": model,
        "clients": args.clients,
        "seconds": round(wall, 1),
        "outcomes": dict(counts),
        "by_kind": dict(Counter(kind for _, kind, _ in answered)),
        "answers_equal_alone": same,
        "answered": len(answered),
        "logits_bit_exact_and_reset": not leaked,
        "before": before,
        "after": after,
        "health": health,
        "loadavg": [load_before, os.getloadavg()],
    }
    print(
        f"soak: {args.clients} clients for {wall:.0f}s on {model} ({os.cpu_count()} cores; load average "
        f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after)"
    )
    print(f"requests: {dict(counts)}; answered by kind: {figures['by_kind']}")
    print(f"answers equal to the same request sent alone: {same} of {len(answered)}")
    print(f"base logits bit-exact after the soak and LoRA reset: {not leaked}")
    print(f"before: {before}\nafter:  {after}")
    print(f"/health: {json.dumps(health)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
