#!/usr/bin/env bash
# Build piobpf_VERSION_all.deb from a clean clone of this checkout's HEAD
# (committed files only) with Debian's tools, and check it with lintian.
#   scripts/build-deb.sh [OUTDIR]      (default: dist/ of this checkout)
# Installs its build dependencies with apt-get when they are missing (as root).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$repo/scripts/lib.sh"
out=$(realpath -m "${1:-$repo/dist}")

deps=(debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools lintian)
if [ -n "$(missing_packages "${deps[@]}")" ]; then
    need_root_and_apt
    install_packages "${deps[@]}"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
rev=$(git -C "$repo" rev-parse HEAD)
git clone -q --no-checkout "$repo" "$work/piobpf"
git -C "$work/piobpf" checkout -q --detach "$rev"
[ -z "$(git -C "$repo" status --porcelain)" ] || say "note: uncommitted changes are not in the package"

# The distribution's tools with its python3 only: a PATH with another
# Python (pyenv, a venv) first would build for that one.
(cd "$work/piobpf" && env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$work" LC_ALL=C.UTF-8 \
    dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1) \
    || { tail -n 40 "$work/build.log" >&2; die "dpkg-buildpackage failed"; }

debs=("$work"/piobpf_*_all.deb)
mkdir -p "$out"
cp "${debs[@]}" "$out/"
deb="$out/$(basename "${debs[0]}")"
# An E: line fails the build. It has no W: line either (tests/test_deb.py):
# a new one is fixed, or overridden with its reason in
# debian/piobpf.lintian-overrides.
lintian --fail-on error "$deb" >&2 || die "lintian reports errors in $deb"
say "built $deb"
echo "$deb"
