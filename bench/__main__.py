"""``python -m bench run --scenario all`` (or one scenario), ``python -m bench report``."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import uvloop

from bench.procs import REPO
from bench.results import RESULTS, Context, save

SCENARIOS = (
    "ttft",
    "jobs",
    "relay",
    "open_streams",
    "overload",
    "prediction",
    "holdback",
    "profile",
    "redis",
    "serving",
    "admission",
)
# Run only by name. guidellm installs guidellm (torch and all, about 1.5 GB) on first use, and it compares
# load generators rather than measuring a target of its own; memory waits out each round's retention
# (about 15 minutes at full scale); engine_client measures HTTP client libraries, not orchestratord.
APART = ("guidellm", "memory", "engine_client")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description="orchestratord benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run scenarios, write results and the summary")
    run.add_argument("--scenario", default="all", choices=("all", *SCENARIOS, *APART))
    run.add_argument(
        "--scale",
        default="full",
        choices=("full", "quick", "smoke"),
        help="full: the issue's loads (about 10 minutes); quick: seconds per scenario, for development; "
        "smoke: a few requests, for the test suite",
    )
    run.add_argument(
        "--quick", action="store_const", const="quick", dest="scale", help="same as --scale quick"
    )
    run.add_argument("--results", type=Path, default=RESULTS, help="where result files go")
    run.add_argument("--no-report", action="store_true", help="do not rewrite SUMMARY.md")
    run.add_argument(
        "--source",
        type=Path,
        default=REPO,
        help="measure the orchestratord of another checkout (before/after)",
    )
    report = sub.add_parser("report", help="rewrite SUMMARY.md and the plots from the result files")
    report.add_argument("--results", type=Path, default=RESULTS)
    return parser


def run_scenarios(names: Sequence[str], ctx: Context) -> list[Path]:
    written = []
    for name in names:
        module = importlib.import_module(f"bench.scenarios.{name}")
        began = time.monotonic()
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        payload = uvloop.run(module.run(ctx))
        payload["duration_s"] = round(time.monotonic() - began, 1)
        path = save(ctx, name, payload)
        print(f"bench: {name} done in {payload['duration_s']} s -> {path}", file=sys.stderr, flush=True)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "run":
        ctx = Context.today(args.results, scale=args.scale, source=args.source)
        names = SCENARIOS if args.scenario == "all" else (args.scenario,)
        run_scenarios(names, ctx)
        if not args.no_report:
            from bench.report import write_report

            print(f"bench: summary -> {write_report(args.results)}", file=sys.stderr)
        return 0
    from bench.report import write_report

    print(write_report(args.results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
