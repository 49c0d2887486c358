# lstm-serving server image: slim Python, non-root, the `server` extra, a readiness health check.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY client ./client
COPY server ./server
RUN pip install ".[server,otel]" \
    && useradd --system --uid 10001 --create-home lstm \
    && mkdir -p /var/cache/lstm-serving && chown lstm /var/cache/lstm-serving

USER lstm
EXPOSE 50051 8000 8080

# Readiness over plain HTTP on the metrics port: it works whatever TLS the gRPC port uses.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2)"]

ENTRYPOINT ["lstm-server"]
CMD ["--host", "0.0.0.0", "--port", "50051", "--metrics-port", "8000", "--http-port", "8080"]
