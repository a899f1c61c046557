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

/// Reads a TLS file, naming the option or key it came from.
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

/// Connects a client (the CLI) to the gateway over mutual TLS, checking locally first
/// what can be checked, so that a mistake is named with what to do next instead of a
/// transport error: the endpoint must be `https://host:port`; the certificate must be
/// readable, current (its validity is read) and carry an `oip://` identity; the key
/// must belong to it; the CA file must hold a certificate. Connection failures are
/// told apart: nothing listening, the gateway's certificate not trusted or not naming
/// `domain`, this certificate refused by the gateway.
pub async fn connect(
    endpoint: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
    domain: &str,
) -> anyhow::Result<tonic::transport::Channel> {
    let endpoint = https_endpoint(endpoint)?;
    check_client_files(ca, cert, key)?;
    let tls = client_config(ca, cert, key, domain)?;
    tonic::transport::Channel::from_shared(endpoint.clone())
        .map_err(|e| anyhow::anyhow!("endpoint {endpoint}: {e}"))?
        .tls_config(tls)?
        .connect()
        .await
        .map_err(|e| explain_connect_error(&e, &endpoint, ca, cert, domain))
}

/// The endpoint as `https://host:port`, or why it is not one.
pub fn https_endpoint(endpoint: &str) -> anyhow::Result<String> {
    if let Some(rest) = endpoint.strip_prefix("http://") {
        anyhow::bail!(
            "--endpoint {endpoint}: the gateway speaks mutual TLS only; use https://{rest}"
        );
    }
    if !endpoint.contains("://") {
        anyhow::bail!("--endpoint {endpoint} has no scheme; use https://{endpoint}");
    }
    if !endpoint.starts_with("https://") {
        anyhow::bail!("--endpoint {endpoint}: use https://host:port");
    }
    Ok(endpoint.to_string())
}

/// Checks the client's certificate, key and CA before connecting.
pub fn check_client_files(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<()> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let ca_pem = read("--ca", ca)?;
    if rustls_pemfile::certs(&mut ca_pem.as_slice())
        .filter_map(Result::ok)
        .next()
        .is_none()
    {
        anyhow::bail!("--ca {} holds no PEM certificate", ca.display());
    }
    let cert_pem = read("--cert", cert)?;
    let Some(leaf) = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .filter_map(Result::ok)
        .next()
    else {
        anyhow::bail!("--cert {} holds no PEM certificate", cert.display());
    };
    let (_, parsed) = X509Certificate::from_der(&leaf)
        .map_err(|_| anyhow::anyhow!("--cert {} cannot be parsed", cert.display()))?;
    let validity = parsed.validity();
    let now = x509_parser::time::ASN1Time::now();
    if validity.not_after < now {
        anyhow::bail!(
            "--cert {} expired on {}: ask the gateway's administrator for a new certificate (README, \"Going to production\")",
            cert.display(),
            validity.not_after
        );
    }
    if validity.not_before > now {
        anyhow::bail!(
            "--cert {} is not valid before {}",
            cert.display(),
            validity.not_before
        );
    }
    if crate::identity::Principal::from_certificate(&leaf).is_err() {
        anyhow::bail!(
            "--cert {} carries no oip://<role>/<subject> identity (a SAN URI): the gateway will not know who is calling",
            cert.display()
        );
    }
    let key_pem = read("--key", key)?;
    let key_text = String::from_utf8_lossy(&key_pem);
    let pair = rcgen::KeyPair::from_pem(&key_text).map_err(|_| {
        anyhow::anyhow!(
            "--key {} is not a PEM private key this client can use (PKCS#8 ECDSA, Ed25519 or RSA)",
            key.display()
        )
    })?;
    if pair.public_key_raw() != parsed.public_key().subject_public_key.data.as_ref() {
        anyhow::bail!(
            "--key {} does not belong to --cert {}: pass the key made with that certificate",
            key.display(),
            cert.display()
        );
    }
    Ok(())
}

/// A call's failure as one line: the gateway's code and message, or, for a transport
/// failure (the connection broke, typically because the gateway refused the client
/// certificate after the handshake, as TLS 1.3 allows), what happened and what to do.
pub fn explain_status(s: &tonic::Status, cert: &Path) -> String {
    let broken = (s.code() == tonic::Code::Unknown && s.message().contains("transport error"))
        || (s.code() == tonic::Code::Cancelled && s.message().contains("operation was canceled"));
    if !broken {
        return format!("{:?}: {}", s.code(), s.message());
    }
    let mut chain = s.message().to_string();
    let mut source = std::error::Error::source(s);
    while let Some(e) = source {
        chain.push_str(": ");
        chain.push_str(&e.to_string());
        source = e.source();
    }
    let refused = [
        "alert",
        "certificate",
        "Certificate",
        "connection reset",
        "broken pipe",
    ]
    .iter()
    .any(|n| chain.contains(n));
    if refused || chain.contains("Unknown error") || chain.contains("operation was canceled") {
        format!(
            "the gateway closed the connection: it most likely refused --cert {} (not issued by the CA it trusts, or expired); ask its administrator ({chain})",
            cert.display()
        )
    } else {
        format!("the connection to the gateway failed: {chain}")
    }
}

/// A connection failure as what happened and what to do.
fn explain_connect_error(
    e: &tonic::transport::Error,
    endpoint: &str,
    ca: &Path,
    cert: &Path,
    domain: &str,
) -> anyhow::Error {
    let mut chain = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        chain.push_str(": ");
        chain.push_str(&s.to_string());
        source = s.source();
    }
    let has = |needle: &str| chain.contains(needle);
    let why = if has("Connection refused") {
        format!(
            "nothing listens at {endpoint}: is the gateway running (`oip-gateway serve`), and on that port?"
        )
    } else if has("NotValidForName") || has("not valid for name") {
        format!(
            "the gateway's certificate does not name {domain}: pass the name it was issued for with --domain"
        )
    } else if has("UnknownIssuer") || has("unknown issuer") || has("invalid peer certificate") {
        format!(
            "the gateway's certificate is not issued by --ca {}: pass the CA that issued it",
            ca.display()
        )
    } else if has("alert") || has("CertificateExpired") || has("BadCertificate") {
        format!(
            "the gateway refused --cert {} (not issued by the CA it trusts, revoked or expired): ask its administrator",
            cert.display()
        )
    } else if has("dns error") || has("failed to lookup") {
        format!("cannot resolve the host of {endpoint}")
    } else {
        format!("cannot connect to {endpoint}: {chain}")
    };
    anyhow::anyhow!("{why}")
}
