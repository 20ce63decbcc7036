"""``orchestratord serve`` as operators run it, plus a SIGUSR1 hook for the memory scenario.

On the signal, the hook reads the actions written to ``DIR/actions`` (``stats``, ``gc``, ``trim``),
does them in order, and writes what it found after each to ``DIR/stats.json``: the RSS, glibc's heap
(``mallinfo2``: in use, free inside the heap, mmapped), pymalloc's arenas (``sys._debugmallocstats``),
the objects the collector tracks, and how long the action took. ``gc`` is ``gc.collect()``; ``trim``
is glibc's ``malloc_trim(0)``. Nothing runs until a signal comes.

Run: ``python -m bench.memory_probe DIR serve --config FILE``.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import re
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

MB = 2**20
_PYMALLOC = {
    "arenas": "arenas allocated current",
    "allocated_bytes": "bytes in allocated blocks",
    "available_bytes": "bytes in available blocks",
    "unused_pool_bytes": "bytes in unused pools",
    "total_bytes": "Total",
}


_MALLINFO2 = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (*_MALLINFO2, "keepcost")]


def rss_mb(pid: int | str = "self") -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def glibc(libc: ctypes.CDLL) -> dict[str, float] | None:
    info = getattr(libc, "mallinfo2", None)
    if info is None:
        return None
    info.restype = MallInfo2
    m = info()
    return {
        "heap_mb": round(m.arena / MB, 2),  # from sbrk, every arena
        "in_use_mb": round(m.uordblks / MB, 2),
        "free_mb": round(m.fordblks / MB, 2),  # free chunks inside the heap: not given back
        "mmapped_mb": round(m.hblkhd / MB, 2),
    }


def pymalloc() -> dict[str, float]:
    """pymalloc's own account, which it prints only to stderr (file descriptor 2)."""
    with tempfile.TemporaryFile() as out:
        saved = os.dup(2)
        os.dup2(out.fileno(), 2)
        try:
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        out.seek(0)
        text = out.read().decode()
    found: dict[str, float] = {}
    for key, label in _PYMALLOC.items():
        match = re.search(rf"^#?\s*{re.escape(label)}\s*=\s*([\d,]+)", text, re.MULTILINE)
        if match:
            value = int(match.group(1).replace(",", ""))
            found[key] = value if key == "arenas" else round(value / MB, 2)
    return found


class Hook:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.libc = ctypes.CDLL(None)

    def stats(self) -> dict[str, Any]:
        return {
            "rss_mb": rss_mb(),
            "glibc": glibc(self.libc),
            "pymalloc": pymalloc(),
            "gc_tracked_objects": len(gc.get_objects()),
        }

    def act(self, action: str) -> dict[str, Any]:
        began = time.perf_counter()
        done: dict[str, Any] = {"action": action}
        if action == "gc":
            done["collected"] = gc.collect()
        elif action == "trim":
            done["returned"] = bool(self.libc.malloc_trim(0))
        done["took_ms"] = round((time.perf_counter() - began) * 1000, 3)
        return {**done, **self.stats()}

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        actions = (self.workdir / "actions").read_text().split()
        found = [self.act(action) for action in actions]
        tmp = self.workdir / "stats.json.tmp"
        tmp.write_text(json.dumps(found))
        tmp.replace(self.workdir / "stats.json")


def main() -> int:
    workdir, argv = Path(sys.argv[1]), sys.argv[2:]
    signal.signal(signal.SIGUSR1, Hook(workdir))
    from orchestratord.cli import main as orchestratord

    return orchestratord(argv)


if __name__ == "__main__":
    raise SystemExit(main())
