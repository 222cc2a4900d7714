# The Pluct Business Engine as a slim, non-root image. Production needs DATABASE_URL and the
# three secrets; without DATABASE_URL it runs the embedded PostgreSQL under /data (demo only).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    PLUCT_GRPC_LISTEN=0.0.0.0:50051 \
    PLUCT_HTTP_LISTEN=0.0.0.0:8787 \
    PLUCT_DATA_DIR=/data

WORKDIR /app

# Dependencies first, so code changes do not reinstall them; the same pins `make` installs.
COPY requirements.txt ./
RUN python -m venv /opt/venv \
 && pip install --no-cache-dir --upgrade pip \
 && pip install --no-cache-dir -r requirements.txt

COPY clients ./clients
COPY pyproject.toml ./
COPY pluct_server ./pluct_server
RUN pip install --no-cache-dir --no-deps ./clients . \
 && useradd --system --uid 10001 --home-dir /data --create-home pluct

USER pluct
EXPOSE 50051 8787
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "pluct_server", "healthcheck"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "pluct_server", "serve"]
