"""Load test for `mlx-ttsi serve`: requests/s and latency percentiles for base and TT-SI requests.

    python bench/load.py                       # starts the server in-process on the embedded model
    python bench/load.py --url http://127.0.0.1:8080/v1 --api-key KEY
    python bench/load.py --clients 8 --base 16 --ttsi 4 --json runs/load.json

Each phase sends its requests from `--clients` concurrent clients (the server answers them one at
a time, so latency includes queueing). Base requests never adapt (ttsi.mode "base"); TT-SI requests
always do (ttsi.mode "ttsi": synthesize, train a LoRA, answer, reset). One warm-up request runs first.
"""

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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


def post(url, body, api_key=None, timeout=900):
    """One chat completion: (seconds, response dict)."""
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(url + "/chat/completions", json.dumps(body).encode(), headers)
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data = json.loads(response.read())
    return time.perf_counter() - started, data


def percentile(values, q):
    """Linear-interpolated percentile (q in 0..100) of a small sample."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def phase(url, api_key, kind, count, clients, model):
    """Send `count` requests of one kind from `clients` threads; returns the phase's figures."""
    mode = "base" if kind == "base" else "ttsi"

    def one(index):
        body = {"model": model, "messages": [{"role": "user", "content": QUERIES[index % len(QUERIES)]}],
                "tools": TOOLS, "ttsi": {"mode": mode}}
        return post(url, body, api_key)

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(count)))
    wall = time.perf_counter() - started
    latencies = [seconds for seconds, _ in results]
    server = [data["ttsi"]["timings"] for _, data in results]
    phases = {}
    for name in ("scoring", "synthesis", "training", "answering", "total"):
        values = [t[name] for t in server if name in t]
        if values:
            phases[name] = round(statistics.mean(values), 3)
    return {
        "kind": kind, "requests": count, "clients": clients, "wall_s": round(wall, 2),
        "requests_per_s": round(count / wall, 3),
        "p50_s": round(percentile(latencies, 50), 2), "p90_s": round(percentile(latencies, 90), 2),
        "p99_s": round(percentile(latencies, 99), 2), "max_s": round(max(latencies), 2),
        "adapted": sum(data["ttsi"]["adapted"] for _, data in results),
        "server_mean_s": phases,
    }


def start_server(model, epochs):
    """The server in this process, on a free loopback port; returns (url, served model name)."""
    sys.path.insert(0, str(ROOT))
    from mlx_ttsi.agent import Agent
    from mlx_ttsi.settings import LoRASettings, Settings
    from mlx_ttsi.server import make_server

    agent = Agent.load(model, settings=Settings(lora=LoRASettings(epochs=epochs)))
    server = make_server(agent, "127.0.0.1", 0, quiet=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, agent.name


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a running server's base URL (…/v1); default: start one in-process")
    parser.add_argument("--api-key")
    parser.add_argument("--model", default="smollm2-135m", help="model for the in-process server")
    parser.add_argument("--epochs", type=int, default=5, help="LoRA epochs of the in-process server")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--base", type=int, default=8, help="base requests")
    parser.add_argument("--ttsi", type=int, default=2, help="TT-SI requests")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    server = None
    if args.url:
        url, model = args.url.rstrip("/"), None
    else:
        server, model = start_server(args.model, args.epochs)
        url = server.url
    try:
        warm, _ = post(url, {"model": model, "messages": [{"role": "user", "content": QUERIES[0]}],
                             "tools": TOOLS, "ttsi": {"mode": "base"}}, args.api_key)
        rows = [phase(url, args.api_key, kind, count, args.clients, model)
                for kind, count in (("base", args.base), ("ttsi", args.ttsi)) if count > 0]
    except urllib.error.HTTPError as error:
        sys.exit(f"error: {error.code} {error.read().decode()[:300]}")
    finally:
        if server:
            server.shutdown()
            server.server_close()
    print(f"server: {url} model: {model or '(remote)'}  warm-up request: {warm:.2f}s")
    print(f"{'kind':<6}{'reqs':>5}{'clients':>8}{'wall s':>9}{'req/s':>8}{'p50 s':>8}{'p90 s':>8}{'p99 s':>8}"
          f"{'adapted':>9}  server mean s per phase")
    for r in rows:
        print(f"{r['kind']:<6}{r['requests']:>5}{r['clients']:>8}{r['wall_s']:>9}{r['requests_per_s']:>8}"
              f"{r['p50_s']:>8}{r['p90_s']:>8}{r['p99_s']:>8}{r['adapted']:>9}  {r['server_mean_s']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"url": url, "model": model, "warmup_s": round(warm, 2), "phases": rows},
                                        indent=2))


if __name__ == "__main__":
    main()
