"""The --prometheus HTTP server, on loopback, against clients that abuse it.

Every socket has a timeout and every wait a bound, so a server that hangs
fails a test instead of holding up the run.
"""

import errno
import gzip
import select
import socket
import threading
import time
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from piobpf.sinks import httpserver

GET = b"GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n"
WAIT = 10.0     # s: far more than any answer here takes


class Gauge:
    def collect(self):
        return [GaugeMetricFamily("test_value", "A value", value=42)]


class Slow:
    """Counts its reads; the first one waits for `release`."""

    def __init__(self):
        self.reads = 0
        self.reading, self.release = threading.Event(), threading.Event()

    def collect(self):
        self.reads += 1
        self.reading.set()
        self.release.wait(WAIT)
        return Gauge().collect()


class Failing:
    def collect(self):
        raise RuntimeError("the map is gone")


@pytest.fixture
def start():
    """start(collector=Gauge(), host=..., **Server options): a serving Server."""
    running = []

    def start(collector=None, host="127.0.0.1", **options):
        registry = CollectorRegistry()
        registry.register(collector or Gauge())
        server = httpserver.Server(host, 0, registry, **options)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        running.append((server, thread))
        return server

    yield start
    for server, thread in running:
        server.shutdown()
        server.close()
        thread.join(WAIT)
        assert not thread.is_alive()


def connect(address):
    return socket.create_connection(address, timeout=WAIT)


def exchange(address, request):
    """Send `request`, read until the server closes: (status, headers, body)."""
    with connect(address) as s:
        s.sendall(request)
        return answer(s)


def answer(sock):
    """What the server sends on `sock` until it closes: (status, headers, body)."""
    reply = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    status, *fields = head.decode("latin-1").split("\r\n")
    return int(status.split()[1]), dict(f.split(": ", 1) for f in fields), body


def closed(sock):
    """Whether the server closed `sock`, waiting for it up to the socket's timeout."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_metrics_to_a_real_client(start):
    server = start()
    with urllib.request.urlopen("http://%s:%d/metrics" % server.address, timeout=WAIT) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert "test_value 42.0\n" in r.read().decode()


def test_openmetrics_and_gzip_when_accepted(start):
    # As Prometheus asks for them.
    code, headers, body = exchange(start().address, b"GET /metrics HTTP/1.1\r\nHost: test\r\n"
                                   b"Accept: application/openmetrics-text;version=1.0.0,"
                                   b"text/plain;version=0.0.4;q=0.5\r\n"
                                   b"Accept-Encoding: gzip\r\n\r\n")
    assert code == 200 and headers["Content-Encoding"] == "gzip"
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert gzip.decompress(body).endswith(b"test_value 42.0\n# EOF\n")


def test_head_has_the_headers_of_get_and_no_body(start):
    server = start()
    code, headers, body = exchange(server.address, b"HEAD /metrics HTTP/1.0\r\n\r\n")
    assert code == 200 and body == b""
    assert int(headers["Content-Length"]) == len(exchange(server.address, GET)[2])
    assert headers["Content-Type"].startswith("text/plain")


def test_root_points_to_metrics(start):
    code, headers, body = exchange(start().address, b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert b'href="/metrics"' in body


@pytest.mark.parametrize("path", [b"/metric", b"/metrics/", b"/favicon.ico", b"/x/metrics"])
def test_other_paths_are_404(start, path):
    assert exchange(start().address, b"GET %s HTTP/1.1\r\nHost: test\r\n\r\n" % path)[0] == 404


@pytest.mark.parametrize("method", [b"POST", b"PUT", b"DELETE", b"OPTIONS"])
def test_other_methods_are_405_with_allow(start, method):
    code, headers, _ = exchange(start().address, b"%s /metrics HTTP/1.1\r\nHost: test\r\n"
                                b"Content-Length: 2\r\n\r\nhi" % method)
    assert (code, headers["Allow"]) == (405, "GET, HEAD")


@pytest.mark.parametrize("request_,code", [
    (b"GET /metrics\r\n", 400),                  # HTTP/0.9: no version, no headers
    (b"GET\r\n\r\n", 400),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    (b"GET /metrics HTTP/1.1\r\nX: " + b"x" * 10000, 431),
])
def test_bad_requests_answered_at_once(start, request_, code):
    # The server's timeout is 30 s: an answer within WAIT is not its doing.
    assert exchange(start().address, request_)[0] == code


def test_collector_error_is_500(start, capsys):
    assert exchange(start(Failing()).address, GET)[0] == 500
    assert "RuntimeError: the map is gone" in capsys.readouterr().err


def test_ipv6(start):
    server = start(host="::1")
    with urllib.request.urlopen("http://[::1]:%d/metrics" % server.address[1],
                                timeout=WAIT) as r:
        assert "test_value 42.0\n" in r.read().decode()


def test_burst_of_200_connects_all_answered(start):
    address, n = start().address, 200
    ready = threading.Barrier(n)
    codes = []

    def client():
        ready.wait(WAIT)
        try:
            codes.append(exchange(address, GET)[0])
        except OSError as e:
            codes.append(repr(e))

    threads = [threading.Thread(target=client, daemon=True) for _ in range(n)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    for t in threads:
        t.join(max(0, deadline - time.monotonic()))
    assert codes == [200] * n


def test_scrapes_that_came_together_share_one_read(start):
    collector = Slow()
    address = start(collector).address
    first = []
    thread = threading.Thread(target=lambda: first.append(exchange(address, GET)[0]))
    thread.start()
    assert collector.reading.wait(WAIT)
    more = [connect(address) for _ in range(20)]
    for s in more:
        s.sendall(GET)
    collector.release.set()
    thread.join(WAIT)
    assert first + [answer(s)[0] for s in more] == [200] * 21
    assert collector.reads == 2
    for s in more:
        s.close()


def test_idle_and_slow_clients_closed_after_timeout_and_scrapes_go_on_meanwhile(start):
    server = start(timeout=1.0)
    began = time.monotonic()
    idle = [connect(server.address) for _ in range(3)]
    slow = connect(server.address)
    slow.sendall(GET[:20])
    assert exchange(server.address, GET)[0] == 200
    # The slow client goes on with a byte every 0.1 s: the timeout is for the
    # whole request, not between bytes.
    while not select.select([slow], [], [], 0.1)[0]:
        assert time.monotonic() - began < WAIT
        try:
            slow.send(b"x")
        except OSError:     # reset: closed
            break
    assert closed(slow)
    for s in idle:
        assert closed(s)
    assert time.monotonic() - began > 0.9     # not sooner than the timeout
    for s in idle + [slow]:
        s.close()


def test_more_idle_connections_than_the_bound_do_not_stop_a_scrape(start):
    # A timeout of a minute: only making room for new connections can let
    # the scrape through in time.
    server = start(timeout=60.0, grace=0.2, max_connections=4)
    idle = []
    for _ in range(10):
        idle.append(connect(server.address))
        time.sleep(0.02)      # ages the kernel tells apart
    assert exchange(server.address, GET)[0] == 200
    # The oldest were closed to make room; the newest remain, up to the bound.
    for s in idle:
        s.settimeout(0.2)
    assert [closed(s) for s in idle] == [True] * 6 + [False] * 4
    for s in idle:
        s.close()


def test_idle_connections_past_the_grace_in_the_backlog_make_room_at_once(start):
    # Ages count from the handshake: counted from their accept, the idle
    # connections behind the first four would hold the scrape for another
    # grace (2 s) each round.
    server = start(timeout=60.0, grace=2.0, max_connections=4)
    idle = [connect(server.address) for _ in range(12)]
    time.sleep(2.0)
    began = time.monotonic()
    assert exchange(server.address, GET)[0] == 200
    assert time.monotonic() - began < 1.0
    for s in idle:
        s.close()


def test_shutdown_is_prompt_with_clients_connected():
    registry = CollectorRegistry()
    registry.register(Gauge())
    with httpserver.Server("127.0.0.1", 0, registry) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        clients = [connect(server.address) for _ in range(5)]
        clients[0].sendall(GET[:20])
        assert exchange(server.address, GET)[0] == 200
        began = time.monotonic()
        server.shutdown()
        assert time.monotonic() - began < 2     # the timeout is 30 s
        thread.join(WAIT)
        assert not thread.is_alive()
        assert all(closed(c) for c in clients)
    with pytest.raises(ConnectionRefusedError):
        connect(server.address)
    for c in clients:
        c.close()


def test_bind_errors_are_oserror():
    registry = CollectorRegistry()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError) as e:
            httpserver.Server("127.0.0.1", taken.getsockname()[1], registry)
        assert e.value.errno == errno.EADDRINUSE
    with pytest.raises(OSError) as e:
        httpserver.Server("192.0.2.1", 9435, registry)
    assert e.value.errno == errno.EADDRNOTAVAIL
