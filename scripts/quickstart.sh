#!/usr/bin/env bash
# The main job on a fresh Debian/Ubuntu machine: set up (Docker engine included), then build,
# test and audit one cell of matrix.yaml. Default: the Paddle 3.3.1 CPU inference image.
#
#   bash scripts/quickstart.sh [VARIANT]     (as root, or a user with sudo)      e.g. gpu-cuda11.8-slim, onnxruntime:cpu-slim
set -euo pipefail
# Root is needed (apt, dockerd, the engine's socket). As root: go on, no sudo needed (a fresh machine
# may have none). Otherwise run this script again through sudo.
if [[ "$(id -u)" -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "$(basename "$0"): run as root (sudo is not installed)" >&2; exit 1; }
  keep=$(compgen -e | grep -E '^(IMAGEGEN_|PIP_|DOCKER_HOST$|SOURCE_DATE_EPOCH$)' | paste -sd, -)  # every setting
  exec sudo ${keep:+--preserve-env="$keep"} bash "$0" "$@"
fi
cd "$(dirname "$0")/.."
variant="${1:-paddle:3.3.1-cpu-slim}"
bash scripts/setup.sh
mkdir -p reports
imagegen validate
imagegen build --variant "$variant" --junit reports/          # builds, then runs the image test suite
ref="$(imagegen list --variant "$variant" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["local_ref"])')"
imagegen audit "$ref" --html reports/audit.html
echo "quickstart: $ref built, tested and audited; reports in $(pwd)/reports/" >&2
