"""Whether the shared state backend answers, as the dispatcher's loops last found it: logged when it
goes away and when it comes back, once each, not on every tick."""

from __future__ import annotations

from orchestratord.logs import get_logger

log = get_logger(__name__)


class Reachability:
    def __init__(self) -> None:
        self._down = False

    def report(self, ok: bool) -> None:
        if ok != self._down:
            return
        self._down = not ok
        if ok:
            log.info("state_backend_reachable")
        else:
            log.warning("state_backend_unreachable")
