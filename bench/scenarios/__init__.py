"""One module per scenario; each has `run(ctx) -> dict` (the payload of its result file)."""
