//! Test harness: spawn the gateway (in process, or as a real process for crash and log
//! tests), build mTLS clients per role, and make valid records to mutate.

#![allow(dead_code)]

use std::io::Read;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use chrono::NaiveDate;
use oip_gateway::app::Gateway;
use oip_gateway::certs::{DEMO_PLATFORM_A, DEMO_PLATFORM_B};
use oip_gateway::config::{Config, PlatformSeed, TlsFiles};
use oip_gateway::proto::platform_service_client::PlatformServiceClient;
use oip_gateway::proto::{self, record};
use tempfile::TempDir;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

pub type Client = PlatformServiceClient<Channel>;

pub fn certs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("certs-example")
}

pub fn tls_files() -> TlsFiles {
    let d = certs_dir();
    TlsFiles {
        ca: d.join("ca.pem"),
        cert: d.join("server.pem"),
        key: d.join("server.key"),
        crls: Vec::new(),
        reload_check_secs: 5,
    }
}

fn date(s: &str) -> NaiveDate {
    s.parse().expect("test date")
}

/// Platform A: all three industries, every served city, pilot from 2025-07-01.
/// Platform B: instant delivery only, in Nanjing (from 2025-07-01) and Suzhou (from
/// 2026-01-01).
pub fn test_platforms() -> Vec<PlatformSeed> {
    vec![
        PlatformSeed {
            uscc: DEMO_PLATFORM_A.into(),
            name: "A".into(),
            industries: vec![
                "RIDE_HAILING".into(),
                "INSTANT_DELIVERY".into(),
                "INTRACITY_FREIGHT".into(),
            ],
            divisions: vec!["*".into()],
            pilot_start: date("2025-07-01"),
            pilot_start_overrides: Default::default(),
            delivery_tier: "A".into(),
            delivery_tier_overrides: Default::default(),
        },
        PlatformSeed {
            uscc: DEMO_PLATFORM_B.into(),
            name: "B".into(),
            industries: vec!["INSTANT_DELIVERY".into()],
            divisions: vec!["320100".into()],
            pilot_start: date("2025-07-01"),
            pilot_start_overrides: [("320500".to_string(), date("2026-01-01"))]
                .into_iter()
                .collect(),
            delivery_tier: "B".into(),
            delivery_tier_overrides: Default::default(),
        },
    ]
}

/// A gateway running inside the test process.
pub struct TestGateway {
    pub addr: SocketAddr,
    /// The embedded backend simulator's address.
    pub sim_addr: Option<SocketAddr>,
    /// The operations listener's address.
    pub ops_addr: Option<SocketAddr>,
    pub dir: TempDir,
    gateway: Option<Gateway>,
    /// The PostgreSQL database of a gateway on PostgreSQL ([`TestGateway::spawn_on`]).
    pub postgres: Option<FreshPostgres>,
}

/// Which store a test gateway uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    /// The run's default: `OIP_TEST_STORE=postgres` runs every in-process gateway on
    /// PostgreSQL; anything else, SQLite.
    pub fn of_run() -> Self {
        match std::env::var("OIP_TEST_STORE").as_deref() {
            Ok("postgres") => Self::Postgres,
            _ => Self::Sqlite,
        }
    }
}

impl TestGateway {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// A gateway on the default store of the run: SQLite, or PostgreSQL when
    /// `OIP_TEST_STORE=postgres` (the whole suite on PostgreSQL).
    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::spawn_on(Backend::of_run(), adjust).await
    }

    /// A gateway on `backend` (PostgreSQL: a fresh database of its own).
    pub async fn spawn_on(backend: Backend, adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let postgres = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(FreshPostgres::new().await),
        };
        let url = match &postgres {
            Some(pg) => pg.url.clone(),
            None => format!("sqlite:{}", dir.path().join("oip.db").display()),
        };
        let mut config = Config::for_test(url, tls_files(), test_platforms());
        // The embedded simulator's file where the tests look for it, on either store.
        config.forward.simulator_database_url = Some(format!(
            "sqlite:{}",
            dir.path().join("backend-sim.db").display()
        ));
        // Fast retries in tests.
        config.forward.min_backoff_ms = 20;
        config.forward.max_backoff_ms = 200;
        adjust(&mut config);
        let gateway = Gateway::start(config).await.expect("gateway starts");
        Self {
            addr: gateway.addr,
            sim_addr: gateway.backend_sim.as_ref().map(|s| s.addr),
            ops_addr: gateway.ops_addr,
            dir,
            gateway: Some(gateway),
            postgres,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// `submit`'s options for platform A's certificate: `file` into `report`, chunks of
    /// `batch_size`, 4 in flight, gzip (change fields with `..` as needed).
    pub fn submit_options(
        &self,
        file: &std::path::Path,
        report: &std::path::Path,
        batch_size: usize,
    ) -> oip_gateway::submit::SubmitOptions {
        let certs = certs_dir();
        oip_gateway::submit::SubmitOptions {
            file: file.to_path_buf(),
            report: Some(report.to_path_buf()),
            endpoint: self.endpoint(),
            ca: certs.join("ca.pem"),
            cert: certs.join("platform-a.pem"),
            key: certs.join("platform-a.key"),
            domain: "localhost".into(),
            batch_size,
            window: 4,
            progress: false,
            compress: true,
            from_line: 1,
        }
    }

    /// A client authenticated with `certs-example/<stem>.pem`.
    pub async fn client(&self, stem: &str) -> Client {
        client(self.addr, stem).await
    }

    pub async fn stop(mut self) {
        if let Some(g) = self.gateway.take() {
            g.shutdown().await.expect("clean shutdown");
        }
    }
}

pub fn client_tls(stem: Option<&str>, ca: &str) -> ClientTlsConfig {
    let d = certs_dir();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(
            std::fs::read(d.join(ca)).expect("ca"),
        ))
        .domain_name("localhost");
    if let Some(stem) = stem {
        let cert = std::fs::read(d.join(format!("{stem}.pem"))).expect("cert");
        let key = std::fs::read(d.join(format!("{stem}.key"))).expect("key");
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    tls
}

pub async fn channel(
    addr: SocketAddr,
    tls: ClientTlsConfig,
) -> Result<Channel, tonic::transport::Error> {
    Channel::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(tls)?
        .connect()
        .await
}

pub async fn client(addr: SocketAddr, stem: &str) -> Client {
    PlatformServiceClient::new(
        channel(addr, client_tls(Some(stem), "ca.pem"))
            .await
            .expect("connect"),
    )
}

/// A gateway running as its own process (for crashes and captured logs).
pub struct GatewayProcess {
    pub addr: SocketAddr,
    /// The embedded backend simulator's address.
    pub sim_addr: Option<SocketAddr>,
    /// The operations listener's address (`/live`, `/ready`, `/metrics`).
    pub ops_addr: Option<SocketAddr>,
    pub child: Child,
    /// Everything the process wrote to stderr so far (drained by a thread, so a
    /// chatty log level never blocks the gateway).
    pub logs: Arc<Mutex<Vec<u8>>>,
}

impl GatewayProcess {
    /// Starts `oip-gateway serve` on port 0 with a config file written into `dir`,
    /// waiting for its "listening on" line.
    pub fn spawn(dir: &Path, envs: &[(&str, &str)]) -> Self {
        Self::spawn_in(dir, &dir.join("oip.db"), envs)
    }

    /// As [`GatewayProcess::spawn`], with the database at `database`.
    pub fn spawn_in(dir: &Path, database: &Path, envs: &[(&str, &str)]) -> Self {
        let config = dir.join("gateway.toml");
        let mut c = Config::for_test(
            format!("sqlite:{}", database.display()),
            tls_files(),
            test_platforms(),
        );
        c.admins = vec!["oip://admin/root".into()];
        std::fs::write(&config, toml_of(&c)).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_oip-gateway"))
            .args(["serve", "--config"])
            .arg(&config)
            .envs(envs.iter().copied())
            .env_remove("OIP_LISTEN")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn gateway");
        // Drain stderr from the start: a chatty log level during start-up (migrations
        // at trace) would otherwise fill the pipe and block the gateway before it is ready.
        let logs = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut stderr) = child.stderr.take() {
            let sink = logs.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while let Ok(n) = stderr.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .expect("log buffer")
                        .extend_from_slice(&buf[..n]);
                }
            });
        }
        // Drain stdout for the life of the process (a closed pipe would make the
        // gateway's next print fail); the ready lines come first, in one write.
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the gateway reports its address");
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("address");
        // The other ready lines, in one write with the first.
        let (mut sim_addr, mut ops_addr) = (None, None);
        while let Ok(l) = rx.recv_timeout(std::time::Duration::from_millis(200)) {
            if let Some(a) = l.trim().strip_prefix("backend simulator on ") {
                sim_addr = a.parse().ok();
            } else if let Some(a) = l.trim().strip_prefix("operations on ") {
                ops_addr = a.parse().ok();
            }
            if sim_addr.is_some() && ops_addr.is_some() {
                break;
            }
        }
        Self {
            addr,
            sim_addr,
            ops_addr,
            child,
            logs,
        }
    }

    /// The captured stderr, after the process has exited.
    pub fn captured_logs(&mut self) -> String {
        self.kill();
        // The drain thread sees EOF once the process is gone; give it a moment.
        for _ in 0..50 {
            std::thread::sleep(std::time::Duration::from_millis(20));
            if Arc::strong_count(&self.logs) == 1 {
                break;
            }
        }
        String::from_utf8_lossy(&self.logs.lock().expect("log buffer")).into_owned()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn toml_of(c: &Config) -> String {
    let keys: Vec<String> = c
        .pii
        .keys
        .iter()
        .map(|(id, k)| format!("{id} = \"{k}\""))
        .collect();
    let pii = format!(
        "[pii]\ncurrent_key = \"{}\"\nlookup_key = \"{}\"\nkeys = {{ {} }}\n",
        c.pii.current_key,
        c.pii.lookup_key,
        keys.join(", ")
    );
    // Config serialises to TOML through figment's value model; hand-writing keeps
    // the file readable in failure output.
    let platforms: String = c
        .platforms
        .iter()
        .map(|p| {
            let overrides: Vec<String> = p.pilot_start_overrides.iter().map(|(k, v)| format!("\"{k}\" = \"{v}\"")).collect();
            format!(
                "[[platforms]]\nuscc = \"{}\"\nname = \"{}\"\nindustries = {:?}\ndivisions = {:?}\npilot_start = \"{}\"\npilot_start_overrides = {{ {} }}\ndelivery_tier = \"{}\"\n",
                p.uscc,
                p.name,
                p.industries,
                p.divisions,
                p.pilot_start,
                overrides.join(", "),
                p.delivery_tier
            )
        })
        .collect();
    format!(
        "listen = \"127.0.0.1:0\"\ndatabase_url = \"{}\"\nadmins = {:?}\n[operations]\nlisten = \"127.0.0.1:0\"\n[forward]\nsimulate = {}\n[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n{pii}{platforms}",
        c.database_url,
        c.admins,
        c.forward.simulate,
        c.tls.ca.display(),
        c.tls.cert.display(),
        c.tls.key.display()
    )
}

/// A resident ID number with its check character computed.
pub fn resident_id(first17: &str) -> String {
    let c = oip_gateway::domain::ids::resident_id_check_char(first17).expect("17 digits");
    format!("{first17}{c}")
}

/// A valid worker of platform A (instant delivery, registered 2025-07-01).
pub fn worker(id: &str) -> proto::Worker {
    proto::Worker {
        worker_id: id.into(),
        revision: Some(1),
        id_type: String::new(),
        id_number: "11010519491231002X".into(),
        name: "张三丰".into(),
        mobile: "13800138000".into(),
        industries: vec!["INSTANT_DELIVERY".into()],
        registered_at: "2025-07-01T08:00:00+08:00".into(),
        status: "ACTIVE".into(),
        left_at: String::new(),
    }
}

/// A valid completed instant-delivery order in Nanjing on 2025-07-02.
pub fn order(id: &str, worker_id: &str) -> proto::Order {
    proto::Order {
        order_id: id.into(),
        revision: Some(1),
        worker_id: worker_id.into(),
        industry: "INSTANT_DELIVERY".into(),
        division_code: "320100".into(),
        accepted_at: "2025-07-02T11:00:00+08:00".into(),
        completed_at: "2025-07-02T11:35:00+08:00".into(),
        status: "COMPLETED".into(),
        vehicle_plate: String::new(),
    }
}

pub fn rec_worker(w: proto::Worker) -> proto::Record {
    proto::Record {
        kind: Some(record::Kind::Worker(w)),
    }
}

pub fn rec_order(o: proto::Order) -> proto::Record {
    proto::Record {
        kind: Some(record::Kind::Order(o)),
    }
}

pub async fn submit(client: &mut Client, records: Vec<proto::Record>) -> proto::BatchOutcome {
    client
        .submit(proto::SubmitRequest { records })
        .await
        .expect("submit call")
        .into_inner()
}

pub async fn register(client: &mut Client, workers: Vec<proto::Worker>) -> proto::BatchOutcome {
    client
        .register_workers(proto::RegisterWorkersRequest { workers })
        .await
        .expect("register call")
        .into_inner()
}

pub async fn report(client: &mut Client, orders: Vec<proto::Order>) -> proto::BatchOutcome {
    client
        .report_orders(proto::ReportOrdersRequest { orders })
        .await
        .expect("report call")
        .into_inner()
}

/// `(outcome, code, field)` of every record, for compact assertions.
pub fn brief(b: &proto::BatchOutcome) -> Vec<(String, String, String)> {
    b.outcomes
        .iter()
        .map(|o| {
            (
                o.outcome().as_str_name().to_string(),
                o.code.clone(),
                o.field.clone(),
            )
        })
        .collect()
}

pub fn accepted() -> (String, String, String) {
    ("ACCEPTED".into(), String::new(), String::new())
}

/// Stored order ids of the caller, all pages.
pub async fn stored_order_ids(client: &mut Client) -> Vec<String> {
    let mut ids = vec![];
    let mut token = String::new();
    loop {
        let page = client
            .list_orders(proto::ListRequest {
                page_size: 500,
                page_token: token.clone(),
                id: String::new(),
            })
            .await
            .expect("list orders")
            .into_inner();
        ids.extend(
            page.orders
                .into_iter()
                .filter_map(|o| o.order)
                .map(|o| o.order_id),
        );
        if page.next_page_token.is_empty() {
            return ids;
        }
        token = page.next_page_token;
    }
}

/// The month before the current one (Asia/Shanghai) as `YYYY-MM`, and a time on its
/// 5th day at `hour`:00 — an ended month whose orders are inside every pilot.
pub fn previous_month(hour: u32) -> (String, String) {
    use chrono::{Datelike, Duration};
    let now = chrono::Utc::now().with_timezone(&oip_gateway::domain::time::shanghai());
    let first = now.date_naive().with_day(1).expect("first day");
    let prev = first - Duration::days(1);
    let period = format!("{:04}-{:02}", prev.year(), prev.month());
    (period.clone(), format!("{period}-05T{hour:02}:00:00+08:00"))
}

/// An order accepted at `at` (RFC 3339), completed 30 minutes later.
pub fn order_at(
    id: &str,
    worker_id: &str,
    industry: &str,
    division: &str,
    at: &str,
) -> proto::Order {
    let accepted = oip_gateway::domain::time::parse_wire_time(at).expect("time");
    proto::Order {
        industry: industry.into(),
        division_code: division.into(),
        accepted_at: at.into(),
        completed_at: (accepted + 30 * 60_000).to_string(),
        ..order(id, worker_id)
    }
}

pub fn declaration(
    id: &str,
    period: &str,
    division: &str,
    industry: &str,
    count: i64,
    amount: i64,
) -> proto::Declaration {
    proto::Declaration {
        declaration_id: id.into(),
        revision: Some(1),
        period: period.into(),
        division_code: division.into(),
        industry: industry.into(),
        order_count: Some(count),
        amount_fen: Some(amount),
    }
}

/// An accident during `order("...")`'s window (2025-07-02 11:10).
pub fn accident(id: &str, worker_id: &str, order_id: &str) -> proto::Accident {
    proto::Accident {
        report_id: id.into(),
        revision: Some(1),
        worker_id: worker_id.into(),
        order_id: order_id.into(),
        occurred_at: "2025-07-02T11:10:00+08:00".into(),
        division_code: "320100".into(),
        injury_kind: "TRAFFIC".into(),
        description: "电动车与行人碰撞，左腿擦伤".into(),
    }
}

pub async fn declare(
    client: &mut Client,
    declarations: Vec<proto::Declaration>,
) -> proto::BatchOutcome {
    client
        .submit_declarations(proto::SubmitDeclarationsRequest { declarations })
        .await
        .expect("declare call")
        .into_inner()
}

pub async fn report_accidents(
    client: &mut Client,
    accidents: Vec<proto::Accident>,
) -> proto::BatchOutcome {
    client
        .report_accidents(proto::ReportAccidentsRequest { accidents })
        .await
        .expect("accidents call")
        .into_inner()
}

/// The caller's declarations by id: (status, declared, computed) with figures as
/// (count, amount).
pub async fn declaration_status(
    client: &mut Client,
) -> std::collections::BTreeMap<String, (String, (i64, i64), (i64, i64))> {
    let list = client
        .list_declarations(proto::ListRequest {
            page_size: 1000,
            ..Default::default()
        })
        .await
        .expect("list declarations")
        .into_inner();
    list.declarations
        .into_iter()
        .map(|d| {
            let decl = d.declaration.expect("declaration");
            let r = d.reconciliation.expect("reconciliation");
            let f = |x: Option<proto::Figures>| {
                x.map(|x| (x.order_count, x.amount_fen)).expect("figures")
            };
            (
                decl.declaration_id,
                (r.status, f(r.declared), f(r.computed)),
            )
        })
        .collect()
}

pub fn rec_declaration(d: proto::Declaration) -> proto::Record {
    proto::Record {
        kind: Some(record::Kind::Declaration(d)),
    }
}

pub fn rec_accident(a: proto::Accident) -> proto::Record {
    proto::Record {
        kind: Some(record::Kind::Accident(a)),
    }
}

pub type Admin = oip_gateway::proto::admin_service_client::AdminServiceClient<Channel>;
pub type Tax = oip_gateway::proto::tax_service_client::TaxServiceClient<Channel>;
pub type SocialSecurity =
    oip_gateway::proto::social_security_service_client::SocialSecurityServiceClient<Channel>;

/// A connected channel presenting `certs-example/<stem>.pem`.
pub async fn role_channel(addr: SocketAddr, stem: &str) -> Channel {
    channel(addr, client_tls(Some(stem), "ca.pem"))
        .await
        .expect("connect")
}

impl TestGateway {
    /// The gateway's database URL.
    pub fn database_url(&self) -> String {
        format!("sqlite:{}", self.dir.path().join("oip.db").display())
    }

    /// A second connection to the gateway's database (as an operator with the file
    /// would have), for setting up states and for tampering.
    pub async fn sql(&self) -> sqlx::SqlitePool {
        sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(self.dir.path().join("oip.db"))
                    .busy_timeout(std::time::Duration::from_secs(10)),
            )
            .await
            .expect("open the database")
    }

    pub async fn admin(&self) -> Admin {
        Admin::new(role_channel(self.addr, "admin").await)
    }

    pub async fn tax(&self) -> Tax {
        Tax::new(role_channel(self.addr, "tax").await)
    }

    pub async fn social_security(&self) -> SocialSecurity {
        SocialSecurity::new(role_channel(self.addr, "social-security").await)
    }
}

/// Identity URIs of the example certificates.
pub const TAX_ID: &str = "oip://tax/js-tax-320000";
pub const SS_ID: &str = "oip://social-security/js-hrss-320000";
pub const ADMIN_ID: &str = "oip://admin/root";
pub const PLATFORM_A_ID: &str = "oip://platform/91320100MA1DEMA010";

/// Grants `role` over `scopes` to `identity` through the admin API.
pub async fn grant(admin: &mut Admin, identity: &str, role: &str, scopes: &[&str]) {
    admin
        .put_grant(proto::GrantRequest {
            identity: identity.into(),
            role: role.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            expires_at: String::new(),
        })
        .await
        .expect("grant");
}

/// Drains a pull, returning (cursor, item present) per message.
pub async fn drain<M>(mut stream: tonic::Streaming<M>) -> Result<Vec<M>, tonic::Status> {
    let mut out = Vec::new();
    while let Some(m) = stream.message().await? {
        out.push(m);
    }
    Ok(out)
}

/// Audit entries of `identity` (read from the database), oldest first:
/// (action, outcome, trace id, scope, records).
pub async fn audit_entries(
    pool: &sqlx::SqlitePool,
    identity: &str,
) -> Vec<(String, String, String, String, i64)> {
    sqlx::query_as(
        "SELECT action, outcome, trace_id, scope, records FROM audit_log WHERE identity = ?1 ORDER BY seq",
    )
    .bind(identity)
    .fetch_all(pool)
    .await
    .expect("audit rows")
}

/// Waits until the record's delivery states are `want` (the gateway records the
/// backend's answer just after the backend applies the item).
pub async fn await_delivery_states(c: &mut Client, kind: &str, id: &str, want: &[&str]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let got = delivery_states(c, kind, id).await;
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{kind} {id}: {got:?}, want {want:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Every delivery of a record, oldest first.
pub async fn deliveries(c: &mut Client, kind: &str, id: &str) -> Vec<proto::Delivery> {
    c.list_deliveries(proto::ListDeliveriesRequest {
        kind: kind.into(),
        id: id.into(),
    })
    .await
    .expect("deliveries")
    .into_inner()
    .deliveries
}

pub async fn delivery_states(c: &mut Client, kind: &str, id: &str) -> Vec<String> {
    deliveries(c, kind, id)
        .await
        .into_iter()
        .map(|d| d.state)
        .collect()
}

/// A bulk-file line of a valid worker of platform A (as [`worker`]).
pub fn worker_line(id: &str) -> String {
    format!(
        r#"{{"kind":"worker","worker_id":"{id}","id_number":"11010519491231002X","name":"张三丰","mobile":"13800138000","industries":["INSTANT_DELIVERY"],"registered_at":"2025-07-01T08:00:00+08:00","status":"ACTIVE"}}"#
    )
}

/// A bulk-file line of a valid order (as [`order`]).
pub fn order_line(id: &str, worker_id: &str) -> String {
    format!(
        r#"{{"kind":"order","order_id":"{id}","worker_id":"{worker_id}","industry":"INSTANT_DELIVERY","division_code":"320100","accepted_at":"2025-07-02T11:00:00+08:00","completed_at":"2025-07-02T11:35:00+08:00","status":"COMPLETED"}}"#
    )
}

/// Runs `oip-gateway submit FILE --quiet --report REPORT ARGS...` as platform A against
/// `endpoint` and waits for it.
pub fn run_submit(
    endpoint: &str,
    file: &Path,
    report: &Path,
    args: &[&str],
) -> std::process::Output {
    submit_command(endpoint, file, report, args)
        .output()
        .expect("run submit")
}

/// The `submit` command line of [`run_submit`], to spawn.
pub fn submit_command(endpoint: &str, file: &Path, report: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oip-gateway"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("submit")
        .arg(file)
        .args(["--quiet", "--endpoint", endpoint, "--report"])
        .arg(report)
        .args(args);
    cmd
}

/// The lines of an outcome report, parsed.
pub fn report_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("report line is JSON"))
        .collect()
}

/// `(line, id, outcome, code, field)` of every report line.
pub fn report_brief(path: &Path) -> Vec<(u64, String, String, String, String)> {
    report_lines(path)
        .iter()
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or_default().to_string();
            (
                l["line"].as_u64().unwrap_or_default(),
                s("id"),
                s("outcome"),
                s("code"),
                s("field"),
            )
        })
        .collect()
}

/// `GET path` over plain HTTP/1.1: the status and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: ops\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status");
    (status, head.to_string(), body.to_string())
}

/// A rustls client configuration trusting `ca.pem` and presenting
/// `certs-example/<stem>.pem`, offering `alpn` (for tests that speak TLS themselves).
pub fn rustls_client(stem: &str, alpn: &[&[u8]]) -> std::sync::Arc<rustls::ClientConfig> {
    let d = certs_dir();
    let pem = |f: &str| std::fs::read(d.join(f)).expect("read");
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut pem("ca.pem").as_slice()) {
        roots.add(c.expect("ca")).expect("root");
    }
    let chain: Vec<_> = rustls_pemfile::certs(&mut pem(&format!("{stem}.pem")).as_slice())
        .collect::<Result<_, _>>()
        .expect("chain");
    let key = rustls_pemfile::private_key(&mut pem(&format!("{stem}.key")).as_slice())
        .expect("key")
        .expect("a key");
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .expect("client auth");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    std::sync::Arc::new(config)
}

/// A TLS connection to the gateway at `addr` with `config` (the server named localhost).
pub async fn tls_connect(
    addr: SocketAddr,
    config: std::sync::Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tokio_rustls::TlsConnector::from(config)
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").expect("name"),
            tcp,
        )
        .await
        .expect("handshake")
}

/// Holds the database's write lock (`BEGIN IMMEDIATE` on a connection of its own)
/// until the returned sender is used or dropped: every ingest transaction waits.
pub async fn hold_write_lock(
    pool: &sqlx::SqlitePool,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let (held, is_held) = tokio::sync::oneshot::channel::<()>();
    let pool = pool.clone();
    let locker = tokio::spawn(async move {
        let mut conn = pool.acquire().await.expect("connection");
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut *conn)
            .await
            .expect("write lock");
        let _ = held.send(());
        let _ = released.await;
        sqlx::query("ROLLBACK")
            .execute(&mut *conn)
            .await
            .expect("unlock");
    });
    is_held.await.expect("held");
    (release, locker)
}

/// The PostgreSQL server the tests use: `OIP_TEST_POSTGRES` (a URL of a database on
/// it that the tests may create databases from), else the local server as `.ci/run`
/// starts it (127.0.0.1:5432, user postgres, trust authentication).
pub fn postgres_server() -> String {
    std::env::var("OIP_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A database of its own for one test on the tests' PostgreSQL server, dropped with
/// the value. Panics, saying how to start the server, when it cannot be reached: the
/// suite needs it (`.ci/run` starts it).
pub struct FreshPostgres {
    pub url: String,
    name: String,
}

impl FreshPostgres {
    pub async fn new() -> Self {
        use sqlx::Connection as _;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let server = postgres_server();
        let mut admin = sqlx::PgConnection::connect(&server)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL at {server} cannot be reached ({e}): start it with \
                 `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
                 or set OIP_TEST_POSTGRES (.ci/run starts it)"
                )
            });
        let name = format!(
            "oip_test_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            oip_gateway::domain::time::now_millis()
        );
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create a test database");
        let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for FreshPostgres {
    fn drop(&mut self) {
        let (server, name) = (postgres_server(), self.name.clone());
        // A runtime of its own: the test's may be shutting down.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                use sqlx::Connection as _;
                if let Ok(mut admin) = sqlx::PgConnection::connect(&server).await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}
