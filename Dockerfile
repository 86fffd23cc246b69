# syntax=docker/dockerfile:1
# The worker image: `docker build -t numeric-window-embedder .`; default command `embedder worker`.
# Build stage: the exact runtime dependencies of requirements.lock, then the project (no deps).
FROM python:3.11-slim AS build
RUN python -m venv /opt/embedder
WORKDIR /src
COPY requirements.lock ./
RUN /opt/embedder/bin/pip install --no-cache-dir -r requirements.lock
COPY pyproject.toml ./
COPY shared ./shared
COPY backfill ./backfill
COPY live ./live
COPY streams ./streams
COPY embedder ./embedder
COPY prometheus ./prometheus
RUN /opt/embedder/bin/pip install --no-cache-dir --no-deps .

# Runtime: the virtualenv only, a non-root user, state on a volume, the web port on all interfaces.
FROM python:3.11-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/embedder --create-home embedder
COPY --from=build /opt/embedder /opt/embedder
ENV PATH=/opt/embedder/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    EMBEDDER_STATE_DIR=/var/lib/embedder/state \
    EMBEDDER_WEB_HOST=0.0.0.0 \
    EMBEDDER_WEB_PORT=6066
USER 10001:10001
WORKDIR /var/lib/embedder
VOLUME ["/var/lib/embedder/state"]
EXPOSE 6066
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:6066/readyz', timeout=3).status != 200)"]
ENTRYPOINT ["embedder"]
CMD ["worker"]
