//! Per-record outcomes and the stable error and warning code vocabulary of the spec.

use std::fmt;

/// Why a record was REJECTED. The strings are stable: integrators match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A bulk line that is not valid UTF-8, not a JSON object, names a key twice or an
    /// unknown key, or a value of the wrong JSON type or shape that no field rule names
    /// (a revision of 0, a record id with surrounding spaces or non-printable
    /// characters).
    MalformedRecord,
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
    pub const ALL: [ErrorCode; 25] = [
        Self::MalformedRecord,
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
            Self::MalformedRecord => "MALFORMED_RECORD",
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

/// Longest echo of a caller's value (a record id, a key) in an outcome or a stored
/// rejection, in characters; a longer value is cut and marked by [`TRUNCATION_MARK`].
pub const MAX_ECHO_CHARS: usize = 64;
/// Longest rejection message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 300;
/// Marks a truncated echo. It never appears in a valid id (printable ASCII), so an id
/// ending in it was cut.
pub const TRUNCATION_MARK: char = '…';

/// `s` cut to `max` characters, followed by [`TRUNCATION_MARK`] when it was longer.
pub fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        None => s.to_string(),
        Some((at, _)) => {
            let mut out = String::with_capacity(at + TRUNCATION_MARK.len_utf8());
            out.push_str(&s[..at]);
            out.push(TRUNCATION_MARK);
            out
        }
    }
}

/// A caller's value as it may be echoed: at most [`MAX_ECHO_CHARS`] characters.
pub fn echo(s: &str) -> String {
    truncate(s, MAX_ECHO_CHARS)
}

/// A JSON key for a message or a field path: itself when it looks like one of ours
/// (lower-case snake_case, a letter first, at most 40 characters), else None. Values
/// are never shown in record messages: a value in the wrong field may be personal data
/// (an ID number, a passport number, a name in pinyin), and rejections are kept.
pub fn key_name(k: &str) -> Option<&str> {
    let mut b = k.bytes();
    let ok = k.len() <= 40
        && b.next().is_some_and(|c| c.is_ascii_lowercase())
        && b.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_');
    ok.then_some(k)
}

/// A key for a message: `` `key` `` when [`key_name`] allows it, else its length only.
pub fn shown_key(k: &str) -> String {
    match key_name(k) {
        Some(k) => format!("`{k}`"),
        None => format!("(a key of {} characters, not shown)", k.chars().count()),
    }
}

/// A caller's value in a call-level message (to the caller only, never stored):
/// quoted and cut to [`MAX_ECHO_CHARS`].
pub fn quoted(v: &str) -> String {
    format!("{:?}", echo(v))
}

/// Longest refusal reason of a backend kept or logged, in characters.
pub const MAX_REASON_CHARS: usize = 500;

/// A backend's refusal reason as the gateway keeps, logs and shows it: cut to
/// [`MAX_REASON_CHARS`], and every run of 7 or more digits (with an `X`/`x` check
/// character: ID numbers, mobiles, bank cards) masked as `*`, since the backend may
/// quote the record it refuses. Names cannot be told from other text and are kept.
pub fn scrub_reason(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len().min(MAX_REASON_CHARS * 4));
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.chars().filter(char::is_ascii_digit).count() >= 7 {
            out.extend(std::iter::repeat_n('*', run.chars().count()));
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in reason.chars() {
        if c.is_ascii_digit() || (matches!(c, 'X' | 'x') && !run.is_empty()) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    truncate(&out, MAX_REASON_CHARS)
}

/// A division code for a message: shown when it is 6 ASCII digits (a place, not a
/// person), otherwise its length only.
pub fn shown_division(v: &str) -> String {
    if v.len() == 6 && v.bytes().all(|c| c.is_ascii_digit()) {
        v.to_string()
    } else {
        format!("(a value of {} characters, not shown)", v.chars().count())
    }
}

impl Rejection {
    /// A rejection; the message is cut to [`MAX_MESSAGE_CHARS`].
    pub fn new(code: ErrorCode, field: impl Into<String>, message: impl Into<String>) -> Self {
        let message: String = message.into();
        Self {
            code,
            field: field.into(),
            message: if message.chars().count() > MAX_MESSAGE_CHARS {
                truncate(&message, MAX_MESSAGE_CHARS)
            } else {
                message
            },
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

    #[test]
    fn backend_reasons_lose_numbers_and_length() {
        let r =
            scrub_reason("id_number 11010519491231002X of 张三 (mobile 13800138000) bad; code 42");
        assert!(!r.contains("1101") && !r.contains("1380"), "{r}");
        assert!(r.contains("code 42"), "short numbers stay: {r}");
        assert_eq!(
            scrub_reason(&"x".repeat(10_000)).chars().count(),
            MAX_REASON_CHARS + 1
        );
    }

    #[test]
    fn echoes_are_bounded_and_marked() {
        assert_eq!(echo("O-1"), "O-1");
        let long = "x".repeat(100_000);
        let e = echo(&long);
        assert_eq!(e.chars().count(), MAX_ECHO_CHARS + 1);
        assert!(e.ends_with(TRUNCATION_MARK));
        assert_eq!(echo(&"x".repeat(64)), "x".repeat(64));
        assert_eq!(truncate("张三丰", 2), "张三…");
        assert_eq!(shown_key("vehicle_plat"), "`vehicle_plat`");
        for pii in [
            "11010519491231002X",
            "13800138000",
            "张三",
            "ZhangSan",
            "E12345678",
        ] {
            assert!(!shown_key(pii).contains(pii), "{pii}");
            assert!(!shown_division(pii).contains(pii), "{pii}");
        }
        assert_eq!(shown_division("320100"), "320100");
        assert_eq!(quoted(&"x".repeat(100)).chars().count(), 67);
        let r = Rejection::new(ErrorCode::MissingField, "x", "m".repeat(1000));
        assert_eq!(r.message.chars().count(), MAX_MESSAGE_CHARS + 1);
    }
}
