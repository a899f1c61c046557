//! Assembles the gateway from a [`Config`]: reference data, store (migrated), start-up
//! registrations, services, the mTLS listener. [`Gateway::start`] returns once the
//! listener is bound, with its address; the gateway runs until shut down.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;

use crate::access::{Access, Grant, Role};
use crate::api::platform::PlatformApi;
use crate::config::Config;
use crate::ingest::Ingest;
use crate::proto::platform_service_server::PlatformServiceServer;
use crate::store::Store;
use crate::store::sqlite::SqliteStore;
use crate::{proto, tls};

/// A running gateway.
pub struct Gateway {
    /// The bound listener address (useful with port 0).
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Opens the store and registers the configured platforms and administrators.
pub async fn prepare_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let reference = config.reference()?;
    let store = SqliteStore::open(&config.database_url)
        .await
        .with_context(|| format!("database_url {}", config.database_url))?;
    for reg in config.platform_registrations(&reference)? {
        let profile = store.upsert_platform(&reg).await?;
        store
            .put_grant(&Grant {
                identity: format!("{}platform/{}", crate::identity::SCHEME, profile.uscc),
                role: Role::Platform,
                scope: profile.uscc.to_string(),
                expires_at: None,
            })
            .await?;
    }
    for admin in &config.admins {
        store
            .put_grant(&Grant {
                identity: admin.clone(),
                role: Role::Admin,
                scope: "*".into(),
                expires_at: None,
            })
            .await?;
    }
    Ok(Arc::new(store))
}

impl Gateway {
    /// Builds everything and starts serving; returns once the listener is bound.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let reference = Arc::new(config.reference()?);
        let store = prepare_store(&config).await?;
        let platform = PlatformApi {
            access: Access::new(store.clone()),
            ingest: Ingest::new(store.clone()),
            store: store.clone(),
            reference,
            limits: config.limits.clone(),
        };
        let max = config.limits.max_message_bytes;
        let platform = PlatformServiceServer::new(platform)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);

        let (health_reporter, health) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<PlatformServiceServer<PlatformApi>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;

        let tls = tls::server_config(&config.tls.ca, &config.tls.cert, &config.tls.key)?;
        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("listen: cannot bind {}", config.listen))?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel::<()>();
        let router = Server::builder()
            .tls_config(tls)?
            .add_service(health)
            .add_service(reflection)
            .add_service(platform);
        let task = tokio::spawn(async move {
            router
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = rx.await;
                })
                .await
        });
        tracing::info!(%addr, "gateway listening");
        Ok(Self {
            addr,
            shutdown: Some(tx),
            task,
        })
    }

    /// Stops accepting calls, lets running calls finish, and returns.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await??;
        Ok(())
    }

    /// Runs until the server task ends (it does not on its own) or ctrl-c / SIGTERM.
    pub async fn run_until_signal(self) -> anyhow::Result<()> {
        let term = async {
            #[cfg(unix)]
            {
                if let Ok(mut s) =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                {
                    s.recv().await;
                    return;
                }
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term => {}
        }
        tracing::info!("shutting down");
        self.shutdown().await
    }
}
