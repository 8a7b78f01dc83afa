"""An HTTP server of a prometheus_client registry at /metrics, hard to hold up.

One thread and a selector serve every connection: an idle or slow client
costs a file descriptor, not a thread. A request is answered as soon as its
head is in, and each connection closed after its response (a scrape is one
request), so a client is only ever waiting to be served or to be done. The
scrapes whose requests came in one round of the selector share one read of
the registry (per format), made after they came: a burst of scrapes costs a
few reads, not one each (piobpf's reads a whole kernel map: 45-80 ms).

- The listen backlog is the kernel's maximum (net.core.somaxconn): a burst
  of connects waits there, where a short backlog drops SYNs that the
  clients resend only after seconds.
- A connection lives at most `timeout` seconds, whatever it does: idle,
  half a request, or a response it does not read.
- At most `max_connections` are open. While all are taken, new ones wait
  in the backlog until the oldest is older than `grace`; then each one
  accepted closes the oldest. A scraper sends its request as soon as it is
  connected and is answered in milliseconds: only clients that dawdle are
  closed early, and only while the slots run short.
- Ages count from the TCP handshake as the kernel saw it (or from the
  bytes a client sent before it was accepted), so time in the backlog
  counts: connections that waited there past `grace` without a word are
  accepted and closed as fast as they come, and a scrape queued behind a
  flood of idle connections waits about `grace`, not one `grace` per
  `max_connections` of them.

With a web config (webconfig.WebConfig), connections are TLS and requests
may need basic auth, under the same rules:
- A TLS handshake is stepped in the selector, never waited for: a client
  that connects and never says hello holds a slot only as an idle one does.
  Plain HTTP to the TLS port gets a 400 that says so, never metrics.
- A request with credentials not seen before is checked with bcrypt in one
  worker thread (some 70 ms each): the selector serves on meanwhile, and a
  scraper whose credentials passed once is served without bcrypt, however
  many wrong ones others send.
"""

import gzip
import operator
import re
import selectors
import socket
import ssl
import struct
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from email.utils import formatdate
from http import HTTPStatus

from prometheus_client.exposition import choose_encoder, gzip_accepted

TIMEOUT = 30.0          # s: room for a slow scrape on a slow link, as an fd costs little
GRACE = 1.0             # s: far longer than a scraper takes to send its request
MAX_CONNECTIONS = 64     # each may hold a response: a bound on memory too
MAX_HEAD = 8192         # bytes of request line and headers: a scrape's are some 300

INDEX = b'<html><body><a href="/metrics">Metrics</a></body></html>\n'
END_OF_HEAD = re.compile(rb"\n\r?\n")
# struct tcp_info's tcpi_last_data_recv: ms since the last data came, or since
# the handshake when none has.
TCPI_LAST_DATA_RECV = struct.Struct("=52xI")
TLS_HANDSHAKE = b"\x16"   # the first byte of a ClientHello's record
NOT_TLS = b"Client sent an HTTP request to an HTTPS server.\n"    # Go's words
WANT = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


class Connection:
    __slots__ = ("sock", "born", "head", "out", "shaking", "waiting")

    def __init__(self, sock, born, shaking=False):
        self.sock, self.born, self.head, self.out = sock, born, b"", None
        self.shaking = shaking    # TLS: the handshake is not done
        self.waiting = False      # its credentials are being checked


def response(code, headers, body, head_only=False):
    lines = [f"HTTP/1.1 {code} {HTTPStatus(code).phrase}", f"Date: {formatdate(usegmt=True)}",
             *(f"{name}: {value}" for name, value in headers),
             f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + (b"" if head_only else body)


def plain(code, headers=(), body=None):
    """The status, headers and body of an error."""
    return (code, [("Content-Type", "text/plain; charset=utf-8"), *headers],
            body or f"{code} {HTTPStatus(code).phrase}\n".encode())


def header_fields(head):
    """{lower-case name: value} of a request head, repeated fields joined by commas."""
    fields = {}
    for field in head.decode("latin-1").split("\n")[1:]:
        name, _, value = field.partition(":")
        name, value = name.strip().lower(), value.strip()
        fields[name] = f"{fields[name]},{value}" if name in fields else value
    return fields


class Server:
    """Serves `registry` at http://host:port/metrics while serve_forever() runs.

    Bound and listening once made (OSError if it cannot be); its sockets are
    closed on leaving it as a context manager. `web`: a webconfig.WebConfig
    (TLS, basic auth, headers), None for plain HTTP open to all."""

    def __init__(self, host, port, registry, timeout=TIMEOUT, grace=GRACE,
                 max_connections=MAX_CONNECTIONS, web=None):
        self.registry, self.timeout, self.grace = registry, timeout, grace
        self.max_connections = max_connections
        self.tls = web.context if web else None
        self.auth = web.auth if web else None
        self.headers = web.headers if web else []
        self.socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            # A restart right after a stop finds the port in TIME_WAIT.
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.socket.bind((host, port))
            self.socket.listen(socket.SOMAXCONN)
        except OSError:
            self.socket.close()
            raise
        self.socket.setblocking(False)
        self.address = self.socket.getsockname()[:2]
        self._wake, self._waker = socket.socketpair()
        self._wake.setblocking(False)
        self._lock = threading.Lock()
        self._stopping = False
        self._idle = threading.Event()
        self._idle.set()
        self._conns = set()
        self._scrapes = []    # (connection, Accept, Accept-Encoding, HEAD?) this round
        self._checked = []    # (connection, method, path, fields, future) of bcrypt checks
        self._checker = None
        self._selector = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        for s in (self.socket, self._wake, self._waker):
            s.close()

    def shutdown(self):
        """Stop serve_forever() for good and wait for it to close its connections."""
        with self._lock:
            self._stopping = True
        self._waker.send(b"\0")
        self._idle.wait()

    def serve_forever(self):
        with self._lock:
            if self._stopping:
                return
            self._idle.clear()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake, selectors.EVENT_READ)
        if self.auth:
            self._checker = ThreadPoolExecutor(1, "piobpf-bcrypt")
        listening = False
        try:
            while not self._stopping:
                now = time.monotonic()
                for conn in [c for c in self._conns if c.born + self.timeout <= now]:
                    self._close(conn)
                accepting = self._may_accept(now)
                if accepting != listening:
                    if accepting:
                        self._selector.register(self.socket, selectors.EVENT_READ)
                    else:
                        self._selector.unregister(self.socket)
                    listening = accepting
                wait = None
                if self._conns:
                    wait = self._oldest().born + (self.timeout if accepting else self.grace) - now
                for key, events in self._selector.select(wait):
                    if key.fileobj is self.socket:
                        self._accept()
                    elif key.fileobj is self._wake:
                        self._wake.recv(4096)
                        self._answer_checked()
                    elif key.data in self._conns:    # not closed by an earlier event
                        if key.data.shaking:
                            self._handshake(key.data)
                        elif events & selectors.EVENT_READ:
                            self._read(key.data)
                        else:
                            self._write(key.data)
                self._serve_scrapes()
        finally:
            for conn in list(self._conns):
                self._close(conn)
            if self._checker:
                self._checker.shutdown(wait=False, cancel_futures=True)
            self._selector.close()
            self._idle.set()

    def _oldest(self):
        return min(self._conns, key=operator.attrgetter("born"))

    def _may_accept(self, now):
        return len(self._conns) < self.max_connections or \
            self._oldest().born + self.grace <= now

    def _close(self, conn):
        self._conns.remove(conn)
        self._selector.unregister(conn.sock)
        conn.sock.close()

    def _accept(self):
        while self._may_accept(time.monotonic()):
            try:
                sock, _ = self.socket.accept()
            except OSError:     # none left, or gone already (or no fd left: next round)
                return
            sock.setblocking(False)
            quiet, = TCPI_LAST_DATA_RECV.unpack(
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCPI_LAST_DATA_RECV.size))
            conn = Connection(sock, time.monotonic() - quiet / 1000, shaking=bool(self.tls))
            self._conns.add(conn)
            self._selector.register(sock, selectors.EVENT_READ, conn)
            # A request (or ClientHello) that came with the connection.
            if conn.shaking:
                self._handshake(conn)
            else:
                self._read(conn)
            if len(self._conns) > self.max_connections:
                self._serve_scrapes()   # answered, they close: room without closing anyone
            if len(self._conns) > self.max_connections:
                self._close(self._oldest())

    def _handshake(self, conn):
        """One step of a TLS handshake, as far as the client's bytes allow."""
        if not isinstance(conn.sock, ssl.SSLSocket):
            try:
                first = conn.sock.recv(1, socket.MSG_PEEK)
            except BlockingIOError:
                return
            except OSError:
                first = b""
            if not first:
                self._close(conn)
                return
            if first != TLS_HANDSHAKE:
                conn.shaking = False
                self._recv(conn)    # read, so that closing does not reset the answer
                self._send(conn, self._response(*plain(400, body=NOT_TLS)))
                return
            self._selector.unregister(conn.sock)
            conn.sock = self.tls.wrap_socket(conn.sock, server_side=True,
                                             do_handshake_on_connect=False)
            self._selector.register(conn.sock, selectors.EVENT_READ, conn)
        try:
            conn.sock.do_handshake()
        except ssl.SSLWantReadError:
            self._selector.modify(conn.sock, selectors.EVENT_READ, conn)
            return
        except ssl.SSLWantWriteError:
            self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
            return
        except OSError:         # not TLS, no or a bad client certificate, or gone
            self._close(conn)
            return
        conn.shaking = False
        self._selector.modify(conn.sock, selectors.EVENT_READ, conn)
        self._read(conn)

    def _recv(self, conn):
        """What the client sent since the last call; b"" when it left."""
        try:
            data = conn.sock.recv(MAX_HEAD)
            # TLS may have decrypted more than one record: the selector would
            # not say so, as those bytes have left the socket.
            while isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending():
                data += conn.sock.recv(MAX_HEAD)
        except WANT:
            return None
        except OSError:
            return b""
        return data

    def _read(self, conn):
        data = self._recv(conn)
        if data is None:
            return
        if not data:            # the client left
            self._close(conn)
            return
        if conn.waiting:        # more after a whole request: not read
            return
        conn.head += data
        line, newline, _ = conn.head.partition(b"\n")
        words = line.split()
        end = END_OF_HEAD.search(conn.head)
        if newline and (len(words) != 3 or not words[2].startswith(b"HTTP/1.")):
            # HTTP/0.9 too ("GET /metrics", no headers): a 400, as Go's net/http.
            self._send(conn, self._response(*plain(400)))
        elif end:
            self._route(conn, words[0], words[1].partition(b"?")[0], conn.head[:end.start()])
        elif len(conn.head) > MAX_HEAD:
            self._send(conn, self._response(*plain(431)))

    def _route(self, conn, method, path, head):
        fields = header_fields(head)
        passed = self.auth.quick(fields.get("authorization")) if self.auth else True
        if passed is None:
            conn.waiting = True
            future = self._checker.submit(self.auth.check, fields.get("authorization"))
            future.add_done_callback(lambda f: self._checked_one(conn, method, path, fields, f))
        else:
            self._dispatch(conn, method, path, fields, passed)

    def _checked_one(self, *checked):
        """In the checker's thread: hand the result to the selector's."""
        self._checked.append(checked)
        try:
            self._waker.send(b"\0")
        except OSError:         # closed: the server is gone
            pass

    def _answer_checked(self):
        while self._checked:
            conn, method, path, fields, future = self._checked.pop(0)
            if conn in self._conns and not future.cancelled():
                conn.waiting = False
                self._dispatch(conn, method, path, fields, future.result())

    def _dispatch(self, conn, method, path, fields, passed):
        head_only = method == b"HEAD"
        if not passed:
            self._send(conn, self._response(*plain(401, [("WWW-Authenticate",
                                                          'Basic realm="piobpf"')]), head_only))
        elif path not in (b"/metrics", b"/"):
            self._send(conn, self._response(*plain(404), head_only))
        elif method not in (b"GET", b"HEAD"):
            self._send(conn, self._response(*plain(405, [("Allow", "GET, HEAD")])))
        elif path == b"/":
            self._send(conn, self._response(200, [("Content-Type", "text/html; charset=utf-8")],
                                            INDEX, head_only))
        else:
            self._scrapes.append((conn, fields.get("accept"), fields.get("accept-encoding"),
                                  head_only))

    def _serve_scrapes(self):
        answers = {}
        for conn, accept, accept_encoding, head_only in self._scrapes:
            encoder, content_type = choose_encoder(accept)
            zipped = gzip_accepted(accept_encoding)
            if (content_type, zipped) not in answers:
                answers[content_type, zipped] = self._render(encoder, content_type, zipped)
            if conn in self._conns:     # not closed to make room meanwhile
                self._send(conn, self._response(*answers[content_type, zipped], head_only))
        self._scrapes.clear()

    def _render(self, encoder, content_type, zipped):
        """The status, headers and body of a scrape."""
        try:
            body = encoder(self.registry)
        except Exception:
            traceback.print_exc()
            return plain(500)
        headers = [("Content-Type", content_type)]
        if zipped:
            body = gzip.compress(body)
            headers.append(("Content-Encoding", "gzip"))
        return 200, headers, body

    def _response(self, code, headers, body, head_only=False):
        return response(code, [*headers, *self.headers], body, head_only)

    def _send(self, conn, out):
        conn.out = memoryview(out)
        self._selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
        self._write(conn)

    def _write(self, conn):
        try:
            # TLS: a send that wants more is retried with the same bytes, as
            # OpenSSL requires; it then sends them all.
            conn.out = conn.out[conn.sock.send(conn.out):]
        except WANT:
            return
        except OSError:
            conn.out = b""
        if not conn.out:
            self._close(conn)
