# Sourced by scripts/demo, scripts/test and scripts/bench: make sure .venv exists and holds
# exactly what pyproject.toml asks for. Idempotent: a stamp of pyproject.toml's hash skips the
# install when nothing changed, so a second run costs well under a second.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"

export PIP_DISABLE_PIP_VERSION_CHECK=1
export PIP_NO_INPUT=1

_need_python() {
    if ! "$PY" -c 'import sys; raise SystemExit(sys.version_info < (3, 11))' 2>/dev/null; then
        echo "vmbusops needs Python 3.11 or newer as '$PY' (set PYTHON=/path/to/python3.11)." >&2
        exit 2
    fi
}

bootstrap_venv() {
    _need_python
    local stamp="$VENV/.vmbusops-stamp" want
    want="$(cat "$ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
    if [ ! -x "$VENV/bin/python" ]; then
        echo "==> creating $VENV" >&2
        "$PY" -m venv "$VENV"
    fi
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "==> installing vmbusops (editable) and its pinned dev tools (pyproject.toml [dev]: pytest, ruff, mypy...) into $VENV with pip, from PyPI" >&2
        "$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v '^WARNING: Location' >&2 || true
        "$VENV/bin/python" -m pip install -q -e "$ROOT[dev]" 2>&1 | grep -v '^WARNING: Location' >&2 || true
        "$VENV/bin/python" -c 'import vmbusops, trio, psrpcore, pytest_trio' \
            || { echo "installing into $VENV failed; see the pip output above" >&2; exit 1; }
        echo "$want" > "$stamp"
    fi
}

# The independent PSRP peer (pypsrp 1.0.0b1, a 2022 pre-release built on psrpcore) pins
# httpx/httpcore below 1.0, so it lives in its own environment and never shares ours.
PEER_VENV="$ROOT/.venv-peer"
bootstrap_peer_venv() {
    _need_python
    local stamp="$PEER_VENV/.vmbusops-stamp" want="pypsrp==1.0.0b1"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        echo "==> installing the independent PSRP peer ($want) into $PEER_VENV" >&2
        # Made afresh, so that one left half-made by a stopped run is never taken for whole.
        "$PY" -m venv --clear "$PEER_VENV"
        "$PEER_VENV/bin/python" -m pip install -q "$want" 2>&1 | grep -v '^WARNING: Location' >&2 || true
        "$PEER_VENV/bin/python" -c 'import psrp' \
            || { echo "installing $want into $PEER_VENV failed" >&2; exit 1; }
        echo "$want" > "$stamp"
    fi
}

# The remote-host tests and the staging benchmark start their own OpenSSH server on 127.0.0.1
# (never the system's): install Debian's openssh-server once, only when sshd is missing.
bootstrap_sshd() {
    local sshd
    for sshd in /usr/sbin/sshd /usr/local/sbin/sshd; do
        [ -x "$sshd" ] && return 0
    done
    command -v sshd >/dev/null 2>&1 && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "sshd (OpenSSH server) is missing and apt-get is not available; install openssh-server" >&2
        exit 1
    fi
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    # Said before anything happens: this is the one system-wide change the scripts make.
    echo "==> sshd is missing: installing Debian's openssh-server and openssh-client SYSTEM-WIDE" >&2
    echo "    with: ${sudo:+sudo }apt-get update && ${sudo:+sudo }apt-get install openssh-server openssh-client" >&2
    echo "    (the SSH transport tests start their own sshd on 127.0.0.1; Debian's package may also" >&2
    echo "    enable its ssh service: 'systemctl disable --now ssh' turns that off)" >&2
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends openssh-server openssh-client >&2
}

# The web console's browser tests drive headless Chromium through its driver (Selenium comes with
# the venv's dev extras): install Debian's chromium and chromium-driver once, only when missing.
# Exports VMBUSOPS_BROWSER=required, so that a browser test fails rather than skips without them.
bootstrap_chromium() {
    export VMBUSOPS_BROWSER=required
    if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
        return 0
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "chromium or chromedriver is missing and apt-get is not available; install chromium and chromium-driver" >&2
        exit 1
    fi
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "==> installing Debian's chromium and chromium-driver system-wide with apt-get${sudo:+ (sudo)}, for the web console's browser tests" >&2
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver >&2
}

# The fleet's tests start their own nats-server (JetStream) on 127.0.0.1: install Debian's
# nats-server once, only when missing. Exports VMBUSOPS_NATS=required, so that a fleet test fails
# rather than skips without it.
bootstrap_nats_server() {
    export VMBUSOPS_NATS=required
    command -v nats-server >/dev/null 2>&1 && return 0
    [ -x /usr/sbin/nats-server ] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "nats-server is missing and apt-get is not available; install nats-server (2.9 or newer)" >&2
        exit 1
    fi
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "==> nats-server is missing: installing Debian's nats-server SYSTEM-WIDE" >&2
    echo "    with: ${sudo:+sudo }apt-get update && ${sudo:+sudo }apt-get install nats-server" >&2
    echo "    (the fleet tests start their own nats-server on 127.0.0.1; the package may also" >&2
    echo "    enable its nats-server service: 'systemctl disable --now nats-server' turns that off)" >&2
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends nats-server >&2
}

# The real-PowerShell lane: PowerShell 7 from $VMBUSOPS_PWSH, `pwsh` on PATH, or the copy staged
# beside the checkout (../shared/pwsh). Exports VMBUSOPS_PWSH when one is found; says so either way.
find_pwsh() {
    local candidate=""
    if [ -n "${VMBUSOPS_PWSH:-}" ]; then
        candidate="$VMBUSOPS_PWSH"
    elif command -v pwsh >/dev/null 2>&1; then
        candidate="$(command -v pwsh)"
    elif [ -x "$ROOT/../shared/pwsh/pwsh" ]; then
        candidate="$(cd "$ROOT/../shared/pwsh" && pwd)/pwsh"
    fi
    if [ -n "$candidate" ] && "$candidate" -NoLogo -NoProfile -c 'exit 0' >/dev/null 2>&1; then
        export VMBUSOPS_PWSH="$candidate"
        echo "==> real-PowerShell lane: $candidate" >&2
    else
        unset VMBUSOPS_PWSH
        echo "==> real-PowerShell lane: no PowerShell 7 found; its tests will be counted as not run" >&2
    fi
}
