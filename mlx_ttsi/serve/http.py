"""An OpenAI-compatible HTTP server over one Agent: POST /v1/chat/completions, GET /v1/models, /health.

The HTTP transport of service.py, on the standard library like mlx-lm's server: a
ThreadingHTTPServer speaks HTTP/1.1 (keep-alive) on one thread per connection. That thread reads
and parses the body (service.parse: a bad request is refused before it is queued), admits it, then
relays the model thread's events as they come. It alone uses its socket: while it waits it checks
every POLL seconds that the client is still there, and when it is not, sets the job's `gone` flag,
which the model thread reads before each forward pass and training step.

    server = make_server(agent, "127.0.0.1", 8080, api_key="secret", max_queue=16)
    server.serve_forever()
"""

import io
import json
import queue
import select
import socket
import socketserver
import sys
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from ..tools import MAX_NESTING as SCHEMA_NESTING
from ..tools import too_deep
from .service import MAX_QUEUE, PARALLEL, APIError, Service, api_error
from .streaming import error_event

MAX_BODY = 1 << 20  # bytes; larger request bodies get 413
DRAIN = 16 << 20  # an oversize body up to this is read and dropped, so the client sees the 413
POLL = 0.25  # seconds between checks that a waiting request's client is still there
BODY_IDLE = 0.5  # seconds a request body may pause before it gets 408
BODY_SECONDS, BODY_RATE = 2.0, 256 << 10  # a body's deadline: 2 s plus 1 s per 256 KiB
HEADER_SECONDS = 10.0  # a request's line and headers must all arrive within this of its first byte
MAX_CONNECTIONS = 64  # connections served at once (at least twice --max-queue); one more gets 503
MAX_NESTING = SCHEMA_NESTING + 8  # levels of a request body: a tool's schema sits 5 levels down


def connected(sock):
    """False once the client has closed its end (peeks, consumes nothing)."""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        if not poller.poll(0):
            return True
        return sock.recv(1, socket.MSG_PEEK) != b""
    except (OSError, ValueError):  # ValueError: the socket is already closed here
        return False


class Reader(socket.SocketIO):
    """The connection's reading side: while `deadline` (a monotonic time) is set, no read waits past it."""

    deadline = None

    def readinto(self, buffer):
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the request line and headers took too long")
            self._sock.settimeout(min(left, Handler.timeout))
        return super().readinto(buffer)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every response has a Content-Length or is chunked
    server_version = "mlx-ttsi"
    timeout = 60  # seconds a client may take to send its request, to read the answer, or idle between requests

    @property
    def service(self):
        return self.server.service

    def setup(self):
        super().setup()
        self.rfile.close()  # read through a Reader instead, so the headers get an overall deadline
        self.reader = Reader(self.connection, "rb")
        self.rfile = io.BufferedReader(self.reader)

    def handle_one_request(self):
        """http.server's, but once a request's first byte comes (the wait for it is the keep-alive idle
        time), its line and headers must all arrive within HEADER_SECONDS, however slowly they trickle."""
        try:
            if not self.rfile.peek(1):  # the client closed the connection
                self.close_connection = True
                return
        except OSError:  # idle over `timeout`, or reset
            self.close_connection = True
            return
        self.reader.deadline = time.monotonic() + HEADER_SECONDS
        super().handle_one_request()  # a header read past the deadline times out: the connection is closed

    def parse_request(self):
        parsed = super().parse_request()
        self.reader.deadline = None  # the headers are in: the body has its own limits (_read_body)
        self.connection.settimeout(self.timeout)
        return parsed

    def do_GET(self):
        self.unread = False  # a GET's body, if any, is not read
        path = self.path.split("?")[0].rstrip("/")
        if path == "/health":
            return self._json(200, self.service.health())
        if not self._authorized():
            return
        if path == "/v1/models":
            return self._json(200, {"object": "list", "data": [self.service.model_card()]})
        card = self.service.model_card(path[len("/v1/models/") :]) if path.startswith("/v1/models/") else None
        if card is not None:
            return self._json(200, card)
        code = "model_not_found" if path.startswith("/v1/models/") else "not_found"
        self._error(APIError(404, f"no such endpoint or model: GET {path}", code))

    def do_POST(self):
        self.unread = True  # the body is still on the socket: an error now must close the connection
        self.oversize = 0  # bytes of an oversize body, dropped after its 413 is sent
        self.service.count("inflight")
        try:
            self._post()
            if self.oversize:
                self._discard(self.oversize)
        finally:
            self.service.count("inflight", -1)

    def _post(self):
        """Check the request, admit it, then wait for its answer (or stream it) while the client stays."""
        path = self.path.split("?")[0].rstrip("/")
        if path != "/v1/chat/completions":
            return self._error(APIError(404, f"no such endpoint: POST {path}", "not_found"))
        if not self._authorized():
            return
        try:
            job = self.service.submit(self.service.parse(self._read_json()))
        except APIError as error:
            return self._error(error)
        try:
            self._respond(job)
        except OSError:  # a write failed (reset, broken pipe, timeout): the client is gone
            self.close_connection = True
            self.log_message("client went away while its answer was being sent")
        finally:
            if not job.future.done():
                job.abandon()  # nobody waits for it any more: free the model

    def _respond(self, job):
        """Relay the job's events: a plain request gets its JSON at the end, a stream each event as it comes."""
        stream = self.service.stream(job)
        self.streaming = False  # the 200 and SSE headers are sent
        for kind, payload in self._events(job):
            if kind == "error":
                return self._failed(None if job.cancelled() else api_error(payload))
            if kind == "done" and stream is None:
                return self._json(200, payload)
            if stream is not None:
                self._send(stream.finish(payload) if kind == "done" else stream.event(kind, payload))
                if kind == "done":
                    return self._end_stream()

    def _events(self, job):
        """The job's events as the model thread sends them; this thread owns the socket and checks
        it every POLL seconds: when the client has gone, the job is abandoned (Job.gone)."""
        checked = time.monotonic()
        while True:
            try:
                kind, payload = job.events.get(timeout=POLL)
            except queue.Empty:
                kind = payload = None
            if kind is None or time.monotonic() - checked >= POLL:
                checked = time.monotonic()
                if not connected(self.connection):
                    job.abandon()
                    self.close_connection = True
                    self.log_message("client went away, request dropped")
                    return
            if kind is None:
                continue
            yield kind, payload
            if kind in ("done", "error"):
                return

    def _failed(self, error):
        """An error after admission: a status if nothing was sent yet, else an SSE error object then [DONE]."""
        if error is None:  # cancelled: its client is gone
            self.close_connection = True
        elif self.streaming:
            self._send([error_event(error)])
            self._end_stream()
        else:
            self._error(error)

    def _send(self, lines):
        """SSE text to the client, after the 200 and event-stream headers if they are not out yet."""
        if not self.streaming:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.chunked = self.request_version == "HTTP/1.1"
            if self.chunked:
                self.send_header("Transfer-Encoding", "chunked")  # the connection can stay open after
            else:
                self.send_header("Connection", "close")  # HTTP/1.0 has no chunks: the end is the close
                self.close_connection = True
            self.end_headers()
            self.streaming = True
        data = "".join(lines).encode()
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if self.chunked else data)

    def _end_stream(self):
        if self.chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _not_allowed(self):
        self.unread = True
        self._error(APIError(405, f"method {self.command} is not allowed", "method_not_allowed"))

    do_PUT = do_DELETE = do_PATCH = _not_allowed

    def _authorized(self):
        if self.service.authorized(self.headers.get("Authorization", "")):
            return True
        self._error(
            APIError(401, "invalid or missing API key (Authorization: Bearer KEY)", "invalid_api_key"),
            {"WWW-Authenticate": "Bearer"},
        )
        return False

    def _read_json(self):
        if self.headers.get("Transfer-Encoding"):
            raise APIError(411, "send the body with a Content-Length, not chunked")
        try:
            length = int(self.headers.get("Content-Length", ""))
            assert length >= 0
        except (ValueError, AssertionError):
            raise APIError(411, "a Content-Length header is required") from None
        if length > self.server.max_body:
            self.oversize = length
            raise APIError(413, f"the request body is over {self.server.max_body} bytes", "request_too_large")
        data = self._read_body(length)
        try:
            text = data.decode(json.detect_encoding(data))
            if too_deep(text, MAX_NESTING):  # refused before the parser recurses into it
                raise APIError(400, f"the request body nests over {MAX_NESTING} levels deep", "invalid_json")
            return json.loads(text)
        except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
            raise APIError(400, f"the request body is not valid JSON: {error}", "invalid_json") from None

    def _read_body(self, length):
        """The body, arriving without a pause over BODY_IDLE seconds and by its deadline (BODY_SECONDS
        plus a second per BODY_RATE bytes): a slow or stalled sender gets 408, a cut-off body 400."""
        deadline = time.monotonic() + BODY_SECONDS + length / BODY_RATE
        pieces, left = [], length
        self.connection.settimeout(BODY_IDLE)
        try:
            while left > 0:
                if time.monotonic() > deadline:
                    raise APIError(408, "the request body was sent too slowly", "request_timeout")
                piece = self.rfile.read1(min(left, 1 << 16))
                if not piece:
                    raise APIError(
                        400,
                        f"the request body ended after {length - left} of its {length} bytes (Content-Length)",
                        "incomplete_body",
                    )
                pieces.append(piece)
                left -= len(piece)
        except OSError:  # a pause over BODY_IDLE (TimeoutError) or a reset
            raise APIError(
                408,
                f"the request body stopped after {length - left} of its {length} bytes (Content-Length)",
                "request_timeout",
            ) from None
        finally:
            self.connection.settimeout(self.timeout)
        self.unread = False
        return b"".join(pieces)

    def _discard(self, length):
        """After a 413, read and drop what comes of the body (up to DRAIN), so the client reads the 413,
        not a reset; a client that stops sending is left after BODY_IDLE seconds."""
        left = min(length, DRAIN)
        self.connection.settimeout(BODY_IDLE)
        try:
            while left > 0:
                data = self.rfile.read1(min(left, 1 << 16))
                if not data:
                    break
                left -= len(data)
        except OSError:
            pass

    def _json(self, status, data, headers=None):
        body = json.dumps(data, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if getattr(self, "unread", False):  # a body left unread would be taken for the next request
            self.close_connection = True
            self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, error, headers=None):
        if error.retry_after is not None:
            headers = {**(headers or {}), "Retry-After": str(error.retry_after)}
        try:
            self._json(error.status, error.body(), headers)
        except OSError:
            self.close_connection = True

    def send_error(self, code, message=None, explain=None):
        """http.server's own errors (bad request line, headers too long) in the OpenAI shape too."""
        self.close_connection = True
        self.unread = True
        self._error(APIError(code, message or HTTPStatus(code).phrase))

    def log_message(self, format, *args):
        if not self.server.quiet:
            super().log_message(format, *args)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, service, quiet=False, max_body=MAX_BODY, max_connections=MAX_CONNECTIONS):
        self.address_family = socket.getaddrinfo(*address, type=socket.SOCK_STREAM)[0][0]
        self.service, self.quiet, self.max_body = service, quiet, max_body
        service.max_connections = max_connections
        super().__init__(address, Handler)

    def process_request(self, request, client_address):
        """A thread for the connection, while fewer than max_connections are served; else a 503, at once."""
        if not self.service.connect():
            return self._refuse(request)
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.service.count("connections", -1)

    def _refuse(self, request):
        """503 on a connection past the cap, written without waiting (this is the accepting thread)."""
        error = APIError(
            503,
            f"the server has {self.service.max_connections} connections open; retry later",
            "too_many_connections",
            retry_after=1,
        )
        body = json.dumps(error.body()).encode()
        head = (
            f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
            "\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
        )
        try:
            request.setblocking(False)
            request.sendall(head.encode() + body)
            request.recv(1 << 16)  # what the client already sent, so closing does not reset the 503
        except OSError:
            pass
        self.shutdown_request(request)

    def server_bind(self):  # skip HTTPServer's reverse DNS lookup of the host
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        """A client that resets or times out its connection is not a server fault: no traceback."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            if not self.quiet:
                sys.stderr.write(f"{client_address[0]} - connection ended: {sys.exc_info()[1]}\n")
            return
        super().handle_error(request, client_address)

    def server_close(self):
        super().server_close()
        self.service.close()

    @property
    def url(self):
        host, port = self.server_address[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/v1"


def make_server(
    agent,
    host="127.0.0.1",
    port=8080,
    api_key=None,
    memory=None,
    names=(),
    max_body=MAX_BODY,
    max_queue=MAX_QUEUE,
    parallel=PARALLEL,
    quiet=False,
    max_connections=None,
):
    """A bound server (port 0 picks a free one; see `.url`); run it with `.serve_forever()`.
    `max_queue`: requests that may wait for the model; more get 503 with Retry-After.
    `parallel`: waiting requests that never train answered side by side, at most.
    `max_connections`: connections served at once (default MAX_CONNECTIONS, or twice max_queue); more get 503."""
    service = Service(agent, api_key=api_key, memory=memory, names=names, max_queue=max_queue, parallel=parallel)
    max_connections = max_connections or max(MAX_CONNECTIONS, 2 * max_queue)
    try:
        return Server((host, port), service, quiet, max_body, max_connections)
    except BaseException:
        service.close()
        raise
