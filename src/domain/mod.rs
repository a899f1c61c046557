//! The domain: records, identifiers, times and outcomes. Pure: no tonic, no sqlx.

pub mod audit;
pub mod fees;
pub mod ids;
pub mod outcome;
pub mod period;
pub mod platform;
pub mod records;
pub mod time;

pub use outcome::{ErrorCode, Outcome, Rejection, WarningCode};
pub use platform::PlatformProfile;
pub use records::{
    Accident, Declaration, InjuryKind, Order, OrderStatus, Record, RecordKind, Worker, WorkerStatus,
};
