"""Reliability under bad input: a bounded run against a real `mlx-ttsi serve` that is kept busy.

    python bench/reliability.py                              # starts `mlx-ttsi serve` on the embedded model
    python bench/reliability.py --model DIR --repeat 20 --json runs/reliability.json

It starts `python -m mlx_ttsi serve` on a free loopback port, sends one warm-up request, then keeps
the model busy (one client sending TT-SI requests back to back) while it sends every kind of bad
input `--repeat` times from `--clients` threads: malformed JSON, a wrong type in every field, an
unknown tool in tool_choice, invalid tool schemas, bad Content-Length headers, bodies cut off
mid-way, a Content-Length larger than the body, a slow sender, oversized bodies, a garbage request
line, deeply nested JSON, messages of the wrong shape (a `tool_calls` that is a number, a content
part whose text is a number, a role that is a list, call arguments nested 900 deep), a schema
nested 150 levels, `$ref`s to a URL (a loopback server this script runs, which must never be asked
for anything) and to local files, headers that trickle in. Each must get its 4xx within `--limit`
seconds of its last byte (a slow sender: within the body deadline, server.BODY_SECONDS, plus
`--limit`; trickling headers: a closed connection within server.HEADER_SECONDS plus `--limit`). Then
one more connection than the server serves at once must get 503 at once. Then, `--disconnects` times each, clients that
hang up while queued, while their LoRA trains and while their answer streams: the server must flag
them (its `cancelled` count) within `--limit` seconds. At the end the server must still be up, with
nothing waiting, not busy, every admitted request answered, cancelled or failed, nothing fetched
from the `$ref` URL, and the same number of threads as after the warm-up. It prints the figures and
the machine's load average.
"""

import argparse
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from mlx_ttsi.serve.http import BODY_SECONDS, HEADER_SECONDS  # noqa: E402

KEY = "reliability"
TOOLS = json.loads((ROOT / "mlx_ttsi" / "examples" / "tools.json").read_text())
ASK = [{"role": "user", "content": "Will it rain in Lisbon tomorrow? Give me the temperature in celsius."}]


def chat(**fields):
    return json.dumps({"messages": ASK, "tools": TOOLS, **fields}).encode()


def tool(parameters, name="f"):
    return [{"type": "function", "function": {"name": name, "parameters": parameters}}]


def ref(target):
    return tool({"type": "object", "properties": {"x": {"$ref": target}}})


def nested(levels):
    schema = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


class Trap:
    """A loopback HTTP server a `$ref` points at: it records every request, and none may come."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        hits = self.hits = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/schema.json"


TRAP = Trap()


# name: the body sent with a correct Content-Length (every one must get 400, or 404 for the model)
BAD_BODIES = {
    "malformed JSON": b'{"messages": [{"role": "user", "content": "hi"',
    "not UTF-8": b'{"messages": "\xff\xfe"}',
    "body not an object": b"[1, 2, 3]",
    "model: number": chat(model=5),
    "model: unknown": chat(model="/etc/passwd"),
    "messages: string": chat(messages="hi"),
    "messages: empty": chat(messages=[]),
    "messages: number item": chat(messages=[5]),
    "messages: unknown role": chat(messages=[{"role": "robot", "content": "hi"}]),
    "messages: only system": chat(messages=[{"role": "system", "content": "hi"}]),
    "messages: tool_calls string": chat(messages=[{"role": "user", "content": "hi", "tool_calls": "x"}]),
    "messages: call arguments not JSON": chat(
        messages=[
            *ASK,
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f", "arguments": "{nope"}}]},
        ]
    ),
    "messages: over 200k characters": chat(messages=[{"role": "user", "content": "x" * 200_001}]),
    "tools: string": chat(tools="tools.json"),
    "tools: number item": chat(tools=[5]),
    "tool_choice: number": chat(tool_choice=5),
    "tool_choice: list": chat(tool_choice=["auto"]),
    "tool_choice: unknown tool": chat(tool_choice={"type": "function", "function": {"name": "nope"}}),
    "stream: string": chat(stream="yes"),
    "stream_options: number": chat(stream_options=5),
    "stream_options.include_usage: string": chat(stream_options={"include_usage": "yes"}),
    "seed: string": chat(seed="1"),
    "max_tokens: string": chat(max_tokens="5"),
    "max_tokens: zero": chat(max_tokens=0),
    "max_completion_tokens: negative": chat(max_completion_tokens=-1),
    "temperature: string": chat(temperature="hot"),
    "temperature: 5": chat(temperature=5),
    "n: 2": chat(n=2),
    "n: true": chat(n=True),
    "ttsi: string": chat(ttsi="fast"),
    "ttsi: unknown field": chat(ttsi={"save_adapter": "/tmp/x"}),
    "ttsi.mode: number": chat(ttsi={"mode": 5}),
    "ttsi.threshold: string": chat(ttsi={"threshold": "high"}),
    "ttsi.examples: float": chat(ttsi={"examples": 1.5}),
    "ttsi.examples: 1000": chat(ttsi={"examples": 1000}),
    "schema: unknown type": chat(tools=tool({"type": "object", "properties": {"x": {"type": "nonsense"}}})),
    "schema: parameters a string": chat(tools=tool("x")),
    "schema: parameters an array type": chat(tools=tool({"type": "array"})),
    "schema: required not a list": chat(tools=tool({"type": "object", "required": "x"})),
    "schema: bad pattern type": chat(tools=tool({"type": "object", "properties": {"x": {"pattern": 5}}})),
    "schema: tool name with spaces": chat(tools=tool({"type": "object"}, name="two words")),
    "schema: duplicate tool names": chat(tools=tool({"type": "object"}) * 2),
    "schema: non-function type": chat(tools=[{"type": "retrieval"}]),
    "schema: $ref to a loopback URL": chat(tools=ref(TRAP.url)),
    "schema: $ref to a local file": chat(tools=ref("file:///etc/passwd")),
    "schema: $ref to /dev/zero": chat(tools=ref("file:///dev/zero")),
    "schema: $ref to nowhere inside": chat(tools=ref("#/$defs/nope")),
    "schema: nested 150 levels": chat(tools=tool(nested(150))),
    "body: nested 100000 deep": b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "body: unclosed nesting": b'{"messages": ' + b"[" * 100_000,
    "messages: tool_calls a number": chat(messages=[*ASK, {"role": "assistant", "tool_calls": 5}]),
    "messages: content part text a number": chat(messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}]),
    "messages: role a list": chat(messages=[{"role": ["user"], "content": "hi"}]),
    "messages: call arguments nested 900 deep": chat(
        messages=[
            *ASK,
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[" * 900 + "]" * 900}}]},
        ]
    ),
}


class Server:
    """`python -m mlx_ttsi serve` in a child process, on a free loopback port."""

    def __init__(self, model, max_queue):
        command = [
            sys.executable,
            "-m",
            "mlx_ttsi",
            "serve",
            "--model",
            model,
            "--port",
            "0",
            "--api-key",
            KEY,
            "--max-queue",
            str(max_queue),
            "-q",
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        for line in self.process.stderr:
            if line.startswith("serving"):
                host, port = line.split("http://")[1].split("/")[0].rsplit(":", 1)
                self.address = (host, int(port))
                break
        else:
            sys.exit("the server did not start: " + (self.process.stderr.read() or "")[-500:])
        self.log = []  # what the server writes on stderr after starting (a traceback would land here)
        threading.Thread(target=lambda: self.log.extend(self.process.stderr), daemon=True).start()

    def threads(self):
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))

    def health(self):
        connection = http.client.HTTPConnection(*self.address, timeout=10)
        connection.request("GET", "/health")
        data = json.loads(connection.getresponse().read())
        connection.close()
        return data

    def post(self, body, timeout=900):
        connection = http.client.HTTPConnection(*self.address, timeout=timeout)
        connection.request("POST", "/v1/chat/completions", body, {"Authorization": f"Bearer {KEY}"})
        response = connection.getresponse()
        data = response.read()
        connection.close()
        return response.status, data

    def stop(self):
        self.process.terminate()
        self.process.wait(60)


def raw(server, body=b"", length=None, key=KEY):
    """A socket with a hand-written POST: its headers (Content-Length `length`, default the body's) and `body`."""
    sock = socket.create_connection(server.address, timeout=30)
    size = str(len(body) if length is None else length).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
        + key.encode()
        + b"\r\nContent-Length: "
        + size
        + b"\r\n\r\n"
        + body
    )
    return sock


def answer_of(sock, since=None):
    """(status or "closed", seconds since `since`) of the response on `sock`."""
    since = since or time.perf_counter()
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
    except OSError:
        data = b""
    finally:
        sock.close()
    return (data.split(b" ")[1].decode() if data.startswith(b"HTTP/") else "closed"), time.perf_counter() - since


def bad_body(server, body):
    return answer_of(raw(server, body))


def cut_off(server):
    whole = chat()
    sock = raw(server, whole[: len(whole) // 2], length=len(whole))
    sock.shutdown(socket.SHUT_WR)
    return answer_of(sock)


def stalled(server):
    whole = chat()
    return answer_of(raw(server, whole[: len(whole) // 2], length=len(whole)))


def slow_sender(server):
    whole = chat()
    sock = raw(server, b"", length=len(whole))
    started = time.perf_counter()
    try:
        for i in range(0, len(whole), 4):  # 4 bytes every 50 ms: never idle, far too slow
            sock.sendall(whole[i : i + 4])
            time.sleep(0.05)
    except OSError:  # answered and closed
        pass
    status, _ = answer_of(sock)
    return status, time.perf_counter() - started - BODY_SECONDS  # after the body's deadline


def oversize_sent(server):
    sock = raw(server, b"", length=2 << 20)
    since = time.perf_counter()
    try:
        sock.sendall(b"x" * (2 << 20))
    except OSError:
        pass
    return answer_of(sock, since)


def oversize_claimed(server):
    return answer_of(raw(server, b"", length=50 << 20))


def header_case(extra, length=""):
    def send(server):
        sock = socket.create_connection(server.address, timeout=30)
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + KEY.encode()
            + b"\r\n"
            + extra
            + b"\r\n"
            + chat()
        )
        return answer_of(sock)

    return send


def trickled_headers(server):
    """Header bytes every 0.2 s, never finished: the server must close the connection by its header deadline."""
    sock = socket.create_connection(server.address, timeout=30)
    started = time.perf_counter()
    try:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")
        while time.perf_counter() - started < HEADER_SECONDS + 10:
            sock.sendall(b"X")
            time.sleep(0.2)
            if not open_socket(sock):
                break
    except OSError:  # closed by the server
        pass
    status, _ = answer_of(sock)
    return status, time.perf_counter() - started - HEADER_SECONDS  # after the header deadline


def open_socket(sock):
    """False once the server has closed its end."""
    sock.setblocking(False)
    try:
        return sock.recv(1 << 16) != b""
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)


def over_the_cap(server):
    """max_connections idle connections, then one more request: (its status, seconds)."""
    cap = server.health()["max_connections"]
    idle = [socket.create_connection(server.address, timeout=30) for _ in range(cap)]
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:  # the last idle connection is being accepted
            status, seconds = answer_of(raw(server, chat()))
            if status == "503":
                return status, seconds
            time.sleep(0.05)
        return status, seconds
    finally:
        for sock in idle:
            sock.close()


def garbage_line(server):
    sock = socket.create_connection(server.address, timeout=30)
    sock.sendall(b"\x16\x03\x01 GARBAGE\r\n\r\n")
    return answer_of(sock)


# name: (send, the statuses it may get, extra seconds allowed)
CASES = {
    name: (lambda server, body=body: bad_body(server, body), {"400", "404"}, 0) for name, body in BAD_BODIES.items()
}
CASES.update(
    {
        "body cut off (client closes)": (cut_off, {"400", "closed"}, 0),
        "Content-Length larger than the body": (stalled, {"408"}, 0.5),
        "slow sender (after the body deadline)": (slow_sender, {"408", "closed"}, 0),
        "oversize body sent (2 MiB)": (oversize_sent, {"413"}, 0),
        "oversize body claimed (50 MB), not sent": (oversize_claimed, {"413"}, 0),
        "Content-Length not a number": (header_case(b"Content-Length: abc\r\n"), {"400", "411"}, 0),
        "Content-Length negative": (header_case(b"Content-Length: -5\r\n"), {"400", "411"}, 0),
        "no Content-Length": (header_case(b""), {"411"}, 0),
        "chunked body": (header_case(b"Transfer-Encoding: chunked\r\n"), {"411"}, 0),
        "wrong API key": (lambda server: answer_of(raw(server, chat(), key="wrong")), {"401"}, 0),
        "garbage request line": (garbage_line, {"400", "closed"}, 0),
        "headers trickled (after the header deadline)": (trickled_headers, {"closed"}, 0),
    }
)


# sent once, after the others: (send, the statuses it may get, extra seconds allowed)
ALONE = {"one connection over the cap": (over_the_cap, {"503"}, 0)}


def busy_loop(server, stop, done):
    """Keeps the model busy: TT-SI requests one after another until `stop`."""
    while not stop.is_set():
        status, _ = server.post(chat(ttsi={"mode": "ttsi"}))
        done.append(status)


def streamed(server, body, until):
    """A streamed request read up to the first line for which until(line) holds; then hung up."""
    sock = raw(server, body)
    reader = sock.makefile("rb")
    for line in reader:
        if until(line.decode(errors="replace")):
            break
    reader.close()
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def disconnect(server, how):
    """A client hanging up `how` ("queued", "training" or "streaming"); seconds until the server flags it."""
    cancelled = server.health()["cancelled"]
    if how == "queued":  # behind the busy loop's request: hung up once /health shows it waiting
        waiting = server.health()["waiting"]
        sock = raw(server, chat(ttsi={"mode": "ttsi"}))
        deadline = time.monotonic() + 10
        while server.health()["waiting"] <= waiting and time.monotonic() < deadline:
            time.sleep(0.01)
        sock.close()
    elif how == "training":  # the `: synthesis` comment comes just before training starts
        streamed(
            server, chat(stream=True, ttsi={"mode": "ttsi", "examples": 8}), lambda line: line.startswith(": synthesis")
        )
    else:  # the first answer delta of a TT-SI answer (the answer is decoded after training)
        streamed(server, chat(stream=True, ttsi={"mode": "ttsi"}), lambda line: '"tool_calls"' in line)
    gone = time.perf_counter()
    while (health := server.health())["cancelled"] == cancelled:
        if how != "queued" and not health["busy"] and health["waiting"] == 0:
            return "answered first", time.perf_counter() - gone  # it finished before the hang-up was seen
        if time.perf_counter() - gone > 30:
            return "not flagged", time.perf_counter() - gone
        time.sleep(0.02)
    return "flagged", time.perf_counter() - gone


def run_cases(server, repeat, clients):
    tasks = [(name, i) for i in range(repeat) for name in CASES]
    results = {name: [] for name in CASES}

    def one(task):
        name, _ = task
        send, _, _ = CASES[name]
        results[name].append(send(server))

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, tasks))
    return results


def settle(server, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        health = server.health()
        if not health["busy"] and health["waiting"] == 0:
            return health
        time.sleep(0.2)
    return server.health()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="the served model")
    parser.add_argument("--repeat", type=int, default=10, help="times each bad input is sent")
    parser.add_argument("--clients", type=int, default=4, help="threads sending bad input at once")
    parser.add_argument("--disconnects", type=int, default=2, help="times each kind of disconnect is tried")
    parser.add_argument("--max-queue", type=int, default=4)
    parser.add_argument("--limit", type=float, default=1.0, help="seconds allowed for each answer")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    load_before = os.getloadavg()
    started = time.perf_counter()
    server = Server(args.model, args.max_queue)
    try:
        status, _ = server.post(chat(ttsi={"mode": "ttsi"}))  # warm-up: the model thread and MLX's are running
        assert status == 200, status
        threads_before, health_before = server.threads(), server.health()
        stop, done = threading.Event(), []
        busy = threading.Thread(target=busy_loop, args=(server, stop, done), daemon=True)
        busy.start()
        while not server.health()["busy"]:
            time.sleep(0.05)
        results = run_cases(server, args.repeat, args.clients)
        threads_busy = server.threads()
        gone = {"queued": [disconnect(server, "queued") for _ in range(args.disconnects)]}
        stop.set()
        busy.join(900)
        settle(server)  # then on an idle model: the connection cap; hung up while training, while streaming
        results.update({name: [send(server)] for name, (send, _, _) in ALONE.items()})
        time.sleep(1)  # the idle connections' threads end
        gone.update(
            {how: [disconnect(server, how) for _ in range(args.disconnects)] for how in ("training", "streaming")}
        )
        health_after = settle(server)
        time.sleep(1)  # connection threads of closed sockets end
        threads_after = server.threads()
        alive = server.process.poll() is None
    finally:
        server.stop()
    figures = report(
        args,
        results,
        gone,
        done,
        health_before,
        health_after,
        threads_before,
        threads_busy,
        threads_after,
        alive,
        server.log,
        load_before,
        os.getloadavg(),
        time.perf_counter() - started,
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))
    sys.exit(0 if figures["all_ok"] else 1)


def report(
    args,
    results,
    gone,
    done,
    before,
    after,
    threads_before,
    threads_busy,
    threads_after,
    alive,
    log,
    load_before,
    load_after,
    seconds,
):
    rows, all_ok = [], True
    print(
        f"model {args.model}; {len(CASES)} kinds of bad input x {args.repeat} from {args.clients} clients "
        f"(and {len(ALONE)} sent once), "
        f"while the model was busy; limit {args.limit}s"
    )
    print(f"{'case':<44}{'answers':<22}{'p50 s':>7}{'max s':>7}  ok")
    for name, outcomes in results.items():
        _, allowed, extra = {**CASES, **ALONE}[name]
        statuses = Counter(status for status, _ in outcomes)
        times = [t for _, t in outcomes]
        ok = set(statuses) <= allowed and max(times) <= args.limit + extra
        all_ok &= ok
        rows.append(
            {
                "case": name,
                "answers": dict(statuses),
                "p50_s": round(statistics.median(times), 3),
                "max_s": round(max(times), 3),
                "ok": ok,
            }
        )
        answers = ", ".join(f"{n} x {s}" for s, n in sorted(statuses.items()))
        print(f"{name:<44}{answers:<22}{statistics.median(times):>7.3f}{max(times):>7.3f}  {'yes' if ok else 'NO'}")
    print("\nclients that hung up (seconds until the server flagged them as cancelled):")
    for how, outcomes in gone.items():
        ok = all(status in ("flagged", "answered first") and t <= args.limit for status, t in outcomes)
        all_ok &= ok
        print(f"  {how:<10} {', '.join(f'{status} {t:.2f}s' for status, t in outcomes)}  {'yes' if ok else 'NO'}")
    counters = ("received", "answered", "cancelled", "failed", "rejected")
    delta = {k: after[k] - before[k] for k in counters}
    balanced = delta["received"] == delta["answered"] + delta["cancelled"] + delta["failed"]
    settled = not after["busy"] and after["waiting"] == 0
    tracebacks = [line for line in log if "Traceback" in line]
    checks = {
        "server up": alive,
        "nothing waiting, not busy": settled,
        "every admitted request answered, cancelled or failed": balanced,
        "threads back to where they were": threads_after == threads_before,
        "no traceback": not tracebacks,
        "nothing fetched from the $ref URL": TRAP.hits == [],
    }
    all_ok &= all(checks.values())
    print(f"\nbusy-loop TT-SI requests answered meanwhile: {len(done)} ({dict(Counter(done))})")
    print(f"/health counters over the run: {delta}; after: busy {after['busy']}, waiting {after['waiting']}")
    print(
        f"server threads: {threads_before} after the warm-up, {threads_busy} during the bad input, {threads_after} at the end"
    )
    for check, ok in checks.items():
        print(f"  {check}: {'yes' if ok else 'NO'}")
    print(
        f"load average (1, 5, 15 min): before {', '.join(f'{x:.2f}' for x in load_before)}; after "
        f"{', '.join(f'{x:.2f}' for x in load_after)} ({os.cpu_count()} cores); {seconds:.0f} s in all"
    )
    print("all within limits" if all_ok else "SOME CHECKS FAILED")
    return {
        "cases": rows,
        "disconnects": gone,
        "busy_requests": len(done),
        "health_delta": delta,
        "checks": checks,
        "threads": [threads_before, threads_busy, threads_after],
        "loadavg": [load_before, load_after],
        "seconds": round(seconds, 1),
        "all_ok": all_ok,
    }


if __name__ == "__main__":
    main()
