//! Per-record outcomes and the stable error and warning code vocabulary of the spec.

use std::fmt;

/// Why a record was REJECTED. The strings are stable: integrators match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    MissingField,
    FieldTooLong,
    InvalidIdType,
    InvalidIdNumber,
    UnderageWorker,
    InvalidName,
    InvalidMobile,
    InvalidDivisionCode,
    InvalidIndustry,
    IndustryNotRegistered,
    InvalidTime,
    InvalidTimeRange,
    InvalidStatus,
    InvalidPlate,
    InvalidPeriod,
    InvalidAmount,
    InvalidInjuryKind,
    WorkerNotRegistered,
    WorkerNotActive,
    PlatformNotInPilot,
    OrderNotFound,
    OrderWorkerMismatch,
    RevisionConflict,
    StaleRevision,
}

impl ErrorCode {
    /// Every code, for exhaustive tests and documentation.
    pub const ALL: [ErrorCode; 24] = [
        Self::MissingField,
        Self::FieldTooLong,
        Self::InvalidIdType,
        Self::InvalidIdNumber,
        Self::UnderageWorker,
        Self::InvalidName,
        Self::InvalidMobile,
        Self::InvalidDivisionCode,
        Self::InvalidIndustry,
        Self::IndustryNotRegistered,
        Self::InvalidTime,
        Self::InvalidTimeRange,
        Self::InvalidStatus,
        Self::InvalidPlate,
        Self::InvalidPeriod,
        Self::InvalidAmount,
        Self::InvalidInjuryKind,
        Self::WorkerNotRegistered,
        Self::WorkerNotActive,
        Self::PlatformNotInPilot,
        Self::OrderNotFound,
        Self::OrderWorkerMismatch,
        Self::RevisionConflict,
        Self::StaleRevision,
    ];

    /// The wire string, e.g. `WORKER_NOT_REGISTERED`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingField => "MISSING_FIELD",
            Self::FieldTooLong => "FIELD_TOO_LONG",
            Self::InvalidIdType => "INVALID_ID_TYPE",
            Self::InvalidIdNumber => "INVALID_ID_NUMBER",
            Self::UnderageWorker => "UNDERAGE_WORKER",
            Self::InvalidName => "INVALID_NAME",
            Self::InvalidMobile => "INVALID_MOBILE",
            Self::InvalidDivisionCode => "INVALID_DIVISION_CODE",
            Self::InvalidIndustry => "INVALID_INDUSTRY",
            Self::IndustryNotRegistered => "INDUSTRY_NOT_REGISTERED",
            Self::InvalidTime => "INVALID_TIME",
            Self::InvalidTimeRange => "INVALID_TIME_RANGE",
            Self::InvalidStatus => "INVALID_STATUS",
            Self::InvalidPlate => "INVALID_PLATE",
            Self::InvalidPeriod => "INVALID_PERIOD",
            Self::InvalidAmount => "INVALID_AMOUNT",
            Self::InvalidInjuryKind => "INVALID_INJURY_KIND",
            Self::WorkerNotRegistered => "WORKER_NOT_REGISTERED",
            Self::WorkerNotActive => "WORKER_NOT_ACTIVE",
            Self::PlatformNotInPilot => "PLATFORM_NOT_IN_PILOT",
            Self::OrderNotFound => "ORDER_NOT_FOUND",
            Self::OrderWorkerMismatch => "ORDER_WORKER_MISMATCH",
            Self::RevisionConflict => "REVISION_CONFLICT",
            Self::StaleRevision => "STALE_REVISION",
        }
    }

    /// Parses a wire string back (used when reading stored rejections).
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an accepted record carries a warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WarningCode {
    DeclarationMismatch,
    LateDeclaration,
    LateOrder,
    AccidentOutsideOrderWindow,
}

impl WarningCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DeclarationMismatch => "DECLARATION_MISMATCH",
            Self::LateDeclaration => "LATE_DECLARATION",
            Self::LateOrder => "LATE_ORDER",
            Self::AccidentOutsideOrderWindow => "ACCIDENT_OUTSIDE_ORDER_WINDOW",
        }
    }
}

/// A rejected record: one code, the field path inside the record, and a message that
/// names no personal data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub code: ErrorCode,
    /// Path inside the record, e.g. `id_number` or `industries[1]`; empty when the
    /// record as a whole is meant.
    pub field: String,
    pub message: String,
}

impl Rejection {
    pub fn new(code: ErrorCode, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code,
            field: field.into(),
            message: message.into(),
        }
    }

    /// MISSING_FIELD for `field`.
    pub fn missing(field: &str) -> Self {
        Self::new(
            ErrorCode::MissingField,
            field,
            format!("{field} is required"),
        )
    }
}

/// What happened to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Stored (with warnings when the list is not empty).
    Accepted {
        warnings: Vec<WarningCode>,
    },
    /// Same id, revision and content were already stored: nothing changed.
    Duplicate,
    Rejected(Rejection),
}

impl Outcome {
    pub const ACCEPTED: Outcome = Outcome::Accepted {
        warnings: Vec::new(),
    };

    pub fn name(&self) -> &'static str {
        match self {
            Outcome::Accepted { warnings } if warnings.is_empty() => "ACCEPTED",
            Outcome::Accepted { .. } => "ACCEPTED_WITH_WARNINGS",
            Outcome::Duplicate => "DUPLICATE",
            Outcome::Rejected(_) => "REJECTED",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for c in ErrorCode::ALL {
            assert!(seen.insert(c.as_str()));
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
        }
        assert_eq!(ErrorCode::parse("NOPE"), None);
    }
}
