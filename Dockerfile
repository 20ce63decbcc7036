# orchestratord in a container: the package and nothing else (engines run in their own containers).
# docker build -t orchestratord:local .  ·  docker compose up (docker-compose.yml) for the deployment.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY orchestratord orchestratord
COPY worker_adapters worker_adapters
COPY pool_manager pool_manager
COPY contracts contracts
COPY clients clients
# Editable: the served OpenAPI document is read from /app/contracts, next to the package. The Python
# client comes along for `orchestratord run / status / cancel / pools` inside the container.
RUN pip install --no-cache-dir -e . -e clients/python \
 && useradd --system --uid 10001 --home-dir /app orchestratord \
 && mkdir -p /var/lib/orchestratord && chown orchestratord /var/lib/orchestratord
# The model catalog (catalog.dir) lives in $XDG_STATE_HOME/orchestratord: mount a volume there.
ENV XDG_STATE_HOME=/var/lib
USER orchestratord
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["orchestratord", "serve", "--host", "0.0.0.0", "--port", "8080"]
