#!/bin/sh
# Patroni runs this once, on the first primary, right after initdb (bootstrap.post_bootstrap in patroni.yml), with
# a superuser connection URL as its argument: the application's role (password from TERRITOIRE_DB_PASSWORD), its
# database and PostGIS. Replicas are cloned from the primary afterwards and get all of it.
set -eu
url="$1"
: "${TERRITOIRE_DB_PASSWORD:?set TERRITOIRE_DB_PASSWORD for the territoire role}"
psql -X -q -v ON_ERROR_STOP=1 -v pw="$TERRITOIRE_DB_PASSWORD" "$url" <<'SQL'
SELECT format('CREATE ROLE territoire LOGIN PASSWORD %L', :'pw')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'territoire') \gexec
SELECT 'CREATE DATABASE territoire OWNER territoire'
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = 'territoire') \gexec
\connect territoire
CREATE EXTENSION IF NOT EXISTS postgis;
SQL
