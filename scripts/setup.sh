#!/usr/bin/env bash
# Install what piobpf needs on Debian, as root. Idempotent, and quick when
# nothing is missing: each step checks before it acts.
set -euo pipefail

say() { echo "setup: $*" >&2; }
die() { say "$*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (it installs packages and mounts tracefs)"
command -v apt-get >/dev/null || die "needs a Debian-like system with apt-get"

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kver=$(uname -r)
export DEBIAN_FRONTEND=noninteractive

# BCC's Python bindings come from the distribution (python3-bpfcc, for
# /usr/bin/python3). The PyPI package named "bcc" is unrelated: never pip it.
# tmux: tests/test_live.py drives --live through a real terminal.
# python3-bcrypt, python3-yaml: --prometheus's --web.config.file.
pkgs=(python3-bpfcc python3-tabulate python3-pytest python3-venv bpftool
      python3-prometheus-client python3-bcrypt python3-yaml prometheus linux-perf bpftrace tmux
      curl openssl
      # QEMU (SeaBIOS comes as a dependency) for the tests' real VMs, and
      # libvirt (daemon, its QEMU driver, virsh) for their libvirt-managed VM.
      # Not libvirt-daemon-system: it would upgrade systemd and add iptables
      # and a default network, none of it used (the tests run libvirtd with a
      # configuration of their own).
      qemu-system-x86 libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients)
have_headers=0
[ -e "/lib/modules/$kver/build/Makefile" ] && have_headers=1

missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ] || [ $have_headers = 0 ]; then
    say "apt-get update"
    apt-get update -qq
fi
if [ $have_headers = 0 ]; then
    if apt-cache show "linux-headers-$kver" >/dev/null 2>&1; then
        missing+=("linux-headers-$kver")
    else
        missing+=(linux-headers-amd64)
    fi
fi
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# libvirtd's QEMU driver looks up its default user and group, libvirt-qemu,
# when it starts, even where qemu.conf names others: created here as
# libvirt-daemon-system's postinst does (user in group kvm, own group too).
if ! getent passwd libvirt-qemu >/dev/null || ! getent group libvirt-qemu >/dev/null; then
    say "creating the libvirt-qemu user and group"
    getent group kvm >/dev/null || groupadd --system kvm
    getent passwd libvirt-qemu >/dev/null || useradd --system --gid kvm --no-create-home \
        --home-dir /var/lib/libvirt --shell /usr/sbin/nologin --comment "Libvirt Qemu" libvirt-qemu
    getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
    usermod -a -G libvirt-qemu libvirt-qemu
fi

# Kernel headers. A custom kernel has no matching package: BCC then compiles
# against the distribution's generic headers. Tracepoint programs read only
# the tracepoint's arguments, so they do not depend on the exact version.
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
sum=$(cd "$repo" && find piobpf bpf setup.cfg pyproject.toml $(ls -d man 2>/dev/null) -type f \
        ! -path '*__pycache__*' -print0 | sort -z | xargs -0 sha256sum | sha256sum)
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
