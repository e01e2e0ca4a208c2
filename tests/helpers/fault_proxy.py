"""A loopback TCP proxy that a test puts in front of a real server (the GCS emulator,
an MLflow server) and then breaks on purpose, the ways networks break: the server goes
away (connection refused), connections are reset, a gateway answers 503 or 429, or
nothing answers at all.

It records the HTTP requests passing through (request lines in the client's stream), so
a test can say "serve 12 downloads, then fail" and check which requests were made.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from http import HTTPStatus

MODES = ("refuse", "reset", "hang", "status")
_REQUEST_LINE = re.compile(rb"(GET|HEAD|POST|PUT|PATCH|DELETE) (\S+) HTTP/1\.[01]\r\n")
_CHUNK = 65536


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (the peer reads 'connection reset'), not an orderly FIN; also
    wakes a thread of ours blocked reading it, which close() alone would not."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class FaultProxy:
    """Forwards 127.0.0.1:<port> to ``target`` until it fails, then answers every
    connection the way ``mode`` says:

    - ``refuse``: the listening socket is closed: new connections are refused;
    - ``reset``: connections are accepted and reset;
    - ``hang``: connections are accepted and never answered;
    - ``status``: every request is answered with HTTP ``status`` (503, 429, ...).

    It fails when ``fail()`` is called or, with ``fail_after_requests=N``, on the
    (N+1)-th request whose request line contains ``counting`` (every request when
    empty); failing drops every open connection. ``heal_after_s`` (or ``heal()``) makes
    it forward again. Apart from failing, a request whose request line contains
    ``delaying`` reaches the server ``delay_s`` seconds late (a slow network or gateway).
    """

    def __init__(
        self,
        target: tuple[str, int],
        mode: str = "refuse",
        *,
        fail_after_requests: int | None = None,
        counting: str = "",
        status: int = 503,
        heal_after_s: float | None = None,
        delaying: str = "",
        delay_s: float = 0.0,
    ):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        self.target, self.mode, self.status = target, mode, status
        self.fail_after_requests, self.counting, self.heal_after_s = fail_after_requests, counting, heal_after_s
        self.delaying, self.delay_s = delaying, delay_s
        self.delayed: list[str] = []  # the requests held back, when their hold began (after the list append)
        self.requests: list[str] = []  # "GET /path" of every request seen, failed ones included
        self.failed_at: float | None = None  # time.monotonic() when it failed
        self._counted = 0
        self._failing = False
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._closed = False
        self._listener = self._listen(0)
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    # ---- control ---------------------------------------------------------------

    def fail(self, keep: tuple[socket.socket, ...] = ()) -> None:
        """Fail now: drop the open connections (but ``keep``, the one whose request is
        answered the failing way) and answer every later one as ``mode`` says."""
        with self._lock:
            if self._failing:
                return
            self._failing = True
            self.failed_at = time.monotonic()
            dropped, self._open = self._open - set(keep), set(keep)
            if self.mode == "refuse":
                self._listener.close()
        for sock in dropped:
            _reset(sock)
        if self.heal_after_s is not None:
            timer = threading.Timer(self.heal_after_s, self.heal)
            timer.daemon = True
            timer.start()

    def heal(self) -> None:
        with self._lock:
            if not self._failing or self._closed:
                return
            self._failing = False
            if self.mode == "refuse":
                self._listener = self._listen(self.port)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            dropped, self._open = self._open, set()
            self._listener.close()
        for sock in dropped:
            _reset(sock)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- plumbing --------------------------------------------------------------

    def _listen(self, port: int) -> socket.socket:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return listener

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed: failing in refuse mode, or closed for good
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _track(self, *socks: socket.socket) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._open.update(socks)
            return True

    def _serve(self, client: socket.socket) -> None:
        if self._failing:
            self._answer_failing(client, b"", counted=False)
            return
        try:
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
        except OSError:
            _reset(client)
            return
        if not self._track(client, upstream):
            _reset(client)
            upstream.close()
            return
        threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()
        self._pump_requests(client, upstream)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        """Server to client."""
        try:
            while data := source.recv(_CHUNK):
                sink.sendall(data)
        except OSError:
            pass
        # Failing: the client side is answered (or held) by _answer_failing.
        for sock in (source,) if self._failing else (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _pump_requests(self, client: socket.socket, upstream: socket.socket) -> None:
        """Client to server, counting request lines; fails when the count is reached."""
        pending = b""
        try:
            while data := client.recv(_CHUNK):
                pending += data
                last = 0
                delay = False
                for match in _REQUEST_LINE.finditer(pending):
                    with self._lock:
                        self.requests.append(f"{match[1].decode()} {match[2].decode()}")
                        self._counted += self.counting in self.requests[-1]
                        count = self._counted
                    last = match.end()
                    delay |= bool(self.delaying) and self.delaying in self.requests[-1]
                    # "==", not ">": it fails once, so that heal() holds.
                    if self.fail_after_requests is not None and count == self.fail_after_requests + 1:
                        self.fail(keep=(client, upstream))
                pending = pending[last:] if last else pending[-4096:]
                if self._failing:
                    _reset(upstream)
                    self._answer_failing(client, data, counted=True)
                    return
                if delay:
                    with self._lock:
                        self.delayed.append(self.requests[-1])
                    time.sleep(self.delay_s)
                upstream.sendall(data)
        except OSError:
            pass
        for sock in (client, upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _answer_failing(self, client: socket.socket, received: bytes, counted: bool) -> None:
        if self.mode in ("refuse", "reset"):
            _reset(client)
        elif self.mode == "hang":
            if not self._track(client):
                _reset(client)
        else:
            self._answer_status(client, received, counted)

    def _answer_status(self, client: socket.socket, received: bytes, counted: bool) -> None:
        """Answer the request on this connection with ``status``, then close it."""
        reason = HTTPStatus(self.status).phrase
        body = b'{"error": {"code": %d, "message": "injected by FaultProxy"}}' % self.status
        try:
            while b"\r\n\r\n" not in received:
                data = client.recv(_CHUNK)
                if not data:
                    break
                received += data
            if received and (counted or self._count(received)):
                client.sendall(
                    b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                    b"Connection: close\r\n\r\n%s" % (self.status, reason.encode(), len(body), body)
                )
        except OSError:
            pass
        client.close()

    def _count(self, received: bytes) -> bool:
        """Record the request lines of a connection answered while failing."""
        matches = list(_REQUEST_LINE.finditer(received))
        with self._lock:
            self.requests += [f"{m[1].decode()} {m[2].decode()}" for m in matches]
        return bool(matches)
