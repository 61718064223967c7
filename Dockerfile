# The society-ingest worker and CLI (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . /app
RUN pip install '.[worker,cli]' \
 && useradd --system --uid 10001 --home-dir /app society
USER society

# Metrics and probes, when the worker is started with --metrics-port 9464 (docker-compose.yml does).
EXPOSE 9464

# SIGTERM (docker stop) lets the worker finish its batch and commit its offsets.
STOPSIGNAL SIGTERM
CMD ["society-ingest", "consume"]
