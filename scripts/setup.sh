#!/usr/bin/env bash
# Install persona-basins into ./.venv on a fresh machine. Idempotent: a second run only checks.
#   scripts/setup.sh          package + test tools
#   scripts/setup.sh --browser   also Debian chromium for the explorer's browser tests
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
# torch first, pinned to the CPU wheel on this machine's disk: an unpinned resolve of the package's own
# range (torch>=2.4) would otherwise pull a multi-GB CUDA build. GPU users install their own torch first.
if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  "$VPY" -m pip install --quiet "torch==2.13.0"
fi
stamp=.venv/.persona-basins-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$VPY" -m pip install --quiet -e ".[test,ray]"  # ray: the sweep Ray-backend tests run in CI
  touch "$stamp"
fi
if [ "${1:-}" = "--browser" ] && [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: /usr/bin/chromium missing; install Debian's chromium to run the browser tests" >&2
  fi
fi
