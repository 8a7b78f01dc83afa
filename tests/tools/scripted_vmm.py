"""A monitor socket that says a script, served by a real KVM guest's own process.

USAGE: python3 tests/tools/scripted_vmm.py SCRIPT LOG [--serve-only] GUEST-ARGS...

GUEST-ARGS are tests/tools/guest.py's; the -qmp or -monitor unix socket they name is
bound and served by this process, which then runs the guest: a VMM that
answers its own monitor as it likes, as a hostile QEMU could. With
--serve-only it serves only (a service that is not a VMM), says "ready" and
runs until stdin closes.

SCRIPT is a file of a JSON list of strings (each a line's bytes as latin-1),
read anew at each connection: the first is said at once, each next after a
request line. The socket is made mode 0600, its owner whoever runs this.
LOG gets a line per connection: "connect PID" (the client's pid, from
SO_PEERCRED: other tracers on the host may connect too), then "got N"
(bytes received) once the client has left.
"""

import json
import os
import socket
import struct
import sys
import threading

import guest
from piobpf.naming import qemucmd


def serve(sock, script_file, log):
    while True:
        conn, _ = sock.accept()
        peer = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                   struct.calcsize("3i")))[0]
        log.write(f"connect {peer}\n")
        got = 0
        with conn:
            conn.settimeout(5)
            try:
                with open(script_file) as f:
                    script = [line.encode("latin-1") for line in json.load(f)]
                buf = b""
                for i, line in enumerate(script):
                    while i and b"\n" not in buf:
                        chunk = conn.recv(4096)
                        if not chunk:
                            raise ConnectionError("client left")
                        got, buf = got + len(chunk), buf + chunk
                    buf = buf.partition(b"\n")[2] if i else buf
                    conn.sendall(line)
                while chunk := conn.recv(4096):     # until the client hangs up
                    got += len(chunk)
            except OSError:
                pass
        log.write(f"got {got}\n")


def main():
    script_file, log_file, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    serve_only = args[:1] == ["--serve-only"]
    args = args[serve_only:]
    path = qemucmd.find_monitor(["vmm", *args]).address
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    os.chmod(path, 0o600)
    sock.listen(8)
    log = open(log_file, "a", buffering=1)
    threading.Thread(target=serve, args=(sock, script_file, log), daemon=True).start()
    if not serve_only:
        return guest.main(args)
    print("ready", flush=True)
    sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
