# Shared by scripts/quickstart, scripts/test and .ci/run: install and start what the platform needs.
# Debian 12 (bookworm) packages; every function is safe to run again.

PG_VERSION="${PG_VERSION:-15}"
APT_UPDATED=0

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*"; return 1; fi
}

apt_install_missing() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  ((${#missing[@]})) || return 0
  log "installing ${missing[*]}"
  if [ "$APT_UPDATED" -eq 0 ]; then as_root apt-get update -qq; APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

install_system_packages() {
  apt_install_missing "postgresql-$PG_VERSION" "postgresql-$PG_VERSION-postgis-3" mosquitto mosquitto-clients \
    python3 python3-venv python3-dev gcc "$@"
}

systemd_running() { [ -d /run/systemd/system ]; }

start_postgresql() {
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then return 0; fi
  log "starting PostgreSQL $PG_VERSION"
  if systemd_running; then
    as_root systemctl start "postgresql@$PG_VERSION-main"
  else
    as_root pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main start
  fi
  for _ in $(seq 50); do pg_isready -q -h 127.0.0.1 -p 5432 && return 0; sleep 0.2; done
  log "PostgreSQL did not start"; return 1
}

# Our broker settings (deploy/mosquitto/territoire.conf) go to conf.d; the main file must include it.
configure_mosquitto() {
  local repo="$1" changed=0
  as_root mkdir -p /etc/mosquitto/conf.d
  if ! cmp -s "$repo/deploy/mosquitto/territoire.conf" /etc/mosquitto/conf.d/territoire.conf; then
    as_root cp "$repo/deploy/mosquitto/territoire.conf" /etc/mosquitto/conf.d/territoire.conf; changed=1
  fi
  if ! grep -qE '^\s*include_dir\s+/etc/mosquitto/conf.d' /etc/mosquitto/mosquitto.conf; then
    echo "include_dir /etc/mosquitto/conf.d" | as_root tee -a /etc/mosquitto/mosquitto.conf >/dev/null; changed=1
  fi
  if ! grep -qE '^\s*(listener|port)\s' /etc/mosquitto/mosquitto.conf /etc/mosquitto/conf.d/*.conf 2>/dev/null; then
    # Mosquitto 2 with no listener only listens on loopback; say so explicitly, anonymous local clients allowed.
    printf 'listener 1883 127.0.0.1\nallow_anonymous true\n' | as_root tee /etc/mosquitto/conf.d/listener.conf >/dev/null
    changed=1
  fi
  if [ "$changed" -eq 1 ] && mosquitto_running; then
    log "restarting Mosquitto with our settings"; stop_mosquitto
  fi
}

mosquitto_running() { (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; }

stop_mosquitto() {
  if systemd_running; then as_root systemctl stop mosquitto; else as_root pkill -x mosquitto || true; fi
  for _ in $(seq 50); do mosquitto_running || return 0; sleep 0.1; done
}

start_mosquitto() {
  if mosquitto_running; then return 0; fi
  log "starting Mosquitto"
  if systemd_running; then
    as_root systemctl start mosquitto
  else
    as_root mkdir -p /run/mosquitto /var/lib/mosquitto /var/log/mosquitto
    as_root chown mosquitto: /run/mosquitto /var/lib/mosquitto /var/log/mosquitto 2>/dev/null || true
    as_root mosquitto -d -c /etc/mosquitto/mosquitto.conf
  fi
  for _ in $(seq 50); do mosquitto_running && return 0; sleep 0.1; done
  log "Mosquitto did not start"; return 1
}

# psql as the postgres superuser over the local socket (peer auth on a stock Debian).
psql_super() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 "$@"
  else sudo -u postgres psql -X -q -v ON_ERROR_STOP=1 "$@"; fi
}

# The platform's Python packages, from the hash-checked lock (requirements.lock; requirements-test.lock for the
# tests), then the project itself without dependencies: every install gets the same, reviewed versions.
# Other extras (bench, lock) install from pyproject.toml's ranges. `scripts/lock` refreshes the locks.
ensure_python_env() {
  local repo="$1" extras="$2"
  if [ ! -x "$repo/.venv/bin/python" ]; then
    log "creating the virtualenv .venv"
    python3 -m venv "$repo/.venv"
    "$repo/.venv/bin/pip" install -q --upgrade pip
  fi
  local stamp="$repo/.venv/.installed-${extras:-base}" target="$repo" lock=""
  [ -n "$extras" ] && target="$repo[$extras]"
  case "$extras" in
    "") lock="$repo/requirements.lock" ;;
    test) lock="$repo/requirements-test.lock" ;;
  esac
  if [ ! -f "$stamp" ] || [ "$repo/pyproject.toml" -nt "$stamp" ] || { [ -n "$lock" ] && [ "$lock" -nt "$stamp" ]; }; then
    if [ -n "$lock" ]; then
      log "installing the locked dependencies ($(basename "$lock")) into .venv"
      "$repo/.venv/bin/pip" install -q --require-hashes -r "$lock"
      log "installing territoire-data${extras:+[$extras]} into .venv"
      "$repo/.venv/bin/pip" install -q --no-deps -e "$target"
    else
      log "installing territoire-data${extras:+[$extras]} into .venv"
      "$repo/.venv/bin/pip" install -q -e "$target"
    fi
    touch "$stamp"
  fi
}
