"""Every knob of the platform, read from TERRITOIRE_* environment variables (or a .env file)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from territoire_data.dsn import DatabaseUrlError, parse_database_url
from territoire_data.errors import ConfigurationError

ENV_PREFIX = "TERRITOIRE_"
# A checkout's root (src/territoire_data/settings.py -> the repository): where scripts/quickstart keeps .env.
PROJECT_ENV = str(Path(__file__).resolve().parents[2] / ".env")
# Public-key signatures only: `none` and the HMAC family (HS*) can never be configured, so a token cannot be
# "signed" with the issuer's public key used as an HMAC secret.
OIDC_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
PLATFORM_ROLES = ("admin", "publisher", "reader")


class Settings(BaseSettings):
    """Platform settings; built once in an entry point and passed down, never read at import time."""

    # The project's .env (written by scripts/quickstart) wherever the command runs from, then the current folder's,
    # which wins; environment variables win over both.
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=(PROJECT_ENV, ".env"), env_file_encoding="utf-8", extra="ignore"
    )

    database_url: str = Field(
        description="postgresql://user:password@host:5432/dbname; several hosts (a Patroni cluster) as "
        "host1:5432,host2:5432: new connections go to the one that accepts writes"
    )
    database_read_url: str | None = Field(
        default=None,
        description="hot standbys for the read doors (one or several hosts); unset: reads go to the primary",
    )
    read_max_lag_ms: int = Field(
        default=5_000, ge=0, description="a standby further behind than this is left aside: reads go to the primary"
    )
    db_failover_wait_seconds: float = Field(
        default=20.0,
        ge=0,
        le=300,
        description="how long a request or a batch waits for the database to come back (failover) before failing",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="addresses or networks (CIDR) of reverse proxies whose X-Forwarded-For is believed",
    )
    mqtt_url: str = Field(default="mqtt://127.0.0.1:1883", description="mqtt:// or mqtts://user:pass@host:port")
    mqtt_ca_file: str | None = None
    mqtt_cert_file: str | None = None
    mqtt_key_file: str | None = None
    base_url: str = Field(default="http://127.0.0.1:8000", description="public URL used in links")

    db_pool_size: int = Field(default=10, ge=1, le=500)
    db_max_overflow: int = Field(default=5, ge=0, le=500)
    db_statement_timeout_ms: int = Field(default=30_000, ge=0)
    db_jit: bool = Field(
        default=False,
        description="PostgreSQL's JIT compilation for the API's queries (bulk imports keep the server's setting). "
        "Off: they are short, and "
        "compiling costs 50-100 ms each time a plan's estimated cost crosses jit_above_cost (measured: 2 ms → "
        "100 ms for the latest 100 of 10 M Observations)",
    )

    ingest_batch_size: int = Field(default=5_000, ge=1, le=1_000_000)
    ingest_batch_ms: int = Field(default=200, ge=1, le=60_000)
    ingest_max_payload_bytes: int = Field(default=256 * 1024, ge=1)

    max_body_bytes: int = Field(default=10 * 1024 * 1024, ge=1024, description="request body limit")
    max_upload_bytes: int = Field(default=1024 * 1024 * 1024, ge=1024, description="file upload limit")
    rate_limit_per_minute: int = Field(default=1200, ge=0, description="per IP without a key; 0 disables")
    rate_limit_key_per_minute: int = Field(default=6000, ge=1, description="per API key")
    shared_limits_file: str | None = Field(
        default=None,
        description="set by `serve` for its workers: the shared-memory table of rate-limit counters (not a setting)",
    )
    catalog_title: str = Field(default="Données ouvertes du territoire", max_length=300)
    territory_name: str = Field(
        default="Territoire de démonstration",
        min_length=1,
        max_length=140,
        description="the territory (commune, métropole…) this platform serves; names the publisher by default",
    )
    catalog_publisher: str = Field(
        default="",
        max_length=140,
        description="the local government publishing (DCAT-AP requires one); empty: the territory's name",
    )
    catalog_publisher_siret: str | None = Field(default=None, pattern=r"^\d{14}$")
    default_licence: Literal["etalab-2.0", "odbl-1.0", "cc-by-4.0", "cc-by-sa-4.0"] | None = Field(
        default=None, description="licence given at publication to a dataset that has none"
    )
    oidc_client_id: str | None = Field(
        default=None, description="the back-office's public OpenID Connect client (authorization code + PKCE)"
    )
    basemap: str = Field(
        default="none",
        description="the maps' background: none (offline, nothing outside the platform), ign (the Géoplateforme's "
        "Plan IGN vector tiles, an opt-in) or the https URL of a MapLibre style the city serves itself",
    )
    admin_session_hours: int = Field(default=8, ge=1, le=168, description="a back-office session lasts this long")
    portal_refresh_seconds: int = Field(
        default=60, ge=0, le=86_400, description="the portal's sensor charts fetch new values this often (0: never)"
    )
    indicators_live: bool = Field(
        default=True,
        description="API processes recompute the indicator periods new data touched, as PostgreSQL notifies them",
    )
    sta_default_top: int = Field(default=100, ge=1, le=100_000, description="SensorThings page size by default")
    sta_max_top: int = Field(default=10_000, ge=1, le=1_000_000, description="largest SensorThings $top honoured")
    sta_count_exact_limit: int = Field(
        default=1_000_000, ge=0, description="$count above this planner estimate is answered with the estimate"
    )
    sta_mqtt_publish: bool = Field(
        default=True,
        description="the SensorThings MQTT bridge (territoire-data sta-mqtt) runs: advertise MQTT in the service root",
    )
    sta_mqtt_select_topics: list[str] = Field(
        default_factory=list,
        description="$select topics the MQTT bridge always publishes, e.g. v1.1/Observations?$select=result",
    )
    ngsild_default_limit: int = Field(default=20, ge=1, le=10_000, description="NGSI-LD page size by default")
    ngsild_max_limit: int = Field(default=1000, ge=1, le=100_000, description="largest NGSI-LD `limit` honoured")
    ngsild_context_allow: list[str] = Field(
        default_factory=list,
        description="URL prefixes of user @contexts the NGSI-LD door may fetch (cached); others must be stored first",
    )
    ngsild_notifier: bool = Field(
        default=True, description="an API process delivers NGSI-LD notifications (one at a time, by a lock)"
    )
    ngsild_notify_retries: int = Field(default=5, ge=0, le=100, description="delivery attempts of a notification")
    max_url_length: int = Field(default=8192, ge=256, le=65_536, description="path and query string, in bytes")
    filter_max_nodes: int = Field(default=500, ge=1, description="nodes of the filters of one request")
    filter_max_depth: int = Field(default=32, ge=1, le=200, description="nesting of a filter expression")
    filter_max_literal_length: int = Field(default=4096, ge=1, description="characters of a filter literal")
    filter_max_coordinates: int = Field(default=5000, ge=1, description="numbers in a filter's geometries")
    sort_max_keys: int = Field(default=8, ge=1, description="keys of sortby / $orderby / order_by")
    sta_max_expand_depth: int = Field(default=4, ge=1, le=20, description="levels of a SensorThings $expand")
    sta_max_expand_items: int = Field(default=20, ge=1, description="navigations expanded by one request")
    rejection_retention_days: int = Field(
        default=30, ge=1, le=3650, description="rejections older than this are purged by `territoire-data maintain`"
    )
    import_max_bytes: int = Field(default=2 * 1024**3, ge=1, description="largest accepted upload")

    oidc_issuer: str | None = Field(
        default=None, description="OpenID Connect issuer (e.g. https://sso.ville.fr/realms/ville): Bearer JWTs accepted"
    )
    oidc_audience: str | None = Field(default=None, description="the `aud` every token must carry (required)")
    oidc_jwks_url: str | None = Field(default=None, description="default: jwks_uri of the issuer's discovery document")
    oidc_jwks_file: str | None = Field(default=None, description="a JWKS file instead of fetching (offline setups)")
    oidc_roles_claim: str = Field(default="realm_access.roles", description="dotted path of the roles list in a token")
    oidc_role_map: dict[str, str] = Field(
        default_factory=lambda: {
            "territoire-admin": "admin",
            "territoire-publisher": "publisher",
            "territoire-reader": "reader",
        },
        description="IdP role name -> admin|publisher|reader (JSON)",
    )
    oidc_dataset_role_prefix: str = Field(
        default="dataset:", min_length=1, description="roles `<prefix><slug>:read|write` grant datasets"
    )
    oidc_algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    oidc_leeway_seconds: int = Field(default=30, ge=0, le=300, description="clock skew allowed on exp/nbf/iat")
    oidc_jwks_cache_seconds: int = Field(default=600, ge=10, le=86_400, description="how long fetched keys are kept")
    oidc_http_timeout_seconds: float = Field(default=3.0, gt=0, le=30, description="discovery and JWKS fetches")

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False
    cors_origins: list[str] = Field(default_factory=list)

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        try:
            parse_database_url(value)
        except DatabaseUrlError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("database_read_url")
    @classmethod
    def _check_database_read_url(cls, value: str | None) -> str | None:
        return cls._check_database_url(value) if value and value.strip() else None

    @field_validator("trusted_proxies")
    @classmethod
    def _check_trusted_proxies(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network (e.g. 127.0.0.1, 10.0.0.0/24)") from None
        return value

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("mqtt", "mqtts", "tcp", "ssl"):
            raise ValueError("must start with mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError("must name a host, e.g. mqtt://127.0.0.1:1883")
        try:
            parts.port  # noqa: B018 - raises on a malformed port
        except ValueError as exc:
            raise ValueError("has a malformed port") from exc
        return value

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an absolute http(s) URL, e.g. https://data.example.fr")
        return value.rstrip("/")

    @field_validator("oidc_issuer", "oidc_jwks_url")
    @classmethod
    def _check_oidc_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be an absolute http(s) URL, e.g. https://sso.ville.fr/realms/ville")
        return value.strip()

    @field_validator("basemap")
    @classmethod
    def _check_basemap(cls, value: str) -> str:
        value = value.strip()
        if value in ("none", "ign"):
            return value
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("must be none, ign or the http(s) URL of a MapLibre style JSON")
        return value

    @field_validator("oidc_algorithms")
    @classmethod
    def _check_oidc_algorithms(cls, value: list[str]) -> list[str]:
        wrong = [alg for alg in value if alg not in OIDC_ALGORITHMS]
        if wrong or not value:
            raise ValueError(f"must be a non-empty list of {', '.join(OIDC_ALGORITHMS)} (not {wrong})")
        return value

    @field_validator("oidc_role_map")
    @classmethod
    def _check_oidc_role_map(cls, value: dict[str, str]) -> dict[str, str]:
        wrong = sorted({role for role in value.values() if role not in PLATFORM_ROLES})
        if wrong:
            raise ValueError(f"maps to unknown roles {wrong}: use {', '.join(PLATFORM_ROLES)}")
        return value

    @model_validator(mode="after")
    def _default_publisher(self) -> Settings:
        # DCAT-AP's catalog needs a dct:publisher: never left empty, the territory publishes by default
        if not self.catalog_publisher.strip():
            self.catalog_publisher = self.territory_name.strip()
        return self

    @model_validator(mode="after")
    def _check_oidc(self) -> Settings:
        if self.oidc_issuer and not self.oidc_audience:
            raise ValueError(
                "TERRITOIRE_OIDC_AUDIENCE must be set with TERRITOIRE_OIDC_ISSUER: tokens of other clients are refused"
            )
        if self.oidc_jwks_url and self.oidc_jwks_file:
            raise ValueError("set TERRITOIRE_OIDC_JWKS_URL or TERRITOIRE_OIDC_JWKS_FILE, not both")
        return self

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL in the form SQLAlchemy's asyncpg dialect wants (several hosts as `host=`; with
        several, `target_session_attrs=read-write` unless the URL says otherwise)."""
        return parse_database_url(self.database_url).for_role("write").sqlalchemy("asyncpg")

    @property
    def asyncpg_dsn(self) -> str:
        """The database URL in the form asyncpg wants (libpq's; the primary when several hosts are named)."""
        return parse_database_url(self.database_url).for_role("write").libpq()

    @property
    def sqlalchemy_read_url(self) -> str | None:
        """The standbys' URL for SQLAlchemy's asyncpg dialect, or None if unset."""
        if not self.database_read_url:
            return None
        return parse_database_url(self.database_read_url).for_role("read").sqlalchemy("asyncpg")

    @property
    def asyncpg_read_dsn(self) -> str | None:
        """The standbys' URL for asyncpg (`prefer-standby` with several hosts unless said), or None if unset."""
        if not self.database_read_url:
            return None
        return parse_database_url(self.database_read_url).for_role("read").libpq()

    def redacted_database_url(self) -> str:
        """The database URL without its password, fit for logs."""
        return parse_database_url(self.database_url).redacted()


def redact_url(url: str) -> str:
    """Hide the password of a URL (for logs and messages)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def load_settings(**overrides: object) -> Settings:
    """Build settings, turning a validation failure into one clear line that names the variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else "?"
        variable = ENV_PREFIX + field.upper()
        if not first["loc"]:  # a rule across settings names its variables itself
            message = first["msg"].removeprefix("Value error, ")
        elif first["type"] == "missing":
            message = f"{variable} is not set"
        else:
            message = f"{variable} is invalid: {first['msg'].removeprefix('Value error, ')}"
        more = len(exc.errors()) - 1
        if more:
            message += f" (and {more} more setting{'s' if more > 1 else ''} wrong)"
        raise ConfigurationError(message) from None


# The Géoplateforme's (IGN) "Plan IGN" vector style: an explicit opt-in (TERRITOIRE_BASEMAP=ign), never a default.
IGN_STYLE = "https://data.geopf.fr/annexes/ressources/vectorTiles/styles/PLAN.IGN/standard.json"
IGN_ATTRIBUTION = "Fond de carte © IGN – Géoplateforme (Plan IGN)"


def basemap_style(settings: Settings) -> tuple[str | None, str | None]:
    """(style URL, attribution) of the maps' background; (None, None) for none (a plain colour, offline)."""
    if settings.basemap == "none":
        return None, None
    if settings.basemap == "ign":
        return IGN_STYLE, IGN_ATTRIBUTION
    return settings.basemap, None


def basemap_origins(settings: Settings) -> tuple[str, ...]:
    """The origins the browser must reach for the basemap (added to the CSP); none by default."""
    style, _ = basemap_style(settings)
    if style is None:
        return ()
    parts = urlsplit(style)
    return (f"{parts.scheme}://{parts.netloc}",)
