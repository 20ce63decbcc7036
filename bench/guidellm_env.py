"""guidellm's own virtual environment, kept outside the checkout and reused from one run to the next.

guidellm pulls in torch, transformers and datasets (about 1 GB), which the project's ``.venv`` must not
carry, so it lives in ``${XDG_CACHE_HOME:-~/.cache}/orchestratord/guidellm-venv``. The first use creates
it: ``python -m venv``, then ``torch==2.13.0`` (the CPU build; installed first, because guidellm's plain
``torch`` requirement would otherwise fetch a multi-GB CUDA build), then ``guidellm==0.8.1``. A stamp
file records the pins; a venv whose stamp matches is used as it is.

guidellm sizes its synthetic prompts with a Hugging Face tokenizer (its "processor"), and nothing can
come from the Hugging Face hub here, so ``bench/guidellm_processor.py`` builds a small one offline, with
the venv's python, into the directory a run asks for (about a second; rebuilt for every run, so it can
never be stale).

Run ``python -m bench.guidellm_env`` to install ahead of a benchmark; it prints where guidellm is.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

PINS = ("torch==2.13.0", "guidellm==0.8.1")  # in this order: torch first (see above)
PROCESSOR_SCRIPT = Path(__file__).with_name("guidellm_processor.py")
# Nothing is fetched from the Hugging Face hub: the processor is local, the data synthetic.
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "orchestratord"


@dataclass(frozen=True)
class GuideLLM:
    """An installed guidellm."""

    venv: Path

    @property
    def executable(self) -> Path:
        return self.venv / "bin" / "guidellm"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    def env(self, **settings: str) -> dict[str, str]:
        """The environment to run it in: offline, with guidellm's own settings (``GUIDELLM__…``)."""
        return {**os.environ, **OFFLINE, **settings}

    def build_processor(self, out: Path) -> Path:
        """The offline tokenizer, saved in `out`, to pass as guidellm's tokenizer ``model``."""
        _run([str(self.python), str(PROCESSOR_SCRIPT), str(out)], self.env())
        return out


def ensure(root: Path | None = None) -> GuideLLM:
    """guidellm in its venv under `root` (the cache by default), installed first if missing."""
    tool = GuideLLM((root or cache_root()) / "guidellm-venv")
    _install(tool.venv)
    return tool


def _install(target: Path) -> None:
    stamp = target / "orchestratord-pins.txt"
    wanted = "\n".join(PINS) + "\n"
    if stamp.exists() and stamp.read_text() == wanted:
        return
    print(f"bench: installing {', '.join(PINS)} into {target} (once; about 1 GB)", file=sys.stderr)
    venv.EnvBuilder(with_pip=True, clear=stamp.exists()).create(target)
    pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    for pin in PINS:
        _run([*pip, pin], dict(os.environ))
    stamp.write_text(wanted)


def _run(argv: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr[-2000:]}")


def main() -> int:
    print(ensure().executable)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
