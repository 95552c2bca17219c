"""Load test for `mlx-ttsi serve`, from one run: throughput and latency, streaming, overload, cancellation.

    python bench/load.py                       # starts the server in-process on the embedded model
    python bench/load.py --url http://127.0.0.1:8080/v1 --api-key KEY
    python bench/load.py --clients 4 --base 16 --ttsi 4 --max-queue 4 --json runs/load.json

Phases, each measured in the same run on the same server:
1. throughput: base requests (ttsi.mode "base", never adapt) then TT-SI requests (mode "ttsi": score,
   synthesize, train a LoRA, answer, reset) from `--clients` concurrent clients (at most max-queue, so
   none is refused); latency includes queueing;
2. streaming: `--stream` TT-SI requests with "stream": true, one at a time: time to the first byte
   (the first progress comment) and to the first answer delta, against time to the complete answer;
3. overload: 4 x max-queue clients send TT-SI requests at once: how many get 503, and whether every
   accepted one gets the same answer as the same request sent alone afterwards (the baseline);
4. cancellation: `--cancels` times, a streamed TT-SI request with longer training (ttsi.examples
   `--cancel-examples`, 8) is abandoned a quarter into its training (the client closes its socket) and a base request is sent at once: how
   long it waits for the model (its ttsi.timings.queue) and whether its answer is right.
"""

import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
TOOLS = json.loads((ROOT / "mlx_ttsi" / "examples" / "tools.json").read_text())
QUERIES = [
    "Will it rain in Lisbon tomorrow? Give me the temperature in celsius.",
    "Set an alarm at 06:30 labelled gym.",
    "How much is 250 US dollars in euros?",
    "What's the forecast for Tokyo on Friday?",
    "Wake me up at 7:15 for work.",
    "Convert 80 GBP to JPY.",
    "Is it sunny in Madrid today, in fahrenheit?",
    "Remind me with an alarm at 22:00 to take my pills.",
]


def body(query, mode, model=None, **extra):
    ttsi = {"mode": mode, **extra.pop("ttsi", {})}
    return {"model": model, "messages": [{"role": "user", "content": query}], "tools": TOOLS, "ttsi": ttsi, **extra}


def headers(api_key):
    return {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}


def post(url, data, api_key=None, timeout=900):
    """One chat completion: (seconds, response dict)."""
    request = urllib.request.Request(url + "/chat/completions", json.dumps(data).encode(), headers(api_key))
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.loads(response.read())
    return time.perf_counter() - started, answer


def get(url, path, api_key=None):
    base = url.removesuffix("/v1")
    with urllib.request.urlopen(urllib.request.Request(base + path, headers=headers(api_key)), timeout=60) as r:
        return json.loads(r.read())


def open_stream(url, data, api_key=None):
    """A streamed chat completion, opened: (connection, response, seconds to the status line)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=900)
    started = time.perf_counter()
    connection.request(
        "POST", parts.path + "/chat/completions", json.dumps({**data, "stream": True}).encode(), headers(api_key)
    )
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"{response.status} {response.read()[:300]!r}")
    return connection, response, started


def lines(response):
    """Non-empty SSE lines as they arrive, up to [DONE]."""
    while line := response.readline():
        line = line.decode().rstrip("\r\n")
        if line:
            yield line
        if line == "data: [DONE]":
            return


def calls_of(answer):
    """The tool calls of a response: [(name, arguments)]."""
    message = answer["choices"][0]["message"]
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message.get("tool_calls") or []]


def percentile(values, q):
    """Linear-interpolated percentile (q in 0..100) of a small sample."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def throughput(url, api_key, kind, count, clients, model):
    """Send `count` requests of one kind from `clients` threads; returns the phase's figures."""
    mode = "base" if kind == "base" else "ttsi"
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(
            pool.map(lambda i: post(url, body(QUERIES[i % len(QUERIES)], mode, model), api_key), range(count))
        )
    wall = time.perf_counter() - started
    latencies = [seconds for seconds, _ in results]
    server = [data["ttsi"]["timings"] for _, data in results]
    phases = {}
    for name in ("scoring", "synthesis", "training", "answering", "total"):
        values = [t[name] for t in server if name in t]
        if values:
            phases[name] = round(statistics.mean(values), 3)
    return {
        "kind": kind,
        "requests": count,
        "clients": clients,
        "wall_s": round(wall, 2),
        "requests_per_s": round(count / wall, 3),
        "p50_s": round(percentile(latencies, 50), 2),
        "p90_s": round(percentile(latencies, 90), 2),
        "p99_s": round(percentile(latencies, 99), 2),
        "max_s": round(max(latencies), 2),
        "adapted": sum(data["ttsi"]["adapted"] for _, data in results),
        "server_mean_s": phases,
    }


def streaming(url, api_key, count, model):
    """Streamed TT-SI requests one at a time: first byte and first answer delta vs the complete answer."""
    rows = []
    for i in range(count):
        connection, response, started = open_stream(url, body(QUERIES[i % len(QUERIES)], "ttsi", model), api_key)
        first_byte = first_delta = None
        comments = 0
        for line in lines(response):
            now = time.perf_counter() - started
            first_byte = first_byte if first_byte is not None else now
            comments += line.startswith(":")
            if first_delta is None and line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"] if json.loads(line[6:])["choices"] else {}
                first_delta = now if delta.get("tool_calls") or delta.get("content") else None
        complete = time.perf_counter() - started
        connection.close()
        rows.append(
            {
                "first_byte_s": round(first_byte, 3),
                "first_delta_s": round(first_delta, 3),
                "complete_s": round(complete, 3),
                "comments": comments,
            }
        )
    mean = {k: round(statistics.mean(r[k] for r in rows), 3) for k in ("first_byte_s", "first_delta_s", "complete_s")}
    return {
        "requests": count,
        "rows": rows,
        "mean": mean,
        "first_byte_share": round(mean["first_byte_s"] / mean["complete_s"], 3),
    }


def overload(url, api_key, clients, model):
    """`clients` TT-SI requests at once: 503s counted; each accepted answer checked against a sequential baseline."""
    barrier = threading.Barrier(clients)

    def one(i):
        barrier.wait()
        try:
            return i, post(url, body(QUERIES[i % len(QUERIES)], "ttsi", model), api_key)[1], None
        except urllib.error.HTTPError as error:
            return i, None, (error.code, error.headers.get("Retry-After"))

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(clients)))
    wall = time.perf_counter() - started
    accepted = [(i, answer) for i, answer, _ in results if answer is not None]
    refused = [error for _, _, error in results if error is not None]
    baseline = {}
    for i in sorted({i % len(QUERIES) for i, _ in accepted}):  # each accepted query again, alone
        baseline[i] = calls_of(post(url, body(QUERIES[i], "ttsi", model), api_key)[1])
    right = sum(calls_of(answer) == baseline[i % len(QUERIES)] for i, answer in accepted)
    return {
        "clients": clients,
        "wall_s": round(wall, 2),
        "accepted": len(accepted),
        "status_503": sum(code == 503 for code, _ in refused),
        "other_errors": sum(code != 503 for code, _ in refused),
        "retry_after_s": sorted({int(after) for code, after in refused if after}),
        "accepted_right": right,
    }


def cancellation(url, api_key, count, model, examples):
    """Abandon a long-training TT-SI request mid-training; how soon the next request is served, and rightly."""
    long = {"examples": examples}
    query = QUERIES[0]
    # the reference: the same long request, not abandoned, and the base answer the next request should get
    _, full = post(url, body(query, "ttsi", model, ttsi=long), api_key)
    _, expected = post(url, body(QUERIES[1], "base", model), api_key)
    training = full["ttsi"]["timings"].get("training", 0)
    cancelled = get(url, "/health")["cancelled"]
    rows = []
    for _ in range(count):
        connection, response, _ = open_stream(url, body(query, "ttsi", model, ttsi=long), api_key)
        for line in lines(response):
            if line.startswith(": synthesis"):  # training starts now
                break
        time.sleep(training / 4)  # a quarter into the training
        connection.sock.shutdown(2)
        connection.close()
        gone = time.perf_counter()
        seconds, answer = post(url, body(QUERIES[1], "base", model), api_key)
        rows.append(
            {
                "queue_s": answer["ttsi"]["timings"]["queue"],
                "close_to_answer_s": round(time.perf_counter() - gone, 3),
                "right": calls_of(answer) == calls_of(expected),
            }
        )
    return {
        "abandons": count,
        "examples": examples,
        "rows": rows,
        "training_if_not_abandoned_s": training,
        "cancelled_by_server": get(url, "/health")["cancelled"] - cancelled,
        "synthetic": full["ttsi"]["synthetic"],
        "base_alone_s": expected["ttsi"]["timings"]["server"],
        "max_queue_s": max(r["queue_s"] for r in rows),
        "mean_queue_s": round(statistics.mean(r["queue_s"] for r in rows), 3),
        "right": sum(r["right"] for r in rows),
    }


def start_server(model, epochs, max_queue):
    """The server in this process, on a free loopback port; returns (server, served model name)."""
    sys.path.insert(0, str(ROOT))
    from mlx_ttsi.agent import Agent
    from mlx_ttsi.serve.http import make_server
    from mlx_ttsi.settings import LoRASettings, Settings

    agent = Agent.load(model, settings=Settings(lora=LoRASettings(epochs=epochs)))
    server = make_server(agent, "127.0.0.1", 0, max_queue=max_queue, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, agent.name


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server's base URL (…/v1); default: start one in-process")
    parser.add_argument("--api-key")
    parser.add_argument("--model", default="smollm2-135m", help="model for the in-process server")
    parser.add_argument("--epochs", type=int, default=5, help="LoRA epochs of the in-process server")
    parser.add_argument("--max-queue", type=int, default=2, help="the in-process server's --max-queue")
    parser.add_argument("--clients", type=int, default=2, help="concurrent clients of phase 1 (at most max-queue)")
    parser.add_argument("--base", type=int, default=8, help="base requests")
    parser.add_argument("--ttsi", type=int, default=2, help="TT-SI requests")
    parser.add_argument("--stream", type=int, default=3, help="streamed TT-SI requests (time to first byte)")
    parser.add_argument("--cancels", type=int, default=3, help="TT-SI requests abandoned mid-training")
    parser.add_argument("--cancel-examples", type=int, default=8, help="K of the abandoned requests (longer training)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    load_before = os.getloadavg()
    server = None
    if args.url:
        url, model = args.url.rstrip("/"), None
    else:
        server, model = start_server(args.model, args.epochs, args.max_queue)
        url = server.url
    try:
        max_queue = get(url, "/health")["max_queue"]
        warm, _ = post(url, body(QUERIES[0], "base", model), args.api_key)
        clients = min(args.clients, max_queue)  # more could be refused (503): that is phase 3
        rows = [
            throughput(url, args.api_key, kind, count, clients, model)
            for kind, count in (("base", args.base), ("ttsi", args.ttsi))
            if count > 0
        ]
        stream = streaming(url, args.api_key, args.stream, model) if args.stream else None
        over = overload(url, args.api_key, 4 * max_queue, model)
        cancel = cancellation(url, args.api_key, args.cancels, model, args.cancel_examples) if args.cancels else None
        health = get(url, "/health")
    except urllib.error.HTTPError as error:
        sys.exit(f"error: {error.code} {error.read().decode()[:300]}")
    finally:
        if server:
            server.shutdown()
            server.server_close()
    load_after = os.getloadavg()
    report(url, model, warm, rows, stream, over, cancel, health, max_queue, load_before, load_after)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "url": url,
                    "model": model,
                    "warmup_s": round(warm, 2),
                    "phases": rows,
                    "streaming": stream,
                    "overload": over,
                    "cancellation": cancel,
                    "health": health,
                    "loadavg": [load_before, load_after],
                },
                indent=2,
            )
        )


def report(url, model, warm, rows, stream, over, cancel, health, max_queue, load_before, load_after):
    print(f"server: {url} model: {model or '(remote)'}  max-queue: {max_queue}  warm-up request: {warm:.2f}s")
    print(
        f"machine load average (1, 5, 15 min): before {', '.join(f'{x:.2f}' for x in load_before)}; "
        f"after {', '.join(f'{x:.2f}' for x in load_after)} ({os.cpu_count()} cores)"
    )
    print(
        f"\n{'kind':<6}{'reqs':>5}{'clients':>8}{'wall s':>9}{'req/s':>8}{'p50 s':>8}{'p90 s':>8}{'p99 s':>8}"
        f"{'adapted':>9}  server mean s per phase"
    )
    for r in rows:
        print(
            f"{r['kind']:<6}{r['requests']:>5}{r['clients']:>8}{r['wall_s']:>9}{r['requests_per_s']:>8}"
            f"{r['p50_s']:>8}{r['p90_s']:>8}{r['p99_s']:>8}{r['adapted']:>9}  {r['server_mean_s']}"
        )
    if stream:
        m = stream["mean"]
        print(
            f"\nstreaming TT-SI ({stream['requests']} requests, one at a time): first byte {m['first_byte_s']:.2f}s, "
            f"first answer delta {m['first_delta_s']:.2f}s, complete answer {m['complete_s']:.2f}s "
            f"(first byte at {stream['first_byte_share']:.0%} of the complete time, "
            f"{m['complete_s'] / m['first_byte_s']:.1f}x sooner)"
        )
        for r in stream["rows"]:
            print(
                f"  first byte {r['first_byte_s']:.2f}s  first delta {r['first_delta_s']:.2f}s  "
                f"complete {r['complete_s']:.2f}s  progress comments {r['comments']}"
            )
    print(
        f"\noverload: {over['clients']} TT-SI clients at once (4 x max-queue {max_queue}): {over['accepted']} accepted, "
        f"{over['status_503']} got 503 (Retry-After {over['retry_after_s']} s), {over['other_errors']} other errors; "
        f"{over['accepted_right']}/{over['accepted']} accepted answers equal the sequential baseline; "
        f"wall {over['wall_s']:.2f}s"
    )
    if cancel:
        print(
            f"\ncancellation: {cancel['abandons']} TT-SI requests (K={cancel['examples']}, {cancel['synthetic']} kept) abandoned a quarter "
            f"into training, which takes {cancel['training_if_not_abandoned_s']}s when not abandoned "
            f"({cancel['cancelled_by_server']} counted cancelled by the server); the next "
            f"request waited {cancel['mean_queue_s']:.3f}s on average (max {cancel['max_queue_s']:.3f}s) for the "
            f"model, {cancel['training_if_not_abandoned_s'] / max(cancel['max_queue_s'], 1e-3):.0f}x less than the "
            f"training; {cancel['right']}/{cancel['abandons']} of those next answers right"
        )
        for r in cancel["rows"]:
            print(
                f"  next request queued {r['queue_s']:.3f}s, answered {r['close_to_answer_s']:.2f}s after the close "
                f"(alone it takes {cancel['base_alone_s']:.2f}s server time), right: {r['right']}"
            )
    print(f"\n/health after the run: {json.dumps(health)}")


if __name__ == "__main__":
    main()
