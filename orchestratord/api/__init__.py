"""The HTTP layer: the only package that imports FastAPI, Starlette and sse-starlette."""
