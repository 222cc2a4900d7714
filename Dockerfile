# The Pluct Business Engine as a slim, non-root image for production: it needs DATABASE_URL and
# the three secrets (see README, Running in a container). Build tools and the embedded
# PostgreSQL of `make run` stay out of it.

# Build stage: the virtualenv, with the service and its generated stubs installed as packages.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Dependencies first, so code changes do not reinstall them; the same pins `make` installs.
COPY requirements.txt ./
RUN python -m venv /opt/venv && /opt/venv/bin/pip install -r requirements.txt
COPY clients ./clients
COPY pyproject.toml ./
COPY pluct_server ./pluct_server
RUN /opt/venv/bin/pip install --no-deps ./clients . \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# Runtime stage: Python, the virtualenv, an unprivileged user; no compiler, no sources, no pip
# cache.
FROM python:3.11-slim AS runtime
# SIGTERM drains calls in flight for PLUCT_SHUTDOWN_GRACE_SECONDS, then stops workers (5 s more
# at most): inside `docker stop`'s default 10 s. Orchestrators: allow this plus 10 s.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH \
    PLUCT_GRPC_LISTEN=0.0.0.0:50051 \
    PLUCT_HTTP_LISTEN=0.0.0.0:8787 \
    PLUCT_SHUTDOWN_GRACE_SECONDS=5
COPY --from=build /opt/venv /opt/venv
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin pluct
USER 10001:10001
WORKDIR /tmp
EXPOSE 50051 8787
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "pluct_server", "healthcheck"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "pluct_server", "serve"]
