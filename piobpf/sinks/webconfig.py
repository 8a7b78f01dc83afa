"""--web.config.file: the Prometheus exporter-toolkit's web configuration.

The keys and meaning of node_exporter's file (TLS, client certificates,
basic auth), so one file serves a fleet's exporters. Read once, at start:
a bad file is one line naming the key, before anything is traced. Unknown
keys are refused, as the toolkit's strict YAML does; the toolkit's keys
that piobpf cannot honour are refused by name, never silently ignored.
"""

import base64
import binascii
import hashlib
import re
import ssl

from ..core.errors import CliError

try:
    import bcrypt
    import yaml
except ImportError:
    raise CliError("--web.config.file needs python3-bcrypt and python3-yaml: apt-get install "
                   "python3-bcrypt python3-yaml (or pip install bcrypt pyyaml)") from None

VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
            "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
               "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}
# Go's other two take a certificate without verifying it: Python's ssl verifies
# every certificate it asks for, and an unverified one proves nothing.
UNVERIFIED = ("RequestClientCert", "RequireAnyClientCert")
HEADERS = {"Content-Security-Policy": None, "X-Frame-Options": ("deny", "sameorigin"),
           "X-Content-Type-Options": ("nosniff",), "X-XSS-Protection": None,
           "Strict-Transport-Security": None}
# The toolkit's keys piobpf does not do, and why: refused when given a value.
UNSUPPORTED = {
    "tls_server_config.cert": "inline PEM is not supported: use cert_file",
    "tls_server_config.key": "inline PEM is not supported: use key_file",
    "tls_server_config.client_ca": "inline PEM is not supported: use client_ca_file",
    "tls_server_config.cipher_suites": "Go's suite names are not supported: OpenSSL's "
                                       "defaults are used",
    "tls_server_config.curve_preferences": "not supported: OpenSSL's defaults are used",
    "tls_server_config.client_allowed_sans": "not supported: give each client a "
                                             "certificate of its own CA instead",
    "rate_limit": "not supported: the server bounds its connections instead",
}
KEYS = {"": {"tls_server_config", "http_server_config", "basic_auth_users", "rate_limit"},
        "tls_server_config": {"cert", "key", "client_ca", "cert_file", "key_file",
                              "client_auth_type", "client_ca_file", "client_allowed_sans",
                              "min_version", "max_version", "cipher_suites",
                              "prefer_server_cipher_suites", "curve_preferences"},
        "http_server_config": {"http2", "headers"}}
BCRYPT = re.compile(r"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")


class Invalid(Exception):
    """A key's value is wrong: (key, problem)."""


class StrictLoader(yaml.SafeLoader):
    """Safe YAML that refuses a key given twice (a second user of one name,
    say), as Go's yaml does, where PyYAML keeps the last."""


def _mapping(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice", key_node.start_mark)
            seen.add(key)
        except TypeError:   # unhashable: construct_mapping refuses it
            pass
    return loader.construct_mapping(node, deep)


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


class BasicAuth:
    """Checks `Authorization: Basic` against bcrypt hashes with bcrypt.checkpw.

    `quick` answers without bcrypt where it can (no or malformed credentials,
    or ones that passed before); `check` runs bcrypt (some 70 ms at cost 10)
    and remembers a pass, so a scraper pays it once."""

    def __init__(self, users):
        self.users = {u.encode(): h.encode() for u, h in users.items()}
        # Unknown users are checked against this, as long as a known one
        # takes: how long a 401 takes does not tell which users exist.
        cost = min(int(BCRYPT.fullmatch(h).group(1)) for h in users.values())
        self.dummy = bcrypt.hashpw(b"", bcrypt.gensalt(cost))
        self.passed = set()

    @staticmethod
    def credentials(header):
        """(user, password) bytes of a Basic Authorization value, or None."""
        scheme, _, token = (header or "").strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, colon, password = base64.b64decode(token.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return None
        return (user, password) if colon else None

    def quick(self, header):
        """True (passed before), False (no credentials) or None (run `check`)."""
        creds = self.credentials(header)
        if creds is None:
            return False
        return True if hashlib.sha256(b":".join(creds)).digest() in self.passed else None

    def check(self, header):
        """Whether the credentials pass: the user's bcrypt hash verifies the password."""
        creds = self.credentials(header)
        if creds is None:
            return False
        user, password = creds
        known = user in self.users
        try:
            ok = bcrypt.checkpw(password, self.users.get(user, self.dummy)) and known
        except ValueError:      # a password bcrypt refuses (a NUL byte): not this one
            ok = False
        if ok:
            if len(self.passed) >= 64:     # a bound: a few scrapers' credentials fit
                self.passed.clear()
            self.passed.add(hashlib.sha256(b":".join(creds)).digest())
        return ok


class WebConfig:
    """What the server needs: `context` (an SSLContext, None for plain HTTP),
    `auth` (a BasicAuth, or None) and `headers` to add to every response."""

    def __init__(self, context=None, auth=None, headers=()):
        self.context, self.auth, self.headers = context, auth, list(headers)

    @property
    def scheme(self):
        return "https" if self.context else "http"


def section(config, name):
    """The mapping at `name` ("" for the top), its keys checked: {} if left out."""
    value = config if not name else config.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid(name or "the file", "must be a mapping of keys")
    for key in value:
        where = f"{name}.{key}" if name else str(key)
        if key not in KEYS[name]:
            raise Invalid(where, "unknown key")
        if where in UNSUPPORTED and value[key] not in (None, "", [], {}, 0):
            raise Invalid(where, UNSUPPORTED[where])
    return value


def string(mapping, name, key, choices=None):
    value = mapping.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise Invalid(f"{name}.{key}", "must be a string")
    if choices is not None and value not in choices:
        raise Invalid(f"{name}.{key}", f"{value!r} is not one of {', '.join(choices)}")
    return value


def readable(where, path):
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise Invalid(where, f"cannot read {path}: {e.strerror}") from None


def ssl_reason(e):
    return e.reason or e.strerror or str(e)


def tls_context(tls):
    """An SSLContext for tls_server_config, or None when it names no certificate."""
    name = "tls_server_config"
    cert, key = string(tls, name, "cert_file"), string(tls, name, "key_file")
    client_auth = string(tls, name, "client_auth_type")
    if client_auth in UNVERIFIED:
        raise Invalid(f"{name}.client_auth_type", f"{client_auth} is not supported (a client "
                      f"certificate is always verified): use VerifyClientCertIfGiven or "
                      f"RequireAndVerifyClientCert")
    client_auth = string(tls, name, "client_auth_type", CLIENT_AUTH)
    ca = string(tls, name, "client_ca_file")
    low = string(tls, name, "min_version", VERSIONS) or "TLS12"
    high = string(tls, name, "max_version", VERSIONS) or "TLS13"
    prefer = tls.get("prefer_server_cipher_suites", True)
    if not isinstance(prefer, bool):
        raise Invalid(f"{name}.prefer_server_cipher_suites", "must be true or false")
    if not (cert or key or client_auth or ca):
        return None     # as the toolkit: no certificate, plain HTTP
    for field, value in (("cert_file", cert), ("key_file", key)):
        if not value:
            raise Invalid(f"{name}.{field}", "missing: TLS needs cert_file and key_file")
    if ca and client_auth in (None, "NoClientCert"):
        raise Invalid(f"{name}.client_ca_file", "given, but client_auth_type does not ask "
                      "for a client certificate (RequireAndVerifyClientCert does)")
    if client_auth not in (None, "NoClientCert") and not ca:
        raise Invalid(f"{name}.client_ca_file", f"missing: client_auth_type {client_auth} "
                      f"verifies client certificates against it")
    if VERSIONS[low] > VERSIONS[high]:
        raise Invalid(f"{name}.min_version", f"{low} is above max_version {high}")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version, context.maximum_version = VERSIONS[low], VERSIONS[high]
    if not prefer:
        context.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    # Each connection serves one scrape: a session ticket would be unused work.
    context.num_tickets = 0
    readable(f"{name}.cert_file", cert)
    readable(f"{name}.key_file", key)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_verify_locations(cafile=cert)
    except ssl.SSLError as e:
        raise Invalid(f"{name}.cert_file", f"{cert}: no PEM certificate ({ssl_reason(e)})")
    try:
        # A passphrase is never prompted for: an encrypted key fails here.
        context.load_cert_chain(cert, key, password=b"")
    except ssl.SSLError as e:
        raise Invalid(f"{name}.key_file", f"{key}: not the private key of cert_file "
                      f"({ssl_reason(e)})") from None
    if ca:
        readable(f"{name}.client_ca_file", ca)
        try:
            context.load_verify_locations(cafile=ca)
        except ssl.SSLError as e:
            raise Invalid(f"{name}.client_ca_file", f"{ca}: no PEM certificate "
                          f"({ssl_reason(e)})") from None
        context.verify_mode = CLIENT_AUTH[client_auth]
    return context


def basic_auth(users):
    if users is None or users == {}:
        return None
    if not isinstance(users, dict):
        raise Invalid("basic_auth_users", "must be a mapping of user: bcrypt hash")
    for user, hashed in users.items():
        where = f"basic_auth_users.{user}"
        if not isinstance(user, str) or ":" in user or not user:
            raise Invalid(where, "a user name is a non-empty string without ':'")
        match = BCRYPT.fullmatch(hashed) if isinstance(hashed, str) else None
        if not match or not 4 <= int(match.group(1)) <= 31:
            raise Invalid(where, "not a bcrypt hash ($2y$10$ and 53 characters, as "
                          "`htpasswd -nBC 10 \"\" | tr -d ':\\n'` prints)")
    return BasicAuth(users)


def headers(http):
    given = http.get("headers") or {}
    if not isinstance(given, dict):
        raise Invalid("http_server_config.headers", "must be a mapping of header: value")
    out = []
    for header, value in given.items():
        where = f"http_server_config.headers.{header}"
        if header not in HEADERS:
            raise Invalid(where, f"unknown header (one of {', '.join(HEADERS)})")
        if value in (None, ""):
            continue
        if not isinstance(value, str) or any(c in value for c in "\r\n"):
            raise Invalid(where, "must be a one-line string")
        if HEADERS[header] and value.lower() not in HEADERS[header]:
            raise Invalid(where, f"{value!r} is not one of {', '.join(HEADERS[header])}")
        out.append((header, value))
    return out


def load(path):
    """The WebConfig of the file at `path`; CliError naming the key when it is bad."""
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.load(f, Loader=StrictLoader)
    except OSError as e:
        raise CliError(f"cannot read --web.config.file {path}: {e.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise CliError(f"--web.config.file {path}: not YAML: {' '.join(str(e).split())}") \
            from None
    try:
        top = section(config, "")
        tls = section(top, "tls_server_config")
        http = section(top, "http_server_config")
        if not isinstance(http.get("http2", True), bool):
            raise Invalid("http_server_config.http2", "must be true or false")
        return WebConfig(tls_context(tls), basic_auth(top.get("basic_auth_users")),
                         headers(http))
    except Invalid as e:
        key, problem = e.args
        raise CliError(f"--web.config.file {path}: {key}: {problem}") from None
