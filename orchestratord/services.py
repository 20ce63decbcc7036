"""Services: everything a request handler may call, built once by the composition root."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from orchestratord.admission import Admission
from orchestratord.control import ControlPlane
from orchestratord.dispatch import Dispatcher
from orchestratord.endings import Endings
from orchestratord.idempotency import Idempotency
from orchestratord.jobs import JobControl
from orchestratord.loop_lag import LoopLag
from orchestratord.metrics import Metrics
from orchestratord.open_streams import OpenStreams
from orchestratord.outlook import Outlook
from orchestratord.pool_ops import PoolOps
from orchestratord.presence import Presence
from orchestratord.runs import Runs
from orchestratord.settings import Settings
from orchestratord.state.base import StateStore
from pool_manager.health import HealthProber
from pool_manager.registry import PoolRegistry
from worker_adapters.host import AdapterHost


@dataclass(slots=True)
class Services:
    settings: Settings
    store: StateStore
    registry: PoolRegistry
    adapters: AdapterHost
    runs: Runs
    outlook: Outlook
    endings: Endings
    dispatcher: Dispatcher
    admission: Admission
    jobs: JobControl
    presence: Presence
    prober: HealthProber
    metrics: Metrics
    pools: PoolOps
    idempotency: Idempotency
    control: ControlPlane
    lag: LoopLag = field(default_factory=lambda: LoopLag(None))  # how far behind the event loop runs
    shutdown: asyncio.Event = field(default_factory=asyncio.Event)
    streams: OpenStreams = field(default_factory=OpenStreams)  # the SSE responses being written
    started_at: float = field(default_factory=time.time)  # wall clock, when the services were built
