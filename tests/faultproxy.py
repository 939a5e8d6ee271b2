"""A fault-injecting HTTP proxy on 127.0.0.1, between s3fs and a local S3 server.

It forwards every request to the upstream server and counts them by S3 operation, except a
fixed, seeded fraction: connections refused (closed before reading a request), requests reset
(read, then the connection is torn down with RST), and requests answered ``503 SlowDown``.
The seed fixes the sequence of decisions, so a run's fault rate is reproducible. An outage of
one object can be scripted too: the first N requests whose path contains a text get
``503 ServiceUnavailable`` (which s3fs does not retry itself). And requests of one operation
can be held unanswered (``hold("PUT_PART")``), so a client can be killed mid-upload at a
known point; ``release()`` then drops them. ``forbid("PUT")`` answers every request of an
operation ``403 AccessDenied``, as a read-only credential gets.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade", "trailer"}
UNAVAILABLE = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>ServiceUnavailable</Code>'
    b"<Message>Service is unable to handle request.</Message></Error>"
)
ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>'
)
SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


def s3_operation(method: str, path: str) -> str:
    """A request's S3 operation, for counting: PUT object, PUT part, LIST, ..."""
    query = parse_qs(urlsplit(path).query, keep_blank_values=True)
    if method == "GET" and ("list-type" in query or urlsplit(path).path.strip("/").count("/") == 0):
        return "LIST"
    if method == "PUT" and "partNumber" in query:
        return "PUT_PART"
    if method == "POST" and "uploads" in query:
        return "CREATE_MULTIPART"
    if method == "POST" and "uploadId" in query:
        return "COMPLETE_MULTIPART"
    if method == "POST" and "delete" in query:
        return "DELETE_MANY"
    return method


class FaultProxy:
    def __init__(
        self,
        upstream_port: int,
        refuse: float = 0.0,
        reset: float = 0.0,
        error_503: float = 0.0,
        seed: int = 0,
        unavailable: tuple[str, int] | None = None,
    ) -> None:
        self.upstream_port = upstream_port
        self.unavailable_path, self.unavailable_left = unavailable or ("", 0)
        self.refuse, self.reset, self.error_503 = refuse, reset, error_503
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()  # forwarded, by S3 operation
        self.paths: Counter[tuple[str, str]] = Counter()  # forwarded, by (S3 operation, path without query)
        self.faults: Counter[str] = Counter()  # injected, by kind
        self.hold_operation = ""
        self.forbidden = ""  # an S3 operation answered 403 AccessDenied
        self._released = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _draw(self) -> float:
        with self._lock:
            return self._rng.random()

    def _count(self, counter: Counter[str], key: str) -> None:
        with self._lock:
            counter[key] += 1

    def gets_of(self, path_part: str) -> dict[str, int]:
        """Forwarded GETs of objects whose path contains ``path_part``: path -> count."""
        with self._lock:
            return {path: n for (op, path), n in self.paths.items() if op == "GET" and path_part in path}

    def arm_outage(self, path_part: str, count: int) -> None:
        """The next ``count`` requests whose path contains ``path_part`` get 503 ServiceUnavailable."""
        with self._lock:
            self.unavailable_path, self.unavailable_left = path_part, count

    def _take_outage(self, path: str) -> bool:
        with self._lock:
            if self.unavailable_left and self.unavailable_path in path:
                self.unavailable_left -= 1
                return True
            return False

    def hold(self, operation: str) -> None:
        """From now on, requests of ``operation`` (e.g. PUT_PART) wait unanswered until ``release()``."""
        with self._lock:
            self.hold_operation = operation
            self._released.clear()

    def forbid(self, operation: str) -> None:
        """From now on, requests of ``operation`` (e.g. PUT) get 403 AccessDenied; "" allows them again."""
        with self._lock:
            self.forbidden = operation

    def release(self) -> None:
        """Drop the held requests (connection reset) and stop holding."""
        with self._lock:
            self.hold_operation = ""
        self._released.set()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def handle(self) -> None:
                if proxy._draw() < proxy.refuse:
                    proxy._count(proxy.faults, "refused")
                    _abort(self.connection)
                    return
                super().handle()

            def _proxy(self) -> None:
                body = self._read_body()
                if proxy._take_outage(self.path):
                    proxy._count(proxy.faults, "unavailable")
                    self._answer(503, UNAVAILABLE)
                    return
                operation = s3_operation(self.command, self.path)
                if proxy.forbidden and operation == proxy.forbidden:
                    proxy._count(proxy.faults, "forbidden")
                    self._answer(403, ACCESS_DENIED)
                    return
                if proxy.hold_operation and operation == proxy.hold_operation:
                    proxy._count(proxy.faults, "held")
                    proxy._released.wait(120)
                    _abort(self.connection)
                    self.close_connection = True
                    return
                draw = proxy._draw()
                if draw < proxy.reset:
                    proxy._count(proxy.faults, "reset")
                    _abort(self.connection)
                    self.close_connection = True
                    return
                if draw < proxy.reset + proxy.error_503:
                    proxy._count(proxy.faults, "503")
                    self._answer(503, SLOW_DOWN)
                    return
                proxy._count(proxy.requests, operation)
                proxy._count(proxy.paths, (operation, urlsplit(self.path).path))
                self._forward(body)

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _read_body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    chunks = []
                    while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    while self.rfile.readline().strip():  # trailers
                        pass
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _forward(self, body: bytes) -> None:
                upstream = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                response = upstream.getresponse()
                data = response.read()
                self.send_response(response.status, response.reason)
                for key, value in response.getheaders():
                    if key.lower() not in HOP_BY_HOP and not (
                        key.lower() == "content-length" and self.command != "HEAD"
                    ):
                        self.send_header(key, value)
                if self.command != "HEAD":
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _proxy

        return Handler


def _abort(conn: socket.socket) -> None:
    """Close with RST instead of FIN: the client sees 'connection reset by peer'."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
