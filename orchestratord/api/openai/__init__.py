"""The OpenAI-compatible surface: Chat Completions, Completions and Models. Every request is a job
like any other (admitted by the same fair queue, placed, relayed from the same event log, counted by
the same metrics, visible at `GET /v1/tasks/{id}`); this package adds only the request mapping
(`requests.py`), the rendering of the job's events (`render.py`) and the routes (`routes.py`). Its
errors are rendered by `api.errors.to_openai_response`."""
