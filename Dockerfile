# syntax=docker/dockerfile:1
# territoire-data: API, ingest workers and CLI in one slim, non-root image.

# --- assets: the portal's browser libraries from the npm registry (pinned by web/package-lock.json) ----------
FROM node:20-bookworm-slim AS assets
WORKDIR /src
COPY web/package.json web/package-lock.json web/
COPY scripts/build-assets scripts/
COPY scripts/lib scripts/lib
RUN mkdir -p src/territoire_data/web/static && bash scripts/build-assets

# --- build: wheels for the project and its dependencies -------------------------------------------------
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY src ./src
COPY --from=assets /src/src/territoire_data/web/static/vendor ./src/territoire_data/web/static/vendor
COPY migrations ./migrations
COPY connectors ./connectors
COPY demo ./demo
COPY indicators ./indicators
RUN pip wheel --wheel-dir /wheels .

# --- runtime -----------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN useradd --system --create-home --uid 10001 --user-group territoire
COPY --from=build /wheels /wheels
RUN pip install --no-index --find-links /wheels territoire-data && rm -rf /wheels
WORKDIR /app
COPY --chown=root:root connectors ./connectors
USER territoire
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=4s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=3)"]
ENTRYPOINT ["territoire-data"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
