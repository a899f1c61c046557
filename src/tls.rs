//! TLS material: the server's identity and the CA that client certificates must chain
//! to (mutual TLS through tonic's rustls), and the client-side configuration used by
//! the command-line client and the tests.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
#[error("cannot read {key} file {path}: {source}")]
pub struct TlsFileError {
    pub key: &'static str,
    pub path: PathBuf,
    pub source: std::io::Error,
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError {
        key,
        path: path.to_path_buf(),
        source,
    })
}

/// Server side: present `cert`/`key`, require a client certificate chained to `ca`.
/// A missing, untrusted or expired client certificate fails the handshake.
pub fn server_config(ca: &Path, cert: &Path, key: &Path) -> Result<ServerTlsConfig, TlsFileError> {
    let identity = Identity::from_pem(read("tls.cert", cert)?, read("tls.key", key)?);
    Ok(ServerTlsConfig::new()
        .identity(identity)
        .client_ca_root(Certificate::from_pem(read("tls.ca", ca)?))
        .client_auth_optional(false))
}

/// Client side: trust `ca` for the server named `domain`, present `cert`/`key`.
pub fn client_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    domain: &str,
) -> Result<ClientTlsConfig, TlsFileError> {
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca", ca)?))
        .identity(Identity::from_pem(read("cert", cert)?, read("key", key)?))
        .domain_name(domain))
}

/// Accepted connections of a bound listener, with TCP_NODELAY: without it a small
/// response waits for the peer's delayed ACK (about 40 ms per call on Linux).
pub fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
