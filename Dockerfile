# lstm-serving server image: slim Python, non-root, the `server` extra, gRPC health check.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md ./
COPY client ./client
COPY server ./server
RUN pip install ".[server]" \
    && useradd --system --uid 10001 --create-home lstm

USER lstm
EXPOSE 50051 8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import grpc, sys; from grpc_health.v1 import health_pb2 as h, health_pb2_grpc as g; s = g.HealthStub(grpc.insecure_channel('127.0.0.1:50051')).Check(h.HealthCheckRequest(), timeout=2).status; sys.exit(0 if s == h.HealthCheckResponse.SERVING else 1)"]

ENTRYPOINT ["lstm-server"]
CMD ["--host", "0.0.0.0", "--port", "50051", "--metrics-port", "8000"]
