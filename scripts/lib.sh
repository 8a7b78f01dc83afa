# Shared by the install scripts (setup.sh, test-deps.sh, bench.sh,
# build-deb.sh): sourced, not run. Each checks before it acts, so a second
# run is quick.

say() { local me=${0##*/}; echo "${me%.sh}: $*" >&2; }
die() { say "$*"; exit 1; }

need_root_and_apt() {
    [ "$(id -u)" = 0 ] || die "must run as root (it installs packages)"
    command -v apt-get >/dev/null || die "needs a Debian-like system with apt-get"
    export DEBIAN_FRONTEND=noninteractive
}

# The given Debian packages that are not installed, one a line.
missing_packages() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
    done
}

# apt-get update, once per script and only when something is to be installed.
apt_updated=0
apt_update() {
    [ $apt_updated = 1 ] && return
    say "apt-get update"
    apt-get update -qq
    apt_updated=1
}

# Install those of the given packages that are missing; nothing when none is.
install_packages() {
    local missing
    mapfile -t missing < <(missing_packages "$@")
    [ ${#missing[@]} -gt 0 ] || return 0
    apt_update
    say "installing ${missing[*]}"
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
