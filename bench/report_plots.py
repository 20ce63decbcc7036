"""The summary's plots (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter


def plot_ttft(doc: dict[str, Any], path: Path) -> None:
    """Added TTFT (p50, p95, p99) against concurrency, with the targets at concurrency 10."""
    levels = doc["levels"]
    xs = [lv["concurrency"] for lv in levels]
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for key, style in (("p50", "o-"), ("p95", "s--"), ("p99", "^:")):
        ys = [lv["added_ttft_ms"][key] for lv in levels]
        ax.plot(xs, [y if y is not None else float("nan") for y in ys], style, label=f"added {key}")
    ax.axhline(1.0, color="green", lw=0.8, ls="--", label="target p50 at c=10 (1 ms)")
    ax.axhline(5.0, color="red", lw=0.8, ls="--", label="target p99 at c=10 (5 ms)")
    ax.set_xscale("log")
    values = [lv["added_ttft_ms"][k] for lv in levels for k in ("p50", "p95", "p99")]
    if all(v is not None and v > 0 for v in values):
        ax.set_yscale("log")
        ax.set_ylim(bottom=min(0.5, *values) / 2)
    else:  # an added TTFT below zero (the engine was slower alone): keep it visible
        ax.set_yscale("symlog", linthresh=1.0)
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("concurrency (closed loop)")
    ax.set_ylabel("TTFT added by orchestratord (ms)")
    ax.set_title("Time to first token added over the engine (50 tokens)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_throughput(jobs: dict[str, Any] | None, relay: dict[str, Any] | None, path: Path) -> None:
    """Left: jobs/s against concurrency, through orchestratord and the engine alone. Right: relay."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=110)
    if jobs is not None:
        xs = [lv["concurrency"] for lv in jobs["levels"]]
        left.plot(
            xs, [lv["orchestratord"]["jobs_per_s"] for lv in jobs["levels"]], "o-", label="via orchestratord"
        )
        left.plot(xs, [lv["direct"]["jobs_per_s"] for lv in jobs["levels"]], "s--", label="engine alone")
        left.axhline(600, color="red", lw=0.8, ls="--", label="target (600 jobs/s)")
        left.set_xscale("log")
        left.set_yscale("log")
        left.xaxis.set_minor_formatter(NullFormatter())
        left.set_xticks(xs, [str(x) for x in xs])
        left.set_xlabel("concurrency (closed loop)")
        left.set_ylabel("50-token jobs per second")
        left.set_title("Jobs per second")
        left.grid(True, which="both", alpha=0.3)
        left.legend(fontsize=8)
    if relay is not None:
        one, many = relay["one_long_stream"], relay["concurrent_streams"]
        labels = [f"1 x {one['tokens']:,}", f"{many['streams']} x {many['tokens_each']:,}"]
        via = [one["orchestratord"]["tokens_per_s"], many["orchestratord"]["tokens_per_s"]]
        alone = [one["direct"]["tokens_per_s"], many["direct"]["tokens_per_s"]]
        pos = range(len(labels))
        right.bar([p - 0.2 for p in pos], via, width=0.4, label="via orchestratord")
        right.bar([p + 0.2 for p in pos], alone, width=0.4, label="engine alone")
        right.axhline(50_000, color="red", lw=0.8, ls="--", label="target (50,000 tokens/s)")
        right.set_yscale("log")
        right.set_ylim(bottom=1_000)
        right.yaxis.set_minor_formatter(NullFormatter())
        right.set_xticks(list(pos), labels)
        right.set_xlabel("streams x tokens")
        right.set_ylabel("tokens per second received")
        right.set_title("Relay throughput")
        right.grid(True, axis="y", which="both", alpha=0.3)
        right.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
