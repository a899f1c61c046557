//! Assembles the gateway from a [`Config`]: reference data, store (migrated), start-up
//! registrations, services, the mTLS listener. [`Gateway::start`] returns once the
//! listener is bound, with its address; the gateway runs until shut down.

use crate::pii::Pii;
use crate::store::Store;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Server;

use crate::access::Access;
use crate::api::admin::AdminApi;
use crate::api::platform::PlatformApi;
use crate::api::pull::{Puller, SocialSecurityApi, TaxApi};
use crate::audit::{self, AuditLayer, Auditor};
use crate::backend_sim::{BackendSim, SimConfig};
use crate::config::{Config, StatementRelease};
use crate::domain::fees::{BaseRate, FloatRate, RateBook};
use crate::domain::grant::{Grant, Role};
use crate::forward::dispatcher::{self, Backend, DispatchSettings};
use crate::forward::release::{self, ReleasePolicy};
use crate::ingest::{Ingest, Policy};
use crate::proto::admin_service_server::AdminServiceServer;
use crate::proto::platform_service_server::PlatformServiceServer;
use crate::proto::social_security_backend_client::SocialSecurityBackendClient;
use crate::proto::social_security_service_server::SocialSecurityServiceServer;
use crate::proto::tax_backend_client::TaxBackendClient;
use crate::proto::tax_service_server::TaxServiceServer;
use crate::{proto, tls};
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::Channel;

/// A running gateway.
pub struct Gateway {
    /// The bound listener address (useful with port 0).
    pub addr: SocketAddr,
    /// The embedded backend simulator, when no real backends are configured.
    pub backend_sim: Option<BackendSim>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    stop_background: watch::Sender<bool>,
    background: Vec<JoinHandle<()>>,
    /// gRPC health of the gateway port.
    health: tonic_health::server::HealthReporter,
    /// Closes the listener (at shutdown).
    stop_accepting: watch::Sender<bool>,
    /// The operations listener's address (`/live`, `/ready`, `/metrics`), when enabled.
    pub ops_addr: Option<SocketAddr>,
    readiness: Arc<crate::ops::Readiness>,
    shutdown_grace_secs: u64,
    /// Who may call now, and their refusals.
    pub admission: Arc<crate::admission::Admission>,
    /// What the accept loop has seen (connections in the handshake, established, refused).
    pub connections: Arc<crate::connections::ConnectionStats>,
    /// Held while the gateway runs: one gateway per SQLite database.
    _database_lock: crate::store::DatabaseLock,
}

/// `sqlite:dir/oip.db` → `sqlite:dir/backend-sim.db`.
fn sibling_database(url: &str) -> String {
    if crate::store::is_postgres(url) {
        // Several replicas deliver to one simulator of their own (`backend-sim
        // serve`, README); this one is for a single replica trying PostgreSQL.
        return "sqlite:data/backend-sim.db".to_string();
    }
    let path = std::path::Path::new(url.strip_prefix("sqlite:").unwrap_or(url));
    format!("sqlite:{}", path.with_file_name("backend-sim.db").display())
}

/// Several replicas: what an administrator changes through one replica (the rate
/// tables, per-identity rate limits) reaches the others within `every` (`access.cache_ms`,
/// at least 250 ms): each replica reads them from the database that often and applies
/// them when they changed (unchanged limits keep their callers' token buckets).
fn spawn_shared_settings(
    store: Arc<dyn Store>,
    ingest: Ingest,
    admission: Arc<crate::admission::Admission>,
    (limits, every): (Vec<crate::store::access::RateLimitRow>, Duration),
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut limits = Some(limits);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = stop.changed() => return,
            }
            match store.rate_book().await {
                Ok(book) if *ingest.rates() != book => {
                    tracing::info!("rate tables changed by another replica: applied");
                    ingest.set_rates(book);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the rate tables"),
            }
            match store.rate_limits().await {
                Ok(rows) if limits.as_ref() != Some(&rows) => {
                    tracing::info!("rate limits changed by another replica: applied");
                    admission.load(&rows);
                    limits = Some(rows);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the rate limits"),
            }
        }
    })
}

/// Starts the forwarding dispatchers (and the simulator they deliver to when no real
/// endpoints are configured).
async fn start_forwarding(
    config: &Config,
    (store, pii): (Arc<dyn Store>, Pii),
    wake: Arc<tokio::sync::Notify>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(Option<BackendSim>, Vec<JoinHandle<()>>)> {
    let f = &config.forward;
    let mut sim = None;
    let (ss_endpoint, tax_endpoint, tls) = match f.backends()? {
        Some((ss, tax)) => {
            let tls = tls::client_config(
                &f.backend_ca,
                &f.client_cert,
                &f.client_key,
                &f.backend_domain,
            )?;
            (ss, tax, tls)
        }
        None => {
            // The simulator presents the gateway's own certificate (so that clients
            // trusting tls.ca can watch and steer it); the dispatcher reaches it with
            // a throw-away client certificate, trusting what issued tls.cert.
            let link = crate::certs::loopback_link()?;
            let s = BackendSim::start(SimConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                database_url: f
                    .simulator_database_url
                    .clone()
                    .unwrap_or_else(|| sibling_database(&config.database_url)),
                ca: config.tls.ca.clone(),
                cert: config.tls.cert.clone(),
                key: config.tls.key.clone(),
                also_trust: Some(link.ca_pem.clone()),
                delivery_identities: vec![link.identity.clone()],
            })
            .await?;
            let endpoint = format!("https://{}", s.addr);
            tracing::info!(%endpoint, "no backends configured: delivering to the embedded simulator");
            sim = Some(s);
            let tls = tls::loopback_client_config(&config.tls.ca, &config.tls.cert, &link)?;
            (endpoint.clone(), endpoint, tls)
        }
    };
    let channel = |endpoint: &str| -> anyhow::Result<Channel> {
        Ok(Channel::from_shared(endpoint.to_string())
            .with_context(|| format!("forward endpoint {endpoint}"))?
            .tls_config(tls.clone())?
            .connect_lazy())
    };
    let settings = DispatchSettings {
        batch_size: f.batch_size,
        max_attempts: f.max_attempts,
        request_timeout: Duration::from_millis(f.request_timeout_ms),
        min_backoff: Duration::from_millis(f.min_backoff_ms),
        max_backoff: Duration::from_millis(f.max_backoff_ms),
        invalid_retry: Duration::from_millis(f.invalid_retry_ms),
        idle_poll: Duration::from_secs(1),
        linger: Duration::from_millis(f.linger_ms),
    };
    let backends = [
        Backend::SocialSecurity(
            SocialSecurityBackendClient::new(channel(&ss_endpoint)?)
                .max_encoding_message_size(64 << 20),
        ),
        Backend::Tax(
            TaxBackendClient::new(channel(&tax_endpoint)?).max_encoding_message_size(64 << 20),
        ),
    ];
    let mut tasks: Vec<JoinHandle<()>> = backends
        .into_iter()
        .map(|b| {
            dispatcher::spawn(
                store.clone(),
                pii.clone(),
                b,
                settings,
                wake.clone(),
                stop.clone(),
            )
        })
        .collect();
    tasks.push(dispatcher::spawn_queue_reporter(
        store,
        Duration::from_secs(f.queue_report_secs.max(1)),
        stop,
    ));
    Ok((sim, tasks))
}

/// Opens the store, brings its personal data under the current key (`pii::reseal`)
/// and registers the configured platforms and administrators. Returns the store and
/// the sealing of personal data every part above it uses.
pub async fn prepare_store(config: &Config) -> anyhow::Result<(Arc<dyn Store>, Pii)> {
    let reference = config.reference()?;
    let pii = Pii::new(config.vault()?);
    let store = crate::store::connect_with(&config.database_url, &config.database)
        .await
        .with_context(|| {
            format!(
                "database_url {}",
                crate::store::redacted(&config.database_url)
            )
        })?;
    crate::pii::reseal::reseal(&pii, &*store)
        .await
        .context("bringing personal data under the current key")?;
    let now = crate::domain::time::now_millis();
    let mut seeds = Vec::new();
    for reg in config.platform_registrations(&reference)? {
        let profile = store.upsert_platform(&reg).await?;
        seeds.push(Grant {
            identity: format!("{}platform/{}", crate::identity::SCHEME, profile.uscc),
            role: Role::Platform,
            scope: profile.uscc.to_string(),
            expires_at: None,
        });
    }
    seeds.extend(config.admins.iter().map(|admin| Grant {
        identity: admin.clone(),
        role: Role::Admin,
        scope: "*".into(),
        expires_at: None,
    }));
    for (i, g) in config.grants.iter().enumerate() {
        let role = Role::parse(&g.role)
            .with_context(|| format!("grants[{i}].role: unknown role {:?}", g.role))?;
        for scope in &g.scopes {
            let grant = Grant {
                identity: g.identity.clone(),
                role,
                scope: scope.clone(),
                expires_at: None,
            };
            crate::access::check_grant(&grant, &reference)
                .map_err(|e| anyhow::anyhow!("grants[{i}]: {e}"))?;
            seeds.push(grant);
        }
    }
    store
        .put_grants(&seeds, crate::store::access::CONFIGURATION, now)
        .await?;
    Ok((store, pii))
}

/// Appends the configured rate tables where they differ from the newest stored
/// version (the store keeps every version), and returns the whole book.
pub async fn load_rates(config: &Config, store: &dyn Store) -> anyhow::Result<RateBook> {
    let now = crate::domain::time::now_millis();
    let (bases, floats) = config.rates(now)?;
    let current = store.rate_book().await?;
    let newest_base = |b: &BaseRate| {
        current
            .bases
            .iter()
            .filter(|c| {
                c.industry == b.industry && c.tier == b.tier && c.effective_from == b.effective_from
            })
            .max_by_key(|c| c.recorded_at)
            .map(|c| c.fen_per_order)
    };
    let newest_float = |f: &FloatRate| {
        current
            .floats
            .iter()
            .filter(|c| c.uscc == f.uscc && c.division_code == f.division_code && c.year == f.year)
            .max_by_key(|c| c.recorded_at)
            .map(|c| c.multiplier)
    };
    let bases: Vec<_> = bases
        .into_iter()
        .filter(|b| newest_base(b) != Some(b.fen_per_order))
        .collect();
    let floats: Vec<_> = floats
        .into_iter()
        .filter(|f| newest_float(f) != Some(f.multiplier))
        .collect();
    if !bases.is_empty() || !floats.is_empty() {
        tracing::info!(
            base_rates = bases.len(),
            floats = floats.len(),
            "recording new rate versions"
        );
        store.append_rates(&bases, &floats).await?;
    }
    Ok(store.rate_book().await?)
}

/// The services the gateway port serves, as server reflection lists them: the four
/// `oip.v1` services, health, and reflection itself (the simulator's `TaxBackend`,
/// `SocialSecurityBackend` and `BackendSimControl` share the descriptor set but are not
/// served here).
pub fn served_services() -> Vec<&'static str> {
    use tonic::server::NamedService;
    vec![
        <PlatformServiceServer<PlatformApi> as NamedService>::NAME,
        <AdminServiceServer<AdminApi> as NamedService>::NAME,
        <TaxServiceServer<TaxApi> as NamedService>::NAME,
        <SocialSecurityServiceServer<SocialSecurityApi> as NamedService>::NAME,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ]
}

/// Resolves at Ctrl-C or SIGTERM (service managers). The handlers are installed when
/// this is called, so call it before announcing readiness. (SIGHUP reloads the TLS
/// material instead: [`spawn_tls_reload`].)
pub fn stop_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let (interrupt, term) = {
        use tokio::signal::unix::{SignalKind, signal};
        (
            signal(SignalKind::interrupt()).ok(),
            signal(SignalKind::terminate()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let (mut interrupt, mut term) = (interrupt, term);
            tokio::select! {
                Some(()) = async { interrupt.as_mut()?.recv().await } => {}
                Some(()) = async { term.as_mut()?.recv().await } => {}
                else => std::future::pending::<()>().await,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// SIGHUP, caught from the start of [`Gateway::start`] (its default would end the
/// process) and handed to [`spawn_tls_reload`].
#[cfg(unix)]
pub type Hangups = Option<tokio::signal::unix::Signal>;
/// No SIGHUP here.
#[cfg(not(unix))]
pub type Hangups = ();

/// Catches SIGHUP from now on.
pub fn hangups() -> Hangups {
    #[cfg(unix)]
    {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
    }
}

/// What identifies a file's content for change detection: its length and mtime.
fn stamp(path: &std::path::Path) -> Option<(std::time::SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Reloads the gateway port's TLS material (`tls.ca`, `tls.cert`, `tls.key`,
/// `tls.crls`) on SIGHUP and when one of its files changes (checked every
/// `tls.reload_check_secs`): new handshakes use it at once, established connections
/// keep theirs (until `connections.max_connection_age_secs`). A reload that fails keeps
/// the material in force and logs why: a file that cannot be read, a CRL not signed by
/// a CA of `tls.ca`, or one numbered lower than the list in force (stale).
pub fn spawn_tls_reload(
    files: crate::config::TlsFiles,
    source: crate::connections::TlsSource,
    mut numbers: tls::CrlNumbers,
    hangups: Hangups,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    #[cfg(unix)]
    let mut hangup = hangups;
    #[cfg(not(unix))]
    let () = hangups;
    tokio::spawn(async move {
        let paths: Vec<std::path::PathBuf> = [&files.ca, &files.cert, &files.key]
            .into_iter()
            .chain(files.crls.iter())
            .cloned()
            .collect();
        let stamps =
            |paths: &[std::path::PathBuf]| paths.iter().map(|p| stamp(p)).collect::<Vec<_>>();
        let mut seen = stamps(&paths);
        let every = Duration::from_secs(files.reload_check_secs.max(1));
        loop {
            #[cfg(unix)]
            let signalled = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let signalled = std::future::pending::<Option<()>>();
            let why = tokio::select! {
                _ = stop.changed() => return,
                Some(()) = signalled => "SIGHUP",
                () = tokio::time::sleep(every) => {
                    let now = stamps(&paths);
                    if now == seen {
                        continue;
                    }
                    "a file changed"
                }
            };
            seen = stamps(&paths);
            let loaded =
                tls::gateway_server_config(&files.ca, &files.cert, &files.key, &files.crls)
                    .and_then(|(config, next)| match tls::stale_crl(&numbers, &next) {
                        Some(why) => Err(anyhow::anyhow!(why)),
                        None => Ok((config, next)),
                    });
            match loaded {
                Ok((config, next)) => {
                    numbers = next;
                    if let Ok(mut current) = source.write() {
                        *current = Arc::new(config);
                    }
                    tracing::info!(
                        cause = why,
                        crls = files.crls.len(),
                        "tls material reloaded"
                    );
                }
                Err(e) => tracing::error!(
                    cause = why,
                    error = %format!("{e:#}"),
                    "tls material not reloaded: the previous stays in force"
                ),
            }
        }
    })
}

/// Server reflection listing exactly [`served_services`]; built in both versions
/// (v1alpha for Postman, Kreya, Evans and older grpcurl).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    served_services().into_iter().fold(
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(
                tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
            ),
        |b, name| b.with_service_name(name),
    )
}

impl Gateway {
    /// Builds everything and starts serving; returns once the listener is bound.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let hangups = hangups();
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        let demo = config.demo_parts();
        if !demo.is_empty() {
            tracing::warn!(
                demo = %demo.join("; "),
                "DEMO SETUP IN USE: never for real data. Replace the keys and certificates (README, \"Going to production\")"
            );
        }
        // Bound first: a port in use stops start-up before anything else is started.
        let (server_tls, crl_numbers) = tls::gateway_server_config(
            &config.tls.ca,
            &config.tls.cert,
            &config.tls.key,
            &config.tls.crls,
        )?;
        let tls: crate::connections::TlsSource =
            Arc::new(std::sync::RwLock::new(Arc::new(server_tls)));
        let open_files = crate::connections::raise_open_file_limit();
        let limits = config.connections.clone();
        if let Some(n) = open_files
            && (n as usize) < limits.max_connections + limits.max_handshakes + 256
        {
            tracing::warn!(
                open_files = n,
                "the open-file limit is below connections.max_connections + max_handshakes: raise it (ulimit -n, LimitNOFILE) or lower them"
            );
        }
        let listener = TcpListener::bind(config.listen).await.map_err(|e| {
            let next = if e.kind() == std::io::ErrorKind::AddrInUse {
                "another process (another gateway?) listens there: stop it, or set listen (OIP_LISTEN) to a free address"
            } else {
                "set listen (OIP_LISTEN) to an address of this machine"
            };
            anyhow::anyhow!("listen: cannot bind {} ({e}): {next}", config.listen)
        })?;
        let reference = Arc::new(config.reference()?);
        let database_lock = crate::store::lock_database(&config.database_url)?;
        // The operations listener answers from here on (/ready: 503 while starting,
        // which may take minutes after a key rotation).
        let (stop_background, stop_rx) = watch::channel(false);
        let ops = crate::ops::Ops {
            readiness: Arc::default(),
            sources: Arc::default(),
        };
        let mut background = Vec::new();
        let ops_addr = if config.operations.enabled {
            let (addr, task) =
                crate::ops::serve(&config.operations, ops.clone(), stop_rx.clone()).await?;
            background.push(task);
            tracing::info!(%addr, "operations listener (/live, /ready, /metrics)");
            Some(addr)
        } else {
            None
        };
        let (store, pii) = prepare_store(&config).await?;
        let rates = Arc::new(load_rates(&config, store.as_ref()).await?);
        let policy = Policy {
            declaration_deadline_day: config.fees.declaration_deadline_day,
            accident_margin_ms: config.accidents.window_margin_minutes * 60_000,
        };
        let metrics = Arc::new(crate::metrics::Metrics::new());
        let ingest =
            Ingest::new(store.clone(), pii.clone(), rates, policy).with_metrics(metrics.clone());
        let backend_sim = if config.forward.enabled {
            let (sim, tasks) = start_forwarding(
                &config,
                (store.clone(), pii.clone()),
                ingest.wake(),
                stop_rx.clone(),
            )
            .await?;
            background.extend(tasks);
            sim
        } else {
            None
        };
        let f = &config.forward;
        let release = match f.statement_release {
            StatementRelease::OnDeclaration => ReleasePolicy::OnDeclaration {
                deadline_day: config.fees.declaration_deadline_day,
            },
            StatementRelease::AfterMonthEnd => ReleasePolicy::AfterMonthEnd {
                days: f.statement_release_days,
            },
        };
        background.push(release::spawn(
            ingest.clone(),
            store.clone(),
            release,
            Duration::from_secs(f.release_poll_secs.max(1)),
            ingest.wake(),
            stop_rx.clone(),
        ));
        let mut stop_eviction = stop_rx.clone();
        let stop_rx_probe = stop_rx.clone();
        let stop_rx_tls = stop_rx.clone();
        let stop_rx_audit = stop_rx;
        let admission =
            crate::admission::Admission::new(limits.clone(), config.rate_limits.clone());
        let loaded_limits = store.rate_limits().await?;
        admission.load(&loaded_limits);
        let (auditor, audit_writer) = Auditor::spawn(store.clone(), metrics.clone());
        background.push(audit_writer);
        background.push(audit::spawn_retention(
            store.clone(),
            auditor.clone(),
            Duration::from_secs(u64::from(config.audit.retention_days) * 24 * 3600),
            stop_rx_audit,
        ));
        let access =
            Access::with_cache(store.clone(), Duration::from_millis(config.access.cache_ms));
        let admin = AdminServiceServer::new(AdminApi {
            access: access.clone(),
            store: store.clone(),
            reference: reference.clone(),
            ingest: ingest.clone(),
            auditor: auditor.clone(),
            max_page_bytes: config.limits.max_page_bytes,
            admission: admission.clone(),
        });
        if crate::store::is_postgres(&config.database_url) {
            background.push(spawn_shared_settings(
                store.clone(),
                ingest.clone(),
                admission.clone(),
                (
                    loaded_limits.clone(),
                    Duration::from_millis(config.access.cache_ms.max(250)),
                ),
                stop_rx_probe.clone(),
            ));
        }
        let evicting = admission.clone();
        background.push(tokio::spawn(async move {
            // Rate state of callers not seen for a while is dropped (bounded state).
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(60)) => evicting.evict_idle(),
                    _ = stop_eviction.changed() => return,
                }
            }
        }));
        let puller = Puller {
            pii: pii.clone(),
            admission: admission.clone(),
            access: access.clone(),
            store: store.clone(),
            auditor: auditor.clone(),
            reference: reference.clone(),
        };
        let gzip = tonic::codec::CompressionEncoding::Gzip;
        let tax = TaxServiceServer::new(TaxApi(puller.clone())).accept_compressed(gzip);
        let social_security =
            SocialSecurityServiceServer::new(SocialSecurityApi(puller)).accept_compressed(gzip);
        let platform = PlatformApi {
            pii: pii.clone(),
            access: access.clone(),
            ingest,
            store: store.clone(),
            reference,
            limits: config.limits.clone(),
            auditor: auditor.clone(),
            admission: admission.clone(),
            metrics: metrics.clone(),
        };
        let max = config.limits.max_message_bytes;
        // Requests may come gzip-compressed (bulk chunks reach megabytes); answers go
        // uncompressed (see `audit::CallBody`: a call with a deadline sends its headers
        // before the handler has chosen an encoding).
        let platform = PlatformServiceServer::new(platform)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max)
            .accept_compressed(gzip);
        let admin = admin.accept_compressed(gzip);

        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<PlatformServiceServer<PlatformApi>>()
            .await;
        health_reporter
            .set_serving::<AdminServiceServer<AdminApi>>()
            .await;
        health_reporter
            .set_serving::<TaxServiceServer<TaxApi>>()
            .await;
        health_reporter
            .set_serving::<SocialSecurityServiceServer<SocialSecurityApi>>()
            .await;
        let reflection_v1alpha = reflection().build_v1alpha()?;
        let reflection = reflection().build_v1()?;

        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        let mut server = Server::builder()
            .http2_max_header_list_size(config.limits.max_header_bytes)
            .max_concurrent_streams(limits.max_concurrent_streams)
            .http2_keepalive_interval(secs(limits.keepalive_interval_secs))
            .http2_keepalive_timeout(secs(limits.keepalive_timeout_secs));
        if let Some(age) = secs(limits.max_connection_age_secs) {
            server = server
                .max_connection_age(age)
                .max_connection_age_grace(Duration::from_secs(
                    limits.max_connection_age_grace_secs,
                ));
        }
        let connection_stats = Arc::new(crate::connections::ConnectionStats::default());
        let (stop_accepting, stop_accepting_rx) = watch::channel(false);
        let incoming = crate::connections::accept(
            listener,
            tls.clone(),
            &limits,
            connection_stats.clone(),
            stop_accepting_rx,
        );
        background.push(spawn_tls_reload(
            config.tls.clone(),
            tls.clone(),
            crl_numbers,
            hangups,
            stop_rx_tls,
        ));
        let router = server
            .layer(crate::edge::AdmissionLayer::new(
                admission.clone(),
                Duration::from_millis(limits.idle_stream_timeout_ms),
                metrics.clone(),
            ))
            .layer(AuditLayer::new(auditor, metrics.clone()))
            .add_service(health)
            .add_service(reflection)
            .add_service(reflection_v1alpha)
            .add_service(platform)
            .add_service(admin)
            .add_service(tax)
            .add_service(social_security);
        let task = tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await
        });
        let _ = ops.sources.set(crate::ops::Sources {
            metrics,
            connections: connection_stats.clone(),
            admission: admission.clone(),
            store: store.clone(),
        });
        ops.readiness.serving();
        background.push(crate::ops::spawn_probe(
            ops.clone(),
            store.clone(),
            health_reporter.clone(),
            served_services().into_iter().take(4).collect(),
            Duration::from_millis(config.operations.probe_interval_ms.max(100)),
            stop_rx_probe,
        ));
        tracing::info!(%addr, "gateway listening");
        Ok(Self {
            addr,
            backend_sim,
            shutdown: Some(tx),
            task,
            stop_background,
            background,
            connections: connection_stats,
            admission,
            health: health_reporter,
            stop_accepting,
            ops_addr,
            readiness: ops.readiness.clone(),
            shutdown_grace_secs: limits.shutdown_grace_secs,
            _database_lock: database_lock,
        })
    }

    /// Stops accepting calls, lets running calls finish, and returns. gRPC health
    /// answers NOT_SERVING from the start (load balancers stop sending calls).
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.readiness.draining();
        let _ = self.stop_accepting.send(true);
        self.health
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        for name in served_services().into_iter().take(4) {
            self.health
                .set_service_status(name, tonic_health::ServingStatus::NotServing)
                .await;
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await??;
        let _ = self.stop_background.send(true);
        for t in self.background.drain(..) {
            let _ = t.await;
        }
        if let Some(sim) = self.backend_sim.take() {
            sim.shutdown().await?;
        }
        Ok(())
    }

    /// Runs until `stop` resolves (see [`stop_signal`]), then shuts down gracefully:
    /// gRPC health turns NOT_SERVING, no new calls are taken, and the calls in progress
    /// get `connections.shutdown_grace_secs` to finish; past that, or at a second
    /// signal, the gateway stops with them unfinished (nothing they had not committed
    /// was acknowledged).
    pub async fn run_until(
        self,
        stop: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        stop.await;
        let grace = Duration::from_secs(self.shutdown_grace_secs);
        let admission = self.admission.clone();
        tracing::info!(
            calls_in_progress = admission.calls_in_progress(),
            grace_secs = grace.as_secs(),
            "shutting down: no new calls; calls in progress may finish (a second signal stops at once)"
        );
        let second = stop_signal();
        tokio::select! {
            done = self.shutdown() => done,
            () = tokio::time::sleep(grace) => {
                tracing::warn!(
                    calls_in_progress = admission.calls_in_progress(),
                    "stopping after connections.shutdown_grace_secs with calls unfinished: what they committed stands, nothing else was acknowledged"
                );
                Ok(())
            }
            () = second => {
                tracing::warn!(
                    calls_in_progress = admission.calls_in_progress(),
                    "second signal: stopping now with calls unfinished: what they committed stands, nothing else was acknowledged"
                );
                Ok(())
            }
        }
    }
}
