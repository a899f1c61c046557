//! One typed configuration, read from a TOML file with every key overridable by an
//! environment variable (`OIP_` + the key path in upper case, `__` between levels:
//! `OIP_LISTEN`, `OIP_TLS__CA`, `OIP_LIMITS__MAX_BATCH_RECORDS`), validated once at
//! start. Bad configuration stops start-up with a message naming the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

use crate::domain::fees::{BaseRate, FloatRate};
use crate::domain::ids::CreditCode;
use crate::domain::period::Period;
use crate::domain::platform::DeliveryTier;
use crate::identity::Principal;
use crate::reference::Reference;
use crate::store::PlatformRegistration;
use crate::validate::Bounds;
use crate::vault::Vault;

/// The default configuration file, relative to the working directory.
pub const DEFAULT_PATH: &str = "config/oip-gateway.toml";

/// The public demo keys of the shipped configuration (never for real data).
const DEMO_PII_KEY: &str = "5f1c0e9a3b7d24c6a8e0f2b4d6c8a0e2f4b6d8c0a2e4f6b8d0c2a4e6f8b0d2c4";
const DEMO_LOOKUP_KEY: &str = "a3c5e7f9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7d9f1a3c5e7b9d1f3a5";
/// The example CA and server certificate of `certs-example/`.
const DEMO_CA: &str = include_str!("../certs-example/ca.pem");
const DEMO_SERVER_CERT: &str = include_str!("../certs-example/server.pem");
/// The example keys (published, so never worth a permission warning).
const DEMO_SERVER_KEY: &str = include_str!("../certs-example/server.key");
const DEMO_GATEWAY_KEY: &str = include_str!("../certs-example/gateway.key");

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the gRPC listener (port 0 picks a free port); default
    /// `127.0.0.1:50051`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// `sqlite:PATH` (the embedded default; created with its directory if missing,
    /// one gateway process) or `postgres://user@host:port/database` (several
    /// replicas may share it). `OIP_DATABASE_URL` overrides it. Default
    /// `sqlite:data/oip.db`.
    #[serde(default = "default_database_url")]
    pub database_url: String,
    /// PostgreSQL only: the connection pool of each replica and the lease of an
    /// outbox item claimed for delivery.
    #[serde(default)]
    pub database: crate::store::StoreOptions,
    /// Default: the example certificates of `certs-example/` (announced at start).
    #[serde(default)]
    pub tls: TlsFiles,
    #[serde(default)]
    pub reference: ReferenceConfig,
    #[serde(default)]
    pub limits: Limits,
    /// Connection, stream and per-caller call limits of the gateway port.
    #[serde(default)]
    pub connections: crate::connections::ConnectionLimits,
    /// Default rates per caller identity (administrators may set others per identity).
    #[serde(default)]
    pub rate_limits: crate::admission::RateLimits,
    /// The operations listener (`/live`, `/ready`, `/metrics`).
    #[serde(default)]
    pub operations: crate::ops::OperationsConfig,
    /// Log format (`text` or `json`).
    #[serde(default)]
    pub logging: crate::telemetry::LoggingConfig,
    #[serde(default)]
    pub fees: FeesConfig,
    #[serde(default)]
    pub accidents: AccidentsConfig,
    #[serde(default)]
    pub forward: ForwardConfig,
    #[serde(default)]
    pub audit: AuditConfig,
    /// How long a platform caller's grants and registration are kept in memory.
    #[serde(default)]
    pub access: AccessConfig,
    /// Keys sealing personal data in the database.
    #[serde(default)]
    pub pii: PiiConfig,
    /// Identity URIs (`oip://admin/<name>`) granted the admin role at every start:
    /// the first administrators, who grant everyone else.
    #[serde(default)]
    pub admins: Vec<String>,
    /// Platforms registered (and granted) at start.
    #[serde(default)]
    pub platforms: Vec<PlatformSeed>,
    /// Grants made at every start (the configuration owns them), e.g. the example tax
    /// office and social-security agency of `certs-example/`.
    #[serde(default)]
    pub grants: Vec<GrantSeed>,
    /// Listen beyond loopback although the demo personal-data keys or the demo
    /// certificates are in use (never for real data). Default false: refused.
    #[serde(default)]
    pub allow_demo_beyond_loopback: bool,
}

/// A grant made at start: `identity` (`oip://<role>/<subject>`) holds `role` over each
/// of `scopes` (division codes for tax and social security, the USCC for a platform,
/// `*` for an administrator), with no expiry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GrantSeed {
    pub identity: String,
    pub role: String,
    pub scopes: Vec<String>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 50051))
}

fn default_database_url() -> String {
    "sqlite:data/oip.db".to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TlsFiles {
    /// CA that client certificates must chain to.
    pub ca: PathBuf,
    /// The server's certificate chain and private key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificate revocation lists (PEM or DER files) checked on every handshake,
    /// for the whole client chain; reloaded without a restart on SIGHUP and when a
    /// file changes. Default none.
    pub crls: Vec<PathBuf>,
    /// How often `ca`, `cert`, `key` and `crls` are checked for changes, in seconds
    /// (default 5; a changed file is reloaded without a restart, as on SIGHUP).
    pub reload_check_secs: u64,
}

impl Default for TlsFiles {
    fn default() -> Self {
        Self {
            ca: "certs-example/ca.pem".into(),
            cert: "certs-example/server.pem".into(),
            key: "certs-example/server.key".into(),
            crls: Vec::new(),
            reload_check_secs: 5,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ReferenceConfig {
    /// CSV replacing the shipped `reference/divisions.csv`.
    pub divisions_file: Option<PathBuf>,
    /// CSV replacing the shipped `reference/industries.csv`.
    pub industries_file: Option<PathBuf>,
    /// Divisions this gateway serves (with everything under them).
    pub served_divisions: Vec<String>,
}

impl Default for ReferenceConfig {
    fn default() -> Self {
        Self {
            divisions_file: None,
            industries_file: None,
            served_divisions: vec!["320000".to_string()],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Records in one unary batch call; more is INVALID_ARGUMENT.
    pub max_batch_records: usize,
    /// Records in one client stream.
    pub max_stream_records: usize,
    /// Largest gRPC message accepted, in bytes.
    pub max_message_bytes: usize,
    /// Largest request metadata (HTTP/2 header list) accepted, in bytes; a request with
    /// more is refused by the HTTP/2 layer before any handler runs.
    pub max_header_bytes: u32,
    /// Largest listing page sent, in encoded bytes (pages are cut at it as well as at
    /// their item count, so a page always fits in a message).
    pub max_page_bytes: usize,
    /// How far in the future a record's time may be (clock skew), in seconds.
    pub max_future_secs: i64,
    /// No record time (registration, order, accident) may be earlier (INVALID_TIME):
    /// catches epoch seconds sent as milliseconds, which land in 1970. The spec leaves
    /// the bound open; default 2000-01-01T00:00:00+08:00 (workers may have registered
    /// with their platform years before the scheme).
    pub earliest_time: chrono::DateTime<chrono::FixedOffset>,
    /// No declaration may be for an earlier month (INVALID_PERIOD); default 2022-07,
    /// the scheme's first month (domain.md, Timeline).
    pub earliest_period: Period,
    /// Longest order from accepted_at to completed_at, in hours (INVALID_TIME_RANGE);
    /// default 72 (intra-city work; the spec leaves it open).
    pub max_order_hours: u32,
}

impl Limits {
    /// The bounds of plausible record values that `validate` applies.
    pub fn bounds(&self) -> Bounds {
        Bounds {
            max_future_ms: self.max_future_secs * 1000,
            earliest: self.earliest_time.timestamp_millis(),
            earliest_period: self.earliest_period,
            max_order_ms: i64::from(self.max_order_hours) * 3_600_000,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        let bounds = Bounds::default();
        Self {
            max_batch_records: 10_000,
            max_stream_records: 100_000,
            max_message_bytes: 16 * 1024 * 1024,
            max_page_bytes: 4 * 1024 * 1024,
            max_header_bytes: 16 * 1024,
            max_future_secs: 300,
            earliest_time: chrono::DateTime::from_timestamp_millis(bounds.earliest)
                .unwrap_or_default()
                .with_timezone(&crate::domain::time::shanghai()),
            earliest_period: bounds.earliest_period,
            max_order_hours: u32::try_from(bounds.max_order_ms / 3_600_000).unwrap_or(72),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct FeesConfig {
    /// CSV of base amounts replacing the shipped `reference/base-rates.csv`.
    pub base_rates_file: Option<PathBuf>,
    /// CSV of float multipliers replacing the shipped `reference/floats.csv`.
    pub floats_file: Option<PathBuf>,
    /// A declaration received after the end of this day of the following month is late
    /// (UNCONFIRMED nationally; default the 15th).
    pub declaration_deadline_day: u32,
}

impl Default for FeesConfig {
    fn default() -> Self {
        Self {
            base_rates_file: None,
            floats_file: None,
            declaration_deadline_day: 15,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AccidentsConfig {
    /// An accident more than this before accepted_at or after completed_at is accepted
    /// with ACCIDENT_OUTSIDE_ORDER_WINDOW (default 2 hours, for return trips).
    pub window_margin_minutes: i64,
}

impl Default for AccidentsConfig {
    fn default() -> Self {
        Self {
            window_margin_minutes: 120,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardConfig {
    /// Deliver to the backends at all.
    pub enabled: bool,
    /// Start the backend simulator inside the gateway and deliver to it (demo and
    /// tests; the shipped configuration sets it). Default false: with forwarding
    /// enabled, the two endpoints must be set, and there is no fallback.
    pub simulate: bool,
    /// `https://host:port` of the social-security backend (both or neither with
    /// `simulate`).
    pub social_security_endpoint: Option<String>,
    pub tax_endpoint: Option<String>,
    /// Server name the backends' certificates are checked against.
    pub backend_domain: String,
    /// CA of the backends' certificates.
    pub backend_ca: PathBuf,
    /// The gateway's own client certificate and key towards the backends.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The embedded simulator's database; unset: `backend-sim.db` beside the gateway's.
    pub simulator_database_url: Option<String>,
    /// Items per Deliver call, at most (also cut at 3 MiB of payload). 2000: with
    /// fewer, a destination's backlog drained slower than one platform ingests; with
    /// more the gateway's peak memory passed 150 MB (issue 13's benchmark, each call
    /// pipelined with the recording of the last: on 200k orders 500 delivered 0.71 of
    /// the queued rate, 2000 0.85; on 1M orders 2000 delivered 0.95 at 141 MB peak,
    /// 3000 1.00 at 156 MB).
    pub batch_size: u32,
    /// How long a call of fewer than `batch_size` items (and under half of the 3 MiB a
    /// call may carry) waits for more, in milliseconds (0: send at once). 50: live single-order traffic reaches the
    /// backend in calls of hundreds of items instead of one call and one recorded
    /// settlement per ingest transaction, which took a third of the gateway's unary
    /// throughput (issue 13: 4,019 orders/s with forwarding, 6,091 without).
    pub linger_ms: u64,
    /// Refusals (INVALID) before an item is dead-lettered.
    pub max_attempts: u32,
    pub request_timeout_ms: u64,
    pub min_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub invalid_retry_ms: u64,
    pub queue_report_secs: u64,
    /// When a month's volume statements go to tax: `on_declaration` (the platform's
    /// first declaration for it, or the declaration deadline without one) or
    /// `after_month_end` (`statement_release_days` after the month ends).
    pub statement_release: StatementRelease,
    pub statement_release_days: u32,
    /// How often months due for release are looked for (also after every batch).
    pub release_poll_secs: u64,
}

impl ForwardConfig {
    /// The real backends' endpoints (social security, tax), or `None` when neither is
    /// set (the embedded simulator then receives both). Errors: only one set (the
    /// other would silently go to the simulator), or an endpoint not `https://host:port`.
    pub fn backends(&self) -> Result<Option<(String, String)>, ConfigError> {
        let check = |key: &str, endpoint: &str| -> Result<String, ConfigError> {
            let uri: http::Uri = endpoint.parse().map_err(|_| {
                invalid(
                    key,
                    format!("{endpoint:?} is not a URL; use https://host:port"),
                )
            })?;
            if uri.scheme_str() != Some("https") {
                return Err(invalid(
                    key,
                    format!(
                        "{endpoint:?}: the backends are reached over mutual TLS only; use https://host:port"
                    ),
                ));
            }
            if uri.host().is_none_or(str::is_empty) || uri.port().is_none() {
                return Err(invalid(key, format!("{endpoint:?}: use https://host:port")));
            }
            Ok(endpoint.to_string())
        };
        match (&self.social_security_endpoint, &self.tax_endpoint) {
            (None, None) if self.simulate => Ok(None),
            (None, None) => Err(invalid(
                "forward",
                "no backends are set: set forward.social_security_endpoint and forward.tax_endpoint (https://host:port), or forward.simulate = true for the embedded simulator (demo and tests), or forward.enabled = false",
            )),
            (Some(ss), Some(tax)) => {
                let both = (
                    check("forward.social_security_endpoint", ss)?,
                    check("forward.tax_endpoint", tax)?,
                );
                if self.simulate {
                    return Err(invalid(
                        "forward.simulate",
                        "is true while the backend endpoints are set: choose one (remove the endpoints, or set simulate = false)",
                    ));
                }
                Ok(Some(both))
            }
            (Some(_), None) => Err(invalid(
                "forward.tax_endpoint",
                "is not set while forward.social_security_endpoint is: set both (real backends) or neither (with forward.simulate = true)",
            )),
            (None, Some(_)) => Err(invalid(
                "forward.social_security_endpoint",
                "is not set while forward.tax_endpoint is: set both (real backends) or neither (with forward.simulate = true)",
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StatementRelease {
    OnDeclaration,
    AfterMonthEnd,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            simulate: false,
            social_security_endpoint: None,
            tax_endpoint: None,
            backend_domain: "localhost".into(),
            backend_ca: "certs-example/ca.pem".into(),
            client_cert: "certs-example/gateway.pem".into(),
            client_key: "certs-example/gateway.key".into(),
            simulator_database_url: None,
            batch_size: 2000,
            linger_ms: 50,
            max_attempts: 5,
            request_timeout_ms: 10_000,
            min_backoff_ms: 100,
            max_backoff_ms: 30_000,
            invalid_retry_ms: 60_000,
            queue_report_secs: 30,
            statement_release: StatementRelease::OnDeclaration,
            statement_release_days: 5,
            release_poll_secs: 60,
        }
    }
}

/// Keys of personal data at rest (README, "Personal data at rest"). Secrets: never
/// printed (Debug shows key ids only).
#[derive(Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PiiConfig {
    /// Key id → key as 64 hex digits (32 bytes). Keys no longer current stay listed
    /// until every value sealed under them was re-sealed (logged at start).
    pub keys: BTreeMap<String, String>,
    /// The id of the key that seals new values.
    pub current_key: String,
    /// 64 hex digits: the key of lookup hashes. Never changes (stored hashes depend on
    /// it).
    pub lookup_key: String,
}

impl std::fmt::Debug for PiiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PiiConfig")
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .field("current_key", &self.current_key)
            .field("lookup_key", &"<redacted>")
            .finish()
    }
}

impl PiiConfig {
    /// Fixed keys for tests (never for real data).
    pub fn for_test() -> Self {
        Self {
            keys: BTreeMap::from([("test".to_string(), "07".repeat(32))]),
            current_key: "test".into(),
            lookup_key: "09".repeat(32),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Audit entries older than this are removed (the chain then starts at the
    /// newest removed entry, kept as its anchor).
    pub retention_days: u32,
}

/// The access check's cache (`[access]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// A platform caller's grants and registration are read from the store at most once
    /// in this many milliseconds (0: on every call). A change made through this
    /// gateway's AdminService applies at once; one made through another replica within
    /// this time. Expiry of a grant is checked on every call.
    pub cache_ms: u64,
}

impl Default for AccessConfig {
    fn default() -> Self {
        Self { cache_ms: 1000 }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention_days: 180,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlatformSeed {
    pub uscc: String,
    pub name: String,
    pub industries: Vec<String>,
    /// Divisions where the platform is in the pilot; `["*"]` means every served city.
    pub divisions: Vec<String>,
    /// Pilot start for every listed division (Asia/Shanghai date)...
    pub pilot_start: NaiveDate,
    /// ...except these, division code → date.
    #[serde(default)]
    pub pilot_start_overrides: BTreeMap<String, NaiveDate>,
    /// Instant-delivery fee tier, A or B...
    #[serde(default = "tier_a")]
    pub delivery_tier: String,
    /// ...except in these divisions (a city, or a province), division code → tier.
    #[serde(default)]
    pub delivery_tier_overrides: BTreeMap<String, String>,
}

fn tier_a() -> String {
    "A".to_string()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Parse(Box<figment::Error>),
    #[error("configuration key {key}: {reason}")]
    Invalid { key: String, reason: String },
    #[error("configuration file {0}")]
    File(String),
}

/// A figment error as the key (`limits.max_future_secs`, without figment's profile
/// name), where the value came from (the file or an `OIP_*` variable), why, and for
/// addresses the form expected.
fn parse_error(e: figment::Error) -> ConfigError {
    let Some(first) = e.into_iter().next() else {
        return invalid("configuration", "cannot be read");
    };
    let key = first
        .path
        .iter()
        .filter(|p| p.as_str() != "default")
        .cloned()
        .collect::<Vec<_>>()
        .join(".");
    let from = first
        .metadata
        .as_ref()
        .map(|m| match &m.source {
            Some(figment::Source::File(f)) => format!(" (in {})", f.display()),
            _ => format!(" (from the {})", m.name),
        })
        .unwrap_or_default();
    let hint = if key == "listen" {
        ": expected an IP address and port, e.g. 127.0.0.1:50051 or [::1]:50051 (host names such as localhost are not resolved; port 1 to 65535, 0 picks a free one)"
    } else {
        ""
    };
    if key.is_empty() {
        return ConfigError::Parse(Box::new(first));
    }
    invalid(key, format!("{}{from}{hint}", first.kind))
}

fn file_problem(p: crate::tls::FileProblem) -> ConfigError {
    invalid(p.key, format!("{} {}", p.path.display(), p.reason))
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

impl Config {
    /// Reads `path` and the `OIP_*` environment, then validates.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        if !path.exists() {
            let cwd = std::env::current_dir()
                .map(|d| format!(" (relative paths start at {})", d.display()))
                .unwrap_or_default();
            return Err(ConfigError::File(format!(
                "{} not found{cwd}: run from the repository's root, or name the file with --config FILE (or OIP_CONFIG)",
                path.display()
            )));
        }
        Self::from_figment(
            Figment::new()
                .merge(Toml::file(path))
                .merge(Self::environment()),
        )
    }

    /// The `OIP_*` variables that name configuration keys. Other `OIP_` variables
    /// (`OIP_CONFIG`, the client's `OIP_ENDPOINT`) are not configuration and are left alone.
    fn environment() -> Env {
        // The top-level keys, read off the struct itself so that a new section is
        // settable by environment without a list to keep up to date.
        let top_level: Vec<String> = serde_json::to_value(Config::for_test(
            String::new(),
            TlsFiles::default(),
            Vec::new(),
        ))
        .ok()
        .and_then(|v| v.as_object().map(|o| o.keys().cloned().collect()))
        .unwrap_or_default();
        Env::prefixed("OIP_").split("__").filter(move |key| {
            // The key may arrive as `limits__x` or, once split, as `limits.x`.
            let first = key
                .as_str()
                .split("__")
                .next()
                .unwrap_or("")
                .split('.')
                .next()
                .unwrap_or("");
            top_level.iter().any(|k| first.eq_ignore_ascii_case(k))
        })
    }

    /// Extracts and validates from any figment (tests build one without touching the
    /// process environment).
    pub fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment.extract().map_err(parse_error)?;
        config.validate()?;
        Ok(config)
    }

    /// A configuration for tests: port 0, the given database and TLS files, the
    /// shipped reference data, the given platforms.
    pub fn for_test(database_url: String, tls: TlsFiles, platforms: Vec<PlatformSeed>) -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url,
            database: crate::store::StoreOptions::default(),
            tls,
            reference: ReferenceConfig::default(),
            limits: Limits::default(),
            connections: crate::connections::ConnectionLimits::default(),
            rate_limits: crate::admission::RateLimits::default(),
            logging: crate::telemetry::LoggingConfig::default(),
            operations: crate::ops::OperationsConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                ..crate::ops::OperationsConfig::default()
            },
            fees: FeesConfig::default(),
            accidents: AccidentsConfig::default(),
            forward: ForwardConfig {
                simulate: true,
                ..ForwardConfig::default()
            },
            audit: AuditConfig::default(),
            access: AccessConfig::default(),
            pii: PiiConfig::for_test(),
            admins: vec!["oip://admin/root".into()],
            platforms,
            grants: Vec::new(),
            allow_demo_beyond_loopback: false,
        }
    }

    /// The parts of the demo setup in use (the public personal-data keys, the example
    /// certificates): never for real data. Empty for a production configuration.
    pub fn demo_parts(&self) -> Vec<&'static str> {
        let mut parts = Vec::new();
        if self.pii.keys.values().any(|k| k == DEMO_PII_KEY) {
            parts.push("the demo personal-data key (pii.keys)");
        }
        if self.pii.lookup_key == DEMO_LOOKUP_KEY {
            parts.push("the demo lookup key (pii.lookup_key)");
        }
        // Certificate by certificate: a bundle that also holds the demo CA trusts every
        // published demo certificate.
        let demo: Vec<_> = [DEMO_CA, DEMO_SERVER_CERT]
            .iter()
            .flat_map(|pem| {
                let mut pem = pem.as_bytes();
                rustls_pemfile::certs(&mut pem)
                    .filter_map(Result::ok)
                    .collect::<Vec<_>>()
            })
            .collect();
        let holds_demo = |path: &Path| {
            crate::tls::read_certificates("", path)
                .is_ok_and(|certs| certs.iter().any(|c| demo.contains(c)))
        };
        if holds_demo(&self.tls.ca) || holds_demo(&self.tls.cert) {
            parts.push("the example certificates of certs-example/ (tls.*)");
        }
        parts
    }

    /// What is allowed but probably wrong, one sentence each with what to do (logged as
    /// warnings at every start): no administrator, a private key readable by others,
    /// the server certificate expiring within 30 days.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.admins.is_empty() {
            out.push("no administrator is configured (admins = []): nobody can grant, register or replay; add admins = [\"oip://admin/<name>\"]".to_string());
        }
        if self.forward.enabled && self.forward.simulate {
            out.push("forward.simulate = true: deliveries go to the embedded backend simulator, not to the tax and social-security backends (set forward.*_endpoint for real ones)".to_string());
        }
        let mut keys = vec![("tls.key", &self.tls.key)];
        if self.forward.enabled && matches!(self.forward.backends(), Ok(Some(_))) {
            keys.push(("forward.client_key", &self.forward.client_key));
        }
        for (key, path) in keys {
            // The demo keys are published anyway (and announced as such).
            let published = std::fs::read_to_string(path)
                .is_ok_and(|k| [DEMO_SERVER_KEY, DEMO_GATEWAY_KEY].contains(&k.as_str()));
            if !published && let Some(why) = crate::tls::key_too_open(key, path) {
                out.push(why);
            }
        }
        if let Ok(pair) = crate::tls::check_pair(
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
            crate::tls::Purpose::Server,
        ) && pair.expires_in_secs < 30 * 24 * 3600
        {
            out.push(format!(
                "tls.cert {} expires in {} days: renew it (README, \"Going to production\")",
                self.tls.cert.display(),
                pair.expires_in_secs / (24 * 3600)
            ));
        }
        out
    }

    /// This configuration as TOML with every secret replaced by `<redacted>` (what
    /// `serve --print-config` prints).
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        for v in shown.pii.keys.values_mut() {
            *v = "<redacted>".into();
        }
        shown.pii.lookup_key = "<redacted>".into();
        shown.database_url = crate::store::redacted(&shown.database_url);
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }

    /// The same configuration as a figment layer (to merge overrides onto).
    pub fn figment(&self) -> Figment {
        Figment::from(Serialized::defaults(self))
    }

    /// The keys of personal data at rest.
    pub fn vault(&self) -> Result<Vault, ConfigError> {
        let p = &self.pii;
        if p.keys.is_empty() {
            return Err(invalid(
                "pii.keys",
                "at least one key (64 hex digits) is required: personal data is stored sealed",
            ));
        }
        let keys = p
            .keys
            .iter()
            .map(|(id, hex)| {
                crate::vault::key_bytes(id, hex)
                    .map(|k| (id.clone(), k))
                    .map_err(|e| invalid(format!("pii.keys.{id}"), e.to_string()))
            })
            .collect::<Result<BTreeMap<_, _>, _>>()?;
        let lookup = crate::vault::key_bytes("lookup_key", &p.lookup_key)
            .map_err(|e| invalid("pii.lookup_key", e.to_string()))?;
        if keys.values().any(|k| *k == lookup) {
            return Err(invalid(
                "pii.lookup_key",
                "must differ from every key in pii.keys",
            ));
        }
        Vault::new(&keys, &p.current_key, lookup)
            .map_err(|e| invalid("pii.current_key", e.to_string()))
    }

    /// Loads the reference data this configuration names.
    pub fn reference(&self) -> Result<Reference, ConfigError> {
        Reference::load(
            self.reference.divisions_file.as_deref(),
            self.reference.industries_file.as_deref(),
            &self.reference.served_divisions,
        )
        .map_err(|e| invalid("reference", e.to_string()))
    }

    /// Loads the rate tables this configuration names, stamped `recorded_at`.
    pub fn rates(&self, recorded_at: i64) -> Result<(Vec<BaseRate>, Vec<FloatRate>), ConfigError> {
        crate::reference::load_rates(
            self.fees.base_rates_file.as_deref(),
            self.fees.floats_file.as_deref(),
            recorded_at,
        )
        .map_err(|e| invalid("fees", e.to_string()))
    }

    fn validate(&self) -> Result<(), ConfigError> {
        crate::tls::check_ca("tls.ca", &self.tls.ca).map_err(file_problem)?;
        crate::tls::check_pair(
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
            crate::tls::Purpose::Server,
        )
        .map_err(file_problem)?;
        if !self.database_url.starts_with("sqlite:")
            && !crate::store::is_postgres(&self.database_url)
        {
            return Err(invalid(
                "database_url",
                "must start with sqlite: (the embedded file) or postgres:// (several replicas)",
            ));
        }
        if self.database.acquire_timeout_ms == 0 {
            return Err(invalid(
                "database.acquire_timeout_ms",
                "must be at least 1 (milliseconds a call waits for a database connection)",
            ));
        }
        if self.database.max_connections < 2 {
            return Err(invalid(
                "database.max_connections",
                "must be at least 2 (ingest and delivery each hold one)",
            ));
        }
        if self.database.lease_ms <= self.forward.request_timeout_ms {
            return Err(invalid(
                "database.lease_ms",
                format!(
                    "must be longer than forward.request_timeout_ms ({} ms): a lease that ends while its delivery runs lets another replica send the same items",
                    self.forward.request_timeout_ms
                ),
            ));
        }
        if let Some(p) = self
            .connections
            .problems()
            .into_iter()
            .chain(self.rate_limits.problems())
            .next()
        {
            let (key, reason) = p.split_once(' ').unwrap_or((&p, ""));
            return Err(invalid(key, reason));
        }
        for (i, crl) in self.tls.crls.iter().enumerate() {
            crate::tls::read_crls(crl)
                .map_err(|e| invalid(format!("tls.crls[{i}]"), e.to_string()))?;
        }
        if self.limits.max_batch_records == 0 || self.limits.max_stream_records == 0 {
            return Err(invalid("limits", "record limits must be at least 1"));
        }
        if !(1024..=self.limits.max_message_bytes / 2).contains(&self.limits.max_page_bytes) {
            return Err(invalid(
                "limits.max_page_bytes",
                "must be between 1024 and half of limits.max_message_bytes",
            ));
        }
        if self.limits.earliest_time.timestamp_millis() > crate::domain::time::now_millis() {
            return Err(invalid("limits.earliest_time", "must not be in the future"));
        }
        if !(1..=24 * 365).contains(&self.limits.max_order_hours) {
            return Err(invalid(
                "limits.max_order_hours",
                "must be between 1 and 8760",
            ));
        }
        if !(0..=3600).contains(&self.limits.max_future_secs) {
            return Err(invalid(
                "limits.max_future_secs",
                "must be between 0 and 3600",
            ));
        }
        if !self.listen.ip().is_loopback()
            && !self.allow_demo_beyond_loopback
            && !self.demo_parts().is_empty()
        {
            return Err(invalid(
                "listen",
                format!(
                    "{} is beyond loopback while the demo setup is in use ({}); replace it (README, \"Going to production\") or set allow_demo_beyond_loopback = true for a test network",
                    self.listen,
                    self.demo_parts().join(" and ")
                ),
            ));
        }
        for (i, g) in self.grants.iter().enumerate() {
            match Principal::from_uri(&g.identity) {
                Ok(p) if p.role.as_str() == g.role && !g.scopes.is_empty() => {}
                _ => {
                    return Err(invalid(
                        format!("grants[{i}]"),
                        "identity must be oip://<role>/<subject> of the same role, with at least one scope",
                    ));
                }
            }
        }
        for (i, a) in self.admins.iter().enumerate() {
            match Principal::from_uri(a) {
                Ok(p) if p.role == crate::domain::grant::Role::Admin => {}
                _ => {
                    return Err(invalid(
                        format!("admins[{i}]"),
                        "must be an oip://admin/<name> URI",
                    ));
                }
            }
        }
        if !(1..=31).contains(&self.fees.declaration_deadline_day) {
            return Err(invalid(
                "fees.declaration_deadline_day",
                "must be between 1 and 31 (31: the last day)",
            ));
        }
        if !(0..=7 * 24 * 60).contains(&self.accidents.window_margin_minutes) {
            return Err(invalid(
                "accidents.window_margin_minutes",
                "must be between 0 and 10080",
            ));
        }
        self.rates(0)?;
        self.vault()?;
        if self.forward.enabled {
            if self.forward.backends()?.is_some() {
                crate::tls::check_ca("forward.backend_ca", &self.forward.backend_ca)
                    .map_err(file_problem)?;
                crate::tls::check_pair(
                    ("forward.client_cert", &self.forward.client_cert),
                    ("forward.client_key", &self.forward.client_key),
                    crate::tls::Purpose::Client,
                )
                .map_err(file_problem)?;
            }
            if self.forward.batch_size == 0 || self.forward.max_attempts == 0 {
                return Err(invalid(
                    "forward",
                    "batch_size and max_attempts must be at least 1",
                ));
            }
        }
        let reference = self.reference()?;
        self.platform_registrations(&reference).map(|_| ())
    }

    /// The platforms to register at start, resolved against the reference data.
    pub fn platform_registrations(
        &self,
        reference: &Reference,
    ) -> Result<Vec<PlatformRegistration>, ConfigError> {
        let served_cities: Vec<String> = reference
            .divisions()
            .filter(|d| !d.is_province() && d.code.ends_with("00") && reference.serves(&d.code))
            .map(|d| d.code.clone())
            .collect();
        self.platforms
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let key = |k: &str| format!("platforms[{i}].{k}");
                CreditCode::parse(&p.uscc).map_err(|e| invalid(key("uscc"), e.to_string()))?;
                if p.industries.is_empty() {
                    return Err(invalid(key("industries"), "at least one industry"));
                }
                if let Some(bad) = p.industries.iter().find(|x| !reference.is_industry(x)) {
                    return Err(invalid(
                        key("industries"),
                        format!("unknown industry {bad}"),
                    ));
                }
                let divisions = if p.divisions.iter().any(|d| d == "*") {
                    served_cities.clone()
                } else {
                    p.divisions.clone()
                };
                if let Some(bad) = divisions
                    .iter()
                    .chain(p.pilot_start_overrides.keys())
                    .find(|d| !reference.serves(d))
                {
                    return Err(invalid(
                        key("divisions"),
                        format!("division {bad} is unknown or not served"),
                    ));
                }
                let delivery_tier = DeliveryTier::parse(&p.delivery_tier)
                    .ok_or_else(|| invalid(key("delivery_tier"), "must be A or B"))?;
                let delivery_tiers = p
                    .delivery_tier_overrides
                    .iter()
                    .map(|(d, t)| {
                        if reference.division(d).is_none() {
                            return Err(invalid(
                                key("delivery_tier_overrides"),
                                format!("unknown division {d}"),
                            ));
                        }
                        let pilot: Vec<&str> = divisions.iter().map(String::as_str).collect();
                        if let Some(why) = crate::domain::platform::tier_override_problem(d, &pilot)
                        {
                            return Err(invalid(key("delivery_tier_overrides"), why));
                        }
                        let tier = DeliveryTier::parse(t).ok_or_else(|| {
                            invalid(key("delivery_tier_overrides"), "tiers are A or B")
                        })?;
                        Ok((d.clone(), tier))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let mut pilot_starts: BTreeMap<String, NaiveDate> =
                    divisions.into_iter().map(|d| (d, p.pilot_start)).collect();
                pilot_starts.extend(p.pilot_start_overrides.clone());
                Ok(PlatformRegistration {
                    uscc: p.uscc.clone(),
                    name: p.name.clone(),
                    industries: p.industries.clone(),
                    pilot_starts: pilot_starts.into_iter().collect(),
                    delivery_tier,
                    delivery_tiers,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(p: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
    }

    /// The shipped file with paths made absolute, plus `extra` TOML on top.
    fn shipped_with(extra: &str) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(repo(DEFAULT_PATH)).unwrap_or_default();
        let certs = repo("certs-example");
        let text = text.replace("\"certs-example/", &format!("\"{}/", certs.display()));
        Config::from_figment(
            Figment::new()
                .merge(Toml::string(&text))
                .merge(Toml::string(extra)),
        )
    }

    fn key_of(e: ConfigError) -> String {
        e.to_string()
    }

    #[test]
    fn the_shipped_configuration_is_valid() {
        let c = shipped_with("").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.listen.port(), 50051);
        assert_eq!(c.platforms.len(), 2);
        let reference = c.reference().unwrap_or_else(|e| panic!("{e}"));
        let regs = c
            .platform_registrations(&reference)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(regs[0].pilot_starts.len(), 13, "all 13 Jiangsu cities");
        assert_eq!(regs[0].industries.len(), 3);
        // Every example certificate's identity can work on the embedded default.
        let granted: Vec<_> = c.grants.iter().map(|g| g.identity.as_str()).collect();
        for (_, identity) in crate::certs::CLIENTS
            .iter()
            .filter(|(stem, _)| ["tax", "social-security"].contains(stem))
        {
            assert!(granted.contains(identity), "{identity} is granted");
        }
    }

    #[test]
    fn the_demo_setup_is_named_and_kept_on_loopback() {
        let c = shipped_with("").unwrap_or_else(|e| panic!("{e}"));
        let demo = c.demo_parts();
        assert_eq!(demo.len(), 3, "{demo:?}");
        let e = shipped_with("listen = \"0.0.0.0:50051\"")
            .map(|_| ())
            .unwrap_err();
        assert!(key_of(e).contains("listen"));
        assert!(
            shipped_with("listen = \"0.0.0.0:50051\"\nallow_demo_beyond_loopback = true").is_ok()
        );
        let printed = c.redacted_toml();
        assert!(!printed.contains(DEMO_PII_KEY) && !printed.contains(DEMO_LOOKUP_KEY));
        assert!(printed.contains("<redacted>") && printed.contains("[limits]"));
        let reparsed: Result<toml::Value, _> = printed.parse();
        assert!(reparsed.is_ok(), "{printed}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("listen = \"nowhere\"", "listen"),
            ("database_url = \"mysql://x\"", "database_url"),
            (
                "[limits]\nmax_future_secs = 99999",
                "limits.max_future_secs",
            ),
            (
                "[limits]\nmax_batch_records = \"many\"",
                "max_batch_records",
            ),
            ("admins = [\"oip://platform/x\"]", "admins[0]"),
            ("[tls]\nca = \"/nonexistent/ca.pem\"", "tls.ca"),
            ("[reference]\nserved_divisions = [\"990000\"]", "reference"),
            ("unknown_key = 1", "unknown_key"),
            ("[connections]\nmax_calls = 0", "connections.max_calls"),
            ("[forward]\nsimulate = false", "forward.simulate = true"),
            (
                "[rate_limits]\ncalls_per_second = 0",
                "rate_limits.calls_per_second",
            ),
            ("[tls]\ncrls = [\"/nonexistent/crl.pem\"]", "tls.crls[0]"),
        ];
        for (toml, key) in cases {
            let err = shipped_with(toml).map(|_| ()).map_err(key_of);
            let msg = err.expect_err(toml);
            assert!(msg.contains(key), "{toml}: {msg}");
        }
    }

    #[test]
    fn mistakes_with_listen_and_keys_say_what_is_expected() {
        let msg = shipped_with("listen = \"localhost:47355\"")
            .map(|_| ())
            .map_err(key_of)
            .expect_err("a host name");
        assert!(
            msg.contains("host names such as localhost are not resolved"),
            "{msg}"
        );
        let msg = shipped_with("[pii]\nkeys = { k2026 = \"abcd\" }\ncurrent_key = \"k2026\"")
            .and_then(|c| c.vault().map(|_| ()))
            .map_err(|e| e.to_string())
            .expect_err("a short key");
        assert!(
            msg.contains("4 hex digits") && msg.contains("64 hexadecimal digits"),
            "{msg}"
        );
        let msg = shipped_with(
            "[pii]\nkeys = { k2026 = \"5f1c0e9a3b7d24c6a8e0f2b4d6c8a0e2f4b6d8c0a2e4f6b8d0c2a4e6f8b0d2c5\" }\ncurrent_key = \"\"",
        )
        .and_then(|c| c.vault().map(|_| ()))
        .map_err(|e| e.to_string())
        .expect_err("no current key");
        assert!(msg.contains("not set") && msg.contains("k2026"), "{msg}");
    }

    #[test]
    fn bad_platforms_name_their_key() {
        let base = "[[platforms]]\nname = \"X\"\nindustries = [\"INSTANT_DELIVERY\"]\ndivisions = [\"320100\"]\npilot_start = \"2025-07-01\"\n";
        let cases = [
            (
                format!("{base}uscc = \"91320100MA1DEMA011\""),
                "platforms[0].uscc",
            ),
            (
                format!(
                    "{}uscc = \"91320100MA1DEMA010\"",
                    base.replace("320100", "110100")
                ),
                "platforms[0].divisions",
            ),
            (
                format!(
                    "{}uscc = \"91320100MA1DEMA010\"",
                    base.replace("INSTANT_DELIVERY", "TAKEAWAY")
                ),
                "platforms[0].industries",
            ),
            (
                format!("{base}uscc = \"91320100MA1DEMA010\"\ndelivery_tier = \"C\""),
                "platforms[0].delivery_tier",
            ),
        ];
        for (toml, key) in cases {
            // Replace the shipped platforms by the one under test.
            let text = std::fs::read_to_string(repo(DEFAULT_PATH)).unwrap_or_default();
            let head = text.split("[[platforms]]").next().unwrap_or_default();
            let certs = repo("certs-example");
            let head = head.replace("\"certs-example/", &format!("\"{}/", certs.display()));
            let err = Config::from_figment(
                Figment::new().merge(Toml::string(&format!("{head}\n{toml}"))),
            )
            .map(|_| ())
            .map_err(key_of);
            let msg = err.expect_err(key);
            assert!(msg.contains(key), "{key}: {msg}");
        }
    }
}
