# shellcheck shell=bash
# Shared setup for scripts/test, scripts/demo, scripts/bench. Source it from the repo root:
#
#   cd "$(dirname "$0")/.." && source scripts/_common.sh
#   rd_ensure_system   # Debian packages: ffmpeg, GStreamer RTSP server, PostgreSQL, Chromium, promtool
#   rd_ensure_venv     # .venv with the project and its test extras
#
# Both are quiet when there is nothing to do and loud when something fails.

RD_REPO="${RD_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
RD_VENV="${RD_VENV:-$RD_REPO/.venv}"
RD_PYTHON="${RD_PYTHON:-python3}"  # the interpreter .venv is made from (>= 3.11)
# optional packages that could not be installed are remembered here, so that every run does not
# start with an apt-get update
RD_APT_SKIP_FILE="${RD_APT_SKIP_FILE:-/var/tmp/recorderd-apt-optional-unavailable}"

rd_log() { printf '%s\n' "$*" >&2; }
rd_die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Packages the tests and the demo need. postgresql-15 only when no PostgreSQL is installed at all.
RD_APT_PACKAGES=(
    ffmpeg
    python3
    passwd  # useradd: the test PostgreSQL runs as an unprivileged user when we are root
    python3-gi
    gir1.2-gst-rtsp-server-1.0
    gstreamer1.0-plugins-base
    gstreamer1.0-plugins-good
    gstreamer1.0-plugins-bad
    gstreamer1.0-plugins-ugly
    gstreamer1.0-libav
    faketime  # libfaketime: the clock-step tests move the wall clock under a running daemon
    util-linux  # setpriv --pdeathsig: FFmpeg dies with the daemon without a fork-time hook
    chromium  # the web page's browser tests: Playwright drives /usr/bin/chromium (executable_path)
)
# promtool, amtool, systemd-analyze, shellcheck: their checks skip without them
RD_APT_OPTIONAL=(prometheus prometheus-alertmanager systemd shellcheck)

_rd_pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

_rd_have_postgres() {
    if [[ -n "${RECORDERD_PG_BIN:-}" && -x "${RECORDERD_PG_BIN}/initdb" ]]; then
        return 0
    fi
    compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}

_rd_venv_works() {
    # Debian's python3 cannot make a venv with pip unless python3-venv is installed: just try it
    command -v "$RD_PYTHON" >/dev/null 2>&1 || return 1
    local tmp rc=0
    tmp="$(mktemp -d)"
    "$RD_PYTHON" -m venv "$tmp/v" >/dev/null 2>&1 || rc=1
    rm -rf "$tmp"
    return $rc
}

_rd_apt() {
    # apt-get with retries on the lock (another apt run, unattended-upgrades) and quiet output
    local log="$1"; shift
    local i
    for i in 1 2 3; do
        if DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 "$@" >>"$log" 2>&1; then
            return 0
        fi
        sleep $((i * 3))
    done
    return 1
}

rd_ensure_system() {
    if ! command -v dpkg-query >/dev/null 2>&1; then
        rd_log "warning: not a Debian system; make sure ffmpeg, the GStreamer RTSP server (python3-gi)"
        rd_log "         and PostgreSQL are installed"
        return 0
    fi
    local missing=() pkg
    for pkg in "${RD_APT_PACKAGES[@]}"; do
        _rd_pkg_installed "$pkg" || missing+=("$pkg")
    done
    _rd_have_postgres || missing+=(postgresql-15)
    if ! _rd_pkg_installed python3-venv && ! _rd_venv_works; then
        missing+=(python3-venv)
    fi
    local optional=()
    for pkg in "${RD_APT_OPTIONAL[@]}"; do
        if ! _rd_pkg_installed "$pkg" && ! grep -qxF "$pkg" "$RD_APT_SKIP_FILE" 2>/dev/null; then
            optional+=("$pkg")
        fi
    done
    if [[ ${#missing[@]} -eq 0 && ${#optional[@]} -eq 0 ]]; then
        return 0
    fi

    if [[ "$(id -u)" -ne 0 ]]; then
        if [[ ${#missing[@]} -eq 0 ]]; then
            return 0  # only optional packages missing: not worth failing for
        fi
        rd_log "error: missing system packages: ${missing[*]}"
        rd_log "install them as root:"
        rd_log "  apt-get update && apt-get install -y ${missing[*]} ${optional[*]}"
        exit 1
    fi

    local log
    log="$(mktemp -t recorderd-apt.XXXXXX.log)"
    rd_log "installing system packages: ${missing[*]} ${optional[*]} (log: $log)"
    if ! _rd_apt "$log" update; then
        tail -n 40 "$log" >&2
        rd_die "apt-get update failed (full log: $log)"
    fi
    if [[ ${#missing[@]} -gt 0 ]]; then
        if ! _rd_apt "$log" install -y "${missing[@]}"; then
            tail -n 60 "$log" >&2
            rd_die "apt-get install ${missing[*]} failed (full log: $log)"
        fi
    fi
    for pkg in "${optional[@]}"; do
        if ! _rd_apt "$log" install -y --no-install-recommends "$pkg"; then
            rd_log "warning: optional package $pkg could not be installed (continuing; not retried"
            rd_log "         while it is listed in $RD_APT_SKIP_FILE)"
            echo "$pkg" >>"$RD_APT_SKIP_FILE" 2>/dev/null || true
        fi
    done
    # check what we needed really arrived
    for pkg in "${missing[@]}"; do
        if [[ "$pkg" == postgresql-15 ]]; then
            _rd_have_postgres || rd_die "postgresql-15 installed but no initdb under /usr/lib/postgresql/*/bin"
        elif ! _rd_pkg_installed "$pkg"; then
            rd_die "package $pkg is still not installed (log: $log)"
        fi
    done
    rm -f "$log"
}

_rd_sha256() { sha256sum "$1" | cut -d' ' -f1; }

rd_ensure_venv() {
    local py="$RD_VENV/bin/python"
    local stamp="$RD_VENV/.recorderd-deps"
    local log
    if [[ -x "$py" ]] && ! "$py" -c 'import sys' >/dev/null 2>&1; then
        rd_log "$RD_VENV is broken (its python does not run): recreating it"
        rm -rf "$RD_VENV"
    fi
    if [[ ! -x "$py" ]]; then
        command -v "$RD_PYTHON" >/dev/null 2>&1 || rd_die "$RD_PYTHON not found (run rd_ensure_system first)"
        "$RD_PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
            || rd_die "$RD_PYTHON is $("$RD_PYTHON" -V 2>&1); recorderd needs Python >= 3.11 (set RD_PYTHON)"
        log="$(mktemp -t recorderd-venv.XXXXXX.log)"
        if ! "$RD_PYTHON" -m venv "$RD_VENV" >"$log" 2>&1; then
            cat "$log" >&2
            rm -rf "$RD_VENV"
            rd_die "$RD_PYTHON -m venv $RD_VENV failed (is python3-venv installed?)"
        fi
        rm -f "$log"
    fi
    # the stamp records pyproject.toml's hash and where the editable install points
    local want
    want="$(_rd_sha256 "$RD_REPO/pyproject.toml") $RD_REPO"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] \
        && (cd / && "$py" -c 'import recorderd' >/dev/null 2>&1); then
        return 0
    fi
    log="$(mktemp -t recorderd-pip.XXXXXX.log)"
    if ! (cd "$RD_REPO" && "$py" -m pip install --disable-pip-version-check --no-input -e '.[test]') \
        >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        rd_die "pip install -e '.[test]' failed (full log: $log)"
    fi
    rm -f "$log"
    printf '%s' "$want" >"$stamp"
}
