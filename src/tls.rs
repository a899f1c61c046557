//! TLS material: the server's identity and the CA that client certificates must chain
//! to (mutual TLS through tonic's rustls), and the client-side configuration used by
//! the command-line client and the tests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::CertificateDer;

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
#[error("cannot read {key} file {path}: {error}{hint}", hint = if error.kind() == std::io::ErrorKind::NotFound { " (a relative path is read from the working directory)" } else { "" })]
pub struct TlsFileError {
    pub key: &'static str,
    pub path: PathBuf,
    /// Not a `source`: the message holds it already (no repetition in `{:#}`).
    pub error: std::io::Error,
}

/// Reads a TLS file, naming the option or key it came from.
fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|error| TlsFileError {
        key,
        path: path.to_path_buf(),
        error,
    })
}

/// Server side: present `cert`/`key`, require a client certificate chained to `ca`
/// (or, when given, to the CA certificates of `also_trust`, PEM). A missing, untrusted
/// or expired client certificate fails the handshake.
pub fn server_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    also_trust: Option<&str>,
) -> Result<ServerTlsConfig, TlsFileError> {
    let identity = Identity::from_pem(read("tls.cert", cert)?, read("tls.key", key)?);
    let mut roots = read("tls.ca", ca)?;
    if let Some(extra) = also_trust {
        roots.push(b'\n');
        roots.extend_from_slice(extra.as_bytes());
    }
    Ok(ServerTlsConfig::new()
        .identity(identity)
        .client_ca_root(Certificate::from_pem(roots))
        .client_auth_optional(false))
}

/// The gateway port's rustls configuration (served by `connections`): present
/// `cert`/`key`, require a client certificate chained to `ca` and not revoked by any
/// of the CRL files `crls` (PEM or DER, checked on every handshake, the whole chain),
/// offer HTTP/2 only (ALPN `h2`). A missing, untrusted, expired or revoked client
/// certificate fails the handshake. Errors name the configuration key of the file.
pub fn gateway_server_config(
    ca: &Path,
    cert: &Path,
    key: &Path,
    crls: &[PathBuf],
) -> anyhow::Result<(rustls::ServerConfig, CrlNumbers)> {
    use rustls::server::WebPkiClientVerifier;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let cas = read_certificates("tls.ca", ca)?;
    let (added, _) = roots.add_parsable_certificates(cas.clone());
    if added == 0 {
        anyhow::bail!(
            "tls.ca file {} holds no usable CA certificate",
            ca.display()
        );
    }
    let mut revocations = Vec::new();
    let mut numbers = CrlNumbers::new();
    for path in crls {
        for crl in read_crls(path)? {
            let (issuer, number) = check_crl(path, &crl, &cas)?;
            if let Some(n) = number {
                let kept = numbers.entry(issuer).or_insert_with(|| n.clone());
                if n > *kept {
                    *kept = n;
                }
            }
            revocations.push(crl);
        }
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(revocations)
        .build()
        .map_err(|e| anyhow::anyhow!("tls.crls: {e}"))?;
    let verifier = Arc::new(LoggingVerifier { inner: verifier });
    let chain = read_certificates("tls.cert", cert)?;
    let key_pem = read("tls.key", key)?;
    let der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| {
            anyhow::anyhow!("tls.key file {} holds no PEM private key", key.display())
        })?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, der)
        .map_err(|e| anyhow::anyhow!("tls.cert/tls.key: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((config, numbers))
}

/// The client certificate check of the gateway port (webpki, with the CRLs), logging
/// each refusal with the certificate's serial number and the reason, never its subject
/// (a name may be personal data).
#[derive(Debug)]
struct LoggingVerifier {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

/// Refusal lines of [`LoggingVerifier`] (a flood is counted, not logged line by line).
static REFUSALS_LOGGED: std::sync::LazyLock<crate::connections::LogBudget> =
    std::sync::LazyLock::new(crate::connections::LogBudget::new);

impl rustls::server::danger::ClientCertVerifier for LoggingVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now);
        if let Err(e) = &verified {
            use x509_parser::prelude::{FromDer, X509Certificate};
            let serial = X509Certificate::from_der(end_entity)
                .map(|(_, c)| c.raw_serial_as_string().replace(':', "").to_uppercase())
                .unwrap_or_else(|_| "unreadable".into());
            let (log, suppressed) = REFUSALS_LOGGED.take();
            if suppressed > 0 {
                tracing::warn!(
                    suppressed,
                    "more client certificates were refused than logged"
                );
            }
            if log {
                tracing::warn!(%serial, reason = %e, "client certificate refused");
            }
        }
        verified
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// The highest CRL number in force per issuing CA (its name, DER): a list with a lower
/// number than the one in force is stale and would lift revocations.
pub type CrlNumbers = std::collections::BTreeMap<Vec<u8>, x509_parser::num_bigint::BigUint>;

/// Checks one CRL of `path` before it is used: it parses, its issuer is a CA of
/// `tls.ca`, and its signature verifies with that CA's key (a list that cannot be
/// trusted would make rustls refuse every client). Returns its issuer and number.
fn check_crl(
    path: &Path,
    crl: &rustls::pki_types::CertificateRevocationListDer<'_>,
    cas: &[CertificateDer<'static>],
) -> anyhow::Result<(Vec<u8>, Option<x509_parser::num_bigint::BigUint>)> {
    use x509_parser::prelude::{CertificateRevocationList, FromDer, X509Certificate};
    let at = path.display();
    let (_, list) = CertificateRevocationList::from_der(crl.as_ref())
        .map_err(|e| anyhow::anyhow!("tls.crls file {at}: not a CRL: {e}"))?;
    let issuer = list.issuer().as_raw().to_vec();
    let ca = cas
        .iter()
        .filter_map(|c| X509Certificate::from_der(c.as_ref()).ok().map(|(_, c)| c))
        .find(|c| c.subject().as_raw() == issuer.as_slice())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "tls.crls file {at}: issued by {}, which is not a CA of tls.ca",
                list.issuer()
            )
        })?;
    list.verify_signature(ca.public_key()).map_err(|_| {
        anyhow::anyhow!(
            "tls.crls file {at}: its signature does not verify with the key of {} (damaged, or signed by another key)",
            list.issuer()
        )
    })?;
    Ok((issuer, list.crl_number().cloned()))
}

/// Why `next` must not replace `current`: a CA's list with a lower number than the one
/// in force (a stale copy would lift revocations). None when it may.
pub fn stale_crl(current: &CrlNumbers, next: &CrlNumbers) -> Option<String> {
    current.iter().find_map(|(issuer, now)| {
        let new = next.get(issuer)?;
        (new < now).then(|| {
            format!("tls.crls: a CRL numbered {new} replaces one numbered {now} of the same CA: a stale list would lift revocations")
        })
    })
}

/// The certificate revocation lists of one `tls.crls` file: PEM (`BEGIN X509 CRL`,
/// several allowed) or a single DER CRL.
pub fn read_crls(
    path: &Path,
) -> anyhow::Result<Vec<rustls::pki_types::CertificateRevocationListDer<'static>>> {
    let bytes = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("tls.crls file {} cannot be read: {e}", path.display()))?;
    if bytes.starts_with(b"-----") || bytes.windows(8).any(|w| w == b"X509 CRL") {
        let crls: Vec<_> = rustls_pemfile::crls(&mut bytes.as_slice())
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow::anyhow!("tls.crls file {}: {e}", path.display()))?;
        if crls.is_empty() {
            anyhow::bail!(
                "tls.crls file {} holds no CRL (BEGIN X509 CRL)",
                path.display()
            );
        }
        return Ok(crls);
    }
    Ok(vec![bytes.into()])
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

/// The dispatcher's side of the link to the embedded simulator, which presents the
/// gateway's own `cert`: trusts `ca` and the CA certificates of `cert`'s chain, checks
/// the first name `cert` carries (DNS name or IP address; `localhost` if none), and
/// presents the link's throw-away client certificate.
pub fn loopback_client_config(
    ca: &Path,
    cert: &Path,
    link: &crate::certs::LoopbackLink,
) -> anyhow::Result<ClientTlsConfig> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let mut anchors = read("tls.ca", ca)?;
    let chain = read_certificates("tls.cert", cert)?;
    let mut name = None;
    for (i, der) in chain.iter().enumerate() {
        let Ok((_, parsed)) = X509Certificate::from_der(der) else {
            continue;
        };
        if i == 0 {
            if let Ok(Some(san)) = parsed.subject_alternative_name() {
                name = san.value.general_names.iter().find_map(|n| match n {
                    GeneralName::DNSName(d) => Some((*d).to_string()),
                    GeneralName::IPAddress(ip) => match ip.len() {
                        4 => <[u8; 4]>::try_from(*ip)
                            .ok()
                            .map(|b| std::net::IpAddr::from(b).to_string()),
                        16 => <[u8; 16]>::try_from(*ip)
                            .ok()
                            .map(|b| std::net::IpAddr::from(b).to_string()),
                        _ => None,
                    },
                    _ => None,
                });
            }
        } else if parsed.is_ca() {
            anchors.push(b'\n');
            anchors.extend_from_slice(crate::certs::pem_certificate(der).as_bytes());
        }
    }
    Ok(ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(anchors))
        .identity(Identity::from_pem(&link.cert_pem, &link.key_pem))
        .domain_name(name.unwrap_or_else(|| "localhost".to_string())))
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

/// The endpoint as `https://host:port`, or why it is not one (`--endpoint` or
/// `OIP_ENDPOINT`).
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
    let uri: http::Uri = endpoint.parse().map_err(|_| {
        anyhow::anyhow!("--endpoint {endpoint} is not a URL; use https://host:port")
    })?;
    if uri.port().is_none() {
        anyhow::bail!(
            "--endpoint {endpoint} names no port; the gateway listens on 50051 unless configured otherwise (https://{}:50051)",
            uri.host().unwrap_or("host")
        );
    }
    Ok(endpoint.to_string())
}

/// Checks the client's certificate, key and CA before connecting (see [`check_ca`],
/// [`check_pair`]); the certificate must also carry an `oip://` identity.
pub fn check_client_files(ca: &Path, cert: &Path, key: &Path) -> anyhow::Result<()> {
    check_ca("--ca", ca)?;
    let pair = check_pair(("--cert", cert), ("--key", key), Purpose::Client)?;
    if crate::identity::Principal::from_certificate(&pair.leaf).is_err() {
        let gateway_own = String::from_utf8_lossy(&pair.leaf).contains("oip://gateway/");
        if gateway_own {
            anyhow::bail!(
                "--cert {} carries oip://gateway/..., the gateway's own identity towards the backends, not a caller's: use a platform, tax, social-security or admin certificate",
                cert.display()
            );
        }
        anyhow::bail!(
            "--cert {} carries no oip://<role>/<subject> identity a client can use (a SAN URI such as oip://platform/<USCC>): the gateway will not know who is calling",
            cert.display()
        );
    }
    Ok(())
}

/// A TLS file that cannot serve its purpose: the option or configuration key it came
/// from, the file, and why (with what to do).
#[derive(Debug, thiserror::Error)]
#[error("{key} {path}: {reason}")]
pub struct FileProblem {
    /// `tls.cert`, `forward.client_key`, `--cert`, ...
    pub key: String,
    pub path: PathBuf,
    pub reason: String,
}

fn problem(key: &str, path: &Path, reason: impl Into<String>) -> FileProblem {
    FileProblem {
        key: key.to_string(),
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// What a certificate is presented for: its extended key usage must allow it (RFC 5280
/// 4.2.1.12; a certificate without the extension is good for both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// TLS server authentication (`tls.cert`).
    Server,
    /// TLS client authentication (`--cert`, `forward.client_cert`).
    Client,
}

/// A certificate and its key, checked by [`check_pair`].
pub struct CheckedPair {
    /// The end-entity certificate (DER).
    pub leaf: CertificateDer<'static>,
    /// The certificates after it in the file (its chain), DER.
    pub chain: Vec<CertificateDer<'static>>,
    /// Its DNS names and IP addresses (subjectAltName), in order.
    pub server_names: Vec<String>,
    /// Seconds until it expires.
    pub expires_in_secs: i64,
}

/// The PEM certificates of a file, in order.
pub fn read_certificates(
    key: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, FileProblem> {
    let pem =
        std::fs::read(path).map_err(|e| problem(key, path, format!("cannot be read ({e})")))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| problem(key, path, format!("is not valid PEM ({e})")))?;
    if certs.is_empty() {
        let hint = if pem.windows(11).any(|w| w == b"PRIVATE KEY") {
            ": it holds a private key; give the certificate file (.pem) here"
        } else {
            ": expected -----BEGIN CERTIFICATE----- blocks"
        };
        return Err(problem(
            key,
            path,
            format!("holds no PEM certificate{hint}"),
        ));
    }
    Ok(certs)
}

/// Checks a file of trusted CA certificates: at least one, each a CA certificate
/// (basicConstraints cA, RFC 5280 4.2.1.9) that parses. Returns them (DER).
pub fn check_ca(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, FileProblem> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let certs = read_certificates(key, path)?;
    for (i, der) in certs.iter().enumerate() {
        let (_, parsed) = X509Certificate::from_der(der)
            .map_err(|_| problem(key, path, format!("certificate {} cannot be parsed", i + 1)))?;
        if !parsed.is_ca() {
            return Err(problem(
                key,
                path,
                format!(
                    "certificate {} ({}) is not a CA certificate but an end-entity one: give the certificate of the CA that issued it",
                    i + 1,
                    parsed.subject()
                ),
            ));
        }
    }
    Ok(certs)
}

/// Checks a certificate file and its private key: the certificate parses, is valid now
/// (not expired, not before its start), allows `purpose`; the key is PEM (PKCS#8,
/// SEC1 `EC PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`), unencrypted, and belongs to
/// the certificate. `cert`/`key` are (option or configuration key, path).
pub fn check_pair(
    cert: (&str, &Path),
    key: (&str, &Path),
    purpose: Purpose,
) -> Result<CheckedPair, FileProblem> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let (cert_key, cert_path) = cert;
    let (key_key, key_path) = key;
    let mut certs = read_certificates(cert_key, cert_path)?;
    let leaf = certs.remove(0);
    let (_, parsed) = X509Certificate::from_der(&leaf)
        .map_err(|_| problem(cert_key, cert_path, "its certificate cannot be parsed"))?;
    if parsed.is_ca() {
        return Err(problem(
            cert_key,
            cert_path,
            "is a CA certificate; give the certificate issued by it (with its key)",
        ));
    }
    let validity = parsed.validity();
    let now = x509_parser::time::ASN1Time::now();
    let renew = match purpose {
        Purpose::Server => "renew it (README, \"Going to production\")",
        Purpose::Client => {
            "ask the gateway's administrator for a new certificate (README, \"Going to production\")"
        }
    };
    if validity.not_after < now {
        return Err(problem(
            cert_key,
            cert_path,
            format!("expired on {}: {renew}", validity.not_after),
        ));
    }
    if validity.not_before > now {
        return Err(problem(
            cert_key,
            cert_path,
            format!(
                "is not valid before {} (is this machine's clock right?)",
                validity.not_before
            ),
        ));
    }
    if let Ok(Some(eku)) = parsed.extended_key_usage() {
        let eku = eku.value;
        let allowed = eku.any
            || match purpose {
                Purpose::Server => eku.server_auth,
                Purpose::Client => eku.client_auth,
            };
        if !allowed {
            let (wanted, is) = match purpose {
                Purpose::Server => ("a server (serverAuth)", "a client certificate"),
                Purpose::Client => ("a client (clientAuth)", "a server certificate"),
            };
            return Err(problem(
                cert_key,
                cert_path,
                format!("is {is}; its extended key usage does not allow use as {wanted}"),
            ));
        }
    }
    let mut server_names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => server_names.push((*d).to_string()),
                GeneralName::IPAddress(ip) => {
                    let ip = match ip.len() {
                        4 => <[u8; 4]>::try_from(*ip).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(*ip).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    server_names.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    let spki = parsed.public_key().raw.to_vec();
    let expires_in_secs = validity.not_after.timestamp() - now.timestamp();
    let key_pem = std::fs::read(key_path)
        .map_err(|e| problem(key_key, key_path, format!("cannot be read ({e})")))?;
    if key_pem.windows(9).any(|w| w == b"ENCRYPTED") {
        return Err(problem(
            key_key,
            key_path,
            "is encrypted; give it unencrypted (`openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pk8`) and keep the file owner-only",
        ));
    }
    let der = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .ok()
        .flatten()
        .ok_or_else(|| {
            let hint = if key_pem.windows(11).any(|w| w == b"CERTIFICATE") {
                ": it holds a certificate; give the private key file (.key) here"
            } else {
                " (PKCS#8 BEGIN PRIVATE KEY, SEC1 BEGIN EC PRIVATE KEY or PKCS#1 BEGIN RSA PRIVATE KEY)"
            };
            problem(key_key, key_path, format!("holds no PEM private key{hint}"))
        })?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&der).map_err(|_| {
        problem(
            key_key,
            key_path,
            "is a key of a kind TLS cannot use here (ECDSA P-256/P-384, Ed25519 or RSA are)",
        )
    })?;
    if let Some(public) = signing.public_key()
        && public.as_ref() != spki.as_slice()
    {
        return Err(problem(
            key_key,
            key_path,
            format!(
                "does not belong to {cert_key} {}: give the key made with that certificate",
                cert_path.display()
            ),
        ));
    }
    Ok(CheckedPair {
        leaf,
        chain: certs,
        server_names,
        expires_in_secs,
    })
}

/// Why a private-key file is too open: readable or writable by group or others (unix
/// modes), with the command that fixes it; `None` when owner-only (or not unix).
pub fn key_too_open(key: &str, path: &Path) -> Option<String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then(|| {
            format!(
                "{key} {} is readable by others (mode {mode:03o}): `chmod 600 {}`",
                path.display(),
                path.display()
            )
        })
    }
    #[cfg(not(unix))]
    {
        let _ = (key, path);
        None
    }
}

/// A call's failure as one line: the gateway's code and message, or, for a transport
/// failure (the connection broke, typically because the gateway refused the client
/// certificate after the handshake, as TLS 1.3 allows), what happened and what to do.
pub fn explain_status(s: &tonic::Status, cert: &Path) -> String {
    let broken = (s.code() == tonic::Code::Unknown && s.message().contains("transport error"))
        || (s.code() == tonic::Code::Cancelled && s.message().contains("operation was canceled"));
    if s.code() == tonic::Code::Unimplemented
        && (s.message().is_empty() || s.message().contains("not implemented"))
    {
        return "Unimplemented: the endpoint answered but does not serve this call: is --endpoint the gateway's port (not the backend simulator's or another service's)?".to_string();
    }
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
    } else if has("invalid peer certificate") {
        // The gateway's certificate, checked here, failed.
        if has("UnknownIssuer") || has("unknown issuer") {
            format!(
                "the gateway's certificate is not issued by --ca {}: pass the CA that issued it",
                ca.display()
            )
        } else if has("xpired") {
            "the gateway's certificate has expired: its administrator must renew tls.cert (README, \"Going to production\")".to_string()
        } else if has("not valid yet") || has("NotValidYet") {
            "the gateway's certificate is not valid yet: check this machine's clock and the gateway's".to_string()
        } else if has("Revoked") {
            "the gateway's certificate is revoked: ask its administrator".to_string()
        } else {
            format!("the gateway's certificate was refused ({chain}): ask its administrator")
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn demo(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("certs-example")
            .join(name)
    }

    fn refused(r: Result<impl Sized, FileProblem>) -> String {
        match r {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    }

    /// The same key as SEC1 (`EC PRIVATE KEY`): the ECPrivateKey inside PKCS#8's
    /// privateKey OCTET STRING (RFC 5915, RFC 5208), as `openssl ecparam -genkey` writes.
    fn sec1_of(pkcs8_pem: &str) -> String {
        use base64::Engine as _;
        let der = rustls_pemfile::private_key(&mut pkcs8_pem.as_bytes())
            .ok()
            .flatten()
            .map(|k| k.secret_der().to_vec())
            .unwrap_or_default();
        // One DER element at `at`: (header length, content length).
        let element = |at: usize| -> (usize, usize) {
            let first = der[at + 1] as usize;
            if first < 0x80 {
                (2, first)
            } else {
                let n = first & 0x7f;
                let len = der[at + 2..at + 2 + n]
                    .iter()
                    .fold(0, |acc, b| acc << 8 | *b as usize);
                (2 + n, len)
            }
        };
        let (outer, _) = element(0);
        let mut at = outer;
        for _ in 0..2 {
            // version INTEGER, then the AlgorithmIdentifier SEQUENCE.
            let (h, l) = element(at);
            at += h + l;
        }
        let (h, l) = element(at);
        let sec1 = &der[at + h..at + h + l];
        let b64 = base64::engine::general_purpose::STANDARD.encode(sec1);
        format!("-----BEGIN EC PRIVATE KEY-----\n{b64}\n-----END EC PRIVATE KEY-----\n")
    }

    #[test]
    fn a_ca_file_must_hold_ca_certificates() {
        assert_eq!(
            check_ca("tls.ca", &demo("ca.pem")).map(|c| c.len()).ok(),
            Some(1)
        );
        let leaf = refused(check_ca("tls.ca", &demo("server.pem")));
        assert!(
            leaf.contains("tls.ca") && leaf.contains("not a CA certificate"),
            "{leaf}"
        );
        let key = refused(check_ca("tls.ca", &demo("ca.key")));
        assert!(key.contains("holds a private key"), "{key}");
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let e = refused(check_ca("tls.ca", &empty));
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let e = refused(check_ca("tls.ca", &dir.path().join("missing.pem")));
        assert!(e.contains("cannot be read"), "{e}");
    }

    #[test]
    fn a_certificate_must_be_current_fit_its_purpose_and_match_its_key() {
        let pair = |cert: &str, key: &str, purpose| {
            check_pair(("tls.cert", &demo(cert)), ("tls.key", &demo(key)), purpose)
        };
        let ok = pair("server.pem", "server.key", Purpose::Server).expect("the demo server");
        assert_eq!(ok.server_names[0], "localhost");
        assert!(ok.server_names.contains(&"127.0.0.1".to_string()));
        assert!(ok.expires_in_secs > 0);
        assert!(pair("platform-a.pem", "platform-a.key", Purpose::Client).is_ok());

        let e = refused(pair("server.pem", "platform-a.key", Purpose::Server));
        assert!(
            e.starts_with("tls.key") && e.contains("does not belong to tls.cert"),
            "{e}"
        );
        let e = refused(pair("platform-a.pem", "platform-a.key", Purpose::Server));
        assert!(e.contains("is a client certificate"), "{e}");
        let e = refused(pair("server.pem", "server.key", Purpose::Client));
        assert!(e.contains("is a server certificate"), "{e}");
        let e = refused(pair("expired.pem", "expired.key", Purpose::Client));
        assert!(e.starts_with("tls.cert") && e.contains("expired on"), "{e}");
        let e = refused(pair("ca.pem", "ca.key", Purpose::Server));
        assert!(e.contains("is a CA certificate"), "{e}");
        let e = refused(pair("server.pem", "server.pem", Purpose::Server));
        assert!(e.contains("holds a certificate"), "{e}");

        let dir = tempfile::tempdir().expect("tempdir");
        let encrypted = dir.path().join("encrypted.key");
        std::fs::write(
            &encrypted,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n-----END ENCRYPTED PRIVATE KEY-----\n",
        )
        .expect("write");
        let e = refused(check_pair(
            ("--cert", &demo("platform-a.pem")),
            ("--key", &encrypted),
            Purpose::Client,
        ));
        assert!(
            e.contains("is encrypted") && e.contains("openssl pkcs8"),
            "{e}"
        );
    }

    #[test]
    fn sec1_keys_are_accepted_and_still_matched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sec1 = dir.path().join("platform-a.sec1.key");
        let pkcs8 = std::fs::read_to_string(demo("platform-a.key")).expect("read");
        std::fs::write(&sec1, sec1_of(&pkcs8)).expect("write");
        assert!(std::fs::read_to_string(&sec1).is_ok_and(|s| s.contains("BEGIN EC PRIVATE KEY")));
        let cert = demo("platform-a.pem");
        assert!(check_pair(("--cert", &cert), ("--key", &sec1), Purpose::Client).is_ok());
        assert!(check_client_files(&demo("ca.pem"), &cert, &sec1).is_ok());
        let other = dir.path().join("platform-b.sec1.key");
        let pkcs8 = std::fs::read_to_string(demo("platform-b.key")).expect("read");
        std::fs::write(&other, sec1_of(&pkcs8)).expect("write");
        let e = refused(check_pair(
            ("--cert", &cert),
            ("--key", &other),
            Purpose::Client,
        ));
        assert!(e.contains("does not belong"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn a_key_readable_by_others_is_named_with_the_fix() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("server.key");
        std::fs::write(&key, "x").expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let why = key_too_open("tls.key", &key).expect("too open");
        assert!(
            why.contains("mode 644") && why.contains("chmod 600"),
            "{why}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(key_too_open("tls.key", &key), None);
    }
}
