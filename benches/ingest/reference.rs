//! The reference program of `cargo bench --bench ingest`: the least a durable order
//! intake can do on this machine. A tonic server over the same mutual TLS as the
//! gateway (the example certificates) whose `ReportOrders` decodes the orders and
//! writes them into an `orders` table of the gateway's shape in SQLite (WAL,
//! `synchronous = FULL`, as the gateway), multi-row inserts, one transaction for
//! everything waiting (so concurrent single-order calls share a commit, as the
//! gateway's group commit does), and answers ACCEPTED after the commit. No validation,
//! no rules, no aggregates, no outbox, no audit. `RegisterWorkers` answers ACCEPTED
//! without storing (the load generator registers its workers first). `StreamOrders`
//! stores a stream's orders as one job once the stream has ended, and `SubmitStream`
//! stores each chunk's orders as one job and answers the chunk after its commit, so the
//! bench's stream phases meet the same intake as its unary phase.
//!
//! It runs as its own process (the bench starts itself with `OIP_BENCH_REFERENCE` set
//! to a database path) and prints `listening on ADDR`, as `oip-gateway serve` does.
//! With `OIP_BENCH_CEILING` set as well it stores nothing and answers at once: the
//! most any server can answer on this machine with this client (the ceiling of the
//! unary phase, not a durable intake).

use std::path::Path;
use std::str::FromStr;

use oip_gateway::proto::platform_service_server::{PlatformService, PlatformServiceServer};
use oip_gateway::proto::{self};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Sqlite, SqlitePool};
use tokio::sync::{mpsc, oneshot};
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};

/// Orders waiting for the writer, and who to tell.
type Job = (Vec<proto::Order>, oneshot::Sender<Result<(), String>>);

struct Reference {
    /// None: the ceiling, which answers without storing.
    jobs: Option<mpsc::Sender<Job>>,
}

const COLUMNS: usize = 12;

async fn write(pool: &SqlitePool, orders: &[proto::Order]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    for chunk in orders.chunks(30_000 / COLUMNS) {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO orders (platform_id, order_id, revision, content_hash, worker_id, industry,
             division_code, accepted_at, completed_at, status, vehicle_plate, received_at) ",
        );
        q.push_values(chunk, |mut b, o| {
            b.push_bind(1_i64)
                .push_bind(&o.order_id)
                .push_bind(i64::from(o.revision.unwrap_or(1)))
                .push_bind(&[0u8; 32][..])
                .push_bind(&o.worker_id)
                .push_bind(&o.industry)
                .push_bind(&o.division_code)
                .push_bind(&o.accepted_at)
                .push_bind(&o.completed_at)
                .push_bind(&o.status)
                .push_bind(&o.vehicle_plate)
                .push_bind(0_i64);
        });
        q.push(" ON CONFLICT (platform_id, order_id) DO NOTHING");
        q.build().execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// Writes everything waiting in one transaction, then answers each job.
async fn writer(pool: SqlitePool, mut jobs: mpsc::Receiver<Job>) {
    let mut waiting = Vec::new();
    while jobs.recv_many(&mut waiting, 4096).await > 0 {
        let orders: Vec<proto::Order> = waiting
            .iter_mut()
            .flat_map(|(o, _)| std::mem::take(o))
            .collect();
        let result = write(&pool, &orders).await.map_err(|e| e.to_string());
        for (_, done) in waiting.drain(..) {
            let _ = done.send(result.clone());
        }
    }
}

fn accepted(n: usize) -> proto::BatchOutcome {
    proto::BatchOutcome {
        outcomes: (0..n)
            .map(|i| proto::RecordOutcome {
                index: i as u32,
                outcome: proto::Outcome::Accepted as i32,
                ..Default::default()
            })
            .collect(),
        summary: None,
    }
}

/// Stores `orders` through the writer (one job, committed with whatever else waits)
/// and answers each ACCEPTED after the commit; the ceiling (`jobs` None) answers at once.
async fn store(
    jobs: Option<&mpsc::Sender<Job>>,
    orders: Vec<proto::Order>,
) -> Result<proto::BatchOutcome, Status> {
    let n = orders.len();
    let Some(jobs) = jobs else {
        return Ok(accepted(n));
    };
    let (done, wait) = oneshot::channel();
    jobs.send((orders, done))
        .await
        .map_err(|_| Status::unavailable("writer stopped"))?;
    match wait.await {
        Ok(Ok(())) => Ok(accepted(n)),
        Ok(Err(e)) => Err(Status::unavailable(e)),
        Err(_) => Err(Status::unavailable("writer stopped")),
    }
}

fn absent<T>() -> Result<T, Status> {
    Err(Status::unimplemented("not in the reference program"))
}

#[tonic::async_trait]
impl PlatformService for Reference {
    async fn register_workers(
        &self,
        r: Request<proto::RegisterWorkersRequest>,
    ) -> Result<Response<proto::BatchOutcome>, Status> {
        Ok(Response::new(accepted(r.get_ref().workers.len())))
    }
    async fn report_orders(
        &self,
        r: Request<proto::ReportOrdersRequest>,
    ) -> Result<Response<proto::BatchOutcome>, Status> {
        store(self.jobs.as_ref(), r.into_inner().orders)
            .await
            .map(Response::new)
    }
    async fn stream_workers(
        &self,
        _: Request<Streaming<proto::RegisterWorkersRequest>>,
    ) -> Result<Response<proto::BatchOutcome>, Status> {
        absent()
    }
    async fn stream_orders(
        &self,
        r: Request<Streaming<proto::ReportOrdersRequest>>,
    ) -> Result<Response<proto::BatchOutcome>, Status> {
        let mut inbound = r.into_inner();
        let mut orders = Vec::new();
        while let Some(m) = inbound.message().await? {
            orders.extend(m.orders);
        }
        store(self.jobs.as_ref(), orders).await.map(Response::new)
    }
    async fn submit_declarations(
        &self,
        _: Request<proto::SubmitDeclarationsRequest>,
    ) -> Result<Response<proto::BatchOutcome>, Status> {
        absent()
    }
    async fn stream_declarations(
        &self,
        _: Request<Streaming<proto::SubmitDeclarationsRequest>>,
    ) -> Result<Response<proto::BatchOutcome>, Status> {
        absent()
    }
    async fn report_accidents(
        &self,
        _: Request<proto::ReportAccidentsRequest>,
    ) -> Result<Response<proto::BatchOutcome>, Status> {
        absent()
    }
    async fn stream_accidents(
        &self,
        _: Request<Streaming<proto::ReportAccidentsRequest>>,
    ) -> Result<Response<proto::BatchOutcome>, Status> {
        absent()
    }
    async fn submit(
        &self,
        _: Request<proto::SubmitRequest>,
    ) -> Result<Response<proto::BatchOutcome>, Status> {
        absent()
    }
    type SubmitStreamStream =
        tokio_stream::wrappers::ReceiverStream<Result<proto::BatchOutcome, Status>>;
    async fn submit_stream(
        &self,
        r: Request<Streaming<proto::SubmitRequest>>,
    ) -> Result<Response<Self::SubmitStreamStream>, Status> {
        let mut inbound = r.into_inner();
        let jobs = self.jobs.clone();
        let (answers, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                let answer = match inbound.message().await {
                    Ok(Some(m)) => {
                        let orders = m
                            .records
                            .into_iter()
                            .filter_map(|r| match r.kind {
                                Some(proto::record::Kind::Order(o)) => Some(o),
                                _ => None,
                            })
                            .collect();
                        store(jobs.as_ref(), orders).await
                    }
                    Ok(None) => return,
                    Err(s) => Err(s),
                };
                let stop = answer.is_err();
                if answers.send(answer).await.is_err() || stop {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
    async fn list_workers(
        &self,
        _: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListWorkersResponse>, Status> {
        absent()
    }
    async fn list_orders(
        &self,
        _: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListOrdersResponse>, Status> {
        absent()
    }
    async fn list_rejections(
        &self,
        _: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListRejectionsResponse>, Status> {
        absent()
    }
    async fn list_declarations(
        &self,
        _: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListDeclarationsResponse>, Status> {
        absent()
    }
    async fn list_volume_statements(
        &self,
        _: Request<proto::ListVolumeStatementsRequest>,
    ) -> Result<Response<proto::ListVolumeStatementsResponse>, Status> {
        absent()
    }
    async fn list_deliveries(
        &self,
        _: Request<proto::ListDeliveriesRequest>,
    ) -> Result<Response<proto::ListDeliveriesResponse>, Status> {
        absent()
    }
}

/// Serves until killed, on a database at `db`.
pub async fn serve(db: &Path) -> anyhow::Result<()> {
    let opts = SqliteConnectOptions::from_str(&format!("sqlite:{}", db.display()))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS orders (platform_id INTEGER NOT NULL, order_id TEXT NOT NULL,
         revision INTEGER NOT NULL, content_hash BLOB NOT NULL, worker_id TEXT NOT NULL,
         industry TEXT NOT NULL, division_code TEXT NOT NULL, accepted_at TEXT NOT NULL,
         completed_at TEXT, status TEXT NOT NULL, vehicle_plate TEXT, received_at INTEGER NOT NULL,
         PRIMARY KEY (platform_id, order_id))",
    )
    .execute(&pool)
    .await?;
    let jobs = if std::env::var_os("OIP_BENCH_CEILING").is_some() {
        None
    } else {
        let (jobs, rx) = mpsc::channel(4096);
        tokio::spawn(writer(pool, rx));
        Some(jobs)
    };
    let d = Path::new("certs-example");
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            std::fs::read(d.join("server.pem"))?,
            std::fs::read(d.join("server.key"))?,
        ))
        .client_ca_root(Certificate::from_pem(std::fs::read(d.join("ca.pem"))?));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening on {}", listener.local_addr()?);
    let max = 64 * 1024 * 1024;
    Server::builder()
        .tls_config(tls)?
        .add_service(
            PlatformServiceServer::new(Reference { jobs })
                .max_decoding_message_size(max)
                .max_encoding_message_size(max),
        )
        // With TCP_NODELAY, as the gateway's listener: without it a delayed ACK holds
        // some answers for 40 ms.
        .serve_with_incoming(oip_gateway::tls::incoming(listener))
        .await?;
    Ok(())
}
