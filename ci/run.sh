#!/usr/bin/env bash
# Install and run the service on the embedded default (in-memory state, built-in mock engine).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh service   # the service alone: no dev tools, no apt packages
exec .venv/bin/orchestratord serve "$@"
