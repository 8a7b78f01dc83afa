"""Run a systemd service unit's ExecStart as systemd would, without systemd.

PID 1 here is not systemd, so this does what systemd does for the settings
the unit uses, with the same kernel mechanisms: a mount namespace of its own
(ProtectSystem=strict: every mount read-only but /dev, /proc, /sys;
ProtectHome=yes: empty /home, /root, /run/user; PrivateTmp: empty /tmp and
/var/tmp), the capability bounding set (the service runs as uid 0, so its
capabilities are that set), no_new_privs, EnvironmentFile= and systemd's
$VAR / ${VAR} expansion, RuntimeDirectory= and `+` ExecStartPre= lines (full
privileges, outside the sandbox). A setting it does not emulate is an error,
so a unit that grows one cannot pass its tests untested.
"""

import os
import re
import shlex
import shutil
import subprocess

# Settings that change nothing about what the process can do.
INERT = {"Type", "Restart", "RestartSec"}
EMULATED = {"EnvironmentFile", "ExecStartPre", "ExecStart", "RuntimeDirectory",
            "CapabilityBoundingSet", "NoNewPrivileges", "ProtectSystem", "ProtectHome",
            "PrivateTmp"}
# systemd's PATH for system services (systemd 252).
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_VAR = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def service_settings(unit_text):
    """{key: [values]} of the [Service] section."""
    settings, section = {}, None
    for line in unit_text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    unknown = set(settings) - INERT - EMULATED
    if unknown:
        raise ValueError(f"unitrun does not emulate {', '.join(sorted(unknown))}")
    return settings


def environment_file(text):
    """systemd's EnvironmentFile=: VAR=value lines, # comments, quotes removed."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, _, value = line.partition("=")
        words = shlex.split(value) if value[:1] in ("'", '"') else [value]
        env[key.strip()] = words[0] if words else ""
    return env


def expand(cmdline, env):
    """An Exec line's argv: a word that is exactly $VAR becomes the value's
    words; ${VAR}, and $VAR inside a word, become the value as one word."""
    argv = []
    for word in shlex.split(cmdline):
        m = re.fullmatch(r"\$(\w+)", word)
        if m:
            argv += env.get(m.group(1), "").split()
        else:
            argv.append(_VAR.sub(lambda m: env.get(m.group(1) or m.group(2), ""), word))
    return argv


def _yes(values):
    return values[-1].lower() in ("yes", "true", "on", "1")


def _mount_script(settings):
    """The shell commands that set up the unit's mount namespace."""
    lines = ["set -e"]
    if settings.get("ProtectSystem", ["no"])[-1] == "strict":
        # Each mount on its own (a bind remount is per mount): findmnt lists
        # them parents first.
        lines.append(r"""findmnt -rn -o TARGET | while read -r m; do
  m=$(printf '%b' "$m")
  case "$m" in /dev|/dev/*|/proc|/proc/*|/sys|/sys/*) continue;; esac
  mount -o remount,bind,ro "$m"
done""")
    elif "ProtectSystem" in settings:
        raise ValueError("unitrun emulates ProtectSystem=strict only")
    if "ProtectHome" in settings:
        if not _yes(settings["ProtectHome"]):
            raise ValueError("unitrun emulates ProtectHome=yes only")
        for d in ("/home", "/root", "/run/user"):
            lines.append(f"[ ! -d {d} ] || mount -t tmpfs -o ro,mode=000 inaccessible {d}")
    if "PrivateTmp" in settings and _yes(settings["PrivateTmp"]):
        lines += ["mount -t tmpfs -o mode=1777 private /tmp",
                  "mount -t tmpfs -o mode=1777 private /var/tmp"]
    lines.append('exec "$@"')
    return "\n".join(lines)


class Unit:
    """A service unit file, its environment file read as systemd reads it.

    `caps`: the capability bounding set to use instead of the unit's (to
    show that each capability is needed); `env_file`: read instead of the
    one the unit names; `program`: argv to run instead of ExecStart's first
    word (piobpf of a source tree), with `extra_env`."""

    def __init__(self, path, env_file=None, caps=None, program=None, extra_env=None):
        self.program, self.extra_env = program, extra_env or {}
        with open(path) as f:
            self.settings = service_settings(f.read())
        env_file = env_file or self.settings["EnvironmentFile"][-1].lstrip("-")
        with open(env_file) as f:
            self.env = environment_file(f.read())
        self.caps = caps if caps is not None else \
            self.settings.get("CapabilityBoundingSet", [""])[-1].split()
        self.runtime = [f"/run/{d}" for v in self.settings.get("RuntimeDirectory", [])
                        for d in v.split()]

    def exec_start(self):
        argv = expand(self.settings["ExecStart"][-1], self.env)
        return [*self.program, *argv[1:]] if self.program else argv

    def sandboxed(self, argv):
        """argv run inside the unit's sandbox (mounts, capabilities, no_new_privs)."""
        caps = ",".join(["-all"] + [f"+{c.lower().removeprefix('cap_')}" for c in self.caps])
        setpriv = ["setpriv", f"--bounding-set={caps}", "--inh-caps=-all"]
        if _yes(self.settings.get("NoNewPrivileges", ["no"])):
            setpriv.append("--no-new-privs")
        return ["unshare", "--mount", "--propagation=private", "/bin/sh", "-c",
                _mount_script(self.settings), "sh", *setpriv, "--", *argv]

    def environ(self):
        return dict(self.env, PATH=PATH, LANG="C.UTF-8", **self.extra_env)

    def start(self, **popen):
        """Make the runtime directories, run the `+` ExecStartPre lines, and
        start ExecStart in the sandbox; returns its Popen."""
        for d in self.runtime:
            os.makedirs(d, mode=0o755)
        for line in self.settings.get("ExecStartPre", []):
            if not line.startswith("+"):
                raise ValueError("unitrun runs `+` ExecStartPre lines only")
            subprocess.run(expand(line[1:], self.env), check=True, env=self.environ())
        return subprocess.Popen(self.sandboxed(self.exec_start()), env=self.environ(),
                                stdin=subprocess.DEVNULL, **popen)

    def run(self, argv, **kw):
        """Another command in the same sandbox, to its end."""
        return subprocess.run(self.sandboxed(argv), env=self.environ(), capture_output=True,
                              text=True, timeout=60, **kw)

    def cleanup(self):
        """What systemd removes when the service stops: its runtime directories."""
        for d in self.runtime:
            shutil.rmtree(d, ignore_errors=True)
