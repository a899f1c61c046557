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
        crate::tls::connect(&self.endpoint, &self.ca, &cert, &key, &self.domain).await
    }
}

/// A gRPC failure as one line: the code and the gateway's message (a broken
/// connection explained, see `tls::explain_status`).
pub fn status_line(s: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "{}",
        crate::tls::explain_status(s, std::path::Path::new("(the certificate given)"))
    )
}
