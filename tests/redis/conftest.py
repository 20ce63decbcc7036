"""A real `redis-server` for the Redis backend's tests, started on a free loopback port, and a real
three-node Redis Cluster (`redis_cluster`) for the tests that run on both (`redis_target`).

Nothing is persisted (`--save "" --appendonly no`). Each test keeps its keys apart with its own key
prefix, so one server (and one cluster) serves the whole session; tests that stop or pause Redis start
their own. A module runs its tests on the cluster too by overriding `redis_target` with a
parametrized fixture (`standalone_and_cluster`); each test's random prefix puts its deployment in a
random hash slot, so on whichever of the three nodes holds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from orchestratord.core.queue import QueuePolicy
from orchestratord.state.redis import RedisStore
from orchestratord.state.redis_client import RedisOptions, tagged
from tests.fakes.servers import REPO, free_port, wait_healthy

REDIS_SERVER = os.environ.get("ORCH_REDIS_SERVER") or shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclass
class RedisServer:
    """One redis-server child process; `stop`/`start` keep the port, `pause`/`resume` freeze it."""

    port: int
    proc: subprocess.Popen[bytes] | None = None
    extra: list[str] = field(default_factory=list)
    cluster = False  # what `redis.cluster` a deployment on it sets

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
             "no", "--loglevel", "warning", *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {self.port}") from None
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.resume()
            self.proc.kill()
            self.proc.wait(timeout=10)

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True)


@contextlib.contextmanager
def running_redis() -> Iterator[RedisServer]:
    if not (os.path.isfile(REDIS_SERVER) and os.access(REDIS_SERVER, os.X_OK)):
        pytest.fail(
            f"the Redis tests need a redis-server binary and found none at {REDIS_SERVER!r}: install it "
            "(`apt-get install redis-server`; ci/setup.sh does) or point ORCH_REDIS_SERVER at one",
            pytrace=False,
        )
    server = RedisServer(free_port())
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with running_redis() as server:
        yield server


@dataclass
class LocalCluster:
    """A Redis Cluster of `nodes` (three primaries, no replicas) on loopback ports; the URL names the
    first node, as a deployment's `state_url` names any one node."""

    nodes: list[RedisServer]
    cluster = True

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, decode_responses=True)

    def node_of(self, key: str) -> RedisServer:
        """The node that holds `key`'s hash slot."""
        with self.client() as client:
            port = client.get_node_from_key(key).port
        return next(node for node in self.nodes if node.port == int(port))


@contextlib.contextmanager
def running_cluster(workdir: Path, size: int = 3) -> Iterator[LocalCluster]:
    """Start `size` cluster-enabled redis-servers, join them with `redis-cli --cluster create`, and
    wait until every node says `cluster_state:ok`."""
    redis_cli = os.environ.get("ORCH_REDIS_CLI") or shutil.which("redis-cli") or "/usr/bin/redis-cli"
    if not (os.path.isfile(redis_cli) and os.access(redis_cli, os.X_OK)):
        pytest.fail(
            f"the Redis Cluster tests need redis-cli and found none at {redis_cli!r}: install it "
            "(`apt-get install redis-tools`; ci/setup.sh does) or point ORCH_REDIS_CLI at one",
            pytrace=False,
        )
    nodes: list[RedisServer] = []
    try:
        for _ in range(size):
            port = free_port()
            node = RedisServer(port, extra=[
                "--cluster-enabled", "yes", "--cluster-config-file", str(workdir / f"nodes-{port}.conf"),
                "--cluster-port", str(free_port()), "--dir", str(workdir),
            ])  # fmt: skip
            nodes.append(node)
            node.start()
        subprocess.run(
            [redis_cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes), "--cluster-replicas",
             "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not all(
            "cluster_state:ok" in str(n.client().execute_command("CLUSTER", "INFO")) for n in nodes
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the local Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.05)
        yield LocalCluster(nodes)
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with running_cluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster


RedisTarget = RedisServer | LocalCluster


@pytest.fixture
def redis_target(redis_server: RedisServer) -> RedisTarget:
    """The Redis a test's stores use: the standalone server, unless its module overrides this fixture
    (see `standalone_and_cluster`) to run each test on the cluster too."""
    return redis_server


def standalone_and_cluster(request: pytest.FixtureRequest) -> RedisTarget:
    """For a module's own parametrized `redis_target` (params `["standalone", "cluster"]`)."""
    name = "redis_server" if request.param == "standalone" else "redis_cluster"
    target: RedisTarget = request.getfixturevalue(name)
    return target


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server for this test alone (it may stop, restart or pause it)."""
    with running_redis() as server:
        yield server


def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def make_store(redis_target: RedisTarget) -> AsyncIterator[Callable[..., RedisStore]]:
    """`make_store(policy=..., key_prefix=..., **options)`: RedisStores sharing one key prefix (one
    deployment) unless told otherwise; each is one orchestrator instance with its own owner id, on
    `redis_target` (standalone, or the cluster)."""
    stores: list[RedisStore] = []
    shared = prefix()

    def build(policy: QueuePolicy | None = None, *, url: str | None = None, **kwargs: Any) -> RedisStore:
        store_keys = ("retention_s", "tenant_max_concurrent", "wall", "unread_within_s")
        store_args = {k: kwargs.pop(k) for k in store_keys if k in kwargs}
        kwargs.setdefault("cluster", redis_target.cluster)
        options = RedisOptions(key_prefix=kwargs.pop("key_prefix", shared), **kwargs)
        store = RedisStore(url or redis_target.url, policy, options=options, **store_args)
        stores.append(store)
        return store

    yield build
    for store in stores:
        await store.aclose()


@dataclass
class Replica:
    base_url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def logged(self, event: str, **fields: str) -> bool:
        """True if this replica's JSON log has `event` with these fields (what it did, as it says)."""
        for line in self.log_path.read_text(errors="replace").splitlines():
            if f'"{event}"' not in line:
                continue
            try:
                logged = json.loads(line)
            except ValueError:  # a line the replica is still writing
                continue
            if logged.get("event") == event and all(logged.get(k) == v for k, v in fields.items()):
                return True
        return False


@dataclass
class Deployment:
    """Several `orchestratord serve` processes sharing one Redis, as behind a load balancer."""

    replicas: list[Replica]
    key_prefix: str
    redis: RedisTarget

    def __getitem__(self, i: int) -> Replica:
        return self.replicas[i]

    def keys(self, name: str) -> str:
        return f"{tagged(self.key_prefix)}{name}"


def deployment_config(
    redis_url: str, key_prefix: str, *, cluster: bool = False, **overrides: Any
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "state_url": redis_url,
        "log_format": "json",
        "log_level": "info",
        "health_interval_s": 0.5,
        "redis": {"key_prefix": key_prefix, "lease_ttl_s": 2.0, "heartbeat_s": 0.4, "timeout_s": 1.0,
                  "cluster": cluster},
        "pools": [
            {"id": "default", "engine": "mock", "models": ["mock"], "replicas": [{"id": "r0"}], "slots": 2,
             "options": {"ttft_ms": 5, "tokens_per_s": 40}},
        ],
    }  # fmt: skip
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


@contextlib.contextmanager
def start_deployment(
    redis_server: RedisTarget, workdir: Path, count: int, **overrides: Any
) -> Iterator[Deployment]:
    """Start `count` replicas at once (they start in parallel), wait until each answers /healthz."""
    key_prefix = overrides.pop("key_prefix", None) or prefix()
    config = deployment_config(redis_server.url, key_prefix, cluster=redis_server.cluster, **overrides)
    config_path = workdir / f"orchestratord-{key_prefix.rstrip(':')}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    replicas: list[Replica] = []
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        for i in range(count):
            port = free_port()
            log_path = workdir / f"replica-{key_prefix.rstrip(':')}-{i}.log"
            with log_path.open("wb") as out:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "orchestratord", "serve", "--port", str(port), "--config",
                     str(config_path)],
                    env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                )  # fmt: skip
            replicas.append(Replica(f"http://127.0.0.1:{port}", proc, log_path))
        for replica in replicas:
            wait_healthy(replica.base_url, replica.proc, timeout=60)
        yield Deployment(replicas, key_prefix, redis_server)
    finally:
        for replica in replicas:
            if replica.proc.poll() is None:
                replica.proc.terminate()
        for replica in replicas:
            try:
                replica.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                replica.proc.kill()
                replica.proc.wait()
