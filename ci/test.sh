#!/usr/bin/env bash
# The whole test suite, from a fresh machine: install, static gates, every test (real engine included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash ci/setup.sh test --with-engine
bash ci/check.sh
export ORCH_ENGINE_PYTHON="$PWD/.venv-engine/bin/python"
ORCH_LLAMA_SERVER="$(bash ci/llama_server.sh)"
export ORCH_LLAMA_SERVER
ORCH_VLLM_PYTHON="$(bash ci/vllm_cpu.sh)"
export ORCH_VLLM_PYTHON
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "ci/test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$status"
