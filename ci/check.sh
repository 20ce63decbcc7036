#!/usr/bin/env bash
# Static gates: lint, format, strict typing, import layering.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
"$BIN/ruff" check .
"$BIN/ruff" format --check .
"$BIN/mypy" --strict
"$BIN/lint-imports"
