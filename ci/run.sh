#!/usr/bin/env bash
# Install and run the service on the embedded default (in-memory state, built-in mock engine).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh
exec .venv/bin/orchestratord serve "$@"
