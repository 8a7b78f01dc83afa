#!/usr/bin/env bash
# Install what tracing with piobpf needs on Debian, as root, and piobpf itself.
# The test rig is scripts/test-deps.sh's. Idempotent, and quick when nothing
# is missing: each step checks before it acts.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$repo/scripts/lib.sh"
need_root_and_apt
kver=$(uname -r)

# BCC's Python bindings come from the distribution (python3-bpfcc, for
# /usr/bin/python3). The PyPI package named "bcc" is unrelated: never pip it.
# python3-prometheus-client: --prometheus; python3-bcrypt, python3-yaml: its
# --web.config.file. python3-venv: the install below.
pkgs=(python3-bpfcc python3-tabulate python3-venv
      python3-prometheus-client python3-bcrypt python3-yaml)

# Kernel headers: BCC compiles the BPF C against them at start-up. A custom
# kernel has no matching package: BCC then compiles against the distribution's
# generic headers. Tracepoint programs read only the tracepoint's arguments,
# so they do not depend on the exact version.
if [ ! -e "/lib/modules/$kver/build/Makefile" ]; then
    apt_update
    if apt-cache show "linux-headers-$kver" >/dev/null 2>&1; then
        pkgs+=("linux-headers-$kver")
    else
        pkgs+=(linux-headers-amd64)
    fi
fi
install_packages "${pkgs[@]}"
if [ ! -e "/lib/modules/$kver/build/Makefile" ]; then
    generic=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
    [ -n "$generic" ] || die "no kernel headers for $kver and no linux-headers-amd64 to fall back on"
    common=${generic%-amd64}-common
    [ -d "$common" ] || die "fallback headers incomplete: $common missing"
    mkdir -p "/lib/modules/$kver"
    ln -sfn "$generic" "/lib/modules/$kver/build"
    ln -sfn "$common" "/lib/modules/$kver/source"
    say "FALLBACK: no headers packaged for kernel $kver; BCC will compile against"
    say "  $generic (+ $common), linked from /lib/modules/$kver/{build,source}"
fi

# tracefs and debugfs: BCC looks up tracepoints there.
mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing \
    || die "cannot mount tracefs on /sys/kernel/tracing"
mountpoint -q /sys/kernel/debug || mount -t debugfs nodev /sys/kernel/debug \
    || die "cannot mount debugfs on /sys/kernel/debug"

# The package, in a venv that sees the system's bcc, with `piobpf` on PATH.
# Reinstalled only when the source changed.
venv=/opt/piobpf/venv
stamp=/opt/piobpf/source.sha256
sum=$(cd "$repo" && find piobpf bpf setup.cfg pyproject.toml README.md $(ls -d man 2>/dev/null) \
        -type f ! -path '*__pycache__*' -print0 | sort -z | xargs -0 sha256sum | sha256sum)
if [ ! -x "$venv/bin/piobpf" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
    [ -x "$venv/bin/python" ] || /usr/bin/python3 -m venv --system-site-packages "$venv"
    say "installing piobpf into $venv"
    "$venv/bin/python" -m pip install -q --no-deps --no-build-isolation --no-index "$repo" >/dev/null
    echo "$sum" > "$stamp"
fi
ln -sfn "$venv/bin/piobpf" /usr/local/bin/piobpf
if [ -f "$repo/man/piobpf.8" ]; then
    mkdir -p /usr/local/share/man/man8
    cp "$repo/man/piobpf.8" /usr/local/share/man/man8/piobpf.8
fi
say "ok: $(/usr/local/bin/piobpf --version 2>&1)"
