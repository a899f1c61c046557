//! Who is calling: the client certificate, already verified against the CA in the TLS
//! handshake, names the caller in a SAN URI:
//!
//! | role            | SAN URI                              |
//! |-----------------|--------------------------------------|
//! | platform        | `oip://platform/<USCC>`              |
//! | tax office      | `oip://tax/<office code>`            |
//! | social security | `oip://social-security/<agency code>`|
//! | administrator   | `oip://admin/<name>`                 |
//!
//! The URI only says who the caller is; what it may do is in the grant table (`access`).

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::domain::grant::Role;
use crate::domain::ids::CreditCode;

/// The URI scheme of gateway identities.
pub const SCHEME: &str = "oip://";

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The full identity URI, the key of the grant table.
    pub uri: String,
    /// The role the certificate claims (a grant must still confirm it).
    pub role: Role,
    /// The USCC, office, agency or administrator name.
    pub subject: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("no client certificate")]
    NoCertificate,
    #[error("client certificate cannot be parsed")]
    BadCertificate,
    #[error("client certificate carries no oip:// identity URI")]
    NoIdentity,
    #[error("identity URI {0} is not of the form oip://<role>/<subject>")]
    Malformed(String),
    /// A platform identity whose subject is not a valid USCC (GB 32100-2015).
    #[error("identity URI {0}: the subject is not a valid unified social credit code: {1}")]
    BadCreditCode(String, String),
}

impl Principal {
    /// Parses an identity URI such as `oip://platform/91320100MA1PLTA0X7`.
    pub fn from_uri(uri: &str) -> Result<Self, IdentityError> {
        let malformed = || IdentityError::Malformed(crate::domain::outcome::quoted(uri));
        let rest = uri.strip_prefix(SCHEME).ok_or_else(malformed)?;
        let (role, subject) = rest.split_once('/').ok_or_else(malformed)?;
        let role = Role::parse(role).ok_or_else(malformed)?;
        let valid_subject = !subject.is_empty()
            && subject.len() <= 64
            && subject
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if !valid_subject {
            return Err(malformed());
        }
        if role == Role::Platform
            && let Err(e) = CreditCode::parse(subject)
        {
            return Err(IdentityError::BadCreditCode(
                crate::domain::outcome::quoted(uri),
                e.to_string(),
            ));
        }
        Ok(Self {
            uri: uri.to_string(),
            role,
            subject: subject.to_string(),
        })
    }

    /// The `oip://` URI of the end-entity certificate (DER) whatever its role, also
    /// the gateway's own (`oip://gateway/...`, which is no caller role).
    pub fn uri_of_certificate(der: &[u8]) -> Result<String, IdentityError> {
        let (_, cert) =
            X509Certificate::from_der(der).map_err(|_| IdentityError::BadCertificate)?;
        let san = cert
            .subject_alternative_name()
            .map_err(|_| IdentityError::BadCertificate)?
            .ok_or(IdentityError::NoIdentity)?;
        san.value
            .general_names
            .iter()
            .find_map(|n| match n {
                GeneralName::URI(u) if u.starts_with(SCHEME) => Some((*u).to_string()),
                _ => None,
            })
            .ok_or(IdentityError::NoIdentity)
    }

    /// The identity of the end-entity certificate (DER), the first of the chain.
    pub fn from_certificate(der: &[u8]) -> Result<Self, IdentityError> {
        Self::from_uri(&Self::uri_of_certificate(der)?)
    }

    /// The caller of a tonic request: as the call edge found it ([`Caller`]), or from
    /// the peer certificates the TLS layer set (which also says why there is none).
    pub fn of_request<T>(req: &tonic::Request<T>) -> Result<Self, IdentityError> {
        if let Some(Caller(Some(found))) = req.extensions().get::<Caller>() {
            return Ok(found.clone());
        }
        let certs = req.peer_certs().ok_or(IdentityError::NoCertificate)?;
        let first = certs.first().ok_or(IdentityError::NoCertificate)?;
        Self::from_certificate(first.as_ref())
    }
}

/// The caller of a call, parsed once from its client certificate by the outermost
/// layer that needs it (the audit layer, or [`crate::edge::AdmissionLayer`] when it runs alone) and
/// kept in the request extensions for the layers and handlers after it. `None` inside
/// when the certificate carries no valid `oip://` identity (the handler answers
/// UNAUTHENTICATED).
#[derive(Debug, Clone)]
pub struct Caller(pub Option<crate::identity::Principal>);

impl Caller {
    /// The caller of `req` as the edge found it, or parsed now (calls that did not pass
    /// the edge, such as in unit tests).
    pub fn of<B>(req: &http::Request<B>) -> Self {
        if let Some(c) = req.extensions().get::<Caller>() {
            return c.clone();
        }
        Caller(
            req.extensions()
                .get::<tonic::transport::server::TlsConnectInfo<
                    tonic::transport::server::TcpConnectInfo,
                >>()
                .and_then(|i| i.peer_certs())
                .and_then(|certs| {
                    certs.first().and_then(|c| {
                        Principal::from_certificate(c.as_ref()).ok()
                    })
                }),
        )
    }

    /// The identity URI, or `unknown`.
    pub fn identity(&self) -> &str {
        self.0.as_ref().map_or("unknown", |p| p.uri.as_str())
    }
}

/// The invariants of reading an untrusted certificate (DER) or identity URI, for the
/// fuzz target `fuzz/fuzz_targets/certificate.rs` and the test that replays its corpus:
/// never a panic; an identity found is an `oip://` URI of at most 100 bytes whose role
/// and subject parse back to it; the certificate's identity and the URI read from it
/// agree.
///
/// # Panics
/// When an invariant does not hold (that is the point).
pub fn check_certificate(bytes: &[u8]) {
    let uri = Principal::uri_of_certificate(bytes);
    if let Ok(p) = Principal::from_certificate(bytes) {
        assert_eq!(
            uri.as_ref().ok(),
            Some(&p.uri),
            "the URI read twice differs"
        );
        assert!(p.uri.starts_with(SCHEME) && p.uri.len() <= 100, "{}", p.uri);
        assert_eq!(Principal::from_uri(&p.uri).ok(), Some(p));
    }
    if let Ok(text) = std::str::from_utf8(bytes)
        && let Ok(p) = Principal::from_uri(text)
    {
        assert_eq!(p.uri, text);
        assert!(
            !p.subject.is_empty() && p.subject.len() <= 64,
            "{}",
            p.subject
        );
        assert_eq!(format!("{SCHEME}{}/{}", p.role, p.subject), text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_identity_uris() {
        let p = Principal::from_uri("oip://tax/32050000").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((p.role, p.subject.as_str()), (Role::Tax, "32050000"));
        assert!(Principal::from_uri("oip://platform/NOT-A-USCC").is_err());
        assert!(Principal::from_uri("https://platform/x").is_err());
        assert!(Principal::from_uri("oip://king/x").is_err());
        assert!(Principal::from_uri("oip://admin/").is_err());
        assert!(Principal::from_uri("oip://admin/a b").is_err());
    }

    /// The fuzz targets' corpora (`fuzz/seeds/<target>/`: named inputs;
    /// `fuzz/corpus/<target>/`: a fuzzing run's minimized corpus), replayed as a plain
    /// test on every run: certificates and identity URIs, and platform requests
    /// (`validate::check_request`).
    #[test]
    fn the_fuzz_corpora_of_certificates_and_requests_pass() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        for (target, check, at_least) in [
            ("certificate", check_certificate as fn(&[u8]), 500),
            ("request", crate::validate::check_request as fn(&[u8]), 500),
        ] {
            let dirs = [
                root.join("seeds").join(target),
                root.join("corpus").join(target),
            ];
            let mut n = 0;
            for entry in dirs.iter().flat_map(std::fs::read_dir).flatten().flatten() {
                check(&std::fs::read(entry.path()).unwrap_or_default());
                n += 1;
            }
            assert!(n >= at_least, "{target}: the corpus has {n} inputs");
        }
    }
}
