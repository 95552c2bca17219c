"""Concurrent clients of `mlx-ttsi serve` answered one at a time against side by side (--parallel).

    python bench/server_parallel.py [--model qwen2.5-coder-0.5b] [--clients 8] [--parallel 4] [--mode check]

One agent, two in-process servers on it: `--parallel 1` and `--parallel N`. Each round, `--clients`
clients post at once, each one SealTool row (its request and its own tools, prefixes warmed first),
to one server, then to the other (which goes first alternates). Prints, per round and server, the
seconds until the last answer, requests per hour, the clients' p50/p90 latency (queueing included),
how many requests the server answered side by side, and whether every answer is the same both ways.
"""

import argparse
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from mlx_ttsi.agent import Agent
from mlx_ttsi.serve.http import make_server

from _common import machine, percentile, sealtool_rows
from load import calls_of, get, post


def answer_of(response):
    """The calls and the uncertainty's score (rounded: batched passes sum in another order)."""
    u = response["ttsi"]["uncertainty"]
    return calls_of(response), u and round(u["score"], 4)


def burst(server, rows, mode):
    """All rows posted at once: (seconds to the last answer, latencies, answers, requests answered together)."""
    before = get(server.url, "/health")["together"]
    barrier = threading.Barrier(len(rows))

    def one(row):
        barrier.wait()
        messages = [{"role": "user", "content": row["query"]}]
        return post(server.url, {"messages": messages, "tools": row["tools"], "ttsi": {"mode": mode}})

    started = time.perf_counter()
    with ThreadPoolExecutor(len(rows)) as pool:
        results = list(pool.map(one, rows))
    seconds = time.perf_counter() - started
    together = get(server.url, "/health")["together"] - before
    return seconds, [s for s, _ in results], [answer_of(r) for _, r in results], together


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--mode", default="check", choices=["base", "check", "plan"])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    agent = Agent.load(args.model)
    rows = sealtool_rows()[args.start : args.start + args.clients]
    for row in rows:
        agent.warm(row["tools"])
    servers = {
        n: make_server(agent, "127.0.0.1", 0, max_queue=args.clients, parallel=n, quiet=True)
        for n in (1, args.parallel)
    }
    for server in servers.values():
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print(machine())
    print(f"{args.model}, mode {args.mode}, {args.clients} clients, SealTool rows from {args.start}")
    print(
        "| round | parallel | seconds | requests/h | p50 s | p90 s | answered together |\n|---|---|---|---|---|---|---|"
    )
    ratios, same = [], True
    for index in range(args.rounds):
        order = [1, args.parallel] if index % 2 == 0 else [args.parallel, 1]
        runs = {}
        for n in order:
            seconds, latencies, answers, together = runs[n] = burst(servers[n], rows, args.mode)
            rate = 3600 * len(rows) / seconds
            p50, p90 = percentile(latencies, 50), percentile(latencies, 90)
            print(f"| {index + 1} | {n} | {seconds:.1f} | {rate:.0f} | {p50:.1f} | {p90:.1f} | {together} |")
        ratios.append(runs[args.parallel][0] / runs[1][0])
        same = same and runs[1][2] == runs[args.parallel][2]
    median = statistics.median(ratios)
    print(
        f"\nparallel {args.parallel} / parallel 1, seconds, median of {len(ratios)}: {median:.2f} "
        f"({1 / median:.2f}x the requests per hour); same answers: {'yes' if same else 'NO'}"
    )
    for server in servers.values():
        server.shutdown()
        server.server_close()
        server.service.close()


if __name__ == "__main__":
    main()
