"""Pure policy: queue, placement, prediction. No I/O, no asyncio, no logging."""
