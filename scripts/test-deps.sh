#!/usr/bin/env bash
# Install the test rig on Debian, as root: what the tests run beside piobpf
# (scripts/setup.sh installs piobpf and what tracing needs). Idempotent, and
# quick when nothing is missing. scripts/test.sh runs it.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$repo/scripts/lib.sh"
need_root_and_apt

# pytest: the runner. prometheus: a real server scrapes --prometheus. tmux:
# drives --live through a real terminal. linux-perf, bpftrace: the tracers
# piobpf is checked against. bpftool: the loaded programs, for --latency's
# in-kernel path (BPF_PROG_TEST_RUN). curl, openssl: --web.config.file's TLS
# and auth. QEMU (SeaBIOS comes as a dependency): the real VMs; libvirt
# (daemon, its QEMU driver, virsh): a libvirt-managed VM. Not
# libvirt-daemon-system: it would upgrade systemd and add iptables and a
# default network, none of it used (the tests run libvirtd with a
# configuration of their own). systemd: systemd-analyze verifies the
# exporter's unit (installing it does not make it PID 1). The .deb's build
# tools: scripts/build-deb.sh installs them itself.
install_packages python3-pytest prometheus tmux linux-perf bpftrace bpftool curl openssl \
    qemu-system-x86 libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients systemd

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
say "ok: test rig installed"
