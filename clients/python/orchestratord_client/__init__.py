"""A typed client for orchestratord's HTTP API: submit jobs, read their events (resuming a broken
stream by itself), retry what the server says may be retried.

    from orchestratord_client import Client

    with Client() as client:
        print(client.text("mock", "hello", max_tokens=16))
"""

from orchestratord_client._async_client import AsyncClient
from orchestratord_client._client import Client
from orchestratord_client._version import __version__
from orchestratord_client.errors import (
    BudgetExceeded,
    Conflict,
    ConnectionFailed,
    Forbidden,
    InvalidRequest,
    JobFailed,
    NotFound,
    OrchestratordError,
    QueueFull,
    RateLimited,
    ServerError,
    StreamInterrupted,
    Unauthorized,
    Unavailable,
)
from orchestratord_client.events import (
    End,
    Error,
    Event,
    Metrics,
    Reasoning,
    Started,
    Token,
    ToolCall,
    UnknownEvent,
)
from orchestratord_client.resources import Job, JobStatus, Session

__all__ = [
    "AsyncClient",
    "BudgetExceeded",
    "Client",
    "Conflict",
    "ConnectionFailed",
    "End",
    "Error",
    "Event",
    "Forbidden",
    "InvalidRequest",
    "Job",
    "JobFailed",
    "JobStatus",
    "Metrics",
    "NotFound",
    "OrchestratordError",
    "QueueFull",
    "RateLimited",
    "Reasoning",
    "ServerError",
    "Session",
    "Started",
    "StreamInterrupted",
    "Token",
    "ToolCall",
    "Unauthorized",
    "Unavailable",
    "UnknownEvent",
    "__version__",
]
