"""The state interface, by role: the job registry, per-job event logs, the fair queue, readers and
cancel signals, sessions and ledgers, idempotency keys, and slot leases (`pool_manager.leases`).

Two backends implement every role: `memory.MemoryStore` (the embedded default) and `redis.RedisStore`
(several orchestrators behind a load balancer). Each service depends only on the roles it uses;
`StateStore` is all of them together, what the composition root builds.

Invariants every backend keeps:
- a job's state and its terminal event change in one step (`finish`), exactly once;
- after the terminal event nothing more is appended (`append_token`/`append` return None);
- event ids are opaque, ordered within a job, and valid on any orchestrator replica.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestratord.core.budget import Ledger
from orchestratord.core.queue import Admitted, Depths, Place, QueueEntry, Rejected
from orchestratord.core.route import Route
from orchestratord.core.tasks import EventRun, JobState, LogEvent, Priority
from orchestratord.state.shared import SharedState
from pool_manager.leases import LeaseStore


@dataclass(frozen=True, slots=True)
class JobRecord:
    """What the registry knows about one job. Timestamps are wall-clock seconds (UTC epoch)."""

    job_id: str
    tenant: str
    model_ref: str
    priority: Priority
    state: JobState
    created_at: float
    spec: str  # the TaskSpec as JSON, so any replica can run the job
    session_id: str | None = None
    correlation_id: str | None = None
    cancel_on_disconnect: bool = True
    started_at: float | None = None
    finished_at: float | None = None
    tokens_out: int = 0
    text: str = ""
    stop_reason: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    pool_id: str | None = None
    replica_id: str | None = None
    engine: str | None = None
    readers: int = 0
    attached: bool = False


@dataclass(frozen=True, slots=True)
class IdempotencyRecord:
    """What an Idempotency-Key was first used for: the job it created and its request's fingerprint."""

    job_id: str
    fingerprint: str


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """One conversation of one tenant: its turns, where its last turn ran, and its budget ledger.
    Timestamps are wall-clock seconds; the session is gone once `expires_at` has passed."""

    session_id: str
    tenant: str
    model_ref: str
    created_at: float
    expires_at: float
    turns: int = 0
    last_pool_id: str | None = None
    last_replica_id: str | None = None
    kv_warmth: bool = False
    ledger: Ledger = field(default_factory=Ledger)


class JobRegistry(Protocol):
    """Every job's record and the one function that moves it between states."""

    async def create(
        self,
        record: JobRecord,
        entry: QueueEntry,
        ticket: Callable[[], str] | None = None,
        *,
        wake_all: bool = True,
        most_ahead: int | None = None,
    ) -> Admitted | Rejected:
        """Register the job and enqueue it in one step; nothing is stored if it is rejected. `ticket()`
        names the place the client may hold (`JobQueue.hold_place`), asked only while places are held.
        With shared state, `wake_all` wakes every replica's dispatcher; False leaves the job to this
        replica's (it can serve the job and will look at once), and the others see it on their tick.
        `most_ahead`: a shared queue refuses the job (`max_wait`) if more jobs for its route would be
        ahead of it than that, counted as the job is queued: other replicas admit between this
        replica's reads of the queue. The embedded queue has no other admitter: admission's own count
        of the place is the queue's, and it ignores it."""
        ...

    async def get(self, job_id: str) -> JobRecord | None: ...

    async def start(self, job_id: str, *, pool_id: str, replica_id: str, engine: str) -> JobRecord | None:
        """queued → running, or running → running on another replica (a failover before the first
        token). None if the job has ended (canceled, expired, drained) or, with shared state, is not
        claimed by this orchestrator replica."""
        ...

    async def finish(
        self, job_id: str, state: JobState, name: str, data: Mapping[str, Any]
    ) -> LogEvent | None:
        """Move to a terminal state and append the terminal event, once. `end` events get
        `decode_time_ms` and `decode_ms` filled from the record, and `tokens_out` too unless the data
        carries the engine's count, which then becomes the job's `tokens_out`."""
        ...

    async def purge(self, now: float) -> int:
        """Forget finished jobs whose retention has passed; returns how many."""
        ...

    async def forget(self, job_id: str) -> bool:
        """Forget an ended job now, before its retention passes (its record, text and event log): True
        if it was held and had ended; a job still live is left as it is."""
        ...

    async def lost_since(self) -> float | None:
        """The wall-clock time since which the registry holds only what was written after it lost its
        data (a shared backend restarted empty or flushed, as this instance saw), or None: a job issued
        before it and not found is gone, not unknown."""
        ...

    async def jobs(self, states: frozenset[JobState], *, ended_after: float | None = None) -> list[JobRecord]:
        """Every job the registry still holds in one of `states` (finished ones until their retention
        passes; with `ended_after`, only those that ended after that wall-clock time), of every tenant
        and on every orchestrator replica, without their text; in no order."""
        ...


class EventLog(Protocol):
    """Each job's append-only log of events, and the readers that tail it."""

    async def append(self, job_id: str, name: str, data: Mapping[str, Any]) -> LogEvent | None: ...

    async def append_each(self, events: Sequence[tuple[str, str, Mapping[str, Any]]]) -> int:
        """Append each (job_id, name, data) as `append` would, in one call where the backend can (Redis:
        one round trip for housekeeping's queue positions, however many jobs wait); the events of jobs
        that have ended are dropped. Returns how many were appended."""
        ...

    async def append_token(
        self, job_id: str, text: str, logprobs: Sequence[Mapping[str, Any]] | None = None
    ) -> bool:
        """Append a `token` event with the next contiguous index (and the engine's `logprobs` for it,
        when the job asked for them); False once the job has ended. A backend may write it behind
        the call (Redis: in batches), and then say False one token late; it never writes a token
        after the job's terminal event, and writes the job's other events after its tokens."""
        ...

    def read(self, job_id: str, after: str | None = None) -> AsyncIterator[LogEvent]:
        """Every event after `after`, waiting for more, until the terminal event."""
        ...

    def read_batches(
        self, job_id: str, after: str | None = None
    ) -> AsyncIterator[Sequence[LogEvent | EventRun]]:
        """As `read`, for a reader that relays the log as it is stored (api/stream.py): each time the
        reader looks, every event the log holds past what it gave last, as one batch (never empty;
        the terminal event, if any, last). Where the backend keeps a run's events together (Redis),
        a batch may give them as one `EventRun`. The log itself is the buffer: a reader that does
        not look holds nothing."""
        ...

    async def run_over(self, job_id: str) -> None:
        """This instance's run of the job is over, however the job ended (here or elsewhere): a
        backend that keeps a run's events in the process (Redis) writes what is left, and its readers
        there go on from the shared log."""
        ...

    def valid_event_id(self, event_id: str) -> bool: ...

    async def beyond(self, job_id: str, event_id: str) -> bool:
        """Whether `event_id` (a valid one) lies past the newest event of the job's log: no reader of
        this stream could have received it."""
        ...


@dataclass(frozen=True, slots=True)
class Pending:
    """A dispatch round's first look at the queue, in one step: whether anything is queued, and
    whether a queued job's deadline has passed. A shared store also says which routes and tenants have
    queued jobs, which its `take` then need not read again."""

    queued: bool
    expired: bool
    routes: tuple[str, ...] = ()  # encoded (`Route.encode`)
    tenants: tuple[str, ...] = ()


class JobQueue(Protocol):
    """The fair queue of admitted jobs (`core.queue` holds its rules)."""

    async def pending(self, now: float) -> Pending:
        """Whether a dispatch round has anything to take, and whether it must expire jobs first."""
        ...

    async def take(
        self,
        can_serve: Callable[[Route], bool],
        tenant_ok: Callable[[str], bool],
        batch_can_serve: Callable[[Route], bool] | None = None,
        pending: Pending | None = None,
        spare: Callable[[Route], bool] | None = None,
    ) -> QueueEntry | None:
        """The next job to run (`core.queue.FairQueue.take`): one a free slot can serve, of a tenant
        that may run more; a batch job only where `batch_can_serve` says so, when given (slots held
        back for interactive work). `pending`: this round's first look, when taken just before.
        `spare`: where free slots are more than one job needs. With shared state, a job another
        replica admitted to run itself is left to it a while: on a route with slots to spare this
        replica takes the jobs behind it; while that job is next on a route without, only a job on
        another route with slots to spare."""
        ...

    async def dequeue(self, job_id: str) -> QueueEntry | None: ...

    async def expire(self, now: float) -> list[QueueEntry]: ...

    async def settle(self, tenant: str, priority: Priority, estimated: float, actual: float) -> None: ...

    async def queued(self) -> list[QueueEntry]: ...

    async def place(self, job_id: str) -> Place | None:
        """The queued job's place (`core.queue.Place`); None if it is not queued."""
        ...

    async def places(self) -> Mapping[str, Place]:
        """Every queued job's place, computed together (one walk of the queue)."""
        ...

    async def depths(self, tenant: str | None = None) -> Depths:
        """The jobs queued per route and, with `tenant`, the place of its first job on each of its
        routes (`core.queue.Depths`), without a walk of the queue."""
        ...

    async def places_held(self) -> int:
        """How many places are held for clients refused from a full queue (`core.queue`, rule 7)."""
        ...

    async def hold_place(self, ticket: str, due_in_s: float, hold_s: float) -> float:
        """Hold the place that frees in `due_in_s` for `ticket`, for `hold_s` past that (a ticket
        that holds one keeps it). Returns the seconds until the ticket's place is due."""
        ...


class Readers(Protocol):
    """Who reads a job (for cancel-on-disconnect), and the signal that a job ended from outside its run."""

    async def attach(self, job_id: str) -> int: ...

    async def open(self, job_id: str, tenant: str | None) -> JobRecord | None:
        """A reader opening the job's stream: its record (without the text) with one reader counted in
        (as `attach` counts one), if the job exists and belongs to `tenant` (None: any tenant); None,
        and nobody counted in, otherwise. A shared store does both in one round trip."""
        ...

    async def detach(self, job_id: str) -> int: ...

    async def publish_cancel(self, job_id: str) -> None: ...

    def cancel_signals(self) -> AsyncIterator[str]: ...


class Ledgers(Protocol):
    """Sessions (each with its own budget ledger) and tenants' budget ledgers."""

    async def session_get(self, key: str) -> SessionRecord | None:
        """The session stored under `key`; None if there is none or it has expired."""
        ...

    async def session_update(
        self, key: str, change: Callable[[SessionRecord | None], SessionRecord | None]
    ) -> SessionRecord | None:
        """Atomically replace the (unexpired) session under `key` with `change(current)`; None deletes
        it. `change` must be pure: a backend may call it again if the record changed meanwhile."""
        ...

    async def session_delete(self, key: str) -> bool: ...

    async def ledger_get(self, key: str) -> Ledger | None:
        """A tenant's budget ledger (sessions carry their own, in the record)."""
        ...

    async def ledger_update(self, key: str, change: Callable[[Ledger | None], Ledger]) -> Ledger:
        """Atomically replace the ledger under `key` with `change(current)`; `change` must be pure."""
        ...


class IdempotencyKeys(Protocol):
    async def remember_idempotency(
        self, key: str, tenant: str, fingerprint: str, job_id: str, ttl_s: float
    ) -> IdempotencyRecord | None:
        """Remember that `tenant`'s `key` creates `job_id`, for `ttl_s` seconds, and return None; or, if
        the key is already remembered, store nothing and return the first record. Atomic: of several
        concurrent calls with one key, exactly one gets None (Redis: `SET key value NX EX ttl`)."""
        ...

    async def forget_idempotency(self, key: str, tenant: str, job_id: str) -> None:
        """Drop the key if it still names `job_id` (admission refused that job, so a retry may try again)."""
        ...


class StateStore(JobRegistry, EventLog, JobQueue, Readers, Ledgers, IdempotencyKeys, Protocol):
    """Every role, as one backend implements them together. Services take only the roles they use."""

    @property
    def leases(self) -> LeaseStore:
        """Slot leases: in this process (embedded), or shared by every orchestrator replica (Redis)."""
        ...

    @property
    def shared(self) -> SharedState | None:
        """What other orchestrator replicas sharing this state add; None when only this process sees
        it. The one fact that says whether state is shared."""
        ...

    async def ping(self) -> bool:
        """True when the backend answers; False (never an exception) when it does not."""
        ...

    async def aclose(self) -> None: ...
