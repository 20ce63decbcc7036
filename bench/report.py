"""``bench/results/SUMMARY.md`` and its plots, from the newest result file of each scenario.

The hand-written analysis (why a target is missed, what changed on the hot path, before and after)
lives in ``bench/results/NOTES.md`` and is included as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report_plots import plot_serving, plot_throughput, plot_ttft
from bench.results import latest

ORDER = (
    "serving", "ttft", "jobs", "relay", "open_streams", "overload", "admission", "prediction", "holdback",
    "profile", "redis", "guidellm", "memory", "engine_client",
)  # fmt: skip


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(head: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return [*out, ""]


def pct(d: dict[str, Any]) -> str:
    return " / ".join(fmt(d.get(k), 2) for k in ("p50", "p95", "p99"))


def targets_section(docs: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    for name in ORDER:
        doc = docs.get(name)
        listed = (doc or {}).get("targets", [])
        for t in listed if isinstance(listed, list) else []:  # redis: by setup, in its own section
            verdict = "met" if t["met"] else "**missed**"
            miss = "" if t["met"] or t["miss_by"] is None else f"by {fmt(t['miss_by'])} {t['unit']}"
            if not t["met"] and t.get("miss_factor"):
                miss += f" ({t['miss_factor']}x off)"
            quick = " (quick run: not comparable)" if doc and doc.get("quick") else ""
            rows.append([t["name"] + quick, t["target"], f"{fmt(t['measured'])} {t['unit']}", verdict, miss])
    head = ["target", "wanted", "measured", "", "missed"]
    return ["## Targets (issues 9 §4 and 18 §2) against what was measured", "", *table(head, rows)]


def machine_section(docs: dict[str, dict[str, Any]]) -> list[str]:
    any_doc = next(iter(docs.values()))
    m = any_doc["machine"]
    packages = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    others = []
    for name in ORDER:
        for usage in _usages(docs.get(name)):
            others.append(usage.get("other_work_cpu_cores", 0.0))
    busy = max(others) if others else 0.0
    profile = docs.get("profile", {}).get("jobs_50_tokens", {})
    http = profile.get("uvicorn_http_protocol")
    http_text = (
        f"uvicorn's {http} HTTP protocol (seen in the profile's stacks)"
        if http
        else f"uvicorn's {m['orchestratord_http_parser']} HTTP protocol (as `orchestratord serve` runs it)"
    )
    mean = sum(others) / len(others) if others else 0.0
    lines = [
        "## Machine",
        "",
        f"- {m['cpu']}, {m['logical_cpus']} logical CPUs, {m['memory_gb']} GB RAM; {m['os']}; "
        f"Python {m['python']}.",
        f"- orchestratord under uvicorn with the {m['orchestratord_event_loop']} event loop and "
        f"{http_text}; {packages}.",
        "- One orchestratord process, the fake engine (one process) and the load generator (one process) "
        "share the machine, as issue 9 §4 prescribes.",
        f"- Other work on the machine (CPU used by processes outside the benchmark, in cores, during the "
        f"measured phases): mean {mean:.2f}, worst {busy:.2f}. Load average when the run started: "
        f"{m['load_average_at_start']}.",
        f"- Revision measured: {_revision(any_doc['revision'])}. Result files: "
        "`bench/results/<date>-<scenario>.json`.",
        "",
    ]
    return lines


def _revision(rev: dict[str, Any]) -> str:
    state = "with uncommitted changes" if rev.get("uncommitted_changes") else "clean"
    where = "" if rev.get("source") == "repository" else f", checked out at `{rev.get('source')}`"
    return f"commit {rev.get('commit') or 'unknown'} ({state}{where})"


def _usages(doc: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every `resources` block in a result document."""
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "other_work_cpu_cores" in node:
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    return found


def ttft_section(doc: dict[str, Any]) -> list[str]:
    rows = []
    for lv in doc["levels"]:
        o, d, r = lv["orchestratord"], lv["direct"], lv["orchestratord"]["resources"]
        rows.append(
            [
                lv["concurrency"],
                pct(d["ttft_ms"]),
                pct(o["ttft_ms"]),
                pct(lv["added_ttft_ms"]),
                pct(o["post_answer_ms"]),
                o["jobs_per_s"],
                f"{o['completed']}/{o['requests']}",
                r["cpu_cores"],
                r["peak_rss_mb"],
            ]
        )
    e = doc["engine"]
    return [
        "## 1. Time to first token added over the engine",
        "",
        f"{doc['description']} Engine: TTFT {e['ttft_ms']} ms, {e['tokens_per_response']} tokens, "
        "no interval. "
        "Through orchestratord the clock starts when `POST /v1/tasks` is written and stops at the first "
        "`token` event of the stream (both calls, as a client lives them). Percentiles are p50 / p95 / p99 "
        "in ms; the added TTFT is the difference of the percentiles.",
        "",
        *table(
            [
                "concurrency",
                "engine TTFT",
                "via orchestratord",
                "added",
                "POST answer",
                "jobs/s",
                "complete",
                "orch CPU (cores)",
                "orch peak RSS MB",
            ],
            rows,
        ),
        "![TTFT added over the engine against concurrency](ttft_overhead.png)",
        "",
    ]


def jobs_section(doc: dict[str, Any]) -> list[str]:
    rows = []
    for lv in doc["levels"]:
        o, d = lv["orchestratord"], lv["direct"]
        rows.append(
            [
                lv["concurrency"],
                o["jobs_per_s"],
                d["jobs_per_s"],
                f"{o['completed']}/{o['requests']}",
                o["cpu_ms_per_job"],
                o["resources"]["cpu_cores"],
                o["resources"]["peak_rss_mb"],
                pct(o["ttft_ms"]),
            ]
        )
    best = doc["best"]
    return [
        "## 2. Jobs per second (50-token jobs, every token delivered)",
        "",
        f"{doc['description']} Best: **{fmt(best['jobs_per_s'])} jobs/s at concurrency "
        f"{best['concurrency']}** "
        f"({fmt(best['cpu_ms_per_job'], 2)} ms of orchestrator CPU per job, i.e. "
        f"{fmt(1000 / best['cpu_ms_per_job'] if best['cpu_ms_per_job'] else None)} jobs per orchestrator "
        "CPU-second); the engine alone at that "
        f"concurrency: {fmt(best['engine_alone_jobs_per_s'])} jobs/s.",
        "",
        *table(
            [
                "concurrency",
                "jobs/s via orchestratord",
                "jobs/s engine alone",
                "complete",
                "orch CPU ms/job",
                "orch CPU (cores)",
                "orch peak RSS MB",
                "TTFT p50/p95/p99 ms",
            ],
            rows,
        ),
        "![Throughput](throughput.png)",
        "",
    ]


def relay_section(doc: dict[str, Any]) -> list[str]:
    one, many = doc["one_long_stream"], doc["concurrent_streams"]
    loads = [
        (f"one stream of {fmt(one['tokens'])} tokens", one, one["tokens"]),
        (f"{many['streams']} streams x {fmt(many['tokens_each'])} tokens", many, many["tokens_each"]),
    ]
    if "openai_streams" in doc:  # (runs before 2026-12-06 did not measure the OpenAI surface)
        surface = doc["openai_streams"]
        label = f"{surface['streams']} streams x {fmt(surface['tokens_each'])} tokens, OpenAI surface"
        loads.append((label, surface, surface["tokens_each"]))
    rows = []
    for label, part, tokens in loads:
        via, r = part["orchestratord"], part["orchestratord"]["resources"]
        per_cpu = via["completed"] * tokens / r["cpu_s"] if r["cpu_s"] else None
        rows.append(
            [label, part["direct"]["tokens_per_s"], via["tokens_per_s"], per_cpu,
             f"{via['completed']}/{via['requests']}", r["cpu_cores"], r["peak_rss_mb"]]
        )  # fmt: skip
    return [
        "## 3. Relay throughput",
        "",
        doc["description"],
        "",
        *table(
            [
                "load",
                "tokens/s engine alone",
                "tokens/s via orchestratord",
                "tokens per orchestrator CPU-second",
                "complete",
                "orch CPU (cores)",
                "orch peak RSS MB",
            ],
            rows,
        ),
        "Tokens per orchestrator CPU-second is what the orchestrator relays per second of CPU it actually "
        "got: the rate it would reach with a core to itself, whatever else ran on the machine.",
        "",
    ]


def open_streams_section(doc: dict[str, Any]) -> list[str]:
    r = doc["resources"]
    return [
        "## 4. Open streams",
        "",
        doc["description"],
        "",
        *table(
            [
                "streams (most open at once)",
                "complete",
                "idle RSS MB",
                "peak RSS MB",
                "RSS per stream KB",
                "orch CPU (cores)",
            ],
            [
                [
                    f"{doc['requests']} ({doc['most_open_at_once']})",
                    f"{doc['completed']}/{doc['requests']}",
                    doc["idle_rss_mb"],
                    doc["peak_rss_mb"],
                    doc["rss_per_stream_kb"],
                    r["cpu_cores"],
                ]
            ],
        ),
    ]


def overload_section(doc: dict[str, Any]) -> list[str]:
    o, n = doc["overload"], doc["nominal"]
    over_time = o["admitted_ttft_over_time"]
    mem = o["memory"]
    return [
        "## 5. Overload (10x capacity)",
        "",
        doc["description"],
        "",
        f"Capacity {fmt(doc['capacity_jobs_per_s'])} jobs/s ({doc['config']['slots']} slots, queue "
        f"{doc['config']['queue_capacity']}); offered {fmt(doc['offered_per_s'])} requests/s. "
        f"Answers: {o['statuses']}; admitted jobs completed: {o['completed']}; errors: {o['errors']} "
        f"{'; '.join(o['error_examples'])}.",
        "",
        *table(
            ["measure", "p50 / p95 / p99 ms"],
            [
                ["429 answer latency", pct(o["rejection_latency_ms"])],
                ["TTFT at nominal load", pct(n["ttft_ms"])],
                ["TTFT of admitted jobs under overload", pct(o["admitted_ttft_ms"])],
                ["… of which after dispatch (nominal)", pct(n["after_dispatch_ms"])],
                ["… of which after dispatch (overload)", pct(o["admitted_after_dispatch_ms"])],
            ],
        ),
        f"Admitted TTFT p50 in the first third of the overload: {fmt(over_time['first_third_p50_ms'])} ms, "
        f"in the last third: {fmt(over_time['last_third_p50_ms'])} ms. RSS {fmt(mem['rss_first_mb'])} → "
        f"{fmt(mem['rss_last_mb'])} MB over the phase; slope over its second half "
        f"{fmt(mem['second_half_slope_mb_per_min'], 2)} MB/min.",
        "",
    ]


def prediction_section(doc: dict[str, Any]) -> list[str]:
    if "levels" not in doc:  # a result file from before the mixed workload
        return ["## 6. Prediction honesty", "", doc["description"], ""]
    rows = []
    for level, row in doc["levels"].items():
        p = row["prediction"]
        for key, label in (("all_jobs", "all jobs"), ("jobs_that_waited", "jobs that waited")):
            e = p[key]
            rows.append(
                [f"{level} ({fmt(row['offered_per_s'])}/s)", label, f"{row['completed']}/{row['requests']}",
                 e["jobs"], e["mae_ms"], e["mae_pct"], e["p90_abs_ms"], e["bias_ms"], e["mean_measured_ms"]]
            )  # fmt: skip
    h = doc["retry_hint"]
    return [
        "## 6. Prediction honesty",
        "",
        " ".join(doc["description"].split()),
        "",
        f"Capacity for the mix {fmt(doc['capacity_jobs_per_s'])} jobs/s. Predicted start against the start "
        "the client saw (the dispatch event):",
        "",
        *table(
            [
                "load",
                "which jobs",
                "complete",
                "n",
                "MAE ms",
                "MAE %",
                "p90 abs error ms",
                "bias ms",
                "mean start ms",
            ],
            rows,
        ),
        "",
        f"The 429 hint, at {fmt(h['offered_per_s'])} jobs/s against a queue of {h['queue_capacity']}: "
        f"{h['refused_with_hint']} clients refused with a hint waited it and retried; "
        f"{h['admitted_on_first_retry']} were admitted (share {fmt(h['admitted_share'])}, target 0.9); "
        f"median hint {fmt(h['hint_ms_p50'])} ms.",
        "",
        "Jain's fairness index over the two tenants (orchestratord's `fairness_jain_index` after each "
        "level): "
        + "; ".join(
            f"{level}: requests {fmt(row['fairness_jain_index'].get('requests'), 3)}, "
            f"tokens {fmt(row['fairness_jain_index'].get('tokens'), 3)}"
            for level, row in doc["levels"].items()
        )
        + ".",
        "",
    ]


def profile_section(doc: dict[str, Any]) -> list[str]:
    description = " ".join(doc["description"].split())
    out = ["## Profile of the hot path", "", f"{description} Tool: `{doc['tool']}`.", ""]
    parts = (
        ("jobs_50_tokens", "50-token jobs at full rate"),
        ("relay", "relaying long streams"),
        ("rejections", "answering 429 (slot and queue full)"),
    )
    for key, label in parts:
        p = doc.get(key, {})
        if "error" in p:
            out += [f"{label}: profile failed: {p['error']}", ""]
            continue
        extra = ""
        if "cpu_ms_per_request" in p:
            extra = (
                f" {fmt(p['cpu_ms_per_request'], 2)} ms of orchestrator CPU per refused request; answer "
                f"p50/p95/p99 {pct(p['answer_ms'])} ms at concurrency {doc['config']['load']['concurrency']}."
            )
        out += [
            f"### {label} ({fmt(p.get('samples'))} samples; stacks in `{p.get('stacks_file')}`)",
            "",
            *([extra.strip(), ""] if extra else []),
            *table(["package (self time)", "% of busy time"], p.get("self_by_package_pct", [])[:12]),
            *table(["function (self time)", "%"], p.get("self_by_function_pct", [])[:15]),
        ]
    return out


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _endings(counts: dict[str, int] | None) -> str:
    return ", ".join(f"{name} {n:,}" for name, n in (counts or {}).items()) or "-"


def _rounds(values: list[float | None] | None, digits: int = 2) -> str:
    """A measure's value in each round (results from before rounds have none)."""
    return " / ".join(fmt(x, digits) for x in values) if values else "-"


def _scaling_jobs(name: str, row: dict[str, Any]) -> list[Any]:
    j = row["jobs"]
    return [
        name, row["replicas"], j["jobs_per_s"], f"{j['completed']}/{j['requests']}",
        fmt(j["cpu_ms_per_job"], 2), fmt(j.get("redis_cpu_ms_per_job"), 2),
        _rounds(j.get("cpu_ms_per_job_rounds")), _times(j["cpu_vs_one_process"]),
        _rounds(j.get("cpu_vs_one_process_rounds")),
    ]  # fmt: skip


def _scaling_ttft(name: str, t: dict[str, Any]) -> list[Any]:
    return [
        name, t["offered_per_s"], f"{t['ended']}/{t['requests']}", t["refused_429"], t["never_ended"],
        _endings(t.get("endings")), _p50_p99(t["ttft_ms"]), fmt(t["cpu_ms_per_job"], 2),
        _times(t.get("cpu_vs_one_process")),
    ]  # fmt: skip


def _sharing_a_core(share: dict[str, Any] | None) -> list[str]:
    """Three replicas against one replica alone on the core at each one's share of the concurrency (a
    file from before the measure has none)."""
    if share is None:
        return []
    j = share["jobs"]
    row = [
        share["setup"], share["concurrency"], j["jobs_per_s"], fmt(j["cpu_ms_per_job"], 2),
        _rounds(j.get("cpu_ms_per_job_rounds")), _times(j["cpu_vs_one_process"]),
        _rounds(j.get("cpu_vs_one_process_rounds")), _times(share["three_replicas_cpu_vs_it"]),
        _rounds(share.get("three_replicas_cpu_vs_it_rounds")),
    ]  # fmt: skip
    head = ["setup", "concurrency", "jobs/s", "CPU ms/job", "each round", "CPU vs one process", "each round",
            "three replicas' CPU vs it", "each round"]  # fmt: skip
    return [
        "What sharing one core costs: one replica alone on the core at a third of the concurrency, the "
        "share each of three replicas carries, in the same rounds. Each of the three does the same work a "
        "job on the same Redis; what differs is four processes taking turns on one core.",
        "",
        *table(head, [row]),
    ]


def _scaling_relay(name: str, row: dict[str, Any]) -> list[Any]:
    r = row["relay"]
    return [
        name, r["tokens_per_s"], _times(r["tokens_per_s_vs_one_process"]), fmt(r["cpu_us_per_token"]),
        _times(r["cpu_per_token_vs_one_process"]), _rounds(r.get("cpu_per_token_vs_one_process_rounds")),
    ]  # fmt: skip


def _scaling_streams(name: str, row: dict[str, Any]) -> list[Any]:
    s = row["streams"]
    held = s.get("held_open") or {}
    return [
        name, s["streams"], f"{s['completed']}/{s['requests']}", s["most_open_at_once"], s["never_ended"],
        _endings(s.get("endings")), fmt(held.get("cpu_us_per_token")), _times(held.get("cpu_vs_one_process")),
        " / ".join(fmt(x) for x in s["peak_rss_mb"]), s["rss_per_stream_kb"], s["redis_connections_peak"],
        s["redis_connections_per_replica_peak"],
    ]  # fmt: skip


def redis_section(doc: dict[str, Any]) -> list[str]:
    title = "## Scaling out: one process, and one, two and three replicas on one Redis"
    lines = [title, "", doc["description"], ""]
    if doc.get("skipped"):
        return [*lines, f"Skipped: {doc['skipped']}.", ""]
    load, setups = doc["load"], doc["setups"]
    jobs = [_scaling_jobs(name, row) for name, row in setups.items()]
    ttft = [_scaling_ttft(name, t) for name, row in setups.items() for t in row["ttft"]]
    relay = [_scaling_relay(name, row) for name, row in setups.items()]
    streams = [_scaling_streams(name, row) for name, row in setups.items()]
    targets = [
        [
            name,
            t["name"],
            t["target"],
            f"{fmt(t['measured'], 2)} {t['unit']}",
            "met" if t["met"] else "**missed**",
        ]
        for name, listed in doc["targets"].items()
        for t in listed
    ]
    jobs_head = ["setup", "replicas", "jobs/s", "ended", "CPU ms/job", "of which redis-server", "each round",
                 "CPU vs one process", "each round"]  # fmt: skip
    ttft_head = ["setup", "offered jobs/s", "ended", "refused (429)", "never ended or failed",
                 "admitted streams ended by", "TTFT p50 / p99 ms", "CPU ms/job",
                 "vs one process"]  # fmt: skip
    streams_head = ["setup", "streams", "ended", "most open at once", "never ended or failed",
                    "admitted streams ended by", "CPU µs/token, all open", "vs one process",
                    "peak RSS MB (each replica)", "RSS per stream KB",
                    "Redis connections (peak)", "per replica"]  # fmt: skip
    return [
        *lines,
        f"Machine: {doc['machine_note']['note']} Load average when the run started: "
        f"{doc['machine']['load_average_at_start']}. CPU is every orchestratord process's plus "
        "redis-server's; the ratios are to one process on in-memory state in the same run.",
        "",
        f"### 50-token jobs, closed loop ({fmt(load['requests'])} at concurrency {load['concurrency']})",
        "",
        "The jobs and the relay are measured in rounds, every setup in turn: a figure is the setup's median "
        "round, a ratio the median of its rounds' ratios to the one process of the same round.",
        "",
        *table(jobs_head, jobs),
        *_sharing_a_core(doc.get("sharing_a_core")),
        f"### Added time to first token, open loop ({fmt(load['rate_seconds'])} s of arrivals a rate)",
        "",
        *table(ttft_head, ttft),
        f"### Relay: one stream of {fmt(load['long_tokens'])} tokens, posted to the first replica and read "
        "through the last",
        "",
        *table(
            ["setup", "tokens/s", "vs one process", "CPU µs/token", "vs one process", "each round"], relay
        ),
        f"### Open slow streams: {fmt(load['streams_per_replica'])} a replica, a token a second",
        "",
        *table(streams_head, streams),
        "### Targets (issue 17)",
        "",
        *table(["setup", "target", "wanted", "measured", ""], targets),
        "TTFT: the engine sends its first token at once, then one every 10 ms, so the time to first token "
        "is what the deployment adds; the arrivals are seeded Poisson, the same for every setup. Jobs and "
        "TTFT jobs are read through the replica that admitted them, slow streams through the next one. "
        "Never ended or failed: jobs that neither ended with every token nor were refused with a 429 "
        "(there should be none); `none`: the stream closed without a terminal event or the client gave up "
        "waiting. RSS per stream: the replicas' peak RSS above their RSS before the streams, "
        "over the streams. CPU µs/token, all open: the deployment's CPU from the end of the opening to "
        "just before the first stream ends, over the tokens the open streams relayed meanwhile (each a "
        "token a second: each token its own engine read, client write and, on Redis, its own batch).",
        "",
    ]


def _core_split(split: dict[str, Any]) -> str:
    if not split.get("pinned"):
        return f"nothing pinned ({split.get('note', 'fewer than two cores')})"
    return (
        f"the system under test pinned to core {', '.join(map(str, split['system_under_test']))}, the fake "
        f"engine and the load generator to core {', '.join(map(str, split['engine_and_load_generator']))} "
        "(with whatever else ran on the machine)"
    )


def _serving_row(r: dict[str, Any]) -> list[Any]:
    res = r["resources"]
    return [
        r["system"], r["offered_per_s"], r["achieved_per_s"], f"{r['completed']}/{r['requests']}",
        r["never_ended"], "yes" if r["kept"] else "**no**", _p50_p99(r["ttft_ms"]),
        _p50_p99(r.get("added_ttft_ms")), fmt(r["itl_ms"]["p99"], 2),
        fmt((r.get("added_itl_ms") or {}).get("p99"), 2), fmt(res["cpu_cores"], 2),
        fmt(res["cpu_ms_per_job"], 2), fmt(res["cpu_us_per_token"]),
        fmt(res["engine_cpu_cores"] + res["loadgen_cpu_cores"], 2), fmt(res["other_work_cpu_cores"], 2),
    ]  # fmt: skip


def serving_section(doc: dict[str, Any]) -> list[str]:
    m, e, load = doc["machine"], doc["engine"], doc["config"]["load"]
    router = doc["vllm_router"]
    ran = (
        f"vllm-router ran as `{router['command']}`."
        if router["ran"]
        else f"**vllm-router is absent from this run**: {router['note']}."
    )
    lines = [
        "## Real serving load: Poisson arrivals, paced tokens, beside vllm-router",
        "",
        doc["description"],
        "",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs; {_core_split(doc['core_split'])}. Engine: "
        f"time to first token {fmt(e['ttft_ms'])} ms, then a token every {fmt(e['interval_ms'])} ms. "
        f"{fmt(load['seconds'])} s of arrivals per rate and system. {ran} Revision measured: "
        f"{_revision(doc['revision'])}.",
        "",
    ]
    head = ["system", "offered jobs/s", "achieved jobs/s", "ended", "never ended", "kept",
            "TTFT p50 / p99 ms", "added TTFT p50 / p99 ms", "ITL p99 ms", "added ITL p99 ms",
            "SUT CPU (cores)", "SUT CPU ms/job", "SUT CPU µs/token", "engine + load gen CPU (cores)",
            "other work CPU (cores)"]  # fmt: skip
    for tokens in sorted({r["tokens"] for r in doc["rows"]}):
        rows = [_serving_row(r) for r in doc["rows"] if r["tokens"] == tokens]
        lines += [f"### {tokens}-token jobs", "", *table(head, rows)]
    serial = [
        [r["system"], f"{r['completed']}/{r['requests']}", _p50_p99(r["ttft_ms"]),
         _p50_p99(r.get("added_ttft_ms")), fmt(r["resources"]["cpu_ms_per_job"], 2)]
        for r in doc["one_at_a_time"]
    ]  # fmt: skip
    lines += [
        f"### One request at a time ({load['serial_tokens']}-token jobs)",
        "",
        *table(["system", "ended", "TTFT p50 / p99 ms", "added TTFT p50 / p99 ms", "SUT CPU ms/job"], serial),
        "Achieved: jobs ended per second, from the first job's end to the last's. Kept: every job ended "
        f"and at least {load['kept_share']:.0%} of the offered rate was achieved. Added: the percentile less "
        "the engine alone's at the same rate (the same seeded arrivals). ITL: the gaps between one job's "
        "tokens as the client received them, over every job of the rate. SUT CPU: the process under test "
        "(orchestratord or vllm-router) over the rate's arrivals and drain; per job over the jobs ended, "
        "per token over the tokens received. Targets (issue 18 §2) are for orchestratord's own API "
        "(`/v1/tasks`); the table of targets above states them against these figures.",
        "",
        "![Serving load: added TTFT and CPU per job against the offered rate](serving.png)",
        "",
    ]
    return lines


def _p50_p99(d: dict[str, Any] | None) -> str:
    return "-" if d is None else f"{fmt(d['p50'], 2)} / {fmt(d['p99'], 2)}"


def _guidellm_row(r: dict[str, Any]) -> list[Any]:
    cpu = r["cpu"]
    return [
        r["rate_offered"], r["tool"], r["target"], f"`{r['surface']}`", r["requests_per_s"],
        f"{r['completed']}/{r['requests']}", r["errors"], _p50_p99(r["ttft_ms"]),
        _p50_p99(r.get("added_ttft_ms")), fmt(r["itl_ms"]["p50"], 2), r["output_tokens_per_s"],
        r["request_latency_ms"]["p50"], fmt(cpu["orch_cpu_ms_per_job"], 2), fmt(cpu["orch_cpu_cores"], 2),
        fmt(cpu["loadgen_cpu_cores"], 2), fmt(cpu["other_cpu_cores"], 2),
    ]  # fmt: skip


def guidellm_section(doc: dict[str, Any]) -> list[str]:
    stock, e, load = doc["stock_guidellm"], doc["engine"], doc["config"]["load"]
    rows = [_guidellm_row(r) for r in doc["rows"]]
    pool = doc["config"]["pool"]
    sent = "; ".join(
        f"`{route}`: {', '.join(f'`{f}`' for f in fields)}" for route, fields in stock["fields_sent"].items()
    )
    ran = (
        f"guidellm ran as shipped (`{stock['command']}`, nothing patched). The fields of the request bodies "
        f"it sent through orchestratord: {sent}. orchestratord's pool here is of the `{pool['engine']}` "
        f"engine with `api: {pool['api']}` (the fake engine speaks vLLM's dialect), so it takes vLLM's "
        "`ignore_eos` and `stream_options.continuous_usage_stats`; the other scenarios' pools are of the "
        "`openai` engine."
    )
    head = ["rate offered (req/s)", "tool", "target", "surface", "req/s", "complete", "errors",
            "TTFT p50 / p99 ms", "added TTFT p50 / p99 ms", "ITL p50 ms", "output tokens/s",
            "latency p50 ms", "orch CPU ms/job", "orch CPU (cores)", "load generator CPU (cores)",
            "other work CPU (cores)"]  # fmt: skip
    return [
        "## 7. guidellm beside our load generator",
        "",
        doc["description"],
        "",
        f"Engine: TTFT {e['ttft_ms']} ms, a token every {e['interval_ms']} ms, {e['tokens_per_response']} "
        f"tokens; {fmt(load['seconds'])} s per rate, tool and surface; guidellm with "
        f"{load['guidellm_workers']} worker process{'es' if load['guidellm_workers'] != 1 else ''} and a "
        f"`max_concurrency` of "
        f"{load['guidellm_max_concurrency']}. Revision measured: {_revision(doc['revision'])}. " + ran,
        "",
        *table(head, rows),
        "Added TTFT: the tool's TTFT through orchestratord less its own TTFT straight to the engine, at the "
        "same rate and on the same route (`/v1/completions` for `/v1/tasks`). ITL: (last token - first "
        "token) / (tokens - 1) per request (ours stops at the stream's end). CPU: from the first request "
        "sent to the last one ended; orchestratord's per completed request; the load generator's with all "
        "its processes; other work is the rest of the machine's.",
        "",
    ]


def _mb_steps(values: list[float]) -> str:
    return " / ".join(fmt(v) for v in values)


def holdback_section(doc: dict[str, Any]) -> list[str]:
    load = doc["config"]["load"]
    rows = [
        [f"{row['holdback']:g}", f"{row['interactive']['completed']}/{row['interactive']['requests']}",
         row["interactive"]["ttft_ms"]["p50"], row["interactive"]["ttft_ms"]["p99"],
         f"{row['batch']['completed']}/{row['batch']['requests']}", row["batch"]["tokens_per_s"]]
        for row in doc["rows"]
    ]  # fmt: skip
    return [
        "## Interactive work behind batch (`queue.holdback`)",
        "",
        " ".join(doc["description"].split()),
        "",
        f"{load['slots']} slots, {fmt(load['seconds'])} s per setting, interactive jobs at "
        f"{fmt(load['interactive_per_s'])}/s:",
        "",
        *table(
            [
                "holdback",
                "interactive complete",
                "interactive TTFT p50 ms",
                "p99 ms",
                "batch complete",
                "batch tokens/s",
            ],
            rows,
        ),
        "",
    ]


def admission_section(doc: dict[str, Any]) -> list[str]:
    load = doc["config"]["load"]
    head = ["queued", "answer", "answer p50 ms", "p99 ms", "CPU ms/request", "background cores",
            "own CPU ms/request"]  # fmt: skip
    rows = [
        [f"{lv['queued']:,}", "202", lv["answer_ms"]["p50"], lv["answer_ms"]["p99"], lv["cpu_ms_per_request"],
         lv["background_cores"], lv["own_cpu_ms_per_request"]]
        for lv in doc["accepted"]
    ]  # fmt: skip
    full = doc["refused_full_queue"]
    rows.append([
        f"{full['queued']:,} (full)", "429", full["answer_ms"]["p50"], full["answer_ms"]["p99"],
        full["cpu_ms_per_request"], full["background_cores"], full["own_cpu_ms_per_request"],
    ])  # fmt: skip
    running = [  # not in runs before 2026-12-06 (the 202s: 2026-12-06, sixteenth session)
        *(("1 (full)", "429", lv) for lv in doc.get("refused_while_running", ())),
        *(("0, a free slot each", "202", lv) for lv in doc.get("admitted_while_running", ())),
    ]
    for queued, answer, lv in running:
        rows.append([
            f"{queued}, {lv['running']:,} running", answer, lv["answer_ms"]["p50"], lv["answer_ms"]["p99"],
            lv["cpu_ms_per_request"], lv["background_cores"], lv["own_cpu_ms_per_request"],
        ])  # fmt: skip
    return [
        "## Admission against a deep queue",
        "",
        " ".join(doc["description"].split()),
        "",
        f"{load['measured']} POSTs measured one at a time at each depth:",
        "",
        *table(head, rows),
        "",
    ]


def memory_section(doc: dict[str, Any]) -> list[str]:
    load = doc["config"]["load"]
    head = ["variant", "idle", "after each round", "after its retention", "then gc.collect()",
            "then malloc_trim(0)", "CPU ms/job"]  # fmt: skip
    rows = [
        [row["variant"], row["idle_mb"], _mb_steps(row["loaded_mb"]), _mb_steps(row["after_retention_mb"]),
         row["after_gc_mb"], row["after_trim_mb"], _mb_steps(row["cpu_ms_per_job"])]
        for row in doc["summary"]
    ]  # fmt: skip
    shipped = next((v for v in doc["variants"] if v["trim"]), None)
    trims = shipped["trims_logged"] if shipped else []
    cost = ", ".join(f"{t['took_ms']} ms ({t['jobs']} jobs, {t['rss_before_mb']} → {t['rss_after_mb']} MB)"
                     for t in trims)  # fmt: skip
    return [
        "## 8. Memory given back",
        "",
        doc["description"],
        "",
        f"{load['jobs']:,} {doc['config']['tokens_per_job']}-token jobs per round at concurrency "
        f"{load['concurrency']}, `stream.retention_s` {fmt(load['retention_s'])}; RSS in MB. The shipped "
        f"variant's last column is its RSS {fmt(load['trim_interval_s'])} s after the retention (its own "
        "trims come at most `memory.trim_interval_s` apart).",
        "",
        *table(head, rows),
        f"orchestratord's own trims (shipped variant): {cost or 'none'}.",
        "",
    ]


def _engine_client_row(m: dict[str, Any]) -> list[Any]:
    rounds = " / ".join(fmt(x) for x in m["cpu_us_per_job_rounds"])
    connections = f"{m['connections']} ({m['connections_open_at_end']})"
    return [m["client"], m["concurrency"], m["cpu_us_per_job"], rounds, f"{m['cpu_over_adapters']:.2f}x",
            m["jobs_per_s"], connections, m["failed"]]  # fmt: skip


def engine_client_section(doc: dict[str, Any]) -> list[str]:
    load = doc["config"]["load"]
    versions = ", ".join(f"{k} {v}" for k, v in doc["config"]["versions"].items())
    head = ["client", "concurrency", "CPU µs/job", "each round", "against adapters", "jobs/s",
            "connections (open at end)", "failed"]  # fmt: skip
    rows = [_engine_client_row(m) for m in doc["median"]]
    return [
        "## Engine client: the adapters' sharded httpx2 pools beside one httpx2 pool and one httpx pool",
        "",
        " ".join(doc["description"].split()),
        "",
        f"{load['jobs']:,} measured jobs per client and concurrency in each of {load['rounds']} rounds "
        f"({versions}); medians of the rounds. Against adapters: the median of the rounds' ratios. "
        "Connections: the most opened in a round (warm-up included), and the fewest still open at its end:",
        "",
        *table(head, rows),
        "",
    ]


SECTIONS = {
    "serving": serving_section,
    "holdback": holdback_section,
    "admission": admission_section,
    "memory": memory_section,
    "redis": redis_section,
    "ttft": ttft_section,
    "jobs": jobs_section,
    "relay": relay_section,
    "open_streams": open_streams_section,
    "overload": overload_section,
    "prediction": prediction_section,
    "profile": profile_section,
    "guidellm": guidellm_section,
    "engine_client": engine_client_section,
}


def write_report(results: Path) -> Path:
    docs = {name: doc for name in ORDER if (doc := latest(results, name)) is not None}
    lines = ["# orchestratord benchmarks: summary", ""]
    if not docs:
        lines.append("No result files yet: run `python -m bench run --scenario all`.")
    else:
        dates = sorted({d["date"] for d in docs.values()})
        quick = any(d.get("quick") for d in docs.values())
        lines += [
            f"Generated by `python -m bench report` from the result files of {', '.join(dates)}."
            + (" **Quick run: small loads, numbers not comparable with the targets.**" if quick else ""),
            "How to run: [docs/benchmarks.md](../../docs/benchmarks.md).",
            "",
        ]
        lines += targets_section(docs) + machine_section(docs)
        notes = results / "NOTES.md"
        if notes.exists():
            lines += [notes.read_text().rstrip(), ""]
        for name in ORDER:
            if name in docs:
                lines += SECTIONS[name](docs[name])
        if "serving" in docs:
            plot_serving(docs["serving"], results / "serving.png")
        if "ttft" in docs:
            plot_ttft(docs["ttft"], results / "ttft_overhead.png")
        if "jobs" in docs or "relay" in docs:
            plot_throughput(docs.get("jobs"), docs.get("relay"), results / "throughput.png")
    path = results / "SUMMARY.md"
    results.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path
