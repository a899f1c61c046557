//! The one mapping from failures to gRPC status codes (records.md, call-level errors).
//! Per-record problems are never statuses: they are outcomes.

use tonic::{Code, Status};

use crate::identity::IdentityError;
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
    #[error("{0}")]
    Store(#[from] StoreError),
}

impl From<ApiError> for Status {
    fn from(e: ApiError) -> Status {
        match e {
            ApiError::Unauthenticated(e) => Status::unauthenticated(e.to_string()),
            ApiError::PermissionDenied(m) => Status::permission_denied(m),
            ApiError::InvalidArgument(m) => Status::invalid_argument(m),
            ApiError::Store(StoreError::Unavailable(m)) => {
                tracing::warn!(error = %m, "storage unavailable");
                Status::new(
                    Code::Unavailable,
                    "storage temporarily unavailable; retry the call, nothing was stored",
                )
            }
            ApiError::Store(other) => {
                tracing::error!(error = %other, "storage failure");
                Status::internal("internal storage error; nothing was stored")
            }
        }
    }
}
