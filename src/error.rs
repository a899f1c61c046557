//! The one mapping from failures to gRPC status codes (records.md, call-level errors).
//! Per-record problems are never statuses: they are outcomes.
//!
//! Never INTERNAL for anything a caller did: [`inbound`] rewrites what tonic answers
//! for a request it cannot read (a message over the size limit, one that is not
//! protobuf, a broken compression) into the spec's codes.

use tonic::{Code, Status};

use crate::deadline::DeadlineExceeded;
use crate::identity::IdentityError;
use crate::ingest::IngestError;
use crate::store::StoreError;

/// A call-level failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Unauthenticated(#[from] IdentityError),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    InvalidArgument(String),
    /// The change would leave the system in a state it must not be in (e.g. with no
    /// administrator); nothing was changed.
    #[error("{0}")]
    FailedPrecondition(String),
    /// What the call names does not exist; nothing was changed.
    #[error("{0}")]
    NotFound(String),
    /// Stored data cannot be read; the call stops there rather than skip it.
    #[error("{0}")]
    DataLoss(String),
    /// The caller's deadline passed before the commit; nothing was applied.
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The caller is over one of its limits (rate or calls at once); nothing was
    /// applied. Answered RESOURCE_EXHAUSTED with `grpc-retry-pushback-ms`.
    #[error("{message}")]
    Throttled {
        message: String,
        retry_after_ms: u64,
    },
    /// The gateway is at its global call limit (load shedding); nothing was applied.
    /// Answered UNAVAILABLE with `grpc-retry-pushback-ms`.
    #[error("{message}")]
    Overloaded {
        message: String,
        retry_after_ms: u64,
    },
}

/// The response metadata key carrying retry advice, in milliseconds (gRPC A6, "Retry
/// throttling and pushback"): the earliest a caller should try again.
pub const RETRY_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// The audit log cannot be written: UNAVAILABLE, with what the caller should do
/// (`then`: e.g. "retry later"). Nothing was answered.
pub fn audit_unavailable(then: &str) -> Status {
    Status::unavailable(format!("the audit log cannot be written; {then}"))
}

/// A fault inside the gateway while answering (never for anything a caller sent).
pub fn call_failed(detail: impl std::fmt::Display) -> Status {
    Status::internal(format!("the call failed inside the gateway: {detail}"))
}

/// A path that names no method of the gateway's services: UNIMPLEMENTED at the edge.
pub fn unknown_method() -> Status {
    Status::unimplemented(
        "no such method: see the services of proto/oip/v1/ (server reflection lists them); nothing was applied",
    )
}

/// A malformed `grpc-timeout` header: INVALID_ARGUMENT before any handler runs.
pub fn malformed_timeout() -> Status {
    Status::invalid_argument(
        "the grpc-timeout header is malformed (up to 8 digits and a unit H, M, S, m, u or n); nothing was applied",
    )
}

/// A content type other than protobuf gRPC: UNIMPLEMENTED before any handler runs.
pub fn unsupported_content_type(subtype: &str) -> Status {
    Status::unimplemented(format!(
        "content type {} is not supported: send application/grpc (protobuf); nothing was applied",
        crate::domain::outcome::quoted(subtype)
    ))
}

/// A request message that does not decode as `message` (INVALID_ARGUMENT).
pub fn undecodable(message: &str, at: &str, e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!(
        "the request is not a valid {message} message{at}: {e}; nothing was applied"
    ))
}

/// `status` with its message cut to `max` characters (the code kept).
pub fn bounded(status: &Status, max: usize) -> Status {
    Status::new(
        status.code(),
        crate::domain::outcome::truncate(status.message(), max),
    )
}

/// `status` with what a stream had applied before it failed added to its message.
pub fn with_progress(status: &Status, progress: &str) -> Status {
    let mut s = Status::new(status.code(), format!("{}; {progress}", status.message()));
    *s.metadata_mut() = status.metadata().clone();
    s
}

/// The status a call ends with when its caller sent nothing for `idle`
/// (`connections.idle_stream_timeout_ms`): DEADLINE_EXCEEDED; what it committed
/// before stands.
pub fn idle_stream(idle: std::time::Duration) -> Status {
    Status::deadline_exceeded(format!(
        "nothing was received on this call for {} ms (connections.idle_stream_timeout_ms); it was ended",
        idle.as_millis()
    ))
}

/// `status` with [`RETRY_PUSHBACK`] set to `ms`.
fn with_pushback(mut status: Status, ms: u64) -> Status {
    if let Ok(v) = ms.to_string().parse() {
        status.metadata_mut().insert(RETRY_PUSHBACK, v);
    }
    status
}

impl ApiError {
    /// The status code this failure is answered with (the table of `From<ApiError>`).
    pub fn code(&self) -> Code {
        match self {
            ApiError::Unauthenticated(_) => Code::Unauthenticated,
            ApiError::PermissionDenied(_) => Code::PermissionDenied,
            ApiError::InvalidArgument(_) => Code::InvalidArgument,
            ApiError::FailedPrecondition(_) => Code::FailedPrecondition,
            ApiError::NotFound(_) => Code::NotFound,
            ApiError::DataLoss(_) => Code::DataLoss,
            ApiError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            ApiError::Throttled { .. } => Code::ResourceExhausted,
            ApiError::Overloaded { .. } => Code::Unavailable,
            ApiError::Store(StoreError::Unavailable(_)) => Code::Unavailable,
            ApiError::Store(_) => Code::Internal,
        }
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> Self {
        match e {
            IngestError::Store(s) => ApiError::Store(s),
            IngestError::DeadlineExceeded(d) => d.into(),
            IngestError::NotApplied => {
                ApiError::Store(StoreError::Unavailable(IngestError::NotApplied.to_string()))
            }
        }
    }
}

impl From<DeadlineExceeded> for ApiError {
    fn from(e: DeadlineExceeded) -> Self {
        ApiError::DeadlineExceeded(e.to_string())
    }
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        match e {
            ApiError::Unauthenticated(e) => Status::unauthenticated(e.to_string()),
            ApiError::PermissionDenied(m) => Status::permission_denied(m),
            ApiError::InvalidArgument(m) => Status::invalid_argument(m),
            ApiError::FailedPrecondition(m) => Status::failed_precondition(m),
            ApiError::NotFound(m) => Status::not_found(m),
            ApiError::DataLoss(m) => Status::data_loss(m),
            ApiError::DeadlineExceeded(m) => Status::deadline_exceeded(m),
            ApiError::Throttled {
                message,
                retry_after_ms,
            } => with_pushback(Status::resource_exhausted(message), retry_after_ms),
            ApiError::Overloaded {
                message,
                retry_after_ms,
            } => with_pushback(Status::unavailable(message), retry_after_ms),
            ApiError::Store(StoreError::Unavailable(m)) => {
                tracing::warn!(error = %m, "storage unavailable");
                Status::new(
                    Code::Unavailable,
                    "storage temporarily unavailable; retry the call (it changed nothing)",
                )
            }
            ApiError::Store(other) => {
                tracing::error!(error = %other, "storage failure");
                Status::internal("internal storage error; the call changed nothing")
            }
        }
    }
}

/// What tonic says when a request message is over `max_decoding_message_size`.
const TOO_LARGE: &str = "Error, decoded message length too large: found ";
/// What tonic says when a compressed request inflates past the limit.
const INFLATES_PAST: &str = "Error decompressing: size limit";

/// The status for a request the gateway could not read, in the spec's terms:
/// RESOURCE_EXHAUSTED naming the limit for a message over the size limit;
/// INVALID_ARGUMENT for a message that is not protobuf or a broken compression; other
/// statuses unchanged. Nothing of such a request is applied.
pub fn inbound(status: Status) -> Status {
    let m = status.message();
    match status.code() {
        Code::OutOfRange if m.starts_with(TOO_LARGE) => {
            // "...found {len} bytes, the limit is: {limit} bytes"
            let numbers: Vec<u64> = m
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect();
            match numbers.as_slice() {
                [found, limit, ..] => too_large(Some(*found), *limit),
                _ => Status::resource_exhausted(m.to_string()),
            }
        }
        Code::ResourceExhausted if m.starts_with(INFLATES_PAST) => {
            let limit = m
                .split(|c: char| !c.is_ascii_digit())
                .find_map(|n| n.parse().ok())
                .unwrap_or(0);
            too_large(None, limit)
        }
        Code::Internal if m.starts_with("Unexpected EOF decoding stream") => {
            Status::invalid_argument(
                "the request ended inside a message (its length prefix is longer than what was sent); that message was not applied",
            )
        }
        Code::Internal if m.starts_with("Missing request message") => {
            Status::invalid_argument("the request carries no message; nothing was applied")
        }
        Code::Internal
            if m.starts_with("Error decompressing")
                || m.starts_with("protocol error: received message with") =>
        {
            Status::invalid_argument(format!(
                "the request could not be read: {m}; that message was not applied"
            ))
        }
        _ => status,
    }
}

/// RESOURCE_EXHAUSTED for a request of `found` bytes (None: it inflates past the
/// limit) over `limit`, saying how to split it.
fn too_large(found: Option<u64>, limit: u64) -> Status {
    let size = match found {
        Some(n) => format!("the request message has {n} bytes, more than"),
        None => "the request message decompresses to more than".to_string(),
    };
    let parts = found.map_or(2, |n| n.div_ceil(limit.max(1)));
    Status::resource_exhausted(format!(
        "{size} the limit of {limit} bytes (limits.max_message_bytes), so that message was not applied: send its records in {parts} or more messages"
    ))
}

#[cfg(test)]
mod tests {
    /// This file holds the only constructors of `tonic::Status` on the gateway's side
    /// (the simulator stands for foreign backends and the CLI is a client; tests aside).
    #[test]
    fn statuses_are_made_here_only() {
        let ctor = status_constructors();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut stack = vec![root.clone()];
        let mut found = Vec::new();
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let rel = path
                    .strip_prefix(&root)
                    .unwrap_or(&path)
                    .to_string_lossy()
                    .into_owned();
                if rel == "error.rs" || rel == "backend_sim.rs" || rel.starts_with("cli") {
                    continue;
                }
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                for (n, line) in code.lines().enumerate() {
                    if ctor.iter().any(|c| line.contains(c)) {
                        found.push(format!("{rel}:{}: {}", n + 1, line.trim()));
                    }
                }
            }
        }
        assert!(
            found.is_empty(),
            "statuses made outside error.rs:\n{}",
            found.join("\n")
        );
    }

    fn status_constructors() -> Vec<String> {
        [
            "new",
            "internal",
            "unavailable",
            "invalid_argument",
            "permission_denied",
            "deadline_exceeded",
            "resource_exhausted",
            "not_found",
            "unimplemented",
            "unauthenticated",
            "failed_precondition",
            "cancelled",
            "data_loss",
            "aborted",
            "out_of_range",
            "already_exists",
            "unknown",
            "with_details",
        ]
        .iter()
        .map(|c| format!("Status::{c}("))
        .collect()
    }

    use super::*;

    #[test]
    fn undecodable_requests_get_the_spec_codes() {
        let s = inbound(Status::out_of_range(
            "Error, decoded message length too large: found 40000000 bytes, the limit is: 16777216 bytes",
        ));
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert!(s.message().contains("16777216"), "{}", s.message());
        assert!(
            s.message().contains("3 or more messages"),
            "{}",
            s.message()
        );
        let s = inbound(Status::internal(
            "Error decompressing: corrupt deflate stream, while sending request",
        ));
        assert_eq!(s.code(), Code::InvalidArgument);
        for m in [
            "Unexpected EOF decoding stream.",
            "Missing request message.",
        ] {
            assert_eq!(
                inbound(Status::internal(m)).code(),
                Code::InvalidArgument,
                "{m}"
            );
        }
        let s = inbound(Status::permission_denied("x"));
        assert_eq!(s.code(), Code::PermissionDenied);
    }
}
