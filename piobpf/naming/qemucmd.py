"""What a QEMU command line says: the VM's name and where its monitor listens (pure)."""

from dataclasses import dataclass

LIBVIRT_MONITOR = "charmonitor"     # libvirt's id for the monitor chardev
_ON = ("on", "yes", "true")


@dataclass(frozen=True)
class Monitor:
    protocol: str       # "qmp", "hmp" or "libvirt"
    address: str        # the socket's path as QEMU sees it, or the libvirt
                        # domain's name (libvirt's pid file of it must name the VMM)


def split_opts(value):
    """QEMU's `a,b=c,,d` -> ["a", "b=c,d"]: ",," is a literal comma."""
    return [p.replace("\0", ",") for p in value.replace(",,", "\0").split(",")]


def _keys(parts):
    """key=value parts as a dict; a bare `server` means server=on (QEMU's old form)."""
    return dict(p.split("=", 1) if "=" in p else (p, "on") for p in parts)


def options(argv):
    """(option without dashes, value) for each `-opt value` or `--opt value`."""
    return [(flag.lstrip("-"), value) for flag, value in zip(argv[1:], argv[2:])
            if flag.startswith("-")]


def qemu_name(argv):
    """The guest name from `-name guest=NAME,...` or `-name NAME`."""
    for opt, value in options(argv):
        if opt == "name":
            parts = split_opts(value)
            guest = _keys(p for p in parts if "=" in p).get("guest")
            if guest is not None:
                return guest or None
            return parts[0] if parts[0] and "=" not in parts[0] else None
    return None


def _unix_server(spec):
    """The path of a `unix:PATH,server[=on],...` listening socket; None otherwise."""
    if not spec.startswith("unix:"):
        return None
    path, *rest = split_opts(spec[len("unix:"):])
    return path if path and _keys(rest).get("server") in _ON else None


def find_monitor(argv):
    """The monitor a QEMU command line offers a client: libvirt's, else QMP, else
    HMP; None when it has no listening unix socket monitor.

    -qmp and -monitor take a chardev spec (`unix:PATH,server=on,wait=off`);
    `-chardev socket,id=X,path=PATH,server=on` with `-mon chardev=X[,mode=control]`
    is the long form. A socket QEMU connects out of (no `server`) is not ours
    to dial, nor is one libvirt passes as an fd."""
    opts = options(argv)
    domain = qemu_name(argv)
    found, chardevs = [], {}
    for opt, value in opts:
        if opt in ("qmp", "qmp-pretty", "monitor"):
            path = _unix_server(value)
            if path:
                found.append(Monitor("hmp" if opt == "monitor" else "qmp", path))
        elif opt == "chardev":
            backend, *rest = split_opts(value)
            keys = _keys(rest)
            if backend == "socket" and keys.get("id"):
                chardevs[keys["id"]] = keys
    for opt, value in opts:
        if opt != "mon":
            continue
        parts = split_opts(value)
        keys = _keys(p for p in parts if "=" in p)
        dev = chardevs.get(keys.get("chardev") or parts[0])
        if not dev:
            continue
        if dev["id"] == LIBVIRT_MONITOR and domain:
            found.append(Monitor("libvirt", domain))
        elif dev.get("path") and dev.get("server") in _ON:
            found.append(Monitor("qmp" if keys.get("mode") == "control" else "hmp",
                                 dev["path"]))
    order = {"libvirt": 0, "qmp": 1, "hmp": 2}
    return min(found, key=lambda m: order[m.protocol]) if found else None
