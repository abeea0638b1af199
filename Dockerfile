# The observable-tasks demo app (docker-compose.yml builds it as the "app", "worker" and "loadgen"
# services).
#   docker build -t observable-tasks-demo . && docker run -p 8000:8000 observable-tasks-demo
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Dependencies and the package first (README.md is the package's long description).
COPY pyproject.toml README.md ./
COPY observable_tasks ./observable_tasks
RUN pip install .

# The load generator runs from this image too (stdlib only).
COPY examples ./examples

# /data: the demo's data folder (DEMO_DATA_DIR in docker-compose.yml, where the app and the
# worker share it as a volume, which starts as a copy of this folder: private, with a sample file).
RUN useradd --create-home --uid 10001 app \
    && mkdir -m 0700 /data \
    && python -c "open('/data/sample.txt', 'wb').write(b'observable-tasks demo file\\n' * 400)" \
    && chown -R app:app /data
USER app

# Traces go to Jaeger over OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set (docker-compose.yml does).
ENV OTEL_SERVICE_NAME=observable-tasks-demo
EXPOSE 8000

CMD ["observable-tasks", "demo", "--host", "0.0.0.0", "--port", "8000"]
