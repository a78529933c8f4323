# Sourced by scripts/serve and scripts/test: make ./.venv with chatd installed, once.
# `source _venv.sh EXTRAS`: EXTRAS as in pyproject.toml (dev, media, ...), or "" for none.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
extras="${1:-}"
stamp=".venv/.installed${extras:+-$extras}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "chatd needs Python 3.11+"'
  "$PYTHON" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ clients/pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # chatd depends on chatd-client: named here as the local clients/ (editable), in the same
  # pip run, so pip never takes a PyPI package of that name instead.
  .venv/bin/python -m pip install -q -e ./clients -e ".${extras:+[$extras]}"
  touch "$stamp"
fi
