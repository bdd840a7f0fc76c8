#!/usr/bin/env bash
# Create .venv with a Python >= 3.12 and install egresswatch with its test extras.
# Finds the interpreter by itself: python3.13/python3.12 on PATH, then pyenv's versions,
# then /usr/bin and /usr/local/bin. Idempotent: a second run only re-syncs the install.
set -euo pipefail
cd "$(dirname "$0")/.."

ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; }

find_python() {
  local c
  for c in "${EGRESSWATCH_PYTHON:-}" python3.13 python3.12 python3; do
    [ -n "$c" ] || continue
    if command -v "$c" >/dev/null 2>&1 && ok "$(command -v "$c")"; then command -v "$c"; return 0; fi
  done
  for c in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.1[2-9]*/bin/python3 \
           /usr/local/bin/python3.1[2-9] /usr/bin/python3.1[2-9]; do
    if [ -x "$c" ] && ok "$c"; then echo "$c"; return 0; fi
  done
  return 1
}

if [ ! -x .venv/bin/python ] || ! ok .venv/bin/python; then
  py=$(find_python) || {
    echo "bootstrap: no Python 3.12 or newer found. Install one (e.g. 'apt-get install python3.12'" >&2
    echo "or 'pyenv install 3.12') or point EGRESSWATCH_PYTHON at it." >&2
    exit 1
  }
  echo "bootstrap: creating .venv with $py ($("$py" --version))"
  rm -rf .venv
  "$py" -m venv .venv
fi
stamp=.venv/.egresswatch-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing egresswatch and its dependencies into .venv"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e '.[test]'
  touch "$stamp"
fi
