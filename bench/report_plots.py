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


def plot_serving(doc: dict[str, Any], path: Path) -> None:
    """Per token class, added TTFT (p50 solid, p99 dashed) and CPU per job against the offered rate,
    one colour per system; the engine alone is the zero of the added TTFT."""
    classes = sorted({r["tokens"] for r in doc["rows"]})
    fig, axes = plt.subplots(2, len(classes), figsize=(5.5 * len(classes), 7.5), dpi=110, squeeze=False)
    systems = [s for s in doc["systems"] if s != "engine alone"]
    colours = dict(zip(systems, ("tab:blue", "tab:cyan", "tab:orange", "tab:green"), strict=False))
    for col, tokens in enumerate(classes):
        top, bottom = axes[0][col], axes[1][col]
        for system in systems:
            rows = [r for r in doc["rows"] if r["tokens"] == tokens and r["system"] == system]
            xs = [r["offered_per_s"] for r in rows]
            for key, style in (("p50", "o-"), ("p99", "^--")):
                ys = [(r.get("added_ttft_ms") or {}).get(key) for r in rows]
                top.plot(xs, [y if y is not None else float("nan") for y in ys], style,
                         color=colours[system], label=f"{system} {key}")  # fmt: skip
            cpu = [r["resources"]["cpu_ms_per_job"] for r in rows]
            bottom.plot(xs, [c if c is not None else float("nan") for c in cpu], "o-",
                        color=colours[system], label=system)  # fmt: skip
        if tokens == 50:
            top.axhline(5.0, color="green", lw=0.8, ls=":", label="target p50 at 200/s (5 ms)")
            top.axhline(20.0, color="red", lw=0.8, ls=":", label="target p99 at 200/s (20 ms)")
        top.set_yscale("symlog", linthresh=1.0)
        top.set_title(f"{tokens}-token jobs, tokens {doc['engine']['interval_ms']:g} ms apart")
        top.set_ylabel("TTFT added over the engine alone (ms)")
        bottom.set_yscale("log")
        bottom.set_ylabel("CPU of the system under test per job (ms)")
        for ax in (top, bottom):
            ax.set_xlabel("offered rate (Poisson arrivals, jobs/s)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
