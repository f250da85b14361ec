# syntax=docker/dockerfile:1
# territoire-data: API, ingest workers and CLI in one slim, non-root image.

# --- assets: the portal's browser libraries from the npm registry (pinned by web/package-lock.json) ----------
FROM node:20-bookworm-slim AS assets
WORKDIR /src
COPY web/package.json web/package-lock.json web/
COPY scripts/build-assets scripts/
COPY scripts/lib scripts/lib
RUN mkdir -p src/territoire_data/web/static && bash scripts/build-assets

# --- build: the platform in a virtualenv, from the hash-checked lock; its SBOM and licence list ---------------
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# Exact versions and hashes (scripts/lock refreshes them): the image installs nothing the lock does not name.
COPY requirements.lock ./
RUN python -m venv /opt/territoire && /opt/territoire/bin/pip install --require-hashes -r requirements.lock
COPY pyproject.toml README.md alembic.ini ./
COPY src ./src
COPY --from=assets /src/src/territoire_data/web/static/vendor ./src/territoire_data/web/static/vendor
COPY migrations ./migrations
COPY connectors ./connectors
COPY demo ./demo
COPY indicators ./indicators
RUN /opt/territoire/bin/pip install --no-deps . && /opt/territoire/bin/pip uninstall -y pip
# The CycloneDX SBOM and the licences (distributions and the native libraries their wheels bundle) of exactly
# what ships, made by tools in a separate environment (they are not shipped, nor described).
COPY scripts/sbom.py ./scripts/
RUN python -m venv /opt/sbom-tools \
 && /opt/sbom-tools/bin/pip install "cyclonedx-bom==7.5.0" "pip-licenses==5.5.5" \
 && /opt/sbom-tools/bin/python scripts/sbom.py --python /opt/territoire/bin/python \
      --output-dir /opt/territoire/share/doc/territoire-data

# --- runtime -----------------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PATH=/opt/territoire/bin:$PATH
RUN useradd --system --create-home --uid 10001 --user-group territoire
COPY --from=build /opt/territoire /opt/territoire
WORKDIR /app
COPY --chown=root:root connectors ./connectors
USER territoire
EXPOSE 8000
# SBOM: /opt/territoire/share/doc/territoire-data/sbom.cdx.json; licences: .../LICENCES.md
LABEL org.opencontainers.image.licenses="EUPL-1.2"
HEALTHCHECK --interval=15s --timeout=4s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=3)"]
ENTRYPOINT ["territoire-data"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
