#!/usr/bin/env bash
# Passes the test suite on a fresh Debian/Ubuntu machine: installs what it needs (Docker engine
# included, via scripts/setup.sh), then runs the unit, engine and integration tests. The integration
# tests build and image-test every cell of matrix.yaml that can be built here, GPU cells included
# (several GB each; without a GPU they run every check that needs none). Extra arguments go to
# pytest, e.g. `bash scripts/test.sh -m 'unit or engine'` for a quick run.
set -euo pipefail
# Root is needed (apt, dockerd, the engine's socket). As root: go on, no sudo needed (a fresh machine
# may have none). Otherwise run this script again through sudo.
if [[ "$(id -u)" -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "$(basename "$0"): run as root (sudo is not installed)" >&2; exit 1; }
  keep=$(compgen -e | grep -E '^(IMAGEGEN_|PIP_|DOCKER_HOST$|SOURCE_DATE_EPOCH$)' | paste -sd, -)  # every setting
  exec sudo ${keep:+--preserve-env="$keep"} bash "$0" "$@"
fi
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p reports
markers="unit or engine or integration"
# pytest exits 5 when it collects no test; with `set -e` that fails this script, as it must.
# --strict-skips: any skip whose reason is not in tests/allowed-skips.txt (no NVIDIA GPU) fails the
# run and is named in the summary.
exec python3 -m pytest -m "${markers}" --strict-skips --junitxml=reports/junit.xml "$@"
