#!/usr/bin/env bash
# Build llama.cpp's own `llama-server` (what the `llamacpp` adapter targets) once per version, from the
# llama.cpp source vendored in the llama-cpp-python sdist, CPU only, and cache the binary outside the
# checkout. Prints the binary's path. About 7 minutes of two cores the first time; instant after.
#
#   bash ci/llama_server.sh            -> ${XDG_CACHE_HOME:-~/.cache}/orchestratord/llama-server-<v>/llama-server
set -euo pipefail
VERSION=0.3.36  # the llama-cpp-python release whose vendored llama.cpp is built (as .venv-engine's)
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/orchestratord/llama-server-$VERSION"
BIN="$CACHE/llama-server"
if [ -x "$BIN" ]; then
  echo "$BIN"
  exit 0
fi
PYTHON=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" -m pip download --quiet --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$work" >&2
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
# The vendored tree's .git is a `gitdir:` link the build-info step touches at every configure, which
# makes ninja re-run CMake until it gives up: set it aside.
[ -e "$src/.git" ] && mv "$src/.git" "$src/.git-aside"
cmake -S "$src" -B "$work/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF -DGGML_OPENMP=OFF \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_CURL=OFF >&2
ninja -C "$work/build" -j"$(nproc)" llama-server >&2
mkdir -p "$CACHE"
cp "$work/build/bin/llama-server" "$BIN.tmp"
mv "$BIN.tmp" "$BIN"  # appears whole or not at all
echo "$BIN"
