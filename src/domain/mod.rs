//! The domain: records, identifiers, times and outcomes. Pure: no tonic, no sqlx.

pub mod ids;
pub mod outcome;
pub mod platform;
pub mod records;
pub mod time;

pub use outcome::{ErrorCode, Outcome, Rejection, WarningCode};
pub use platform::PlatformProfile;
pub use records::{Order, OrderStatus, Record, RecordKind, Worker, WorkerStatus};
