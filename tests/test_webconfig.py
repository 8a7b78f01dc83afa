"""--web.config.file: TLS, client certificates and basic auth, on real sockets.

The server runs in this process (httpserver.Server with webconfig.load of a
real file); clients are curl and Python's ssl. Certificates are made by the
openssl CLI. A bad file is refused by `piobpf --prometheus` itself, in one
line, before anything is traced (no root needed for that).
"""

import base64
import select
import socket
import ssl
import subprocess
import threading
import time

import bcrypt
import pytest
from prometheus_client import CollectorRegistry

from helpers import assert_one_line, free_port, make_certs, run_piobpf
from piobpf.sinks import httpserver, webconfig
from test_httpserver import GET, WAIT, Gauge, answer, closed

PASSWORD = "s3cret"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def hashed():
    return bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()


@pytest.fixture
def write(tmp_path):
    """write(text): the path of a web config file holding `text`."""
    def write(text):
        path = tmp_path / "web.yml"
        path.write_text(text)
        return str(path)
    return write


def tls_config(certs, client_auth=None):
    text = (f"tls_server_config:\n  cert_file: {certs['server.crt']}\n"
            f"  key_file: {certs['server.key']}\n")
    if client_auth:
        text += f"  client_auth_type: {client_auth}\n  client_ca_file: {certs['ca.crt']}\n"
    return text


@pytest.fixture
def serve(write):
    """serve(config text, **Server options): a serving Server of test_value 42."""
    running = []

    def serve(text, **options):
        registry = CollectorRegistry()
        registry.register(Gauge())
        server = httpserver.Server("127.0.0.1", 0, registry, web=webconfig.load(write(text)),
                                   **options)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        running.append((server, thread))
        return server

    yield serve
    for server, thread in running:
        server.shutdown()
        server.close()
        thread.join(WAIT)
        assert not thread.is_alive()


def curl(server, certs, *args, scheme="https"):
    """curl -i of /metrics: (exit status, its output); trusts the test CA."""
    out = subprocess.run(["curl", "-sS", "-i", "--max-time", str(WAIT), "--cacert",
                          certs["ca.crt"], *args,
                          f"{scheme}://127.0.0.1:{server.address[1]}/metrics"],
                         capture_output=True, text=True, timeout=2 * WAIT)
    return out.returncode, out.stdout


def status(output):
    return int(output.split()[1]) if output.startswith("HTTP/") else None


def tls_client(certs, client=None):
    context = ssl.create_default_context(cafile=certs["ca.crt"])
    if client:
        context.load_cert_chain(certs[f"{client}.crt"], certs[f"{client}.key"])
    return context


def scrape(server, context, request=GET):
    """One request over TLS: (status, headers, body)."""
    with socket.create_connection(server.address, timeout=WAIT) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(request)
            return answer(s)


def test_basic_auth_over_tls(serve, certs, hashed):
    server = serve(tls_config(certs) + f"basic_auth_users:\n  prom: {hashed}\n")
    rc, out = curl(server, certs, "-u", f"prom:{PASSWORD}")
    assert rc == 0 and status(out) == 200 and "test_value 42.0\n" in out
    for creds in ([], ["-u", "prom:wrong"], ["-u", f"other:{PASSWORD}"], ["-u", "prom:"],
                  ["-H", "Authorization: Basic !!!"], ["-H", "Authorization: Bearer x"]):
        rc, out = curl(server, certs, *creds)
        assert (rc, status(out)) == (0, 401), creds
        assert 'WWW-Authenticate: Basic realm="piobpf"' in out and "test_value" not in out


def test_401_is_before_the_path_and_head_has_no_body(serve, certs, hashed):
    # As the toolkit: authentication guards every path, not only /metrics.
    server = serve(tls_config(certs) + f"basic_auth_users:\n  prom: {hashed}\n")
    assert scrape(server, tls_client(certs), b"GET /nothing HTTP/1.1\r\n\r\n")[0] == 401
    code, headers, body = scrape(server, tls_client(certs), b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert (code, body) == (401, b"") and headers["Content-Length"] == "17"


def test_plain_http_to_the_tls_port_gets_no_metrics(serve, certs):
    server = serve(tls_config(certs))
    rc, out = curl(server, certs, scheme="http")
    assert rc == 0 and status(out) == 400
    assert "Client sent an HTTP request to an HTTPS server." in out and "test_value" not in out
    with socket.create_connection(server.address, timeout=WAIT) as s:   # not HTTP at all
        s.sendall(b"\x00" * 100)
        assert b"test_value" not in answer(s)[2]


def test_mtls_needs_a_client_certificate_of_the_ca(serve, certs):
    server = serve(tls_config(certs, "RequireAndVerifyClientCert"))
    rc, out = curl(server, certs, "--cert", certs["client.crt"], "--key", certs["client.key"])
    assert rc == 0 and status(out) == 200 and "test_value 42.0\n" in out
    for client in (None, "stranger"):
        with pytest.raises((ssl.SSLError, ConnectionError)):
            scrape(server, tls_client(certs, client))
    rc, out = curl(server, certs)
    assert rc != 0 and "test_value" not in out


def test_verify_if_given_takes_no_certificate_but_refuses_a_strangers(serve, certs):
    server = serve(tls_config(certs, "VerifyClientCertIfGiven"))
    assert scrape(server, tls_client(certs))[0] == 200
    assert scrape(server, tls_client(certs, "client"))[0] == 200
    with pytest.raises((ssl.SSLError, ConnectionError)):
        scrape(server, tls_client(certs, "stranger"))


def test_min_version_is_kept(serve, certs):
    server = serve(tls_config(certs) + "  min_version: TLS13\n")
    old = tls_client(certs)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        scrape(server, old)
    assert scrape(server, tls_client(certs))[0] == 200


def test_headers_of_the_config_are_on_every_response(serve, certs):
    server = serve(tls_config(certs) + "http_server_config:\n  http2: false\n  headers:\n"
                   "    X-Frame-Options: deny\n    Strict-Transport-Security: max-age=3600\n")
    for request in (GET, b"GET /other HTTP/1.1\r\n\r\n"):
        _, headers, _ = scrape(server, tls_client(certs), request)
        assert headers["X-Frame-Options"] == "deny"
        assert headers["Strict-Transport-Security"] == "max-age=3600"


def test_basic_auth_without_tls_as_the_toolkit(serve, hashed):
    server = serve(f"basic_auth_users:\n  prom: {hashed}\n")
    with socket.create_connection(server.address, timeout=WAIT) as s:
        s.sendall(GET)
        assert answer(s)[0] == 401


def test_stalled_handshakes_hold_no_thread_and_leave_at_the_deadline(serve, certs):
    server = serve(tls_config(certs), timeout=2.0, max_connections=8)
    threads = threading.active_count()
    # Silent ones, and ones that send half a ClientHello's record and stop.
    stalled = [socket.create_connection(server.address, timeout=WAIT) for _ in range(8)]
    for s in stalled[4:]:
        s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    assert scrape(server, tls_client(certs))[0] == 200
    assert threading.active_count() == threads
    assert all(closed(s) for s in stalled)      # each within WAIT: by the 2 s deadline
    for s in stalled:
        s.close()


def test_200_stalled_handshakes_do_not_stop_a_scrape(serve, certs):
    server = serve(tls_config(certs, "RequireAndVerifyClientCert"))
    stalled = [socket.create_connection(server.address, timeout=WAIT) for _ in range(200)]
    try:
        assert scrape(server, tls_client(certs, "client"))[0] == 200
    finally:
        for s in stalled:
            s.close()


def test_wrong_passwords_do_not_hold_up_a_scraper_that_passed(serve, certs):
    # Cost 12: some 0.3 s of bcrypt a wrong password, in the one checker thread.
    slow = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(12)).decode()
    server = serve(tls_config(certs) + f"basic_auth_users:\n  prom: {slow}\n")
    good = "Authorization: Basic " + base64.b64encode(f"prom:{PASSWORD}".encode()).decode()
    request = b"GET /metrics HTTP/1.1\r\n%s\r\n\r\n"
    assert scrape(server, tls_client(certs), request % good.encode())[0] == 200
    wrong = []
    for i in range(8):
        raw = socket.create_connection(server.address, timeout=WAIT)
        s = tls_client(certs).wrap_socket(raw, server_hostname="127.0.0.1")
        s.sendall(request % (b"Authorization: Basic " + base64.b64encode(b"prom:wrong%d" % i)))
        wrong.append(s)
    assert scrape(server, tls_client(certs), request % good.encode())[0] == 200
    # The good one passed while wrong ones still waited for their bcrypt.
    answered = select.select(wrong, [], [], 0)[0]
    assert len(answered) < len(wrong)
    assert [answer(s)[0] for s in wrong] == [401] * len(wrong)
    for s in wrong:
        s.close()


@pytest.fixture
def refused(write):
    """refused(text, *words): piobpf --prometheus with that config fails in one line."""
    def refused(text, *words):
        out = run_piobpf("--prometheus", f"127.0.0.1:{free_port()}", "--web.config.file",
                         write(text))
        assert_one_line(out, 1, "--web.config.file", *words)
        return out.stderr
    return refused


def test_unknown_keys_are_refused(refused, certs):
    refused("tls_config:\n  cert_file: x\n", "tls_config: unknown key")
    refused(tls_config(certs) + "  certfile: x\n", "tls_server_config.certfile: unknown key")
    refused("http_server_config:\n  headers:\n    X-Powered-By: me\n",
            "http_server_config.headers.X-Powered-By: unknown header")


def test_missing_or_bad_files_are_refused(refused, certs, tmp_path):
    refused(f"tls_server_config:\n  cert_file: {certs['server.crt']}\n"
            f"  key_file: {tmp_path}/none.key\n",
            "tls_server_config.key_file: cannot read", "No such file")
    refused(f"tls_server_config:\n  cert_file: {certs['server.crt']}\n",
            "tls_server_config.key_file: missing")
    refused(f"tls_server_config:\n  cert_file: {certs['server.crt']}\n"
            f"  key_file: {certs['client.key']}\n",
            "tls_server_config.key_file", "not the private key of cert_file")
    refused(f"tls_server_config:\n  cert_file: {certs['server.key']}\n"
            f"  key_file: {certs['server.key']}\n",
            "tls_server_config.cert_file", "no PEM certificate")


def test_bad_bcrypt_hashes_are_refused(refused, hashed):
    for bad in ("plaintext", hashed[:-1], hashed.replace("$10$", "$03$"), "'$2x$" + hashed[4:]
                + "'"):
        refused(f"basic_auth_users:\n  prom: {bad}\n", "basic_auth_users.prom: not a bcrypt hash")
    refused(f"basic_auth_users:\n  prom: {hashed}\n  prom: {hashed}\n", "given twice")


def test_bad_client_auth_types_are_refused(refused, certs):
    refused(tls_config(certs, "RequireClientCert"), "tls_server_config.client_auth_type",
            "'RequireClientCert' is not one of")
    refused(tls_config(certs, "RequireAnyClientCert"), "tls_server_config.client_auth_type",
            "RequireAnyClientCert is not supported")
    refused(tls_config(certs) + "  client_auth_type: RequireAndVerifyClientCert\n",
            "tls_server_config.client_ca_file: missing")
    refused(tls_config(certs) + f"  client_ca_file: {certs['ca.crt']}\n",
            "tls_server_config.client_ca_file: given, but client_auth_type")


def test_keys_not_honoured_and_bad_values_are_refused(refused, certs):
    refused(tls_config(certs) + "  cipher_suites: [TLS_AES_128_GCM_SHA256]\n",
            "tls_server_config.cipher_suites: Go's suite names are not supported")
    refused("rate_limit:\n  interval: 1s\n  burst: 5\n", "rate_limit: not supported")
    refused(tls_config(certs) + "  min_version: TLS14\n", "tls_server_config.min_version")
    refused("tls_server_config: [a, b]\n", "tls_server_config: must be a mapping")
    refused("tls_server_config:\n  cert_file: [x\n", "not YAML")


def test_unreadable_file_is_one_line(tmp_path):
    out = run_piobpf("--prometheus", "9435", "--web.config.file", str(tmp_path / "none.yml"))
    assert_one_line(out, 1, "cannot read --web.config.file", "No such file")


def test_web_config_needs_prometheus(write):
    out = run_piobpf("-d", "1", "--web.config.file", write(""))
    assert_one_line(out, 2, "--web.config.file is for --prometheus")


def test_bcrypt_checks_take_the_time_of_a_known_user():
    # A wrong password and an unknown user both cost one bcrypt: the dummy
    # hash of an unknown user has the cost of the known ones.
    auth = webconfig.BasicAuth({"prom": bcrypt.hashpw(b"x", bcrypt.gensalt(11)).decode()})
    assert auth.dummy.startswith(b"$2b$11$")
    assert not auth.check("Basic " + base64.b64encode(b"nobody:x").decode())
