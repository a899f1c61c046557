//! Certificates for the gateway's mutual TLS, `oip-gateway certs ...`:
//!
//! - `certs [--out DIR] [--force]` writes the **example PKI** (default `certs-example/`):
//!   a CA with its key, the server certificate (localhost, 127.0.0.1, ::1), a client
//!   certificate for every role ([`CLIENTS`], and the gateway's own), and the bad cases
//!   the tests need (another CA's certificate, an expired one, a platform without a
//!   grant). Every key of it is published: for development and tests only.
//! - `certs ca --out DIR` makes a new CA for a pilot: `DIR/ca.pem` and `DIR/ca.key`.
//! - `certs issue` issues, with a CA's certificate and key, a client certificate for an
//!   identity URI (`oip://<role>/<subject>`, see [`crate::identity`]) or a server
//!   certificate for host names.
//! - `certs sign` does the same for the key of a certificate signing request.
//!
//! Keys are ECDSA P-256, written as PEM (PKCS#8, `BEGIN PRIVATE KEY`). Private-key files
//! are readable by their owner only (mode 0600 on unix, also when `--force` overwrites
//! an existing file). Without `--force` a command refuses to run if any file it would
//! write exists, and then writes nothing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, anyhow, bail};
use clap::{Args, Subcommand};
use rcgen::string::{BmpString, UniversalString};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber, date_time_ymd,
};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use time::OffsetDateTime;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, X509Certificate, X509Name};

use crate::domain::ids::CreditCode;
use crate::identity::Principal;

/// Demo platform A (registered and granted by the default configuration).
pub const DEMO_PLATFORM_A: &str = "91320100MA1DEMA010";
/// Demo platform B (registered and granted by the default configuration).
pub const DEMO_PLATFORM_B: &str = "91320500MA1DEMB02D";
/// A platform with a valid certificate but no grant.
pub const UNGRANTED_PLATFORM: &str = "91320200MA1DEMC03N";

/// Client certificates written: file stem and identity URI.
pub const CLIENTS: [(&str, &str); 6] = [
    ("platform-a", "oip://platform/91320100MA1DEMA010"),
    ("platform-b", "oip://platform/91320500MA1DEMB02D"),
    ("platform-ungranted", "oip://platform/91320200MA1DEMC03N"),
    ("tax", "oip://tax/js-tax-320000"),
    ("social-security", "oip://social-security/js-hrss-320000"),
    ("admin", "oip://admin/root"),
];

/// Default validity of an issued certificate, in days.
pub const DEFAULT_DAYS: u32 = 365;
/// Default validity of a CA made by `certs ca`, in days.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// How far before now an issued certificate starts, for clocks a little behind.
const BACKDATE: time::Duration = time::Duration::minutes(5);

/// `oip-gateway certs`: without a subcommand, writes the example PKI.
#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub command: Option<CertsCommand>,
    /// Directory of the example PKI (created if missing).
    #[arg(long, default_value = "certs-example")]
    pub out: PathBuf,
    /// Overwrite files that exist (without it, any existing file stops the run before
    /// anything is written).
    #[arg(long)]
    pub force: bool,
}

/// The production path: a CA of your own and the certificates it issues.
#[derive(Subcommand, Debug)]
pub enum CertsCommand {
    /// Make a new CA (e.g. for a pilot): DIR/ca.pem (its certificate, what `tls.ca`
    /// names) and DIR/ca.key (its private key, owner-only; keep it off the gateway).
    Ca(CaArgs),
    /// Issue a certificate signed by a CA: a client certificate for --identity, or a
    /// server certificate for --server-name. Writes PREFIX.pem (the certificate, then
    /// the CA's) and PREFIX.key (its private key, owner-only); prints the identity or
    /// names, the serial and the expiry.
    Issue(IssueArgs),
    /// Sign a certificate signing request (PKCS#10, PEM) for --identity or
    /// --server-name: only the request's key is used (after checking the request's
    /// signature); its subject, SANs and extensions are ignored. Writes FILE (the
    /// certificate, then the CA's); prints the identity or names, the serial and the
    /// expiry.
    Sign(SignArgs),
    /// Write a certificate revocation list signed by the CA, naming the serials of
    /// certificates no longer to be accepted (what `tls.crls` names). The whole list is
    /// written each time: repeat --revoke for every serial still revoked. The gateway
    /// reloads it without a restart (when the file changes, or on SIGHUP).
    Crl(CrlArgs),
}

/// `certs crl`.
#[derive(Args, Debug)]
pub struct CrlArgs {
    /// The CA's certificate (PEM), the one that issued the revoked certificates.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: PathBuf,
    /// The CA's private key (PKCS#8 PEM).
    #[arg(long, value_name = "FILE")]
    pub ca_key: PathBuf,
    /// Serial number of a revoked certificate, hex as `certs issue` prints it
    /// (repeatable; none: an empty list, nothing revoked).
    #[arg(long = "revoke", value_name = "SERIAL")]
    pub serials: Vec<String>,
    /// The CRL's number: higher than the one it replaces (default: now, in seconds).
    #[arg(long, value_name = "N")]
    pub number: Option<u64>,
    /// Days until the next list is due (its nextUpdate).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
    /// The file to write (replaced if it exists: a CRL is always rewritten whole).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// `certs ca`.
#[derive(Args, Debug)]
pub struct CaArgs {
    /// Directory to write ca.pem and ca.key into (created if missing).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// The CA's common name.
    #[arg(long, default_value = "oip-gateway pilot CA")]
    pub name: String,
    /// Validity in days from now.
    #[arg(long, default_value_t = DEFAULT_CA_DAYS,
          value_parser = clap::value_parser!(u32).range(1..=36_500))]
    pub days: u32,
    /// Overwrite ca.pem and ca.key if they exist.
    #[arg(long)]
    pub force: bool,
}

/// Whom a certificate names: exactly one of an identity URI or server names.
#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
// clap prints these doc comments as `--help`, where <placeholder> is the convention.
#[allow(rustdoc::invalid_html_tags)]
pub struct SubjectArgs {
    /// A client certificate for this identity URI: oip://platform/<USCC>,
    /// oip://tax/<office code>, oip://social-security/<agency code> or
    /// oip://admin/<name>.
    #[arg(long, value_name = "URI")]
    pub identity: Option<String>,
    /// A server certificate for this DNS name or IP address (repeatable; the first is
    /// also the common name).
    #[arg(long = "server-name", value_name = "NAME")]
    pub server_names: Vec<String>,
}

/// `certs issue`.
#[derive(Args, Debug)]
pub struct IssueArgs {
    #[command(flatten)]
    pub subject: SubjectArgs,
    #[command(flatten)]
    pub signing: SigningArgs,
    /// Where to write: PREFIX.pem and PREFIX.key (directories created if missing).
    #[arg(long, value_name = "PREFIX")]
    pub out: PathBuf,
}

/// `certs sign`.
#[derive(Args, Debug)]
pub struct SignArgs {
    /// The request: PEM, `BEGIN CERTIFICATE REQUEST` (e.g. from `openssl req -new`).
    #[arg(long, value_name = "FILE")]
    pub csr: PathBuf,
    #[command(flatten)]
    pub subject: SubjectArgs,
    #[command(flatten)]
    pub signing: SigningArgs,
    /// The certificate file to write (directories created if missing).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

/// The CA that signs, for how long, and whether to overwrite.
#[derive(Args, Debug)]
pub struct SigningArgs {
    /// The CA's certificate (PEM): the issuing CA first, then any CA above it; all of
    /// them follow the new certificate in the file written.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: PathBuf,
    /// The CA's private key: PEM, PKCS#8 (`BEGIN PRIVATE KEY`), unencrypted.
    #[arg(long, value_name = "FILE")]
    pub ca_key: PathBuf,
    /// Validity in days from now (it must end before the CA's).
    #[arg(long, default_value_t = DEFAULT_DAYS,
          value_parser = clap::value_parser!(u32).range(1..=3650))]
    pub days: u32,
    /// Overwrite the files written if they exist.
    #[arg(long)]
    pub force: bool,
}

/// Runs `oip-gateway certs ...`, printing what was written.
pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    match args.command {
        None => {
            generate(&args.out, args.force)?;
            crate::outln!(
                "wrote the example PKI to {} (private keys owner-only; for development and tests only)",
                args.out.display()
            );
        }
        Some(CertsCommand::Ca(a)) => {
            let ca = new_ca_for_pilot(&a.name, a.days)?;
            let not_after = rfc3339(ca.not_after);
            write_files(
                &[
                    file(a.out.join("ca.pem"), ca.issuer.pem(), false),
                    file(a.out.join("ca.key"), ca.issuer.key().serialize_pem(), true),
                ],
                a.force,
            )?;
            crate::outln!("CA: {}", a.name);
            crate::outln!("serial: {}", ca.serial);
            crate::outln!("expires: {not_after}");
            crate::outln!(
                "wrote {} (certificate) and {} (private key, owner-only)",
                a.out.join("ca.pem").display(),
                a.out.join("ca.key").display()
            );
        }
        Some(CertsCommand::Issue(a)) => {
            let subject = Subject::parse(a.subject.identity.as_deref(), &a.subject.server_names)?;
            let (cert, key) = prefixed(&a.out)?;
            let ca = Ca::load(&a.signing.ca_cert, &a.signing.ca_key)?;
            let issued = ca.issue(&subject, a.signing.days)?;
            write_files(
                &[
                    file(cert.clone(), issued.cert.chain_pem, false),
                    file(key.clone(), issued.key_pem, true),
                ],
                a.signing.force,
            )?;
            crate::outln!("{}", subject.describe());
            crate::outln!("serial: {}", issued.cert.serial);
            crate::outln!("expires: {}", rfc3339(issued.cert.not_after));
            crate::outln!(
                "wrote {} (certificate, then the CA's) and {} (private key, owner-only)",
                cert.display(),
                key.display()
            );
        }
        Some(CertsCommand::Crl(a)) => {
            let ca = Ca::load(&a.ca_cert, &a.ca_key)?;
            let now = OffsetDateTime::now_utc();
            let number = a.number.unwrap_or(now.unix_timestamp().max(1) as u64);
            let pem = ca.crl(&a.serials, number, a.days)?;
            if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            // Written beside and renamed: the gateway never reads half a list.
            let partial = a.out.with_extension("partial");
            std::fs::write(&partial, pem)
                .with_context(|| format!("cannot write {}", partial.display()))?;
            std::fs::rename(&partial, &a.out)
                .with_context(|| format!("cannot write {}", a.out.display()))?;
            crate::outln!(
                "wrote {} (CRL number {number}, {} revoked, next update in {} days)",
                a.out.display(),
                a.serials.len(),
                a.days
            );
        }
        Some(CertsCommand::Sign(a)) => {
            let subject = Subject::parse(a.subject.identity.as_deref(), &a.subject.server_names)?;
            let key = csr_public_key(&a.csr)?;
            let ca = Ca::load(&a.signing.ca_cert, &a.signing.ca_key)?;
            let signed = ca.sign(&subject, a.signing.days, &key)?;
            write_files(
                &[file(a.out.clone(), signed.chain_pem, false)],
                a.signing.force,
            )?;
            crate::outln!("{}", subject.describe());
            crate::outln!("serial: {}", signed.serial);
            crate::outln!("expires: {}", rfc3339(signed.not_after));
            crate::outln!("wrote {} (certificate, then the CA's)", a.out.display());
        }
    }
    Ok(())
}

/// The public key of a certificate signing request (PKCS#10 PEM), once its signature
/// shows that the requester holds the private key. Nothing else of the request is used.
/// Errors, naming the file: unreadable; no `CERTIFICATE REQUEST`; unparsable; a bad
/// signature; a key type rcgen cannot certify.
pub fn csr_public_key(path: &Path) -> anyhow::Result<rcgen::SubjectPublicKeyInfo> {
    use x509_parser::certification_request::X509CertificationRequest;

    let at = path.display();
    let pem = std::fs::read(path).with_context(|| format!("cannot read the request {at}"))?;
    let der = rustls_pemfile::csr(&mut pem.as_slice())
        .with_context(|| format!("{at}: not PEM"))?
        .ok_or_else(|| anyhow!("{at}: no certificate request (BEGIN CERTIFICATE REQUEST) in it"))?;
    let (_, req) = X509CertificationRequest::from_der(der.as_ref())
        .map_err(|e| anyhow!("{at}: cannot parse the request: {e}"))?;
    req.verify_signature()
        .map_err(|e| anyhow!("{at}: the request's signature does not verify: {e}"))?;
    rcgen::SubjectPublicKeyInfo::from_der(req.certification_request_info.subject_pki.raw)
        .map_err(|e| anyhow!("{at}: unsupported key: {e}"))
}

/// What an issued certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// A client of the gateway, named by its identity URI: the certificate's only SAN
    /// (a URI), the subject as common name, extended key usage clientAuth.
    Client(Principal),
    /// A TLS server (the gateway): DNS names and IP addresses as SANs, the first also as
    /// common name, extended key usage serverAuth.
    Server(Vec<String>),
}

impl Subject {
    /// From `--identity` or `--server-name`: an identity must parse as
    /// [`Principal::from_uri`] does (a platform's subject is a valid USCC); a server
    /// name must be a DNS name (letters, digits, hyphens; no wildcard) or an IP address.
    ///
    /// Errors name the option and say what is wrong, e.g. `--identity: identity URI
    /// "oip://platform/X" is not of the form oip://<role>/<subject>: a platform's
    /// subject must be its unified social credit code (USCC): credit code must be 18
    /// characters`.
    pub fn parse(identity: Option<&str>, server_names: &[String]) -> anyhow::Result<Self> {
        match (identity, server_names) {
            (Some(uri), []) => Ok(Self::Client(identity_uri(uri)?)),
            (None, [_, ..]) => {
                for n in server_names {
                    server_name(n)?;
                }
                Ok(Self::Server(server_names.to_vec()))
            }
            _ => bail!("give either --identity or --server-name"),
        }
    }

    /// One line for the output: `identity: URI` or `server names: a, b`.
    pub fn describe(&self) -> String {
        match self {
            Self::Client(p) => format!("identity: {}", p.uri),
            Self::Server(names) => format!("server names: {}", names.join(", ")),
        }
    }
}

/// An identity URI as the gateway reads it, with the reason when it is refused.
fn identity_uri(uri: &str) -> anyhow::Result<Principal> {
    Principal::from_uri(uri).map_err(|e| {
        let why = match uri.strip_prefix("oip://platform/").map(CreditCode::parse) {
            Some(Err(c)) => {
                format!("a platform's subject must be its unified social credit code (USCC): {c}")
            }
            _ => "an identity is oip://<role>/<subject>, the role platform, tax, \
                  social-security or admin, and the subject 1 to 64 of A-Z a-z 0-9 - _ ."
                .to_string(),
        };
        let _ = e;
        anyhow!(
            "--identity {}: not an identity the gateway accepts: {why}",
            crate::domain::outcome::quoted(uri)
        )
    })
}

/// A `--server-name` as a SAN: an IP address, or a DNS name.
fn server_name(name: &str) -> anyhow::Result<SanType> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let label = |l: &str| {
        (1..=63).contains(&l.len())
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.len() > 253 || !name.split('.').all(label) {
        bail!(
            "--server-name {:?} is neither a DNS name (letters, digits and hyphens, dot-separated, no wildcard) nor an IP address",
            name
        );
    }
    Ok(SanType::DnsName(name.try_into()?))
}

/// `PREFIX.pem` and `PREFIX.key`; a prefix that already ends in `.pem` or `.key` is
/// refused (it would write `x.pem.pem`).
fn prefixed(prefix: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    if matches!(
        prefix.extension().and_then(|e| e.to_str()),
        Some("pem" | "key")
    ) {
        bail!(
            "--out takes a prefix without extension ({} would write {}.pem and {}.key)",
            prefix.display(),
            prefix.display(),
            prefix.display()
        );
    }
    let with = |ext: &str| {
        let mut p = prefix.as_os_str().to_owned();
        p.push(ext);
        PathBuf::from(p)
    };
    Ok((with(".pem"), with(".key")))
}

/// A certificate signed by a [`Ca`].
#[derive(Debug)]
pub struct Signed {
    /// The certificate, then the CA's certificates (PEM).
    pub chain_pem: String,
    /// The serial number, upper-case hex (as `openssl x509 -serial` prints it).
    pub serial: String,
    pub not_after: OffsetDateTime,
}

/// A certificate issued with a new key by [`Ca::issue`] (no `Debug`: it holds the key).
pub struct Issued {
    pub cert: Signed,
    /// Its private key (PKCS#8 PEM).
    pub key_pem: String,
}

/// A CA that issues: its certificates and its signing key, checked to belong together.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The `--ca-cert` file's certificates, the issuing CA first.
    chain: Vec<CertificateDer<'static>>,
    not_after: OffsetDateTime,
    /// The CA certificate carries a subject key identifier (then issued certificates
    /// name it as their authority key identifier).
    has_key_id: bool,
    /// That key identifier.
    key_id: Option<Vec<u8>>,
    cert_path: PathBuf,
}

impl Ca {
    /// Reads a CA certificate (PEM, the issuing CA first) and its private key (PKCS#8
    /// PEM). Errors, each naming the file: unreadable; no certificate; not a CA
    /// (basicConstraints without cA); key usage without keyCertSign; expired or not yet
    /// valid; a name this command cannot copy (a multi-valued or repeated attribute); a
    /// key that is not PKCS#8 of a supported type (ECDSA P-256/P-384, Ed25519, RSA); a
    /// key that is not the certificate's.
    pub fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<Self> {
        let at = cert_path.display();
        let pem = std::fs::read(cert_path)
            .with_context(|| format!("cannot read the CA certificate {at}"))?;
        let chain = rustls_pemfile::certs(&mut pem.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("{at}: not PEM"))?;
        let first = chain
            .first()
            .ok_or_else(|| anyhow!("{at}: no certificate (BEGIN CERTIFICATE) in it"))?;
        let (_, ca) = X509Certificate::from_der(first)
            .map_err(|e| anyhow!("{at}: cannot parse the certificate: {e}"))?;
        if !ca.is_ca() {
            bail!("{at}: not a CA certificate (basicConstraints cA is not set)");
        }
        if matches!(ca.key_usage(), Ok(Some(ku)) if !ku.value.key_cert_sign()) {
            bail!("{at}: the CA certificate's key usage does not allow keyCertSign");
        }
        let not_before = ca.validity().not_before.to_datetime();
        let not_after = ca.validity().not_after.to_datetime();
        let now = OffsetDateTime::now_utc();
        if now > not_after {
            bail!("{at}: the CA certificate expired on {}", rfc3339(not_after));
        }
        if now < not_before {
            bail!(
                "{at}: the CA certificate is valid only from {}",
                rfc3339(not_before)
            );
        }
        let key_id = ca
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
                _ => None,
            });
        let key_text = std::fs::read_to_string(key_path)
            .with_context(|| format!("cannot read the CA key {}", key_path.display()))?;
        let key = KeyPair::from_pem(&key_text).map_err(|e| {
            anyhow!(
                "{}: not an unencrypted PKCS#8 PEM private key (BEGIN PRIVATE KEY) of a supported type (ECDSA P-256/P-384, Ed25519, RSA); `openssl pkcs8 -topk8 -nocrypt` converts others: {e}",
                key_path.display()
            )
        })?;
        if key.public_key_raw() != ca.public_key().subject_public_key.data.as_ref() {
            bail!(
                "{} is not the private key of the CA certificate {at}",
                key_path.display()
            );
        }
        let mut params = CertificateParams::default();
        params.distinguished_name =
            distinguished_name(ca.subject()).with_context(|| format!("{at}: the CA's name"))?;
        let has_key_id = key_id.is_some();
        if let Some(id) = key_id.clone() {
            params.key_identifier_method = KeyIdMethod::PreSpecified(id);
        }
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ok(Self {
            issuer: Issuer::new(params, key),
            chain: chain.into_iter().map(|c| c.into_owned()).collect(),
            not_after,
            has_key_id,
            key_id,
            cert_path: cert_path.to_path_buf(),
        })
    }

    /// A CRL (PEM) of this CA revoking `serials` (hex, `:` allowed), numbered `number`,
    /// due again in `days`. Errors: a serial that is not hex.
    pub fn crl(&self, serials: &[String], number: u64, days: u32) -> anyhow::Result<String> {
        let now = OffsetDateTime::now_utc();
        let revoked = serials
            .iter()
            .map(|s| {
                let bytes = hex::decode(s.replace(':', "")).map_err(|_| {
                    anyhow!("--revoke {s}: not a serial number in hex (as `certs issue` prints it)")
                })?;
                Ok(rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&bytes),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - BACKDATE,
            next_update: now + time::Duration::days(i64::from(days)),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            // The CRL names its issuer by the CA's own key identifier (RFC 5280 §5.2.1).
            key_identifier_method: match &self.key_id {
                Some(id) => KeyIdMethod::PreSpecified(id.clone()),
                None => KeyIdMethod::Sha256,
            },
        };
        params
            .signed_by(&self.issuer)
            .map_err(|e| anyhow!("cannot sign the CRL: {e}"))?
            .pem()
            .map_err(|e| anyhow!("cannot encode the CRL: {e}"))
    }

    /// Issues a certificate with a new ECDSA P-256 key: valid from 5 minutes ago for
    /// `days` days, a random 16-byte serial, key usage digitalSignature, and the SANs
    /// and extended key usage of `subject` ([`Subject`]). The result is checked the way
    /// a peer checks it (rustls/webpki, with this CA as the only root: clientAuth for a
    /// client, each name for a server). Errors: a validity ending after the CA's; a
    /// certificate that does not verify.
    pub fn issue(&self, subject: &Subject, days: u32) -> anyhow::Result<Issued> {
        let key = KeyPair::generate()?;
        Ok(Issued {
            cert: self.sign(subject, days, &key)?,
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a certificate for `public_key` (a request's: [`csr_public_key`]), as
    /// [`Ca::issue`] describes.
    pub fn sign(
        &self,
        subject: &Subject,
        days: u32,
        public_key: &impl PublicKeyData,
    ) -> anyhow::Result<Signed> {
        let now = OffsetDateTime::now_utc();
        let not_after = now + time::Duration::days(days.into());
        if not_after > self.not_after {
            bail!(
                "--days {days} would end on {}, after the CA certificate {} expires ({}); give fewer days or renew the CA",
                rfc3339(not_after),
                self.cert_path.display(),
                rfc3339(self.not_after)
            );
        }
        let (serial, serial_hex) = random_serial();
        let mut p = CertificateParams::default();
        p.not_before = now - BACKDATE;
        p.not_after = not_after;
        p.serial_number = Some(serial);
        p.is_ca = IsCa::ExplicitNoCa;
        p.use_authority_key_identifier_extension = self.has_key_id;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        match subject {
            Subject::Client(principal) => {
                p.distinguished_name
                    .push(DnType::CommonName, principal.subject.as_str());
                p.subject_alt_names = vec![uri(&principal.uri)?];
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            }
            Subject::Server(names) => {
                p.distinguished_name
                    .push(DnType::CommonName, names[0].as_str());
                p.subject_alt_names = names
                    .iter()
                    .map(|n| server_name(n))
                    .collect::<anyhow::Result<_>>()?;
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            }
        }
        let cert = p.signed_by(public_key, &self.issuer)?;
        self.verify(cert.der(), subject).with_context(|| {
            format!(
                "the certificate issued does not verify against {} (nothing written)",
                self.cert_path.display()
            )
        })?;
        let mut chain_pem = cert.pem();
        for c in &self.chain {
            chain_pem.push_str(&pem_certificate(c));
        }
        Ok(Signed {
            chain_pem,
            serial: serial_hex,
            not_after,
        })
    }

    /// Verifies `leaf` as the gateway (a client certificate) or a client (a server
    /// certificate) would, trusting this CA's certificates.
    fn verify(&self, leaf: &CertificateDer<'_>, subject: &Subject) -> anyhow::Result<()> {
        use rustls::client::danger::ServerCertVerifier;

        let mut roots = rustls::RootCertStore::empty();
        for c in &self.chain {
            roots.add(c.clone())?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let now = UnixTime::now();
        match subject {
            Subject::Client(_) => {
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
                    .build()?
                    .verify_client_cert(leaf, &[], now)?;
            }
            Subject::Server(names) => {
                let v =
                    rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                        .build()?;
                for n in names {
                    let name = ServerName::try_from(n.as_str())?;
                    v.verify_server_cert(leaf, &[], &name, &[], now)?;
                }
            }
        }
        Ok(())
    }
}

/// A CA's subject as rcgen's [`DistinguishedName`], so that issued certificates name
/// their issuer as the CA names itself (what chain building compares). As rcgen's own
/// conversion (behind its `x509-parser` feature): one attribute per RDN, each type once;
/// anything else is refused rather than copied wrongly.
fn distinguished_name(name: &X509Name<'_>) -> anyhow::Result<DistinguishedName> {
    use x509_parser::der_parser::asn1_rs::Tag;

    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let attrs: Vec<_> = rdn.iter().collect();
        let [attr] = attrs.as_slice() else {
            bail!("a multi-valued name part is not supported");
        };
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or_else(|| anyhow!("attribute type {} too large", attr.attr_type()))?
            .collect();
        let ty = DnType::from_oid(&oid);
        if dn.get(&ty).is_some() {
            bail!("attribute {} appears twice", attr.attr_type());
        }
        let value = attr.attr_value();
        let data = value.data;
        let text = || std::str::from_utf8(data).context("not a valid string");
        let value = match value.header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text()?.to_owned()),
            Tag::PrintableString => DnValue::PrintableString(text()?.try_into()?),
            Tag::Ia5String => DnValue::Ia5String(text()?.try_into()?),
            Tag::T61String => DnValue::TeletexString(text()?.try_into()?),
            Tag::BmpString => DnValue::BmpString(BmpString::from_utf16be(data.to_vec())?),
            Tag::UniversalString => {
                DnValue::UniversalString(UniversalString::from_utf32be(data.to_vec())?)
            }
            t => bail!("attribute {} has unsupported type {t}", attr.attr_type()),
        };
        dn.push(ty, value);
    }
    Ok(dn)
}

/// A random positive 16-byte serial (127 random bits), and its upper-case hex.
fn random_serial() -> (SerialNumber, String) {
    use chacha20poly1305::aead::OsRng;
    use chacha20poly1305::aead::rand_core::RngCore;

    let mut bytes = [0u8; 16];
    OsRng.fill_bytes(&mut bytes);
    // Positive and without a leading zero byte: the hex is the DER integer's.
    bytes[0] = (bytes[0] & 0x7f).max(1);
    (SerialNumber::from_slice(&bytes), hex::encode_upper(bytes))
}

/// A DER certificate as PEM.
/// A DER certificate as a PEM block.
pub(crate) fn pem_certificate(der: &[u8]) -> String {
    use base64::Engine;

    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// `2027-05-01T08:00:00Z`.
fn rfc3339(t: OffsetDateTime) -> String {
    chrono::DateTime::from_timestamp(t.unix_timestamp(), 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// A file to write.
struct File {
    path: PathBuf,
    contents: String,
    /// A private key: owner-only.
    secret: bool,
}

fn file(path: PathBuf, contents: String, secret: bool) -> File {
    File {
        path,
        contents,
        secret,
    }
}

/// Writes `files` (creating their directories). Without `force`, any that exists (even a
/// dangling link) stops the run before anything is written: `PATH exists; --force
/// overwrites it (nothing written)`.
fn write_files(files: &[File], force: bool) -> anyhow::Result<()> {
    let existing = files.iter().find(|f| f.path.symlink_metadata().is_ok());
    if let (false, Some(f)) = (force, existing) {
        bail!(
            "{} exists; --force overwrites it (nothing written)",
            f.path.display()
        );
    }
    for f in files {
        if let Some(dir) = f.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        write_file(f, force).with_context(|| format!("cannot write {}", f.path.display()))?;
    }
    Ok(())
}

fn write_file(f: &File, force: bool) -> std::io::Result<()> {
    use std::io::Write;

    let mut o = std::fs::OpenOptions::new();
    o.write(true);
    if force {
        o.create(true).truncate(true);
    } else {
        o.create_new(true);
    }
    #[cfg(unix)]
    if f.secret {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    let mut out = o.open(&f.path)?;
    // An existing file keeps its mode when opened: restrict it before the key goes in.
    #[cfg(unix)]
    if f.secret {
        use std::os::unix::fs::PermissionsExt;
        out.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    out.write_all(f.contents.as_bytes())?;
    out.sync_all()
}

/// A new CA: `name` as common name (and `organisation`), valid over `validity`.
fn new_ca(
    name: &str,
    organisation: Option<&str>,
    validity: (OffsetDateTime, OffsetDateTime),
    constraints: BasicConstraints,
) -> anyhow::Result<CertifiedIssuer<'static, KeyPair>> {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    if let Some(o) = organisation {
        p.distinguished_name.push(DnType::OrganizationName, o);
    }
    p.is_ca = IsCa::Ca(constraints);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (p.not_before, p.not_after) = validity;
    Ok(CertifiedIssuer::self_signed(p, KeyPair::generate()?)?)
}

/// A CA made by `certs ca`.
struct PilotCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    serial: String,
    not_after: OffsetDateTime,
}

/// A CA for a pilot: valid from 5 minutes ago for `days` days, issuing end-entity
/// certificates only (path length 0), with a random serial.
fn new_ca_for_pilot(name: &str, days: u32) -> anyhow::Result<PilotCa> {
    if name.trim().is_empty() || name.chars().count() > 64 {
        bail!("--name must be 1 to 64 characters");
    }
    let now = OffsetDateTime::now_utc();
    let not_after = now + time::Duration::days(days.into());
    let (serial, serial_hex) = random_serial();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.not_before = now - BACKDATE;
    p.not_after = not_after;
    p.serial_number = Some(serial);
    Ok(PilotCa {
        issuer: CertifiedIssuer::self_signed(p, KeyPair::generate()?)?,
        serial: serial_hex,
        not_after,
    })
}

/// An example leaf certificate: `<stem>.pem` and `<stem>.key`.
fn leaf(
    stem: &str,
    issuer: &CertifiedIssuer<'_, KeyPair>,
    sans: Vec<SanType>,
    server: bool,
    validity: (i32, i32),
) -> anyhow::Result<[(String, String, bool); 2]> {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, stem);
    p.subject_alt_names = sans;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![if server {
        ExtendedKeyUsagePurpose::ServerAuth
    } else {
        ExtendedKeyUsagePurpose::ClientAuth
    }];
    p.not_before = date_time_ymd(validity.0, 1, 1);
    p.not_after = date_time_ymd(validity.1, 1, 1);
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, issuer)?;
    Ok([
        (format!("{stem}.pem"), cert.pem(), false),
        (format!("{stem}.key"), key.serialize_pem(), true),
    ])
}

fn uri(u: &str) -> anyhow::Result<SanType> {
    Ok(SanType::URI(u.try_into()?))
}

/// The credentials of the link between the gateway and its embedded backend simulator,
/// made afresh at every start and never written: a throw-away CA (`ca_pem`) and a
/// client certificate issued by it (`oip://gateway/embedded`, clientAuth) with its key.
/// The simulator trusts the CA besides `tls.ca`, so the link works whatever CA the
/// operator's certificates come from.
pub struct LoopbackLink {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The link certificate's identity, `oip://gateway/embedded-<random>`: the only
    /// one the embedded simulator takes deliveries from.
    pub identity: String,
}

/// Makes a [`LoopbackLink`], valid from 5 minutes ago for 10 years (the process's life).
pub fn loopback_link() -> anyhow::Result<LoopbackLink> {
    let now = OffsetDateTime::now_utc();
    let validity = (now - BACKDATE, now + time::Duration::days(3650));
    let ca = new_ca(
        "oip-gateway embedded simulator link",
        None,
        validity,
        BasicConstraints::Constrained(0),
    )?;
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, "gateway");
    // Unguessable: no certificate of the shared CA can claim it.
    let identity = format!(
        "oip://gateway/embedded-{}",
        random_serial().1.to_ascii_lowercase()
    );
    p.subject_alt_names = vec![uri(&identity)?];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    (p.not_before, p.not_after) = validity;
    let key = KeyPair::generate()?;
    let cert = p.signed_by(&key, &ca)?;
    Ok(LoopbackLink {
        identity,
        ca_pem: ca.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Writes the whole example PKI into `dir` (created if missing): `ca.pem`, `ca.key`,
/// `server.*`, one `<stem>.*` per [`CLIENTS`] entry, `gateway.*`, `expired.*`,
/// `untrusted-ca.pem` and `untrusted.*`. Everything is made before anything is written;
/// without `force`, an existing file refuses the run (see `write_files`).
pub fn generate(dir: &Path, force: bool) -> anyhow::Result<()> {
    const VALID: (i32, i32) = (2025, 2045);
    let validity = (date_time_ymd(2025, 1, 1), date_time_ymd(2045, 1, 1));
    let ca = new_ca(
        "oip-gateway example CA",
        Some("oip-gateway example"),
        validity,
        BasicConstraints::Unconstrained,
    )?;
    let mut out = vec![
        ("ca.pem".to_string(), ca.pem(), false),
        ("ca.key".to_string(), ca.key().serialize_pem(), true),
    ];
    out.extend(leaf(
        "server",
        &ca,
        vec![
            SanType::DnsName("localhost".try_into()?),
            SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST)),
        ],
        true,
        VALID,
    )?);
    for (stem, id) in CLIENTS {
        out.extend(leaf(stem, &ca, vec![uri(id)?], false, VALID)?);
    }
    // The gateway's own client certificate towards the backends.
    out.extend(leaf(
        "gateway",
        &ca,
        vec![uri("oip://gateway/oip-gateway")?],
        false,
        VALID,
    )?);
    // Platform A's identity, but expired.
    out.extend(leaf(
        "expired",
        &ca,
        vec![uri(CLIENTS[0].1)?],
        false,
        (2020, 2021),
    )?);
    // Platform A's identity, signed by a CA the gateway does not trust (its key is not
    // kept).
    let rogue = new_ca(
        "untrusted CA",
        Some("oip-gateway example"),
        validity,
        BasicConstraints::Unconstrained,
    )?;
    out.push(("untrusted-ca.pem".to_string(), rogue.pem(), false));
    out.extend(leaf(
        "untrusted",
        &rogue,
        vec![uri(CLIENTS[0].1)?],
        false,
        VALID,
    )?);
    let files: Vec<File> = out
        .into_iter()
        .map(|(name, contents, secret)| file(dir.join(name), contents, secret))
        .collect();
    write_files(&files, force)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_identities_are_valid() {
        for c in [DEMO_PLATFORM_A, DEMO_PLATFORM_B, UNGRANTED_PLATFORM] {
            assert!(CreditCode::parse(c).is_ok(), "{c}");
        }
        for (_, id) in CLIENTS {
            assert!(Principal::from_uri(id).is_ok(), "{id}");
        }
    }

    fn first_cert(path: &Path) -> anyhow::Result<CertificateDer<'static>> {
        let pem = std::fs::read(path)?;
        Ok(rustls_pemfile::certs(&mut pem.as_slice())
            .next()
            .ok_or_else(|| anyhow!("no cert"))??)
    }

    #[test]
    fn generated_certificates_carry_their_identity() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        generate(dir.path(), false)?;
        let der = first_cert(&dir.path().join("platform-b.pem"))?;
        let p = Principal::from_certificate(der.as_ref())?;
        assert_eq!(p.subject, DEMO_PLATFORM_B);
        Ok(())
    }

    #[test]
    fn the_example_ca_issues_and_refuses_what_it_must() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        generate(dir.path(), false)?;
        let d = dir.path();
        let ca = Ca::load(&d.join("ca.pem"), &d.join("ca.key"))?;
        let who = Subject::parse(Some(CLIENTS[3].1), &[])?;
        let issued = ca.issue(&who, 30)?;
        let chain: Vec<_> = rustls_pemfile::certs(&mut issued.cert.chain_pem.as_bytes())
            .collect::<Result<_, _>>()?;
        assert_eq!(chain.len(), 2, "leaf, then the CA");
        assert_eq!(chain[1], first_cert(&d.join("ca.pem"))?);
        let p = Principal::from_certificate(chain[0].as_ref())?;
        assert_eq!(p.uri, CLIENTS[3].1);
        let (_, x) = X509Certificate::from_der(chain[0].as_ref())?;
        assert_eq!(hex::encode_upper(x.raw_serial()), issued.cert.serial);
        assert_eq!(x.issuer().as_raw(), {
            let ca_der = first_cert(&d.join("ca.pem"))?;
            let (_, c) = X509Certificate::from_der(ca_der.as_ref())?;
            c.subject().as_raw().to_vec()
        });

        // A leaf is no CA; another key is not the CA's; a validity past the CA's.
        let err = |r: anyhow::Result<Ca>| r.err().map(|e| format!("{e:#}")).unwrap_or_default();
        assert!(
            err(Ca::load(&d.join("tax.pem"), &d.join("tax.key"))).contains("not a CA"),
            "leaf as CA"
        );
        let e = err(Ca::load(&d.join("ca.pem"), &d.join("tax.key")));
        assert!(e.contains("is not the private key of the CA"), "{e}");
        let e = format!(
            "{:#}",
            ca.issue(&who, 3650 * 10)
                .err()
                .ok_or_else(|| anyhow!("issued"))?
        );
        assert!(e.contains("after the CA certificate"), "{e}");
        Ok(())
    }

    #[test]
    fn identities_and_server_names_are_checked() {
        let e = |i: Option<&str>, s: &[&str]| {
            let s: Vec<String> = s.iter().map(|x| x.to_string()).collect();
            Subject::parse(i, &s)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(
            e(Some("oip://platform/91320100MA1DEMA011"), &[]).contains("check character"),
            "bad USCC"
        );
        assert!(e(Some("oip://king/x"), &[]).contains("the role platform"));
        assert!(e(None, &["*.example.org"]).contains("--server-name"));
        assert!(e(None, &["-x.example.org"]).contains("--server-name"));
        assert_eq!(e(None, &["gw.example.org", "10.0.0.1", "::1"]), "");
        assert_eq!(e(Some("oip://admin/ops-1"), &[]), "");
    }

    #[test]
    fn a_prefix_has_no_extension() {
        assert!(prefixed(Path::new("out/a.pem")).is_err());
        assert_eq!(
            prefixed(Path::new("out/platform.x")).ok(),
            Some((
                PathBuf::from("out/platform.x.pem"),
                PathBuf::from("out/platform.x.key")
            ))
        );
    }
}
