//! The domain: records, identifiers, times and outcomes. Pure: no tonic, no sqlx.

pub mod audit;
pub mod batch;
pub mod fees;
pub mod grant;
pub mod ids;
pub mod outcome;
pub mod period;
pub mod platform;
pub mod reconcile;
pub mod records;
pub mod time;

pub use outcome::{ErrorCode, Outcome, Rejection, WarningCode};
pub use platform::PlatformProfile;
pub use records::{
    Accident, Declaration, InjuryKind, Order, OrderStatus, Record, RecordKind, Worker, WorkerStatus,
};
