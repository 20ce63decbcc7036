"""The client side of the `orchestratord` command: `run`, `status`, `cancel`, `pools` and `jobs`, on the
Python client (clients/python). The server is found through `--url` or `ORCHD_URL` (default: the embedded
default's address), the key through `ORCHD_API_KEY`.

`run` writes the job's text to stdout as it arrives. On a terminal, a live status line on stderr (rich)
shows the queue position and the predicted start counting down while the job waits, and a summary with
tokens/s once it ends; in a pipe, stdout carries the text alone. `--json` prints every event as one
JSON line instead. Ctrl-C cancels the job.

Exit codes, for scripts: 0 the job ended (`end`); 1 it failed for good (a non-retriable `error`);
75 (EX_TEMPFAIL) it failed or was refused for now, try again (a retriable `error`, 429/503 beyond
the retries, no answer); 64 (EX_USAGE) the server refused the request as invalid; 77 (EX_NOPERM) the
key was missing or not allowed; 69 (EX_UNAVAILABLE) no such job or pool; 130 interrupted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # at run time imported by the client commands only: `serve` needs neither
    from orchestratord_client import Client, End, OrchestratordError, Reasoning, Token
    from rich.console import Console
    from rich.text import Text

EX_OK, EX_FAILED, EX_USAGE, EX_UNAVAILABLE, EX_TEMPFAIL, EX_NOPERM, EX_INTERRUPTED = 0, 1, 64, 69, 75, 77, 130


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def common(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--url", default=None, help="the server (default: $ORCHD_URL, else http://127.0.0.1:8080)"
        )

    run = sub.add_parser("run", help="run a job and stream its text (the prompt from stdin if not given)")
    run.add_argument("model")
    run.add_argument("prompt", nargs="?", default=None, help="the prompt; '-' or nothing reads stdin")
    run.add_argument("--max-tokens", type=int, default=256)
    run.add_argument("--priority", choices=["interactive", "batch"], default=None)
    run.add_argument("--temperature", type=float, default=None)
    run.add_argument("--seed", type=int, default=None)
    run.add_argument(
        "--chat",
        action="store_true",
        help="send the prompt as a user message: the model's chat template applies",
    )
    run.add_argument(
        "--reasoning-effort",
        choices=["none", "minimal", "low", "medium", "high"],
        default=None,
        help="how hard a thinking model thinks ('none': not at all); needs --chat",
    )
    run.add_argument("--json", action="store_true", help="print every event as a JSON line")
    common(run)
    status = sub.add_parser("status", help="a job's status, as JSON")
    status.add_argument("job_id")
    common(status)
    cancel = sub.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job_id")
    common(cancel)
    pools = sub.add_parser(
        "pools", help="the pools, their replicas and free slots (admin key when keys are on)"
    )
    pools.add_argument("--json", action="store_true")
    common(pools)
    jobs = sub.add_parser("jobs", help="every tenant's jobs, newest first (admin key when keys are on)")
    jobs.add_argument(
        "--state",
        action="append",
        default=[],
        choices=["queued", "running", "succeeded", "failed", "canceled"],
        help="only jobs in this state (repeat for several); default: queued and running",
    )
    jobs.add_argument("--all", action="store_true", help="finished jobs too (every state)")
    jobs.add_argument("--tenant", default=None)
    jobs.add_argument("--pool", default=None)
    jobs.add_argument("--model", default=None)
    jobs.add_argument("--limit", type=int, default=50, help="at most this many (1-1000)")
    jobs.add_argument("--cursor", default=None, help="the next page, as the previous one printed it")
    jobs.add_argument("--json", action="store_true", help="the page as the API returns it")
    common(jobs)


def main(args: argparse.Namespace) -> int:
    from orchestratord_client import Client, OrchestratordError
    from rich.console import Console

    # Into a pipe or a file, tables are not folded to 80 columns: a whole row per line, for grep
    out = Console(width=None if sys.stdout.isatty() else 200)
    err = Console(stderr=True)
    try:
        with Client(base_url=args.url or os.environ.get("ORCHD_URL") or None) as client:
            if args.command == "run":
                return _run(client, args, err)
            if args.command == "status":
                print(json.dumps(_plain(client.status(args.job_id)), default=str))
            elif args.command == "cancel":
                client.cancel(args.job_id)
            elif args.command == "pools":
                _pools(client, args, out)
            elif args.command == "jobs":
                _jobs(client, args, out)
            return EX_OK
    except KeyboardInterrupt:
        return EX_INTERRUPTED
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return EX_OK
    except OrchestratordError as exc:
        err.print(f"orchestratord: {exc.code}: {exc.message}", style="red", markup=False, highlight=False)
        return _exit_code(exc)


def _run(client: Client, args: argparse.Namespace, err: Console) -> int:
    if args.reasoning_effort is not None and not args.chat:
        err.print(
            "orchestratord: --reasoning-effort is read by the model's chat template: add --chat",
            style="red", markup=False, highlight=False,
        )  # fmt: skip
        return EX_USAGE
    prompt = args.prompt if args.prompt not in (None, "-") else sys.stdin.read()
    names = ("priority", "temperature", "seed", "reasoning_effort")
    fields = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    messages = [{"role": "user", "content": prompt}] if args.chat else None
    job = client.submit(
        args.model, None if args.chat else prompt, messages=messages, max_tokens=args.max_tokens, **fields
    )
    live = err.is_terminal and not args.json
    try:
        events = client.events(job)
        if args.json:
            return _as_json(events)
        return _as_text(events, err if live else None)
    except KeyboardInterrupt:
        client.cancel(job)
        return EX_INTERRUPTED


def _as_json(events: Iterator[Any]) -> int:
    from orchestratord_client import Error

    code = EX_OK
    for event in events:
        print(json.dumps({"event": _name(event), **_plain(event)}, default=str), flush=True)
        if isinstance(event, Error):
            code = EX_TEMPFAIL if event.retriable else EX_FAILED
    return code


def _as_text(events: Iterator[Any], err: Console | None) -> int:
    from orchestratord_client import End, Error, Metrics, Reasoning, Started, Token
    from rich.console import Console
    from rich.live import Live

    waiting = _Waiting()
    tokens, first, last = 0, None, None
    thinking = False  # the last event was reasoning
    live = None
    if err is not None:  # stdout is left alone: the text goes there as it comes, the live line to stderr
        live = Live(waiting, console=err, transient=True, refresh_per_second=8, redirect_stdout=False)
        live.start()
    try:
        for event in events:
            if isinstance(event, (Started, Metrics)) and first is None:
                waiting.update(event.queue_position, event.predicted_start_ms)
            elif isinstance(event, (Token, Reasoning)):
                if first is None:
                    first = time.monotonic()
                    if live is not None:
                        live.stop()  # the job runs: the line goes, the text follows
                tokens += _show(event, err, thinking)
                thinking = isinstance(event, Reasoning)
            elif isinstance(event, (End, Error)):
                last = event
                break
    finally:
        if live is not None:
            live.stop()
    if isinstance(last, End):
        if err:  # after the live line is gone: it erases what is printed while it shows
            _summary(err, last, tokens, first)
        return EX_OK
    if isinstance(last, Error):
        print(file=sys.stdout)
        message = f"orchestratord: {last.code}: {last.message}"
        (err or Console(stderr=True)).print(message, style="red", markup=False, highlight=False)
        return EX_TEMPFAIL if last.retriable else EX_FAILED
    return EX_TEMPFAIL  # the stream ended without its terminal event (the client retried and gave up)


class _Waiting:
    """The status line while the job waits: how many jobs are ahead of it and the predicted start,
    counting down from when the server said it."""

    def __init__(self) -> None:
        self.position: int | None = None
        self.starts_at: float | None = None

    def update(self, position: int | None, predicted_ms: int | None) -> None:
        if position is not None:
            self.position = position
        if predicted_ms is not None:
            self.starts_at = time.monotonic() + predicted_ms / 1000

    def __rich__(self) -> Text:
        from rich.text import Text

        line = Text("queued", style="bold yellow")
        if self.position is not None:
            line.append(f" · {self.position} ahead")
        if self.starts_at is not None:
            left = self.starts_at - time.monotonic()
            line.append(f" · starts in ~{left:.1f} s" if left > 0 else " · starting")
        return line


def _show(event: Token | Reasoning, err: Console | None, thinking: bool) -> int:
    """Write a token of the answer to stdout, or a thinking model's reasoning dimmed to stderr (it is
    not the answer); `thinking`: the event before was reasoning. How many answer tokens it wrote."""
    from orchestratord_client import Reasoning

    if isinstance(event, Reasoning):
        if err is not None:
            err.print(event.text, style="dim", end="", markup=False, highlight=False)
        return 0
    if thinking and err is not None:
        err.print()  # the answer begins below the reasoning
    sys.stdout.write(event.text)
    sys.stdout.flush()
    return 1


def _summary(err: Console, end: End, tokens: int, first: float | None) -> None:
    took = time.monotonic() - first if first is not None else 0.0
    count = end.tokens_out if end.tokens_out is not None else tokens
    rate = f", {count / took:.1f} tokens/s" if took > 0 else ""
    print(file=sys.stdout)
    err.print(f"{count} tokens{rate}, {end.stop_reason}", style="dim", markup=False, highlight=False)


def _pools(client: Client, args: argparse.Namespace, out: Console) -> None:
    from rich.table import Table

    pools = client.pools()
    if args.json:
        print(json.dumps(pools))
        return
    table = Table("pool", "engine", "models", "replica", "ready", "slots free", "breaker", "last error")
    for pool in pools:
        for replica in pool["replicas"]:
            table.add_row(
                pool["id"], f"{pool['engine']} {pool['engine_version']}", ", ".join(pool["models"]),
                replica["id"], "yes" if replica["ready"] else "no",
                f"{replica['slots_free']}/{replica['slots_total']}",
                replica.get("breaker", {}).get("state", ""), replica["last_error"] or "",
            )  # fmt: skip
    out.print(table)


def _jobs(client: Client, args: argparse.Namespace, out: Console) -> None:
    from rich.table import Table

    states = () if args.all else (args.state or ("queued", "running"))
    page = client.jobs(
        state=states,
        tenant=args.tenant,
        pool_id=args.pool,
        model_ref=args.model,
        limit=args.limit,
        cursor=args.cursor,
    )
    if args.json:
        print(json.dumps(page))
        return
    table = Table()
    table.add_column("job", no_wrap=True, min_width=36)  # whole, so it can be pasted into `cancel`
    for name in ("tenant", "state", "model", "class", "where", "tokens", "since"):
        table.add_column(name, overflow="fold")
    now = time.time()
    for job in page["tasks"]:
        if job["state"] == "queued":
            where = f"{job['queue_position']} ahead" if job["queue_position"] is not None else "queued"
            if job["predicted_start_ms"] is not None:
                where += f", starts in ~{job['predicted_start_ms'] / 1000:.1f} s"
        else:
            where = "/".join(p for p in (job["pool_id"], job["replica_id"]) if p) or "-"
        since = job["finished_at"] or job["started_at"] or job["created_at"]
        table.add_row(
            job["job_id"], job["tenant"], job["state"], job["model_ref"], job["priority"], where,
            str(job["tokens_out"]), f"{max(0.0, now - _epoch(since)):.0f} s ago",
        )  # fmt: skip
    out.print(table)
    if page["next_cursor"]:
        out.print(f"next page: --cursor {page['next_cursor']}", style="dim", markup=False, highlight=False)


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _exit_code(exc: OrchestratordError) -> int:
    from orchestratord_client import ConnectionFailed, Forbidden, InvalidRequest, NotFound, Unauthorized

    if isinstance(exc, (Unauthorized, Forbidden)):
        return EX_NOPERM
    if isinstance(exc, NotFound):
        return EX_UNAVAILABLE
    if isinstance(exc, InvalidRequest):
        return EX_USAGE
    if isinstance(exc, ConnectionFailed) or exc.retriable:
        return EX_TEMPFAIL
    return EX_FAILED


def _name(event: Any) -> str:
    return str(getattr(event, "name", None) or type(event).__name__.lower())


def _plain(value: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return dict(value)
