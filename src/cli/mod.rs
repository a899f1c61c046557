//! Command-line clients for the government and administrator roles: `admin ...`,
//! `audit verify`, `pull ...`. Each connects over mTLS with the role's certificate.

pub mod admin;
pub mod pull;

use std::path::PathBuf;

use clap::Args;
use tonic::transport::Channel;

/// Where the gateway is and which certificate to present.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    #[arg(
        long,
        global = true,
        env = "OIP_ENDPOINT",
        default_value = "https://127.0.0.1:50051"
    )]
    pub endpoint: String,
    #[arg(long, global = true, default_value = "certs-example/ca.pem")]
    pub ca: PathBuf,
    /// Client certificate (default: the role's example certificate).
    #[arg(long, global = true)]
    pub cert: Option<PathBuf>,
    #[arg(long, global = true)]
    pub key: Option<PathBuf>,
    /// Server name to verify against the gateway's certificate.
    #[arg(long, global = true, default_value = "localhost")]
    pub domain: String,
}

impl Connection {
    /// Connects presenting `--cert`/`--key`, or `certs-example/<stem>.pem|key`.
    pub async fn channel(&self, stem: &str) -> anyhow::Result<Channel> {
        let cert = self
            .cert
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("certs-example/{stem}.pem")));
        let key = self
            .key
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("certs-example/{stem}.key")));
        let tls = crate::tls::client_config(&self.ca, &cert, &key, &self.domain)?;
        Channel::from_shared(self.endpoint.clone())?
            .tls_config(tls)?
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("gateway unreachable at {}: {e}", self.endpoint))
    }
}

/// A gRPC failure as one line: the code and the gateway's message.
pub fn status_line(s: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}
