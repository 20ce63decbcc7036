"""The benchmark harness, end to end on a few requests, so that it cannot rot: `python -m bench run
--scenario all --scale smoke` starts the fake engine and orchestratord, drives every scenario, and
writes result files and the summary. Only the shape and sanity of the results are checked here; the
numbers themselves belong to bench/results (no timing thresholds in tests)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import SCENARIOS  # every scenario `all` runs
from tests.fakes.servers import REPO

# The module's first test runs every scenario at smoke scale (the fixture below): minutes, not seconds.
pytestmark = pytest.mark.timeout(420)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench-results")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "run",
            "--scenario",
            "all",
            "--scale",
            "smoke",
            "--results",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    docs: dict[str, Any] = {"_dir": out}
    for name in SCENARIOS:
        files = list(out.glob(f"*-{name}.json"))
        assert len(files) == 1, f"no result file for {name}: {sorted(p.name for p in out.iterdir())}"
        docs[name] = json.loads(files[0].read_text())
    return docs


def assert_percentiles(summary: dict[str, Any], count: int | None = None) -> None:
    assert summary["count"] > 0
    if count is not None:
        assert summary["count"] == count
    assert 0 < summary["p50"] <= summary["p95"] <= summary["p99"] <= summary["max"] < 60_000


def assert_resources(resources: dict[str, Any]) -> None:
    assert resources["wall_s"] > 0
    # orchestratord did work while it was measured; process CPU time comes in clock ticks (10 ms), so
    # a smoke-scale phase shorter than half a second may read as none
    assert resources["cpu_s"] > 0 or resources["wall_s"] < 0.5, resources
    assert 10 < resources["peak_rss_mb"] < 4096
    assert resources["peak_rss_mb"] >= resources["rss_start_mb"] > 0


def test_every_result_names_its_machine_and_scale(results: dict[str, Any]) -> None:
    for name in SCENARIOS:
        doc = results[name]
        assert doc["scenario"] == name
        assert doc["scale"] == "smoke" and doc["quick"] is True
        assert doc["machine"]["logical_cpus"] >= 1 and doc["machine"]["cpu"]
        assert doc["duration_s"] > 0


def test_redis_scales_one_process_to_three_replicas(results: dict[str, Any]) -> None:
    """One process on memory, then one, two and three replicas on one Redis, in one run: every measure
    for every setup, the ratios to the one process, Redis connections counted only where there is a
    Redis, issue 17's targets for each Redis setup, and the summary's section from them."""
    doc = results["redis"]
    setups = doc["setups"]
    redis = ["one replica, Redis", "two replicas, Redis", "three replicas, Redis"]
    assert list(setups) == ["one process, memory", *redis]
    assert doc["machine_note"]["cores"] >= 1 and doc["machine_note"]["note"]
    for row in setups.values():
        jobs, relay, streams = row["jobs"], row["relay"], row["streams"]
        assert jobs["completed"] == jobs["requests"] > 0, jobs["error_examples"]
        assert jobs["cpu_ms_per_job"] > 0 and jobs["cpu_vs_one_process"] > 0
        # measured in rounds, every setup in turn: the figure is one of its rounds
        assert len(jobs["cpu_vs_one_process_rounds"]) == doc["load"]["rounds"] >= 2
        assert jobs["cpu_ms_per_job"] in jobs["cpu_ms_per_job_rounds"]
        assert [t["offered_per_s"] for t in row["ttft"]] == list(doc["load"]["rates"])
        for t in row["ttft"]:
            assert t["ended"] + t["refused_429"] == t["requests"] > 0 and t["never_ended"] == 0, t
            assert_percentiles(t["ttft_ms"], t["ended"])
            assert t["cpu_vs_one_process"] > 0
        assert relay["ended"] == "end" and relay["tokens"] == doc["load"]["long_tokens"]
        assert relay["tokens_per_s_vs_one_process"] > 0 and relay["cpu_per_token_vs_one_process"] > 0
        assert streams["completed"] == streams["requests"] == 5 * row["replicas"], streams["error_examples"]
        assert streams["never_ended"] == 0 and len(streams["peak_rss_mb"]) == row["replicas"]
        assert all(peak >= 10 for peak in streams["peak_rss_mb"])
        # the CPU a token costs while every admitted slow stream is open (at smoke scale a second of a
        # few streams: the CPU, counted in 10 ms ticks, may be none)
        held = streams["held_open"]
        assert held["window_s"] > 0 and held["cpu_us_per_token"] >= 0, held
        assert abs(held["tokens"] - held["window_s"] * 5 * row["replicas"]) <= 5 * row["replicas"], held
    one = setups["one process, memory"]
    assert one["jobs"]["cpu_vs_one_process"] == one["relay"]["cpu_per_token_vs_one_process"] == 1.0
    assert one["streams"]["redis_connections_peak"] is None
    assert one["streams"]["held_open"]["cpu_vs_one_process"] in (1.0, None)  # None: no CPU tick counted
    assert one["streams"]["redis_connections_per_replica_peak"] is None
    for name in redis:
        assert setups[name]["streams"]["redis_connections_peak"] > 0
        assert (
            0 < setups[name]["streams"]["redis_connections_per_replica_peak"] <= 3
        )  # the line, read, pub/sub
        assert (
            setups[name]["streams"]["admitted_not_ended"] == setups[name]["streams"]["refused_not_429"] == 0
        )
    # one replica alone at each of three replicas' share of the concurrency, in the same rounds
    share = doc["sharing_a_core"]
    assert share["concurrency"] == max(1, round(doc["load"]["concurrency"] / 3))
    assert share["jobs"]["completed"] == share["jobs"]["requests"] > 0, share["jobs"]["error_examples"]
    assert len(share["three_replicas_cpu_vs_it_rounds"]) == doc["load"]["rounds"]
    assert share["three_replicas_cpu_vs_it"] > 0 and share["jobs"]["cpu_vs_one_process"] > 0
    assert list(doc["targets"]) == redis
    for listed in doc["targets"].values():
        assert len(listed) == 6
        assert all(t["measured"] is not None and isinstance(t["met"], bool) for t in listed)
    summary = (results["_dir"] / "SUMMARY.md").read_text()
    assert "What sharing one core costs" in summary
    assert "CPU µs/token, all open" in summary
    assert "## Scaling out" in summary and "| three replicas, Redis | CPU per job vs one process |" in summary


def test_serving_offers_the_same_load_to_every_way_in(results: dict[str, Any]) -> None:
    """Poisson arrivals at each rate to the engine alone, orchestratord (both APIs) and vllm-router
    when it is installed (a note saying why when it is not), every job ended; added figures over the
    engine alone; the issue 18 targets stated."""
    doc = results["serving"]
    router = doc["vllm_router"]
    assert router["ran"] == ("vllm-router /v1/completions" in doc["systems"])
    assert router.get("command" if router["ran"] else "note")
    assert doc["systems"][:3] == ["engine alone", "orchestratord /v1/tasks", "orchestratord /v1/completions"]
    assert doc["core_split"]["pinned"] == (len(doc["core_split"]["cores"]) >= 2)
    levels = {(r["tokens"], r["offered_per_s"]) for r in doc["rows"]}
    assert levels == {(20, 20.0), (60, 10.0)}
    for row in doc["rows"]:
        assert row["completed"] == row["requests"] > 0 and row["never_ended"] == 0, row["error_examples"]
        assert_percentiles(row["ttft_ms"], row["requests"])
        assert row["itl_ms"]["count"] == row["requests"] * (row["tokens"] - 1)
        assert row["achieved_per_s"] > 0
        if row["system"] == "engine alone":
            assert row["resources"]["cpu_ms_per_job"] is None and "added_ttft_ms" not in row
        else:
            assert row["resources"]["cpu_s"] >= 0 and row["resources"]["cpu_ms_per_job"] is not None
            assert row["added_ttft_ms"]["p50"] is not None and row["added_itl_ms"]["p99"] is not None
    for row in doc["one_at_a_time"]:
        assert row["completed"] == row["requests"] == 5
    assert [t["name"].split(" (")[0] for t in doc["targets"]] == [
        "paced 20-token jobs/s kept",
        "added TTFT p50 at 20 paced 20-token jobs/s",
        "added TTFT p99 at 20 paced 20-token jobs/s",
        "added TTFT p50 one request at a time",
    ]


def test_ttft_compares_orchestratord_with_the_engine(results: dict[str, Any]) -> None:
    doc = results["ttft"]
    assert [lv["concurrency"] for lv in doc["levels"]] == [1, 2]
    for lv in doc["levels"]:
        for path in ("direct", "orchestratord"):
            side = lv[path]
            assert side["completed"] == side["requests"] > 0, side["error_examples"]
            assert_percentiles(side["ttft_ms"], side["requests"])
        assert_resources(lv["orchestratord"]["resources"])
        assert all(lv["added_ttft_ms"][k] is not None for k in ("p50", "p95", "p99"))
    assert {t["name"] for t in doc["targets"]} == {
        "added TTFT p50 at concurrency 2",
        "added TTFT p99 at concurrency 2",
    }
    assert all(isinstance(t["met"], bool) and t["measured"] is not None for t in doc["targets"])


def test_jobs_and_relay_deliver_every_token(results: dict[str, Any]) -> None:
    jobs = results["jobs"]
    assert jobs["best"]["jobs_per_s"] > 0 and jobs["best"]["engine_alone_jobs_per_s"] > 0
    assert jobs["best"]["cpu_ms_per_job"] > 0
    relay = results["relay"]
    for part in ("one_long_stream", "concurrent_streams", "openai_streams"):
        for side in ("direct", "orchestratord"):
            measured = relay[part][side]
            assert measured["completed"] == measured["requests"] > 0, measured["error_examples"]
            assert measured["tokens_per_s"] > 0
    assert_resources(relay["concurrent_streams"]["orchestratord"]["resources"])
    assert_resources(relay["openai_streams"]["orchestratord"]["resources"])


def test_open_streams_reports_memory_per_stream(results: dict[str, Any]) -> None:
    doc = results["open_streams"]
    assert doc["completed"] == doc["requests"] == 10
    assert 1 <= doc["most_open_at_once"] <= 10
    assert doc["peak_rss_mb"] >= doc["idle_rss_mb"] > 0
    assert doc["rss_per_stream_kb"] is not None and doc["rss_per_stream_kb"] >= 0
    assert len(doc["resources"]["rss_samples_mb"]) >= 2


def test_overload_gets_429s_and_admits_some_jobs(results: dict[str, Any]) -> None:
    doc = results["overload"]
    assert doc["offered_per_s"] > doc["capacity_jobs_per_s"] > 0
    over = doc["overload"]
    assert int(over["statuses"].get("429", 0)) > 0 and int(over["statuses"].get("202", 0)) > 0
    assert_percentiles(over["rejection_latency_ms"], int(over["statuses"]["429"]))
    assert over["memory"]["rss_first_mb"] > 0
    assert doc["targets"][0]["measured"] == over["rejection_latency_ms"]["p99"]


def test_admission_measures_posts_at_each_depth_and_the_429_of_a_full_queue(results: dict[str, Any]) -> None:
    doc = results["admission"]
    levels = doc["accepted"]
    assert [lv["queued"] for lv in levels] == list(doc["config"]["load"]["depths"])
    for level in [*levels, doc["refused_full_queue"]]:
        assert_percentiles(level["answer_ms"], doc["config"]["load"]["measured"])
        assert level["cpu_ms_per_request"] >= level["own_cpu_ms_per_request"] >= 0
        assert level["background_cores"] >= 0
    assert doc["refused_full_queue"]["queued"] == doc["config"]["queue_capacity"]
    running = [*doc["refused_while_running"], *doc["admitted_while_running"]]
    assert [lv["running"] for lv in running] == [1, doc["config"]["load"]["running"]] * 2
    for level in running:  # each measured POST answered 429, or 202 (`_post` asserts it)
        assert_percentiles(level["answer_ms"], doc["config"]["load"]["measured"])
        assert level["cpu_ms_per_request"] >= level["own_cpu_ms_per_request"] >= 0


def test_prediction_pairs_predicted_and_measured_starts(results: dict[str, Any]) -> None:
    doc = results["prediction"]
    assert doc["levels"], "at least one load level"
    for row in doc["levels"].values():
        p = row["prediction"]
        assert p["all_jobs"]["jobs"] == len(p["pairs_ms"]) > 0
        assert p["all_jobs"]["mae_ms"] >= 0 and p["all_jobs"]["p90_abs_ms"] >= 0
        assert 0 < row["fairness_jain_index"]["requests"] <= 1
        assert all(pred >= 0 and measured > 0 for pred, measured in p["pairs_ms"])
    hint = doc["retry_hint"]
    assert hint["requests"] > 0 and hint["admitted_on_first_retry"] <= hint["refused_with_hint"]


def test_holdback_measures_interactive_ttft_at_each_setting(results: dict[str, Any]) -> None:
    rows = results["holdback"]["rows"]
    assert [row["holdback"] for row in rows] == [0.0, 0.5]
    for row in rows:
        assert row["interactive"]["completed"] > 0 and row["interactive"]["ttft_ms"]["p50"] > 0
        assert row["batch"]["completed"] > 0 and row["batch"]["tokens_per_s"] > 0


def test_profile_has_samples_of_the_orchestrator(results: dict[str, Any]) -> None:
    doc = results["profile"]
    assert int(doc["rejections"]["statuses"].get("429", 0)) > 0
    assert doc["rejections"]["cpu_ms_per_request"] > 0
    for part in ("jobs_50_tokens", "relay", "rejections"):
        profile = doc[part]
        assert "error" not in profile, profile.get("error")
        assert profile["samples"] > 0
        shares = dict(profile["self_by_package_pct"])
        assert 99 <= sum(shares.values()) <= 101
        assert (results["_dir"] / profile["stacks_file"]).exists()


def test_guidellm_runs_only_by_name() -> None:
    """`all` (and so this smoke run) leaves out the scenario that installs guidellm's 1.5 GB toolchain."""
    from bench.__main__ import SCENARIOS, build_parser

    assert "guidellm" not in SCENARIOS
    assert build_parser().parse_args(["run", "--scenario", "guidellm"]).scenario == "guidellm"


def test_guidellm_pool_takes_its_vllm_fields_and_chat(tmp_path: Path) -> None:
    """The guidellm scenario's pool (`vllm` engine, `api: auto`) in front of the fake engine, without
    guidellm: a completion and a chat completion with guidellm's vLLM fields, 50 tokens each."""
    from bench.procs import MODEL, EngineSpec, OrchestratorSpec, running
    from bench.scenarios.guidellm import POOL

    vllm = {"ignore_eos": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    hi = [{"role": "user", "content": "hi"}]
    asks = {
        "/v1/completions": {"prompt": "hi", "max_tokens": 50},
        "/v1/chat/completions": {"messages": hi, "max_completion_tokens": 50},
    }
    orch = OrchestratorSpec(slots=8, queue_capacity=8, pool=POOL)
    with running(EngineSpec(), orch, tmp_path / "procs") as (_, orc):
        for path, ask in asks.items():
            body = json.dumps({"model": MODEL, "stream": True, **vllm, **ask}).encode()
            request = urllib.request.Request(orc.base_url + path, body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=30) as answer:
                lines = answer.read().decode().splitlines()
            frames = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
            choices = [c for f in frames for c in f["choices"]]
            texts = [c.get("text") if "text" in c else c["delta"].get("content") for c in choices]
            assert sum(1 for t in texts if t) == 50, path
            assert frames[-1]["usage"]["completion_tokens"] == 50, path
            assert "data: [DONE]" in lines, path


def test_summary_and_plots_are_written(results: dict[str, Any]) -> None:
    out: Path = results["_dir"]
    summary = (out / "SUMMARY.md").read_text()
    assert "## Targets (issues 9 §4 and 18 §2)" in summary and "## 1. Time to first token added" in summary
    assert "## Real serving load" in summary
    for png in ("serving.png", "ttft_overhead.png", "throughput.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_memory_runs_only_by_name_and_its_probe_answers() -> None:
    """The memory scenario waits out each round's retention (minutes), so `all` leaves it out; one of
    its variants at smoke scale: orchestratord under the probe, the allocators' figures at each step,
    gc.collect() and malloc_trim(0) by hand, and the summary's section from them."""
    from bench.__main__ import SCENARIOS
    from bench.report import memory_section
    from bench.scenarios.memory import SMOKE, Variant, measure, summary_row

    assert "memory" not in SCENARIOS
    variant = asyncio.run(measure(SMOKE, Variant("no trim", rounds=2), REPO))
    assert [r["completed"] for r in variant["rounds"]] == [SMOKE.jobs] * 2
    for step in (variant["idle"], *(r[k] for r in variant["rounds"] for k in ("loaded", "after_retention"))):
        assert 10 < step["rss_outside_mb"] < 4096 and step["gc_tracked_objects"] > 0
        assert step["glibc"] is None or step["glibc"]["in_use_mb"] > 0
    assert [a["action"] for a in variant["by_hand"]] == ["gc", "trim"]
    assert variant["by_hand"][0]["collected"] >= 0 and variant["by_hand"][1]["took_ms"] >= 0
    doc = {"config": {"load": SMOKE.__dict__, "tokens_per_job": 50}, "description": "d",
           "summary": [summary_row(variant)], "variants": [variant]}  # fmt: skip
    assert "| no trim |" in "\n".join(memory_section(doc))


def test_engine_client_runs_only_by_name_and_keeps_its_connections(tmp_path: Path) -> None:
    """The engine client scenario measures HTTP client libraries, not orchestratord, so `all` leaves it
    out; at smoke scale every client completes every job on one connection per worker, and the
    summary's section shows each of them."""
    from bench.report import engine_client_section
    from bench.results import Context
    from bench.scenarios.engine_client import CLIENTS, SMOKE, run

    assert "engine_client" not in SCENARIOS
    doc = asyncio.run(run(Context.today(tmp_path, scale="smoke")))
    levels = [lv for r in doc["rounds"] for lv in r]
    assert sorted(lv["client"] for lv in levels) == sorted(CLIENTS)
    for lv in levels:
        assert lv["failed"] == 0 and lv["cpu_us_per_job"] > 0, lv
        assert lv["connections"] == lv["connections_open_at_end"] == SMOKE.concurrency[0], lv
    section = "\n".join(engine_client_section(doc))
    assert all(f"| {name} | {SMOKE.concurrency[0]} |" in section for name in CLIENTS)
