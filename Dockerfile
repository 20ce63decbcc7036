FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY orchestratord orchestratord
COPY worker_adapters worker_adapters
COPY pool_manager pool_manager
COPY contracts contracts
RUN pip install --no-cache-dir -e .
EXPOSE 8080
ENTRYPOINT ["orchestratord", "serve", "--host", "0.0.0.0", "--port", "8080"]
