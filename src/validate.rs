//! Field rules: a wire record becomes a domain record or a per-record rejection
//! (code, field path inside the record, message without personal data).
//!
//! Only rules that need nothing but the record, the clock, the reference data and the
//! caller's platform live here; rules between records are in `crosscheck`.
//!
//! The input rules (README, "Input rules"): absent is never a default (a required
//! string that is empty, or a required number that is absent, is MISSING_FIELD); no
//! value is trimmed or otherwise guessed at (surrounding white space is refused with
//! the field's own code, names excepted: they are trimmed, as the spec's "empty after
//! trimming" says); values must be plausible, not only well-formed (times within
//! [`Bounds`], birth years from 1900); echoed values are bounded
//! (`domain::outcome::echo`, `shown`).

use chrono::NaiveDate;

use crate::domain::RecordKind;
use crate::domain::batch::Candidate;
use crate::domain::fees::Figures;
use crate::domain::ids::{IdNumber, IdType, Mobile, PersonName, Plate};
use crate::domain::outcome::{echo, shown_division};
use crate::domain::period::Period;
use crate::domain::time::{self, Millis, age_on, local_date};
use crate::domain::{
    Accident, Declaration, ErrorCode, InjuryKind, Order, OrderStatus, PlatformProfile, Record,
    Rejection, Worker, WorkerStatus,
};
use crate::proto;
use crate::reference::Reference;

/// Longest record id (worker_id, order_id, ...).
pub const MAX_ID_LEN: usize = 64;
/// Minimum working age (domain.md, Enrolment).
pub const MIN_AGE: i32 = 16;
/// Most entries in a worker's `industries` (the list is a set of the platform's
/// industries; a longer list is FIELD_TOO_LONG).
pub const MAX_INDUSTRIES: usize = 16;
/// Longest accident description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 2000;

/// The bounds of plausible times and months (records.md, INVALID_TIME and
/// INVALID_PERIOD; the spec leaves them open, so they come from `limits.*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// How far in the future a time may be (clock skew), in milliseconds.
    pub max_future_ms: i64,
    /// No time before this instant (epoch milliseconds).
    pub earliest: Millis,
    /// No declaration for a month before this one.
    pub earliest_period: Period,
    /// Longest order, from accepted_at to completed_at, in milliseconds.
    pub max_order_ms: i64,
}

impl Default for Bounds {
    /// 5 minutes of skew; 2000-01-01T00:00:00+08:00; 2022-07 (the scheme's first
    /// month, domain.md); orders of at most 72 hours.
    fn default() -> Self {
        Self {
            max_future_ms: 300_000,
            earliest: 946_656_000_000,
            earliest_period: Period::parse("2022-07").unwrap_or_else(|| unreachable!()),
            max_order_ms: 72 * 3_600_000,
        }
    }
}

/// What validation may look at besides the record.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub now: Millis,
    pub bounds: Bounds,
    pub reference: &'a Reference,
    pub platform: &'a PlatformProfile,
}

impl Context<'_> {
    fn today(&self) -> NaiveDate {
        local_date(self.now)
    }

    fn latest(&self) -> Millis {
        self.now + self.bounds.max_future_ms
    }
}

type Result<T> = std::result::Result<T, Rejection>;

fn reject(code: ErrorCode, field: &str, message: impl Into<String>) -> Rejection {
    Rejection::new(code, field, message)
}

/// True when `v` starts or ends with white space (Unicode, so U+3000 counts).
fn padded(v: &str) -> bool {
    v.starts_with(char::is_whitespace) || v.ends_with(char::is_whitespace)
}

fn padded_rejection(code: ErrorCode, field: &str) -> Rejection {
    reject(
        code,
        field,
        format!("{field} has leading or trailing spaces; send the value without them"),
    )
}

/// A required value: MISSING_FIELD when empty or only white space, `code` when it has
/// surrounding white space.
fn required<'a>(v: &'a str, field: &str, code: ErrorCode) -> Result<&'a str> {
    if v.trim().is_empty() {
        Err(Rejection::missing(field))
    } else if padded(v) {
        Err(padded_rejection(code, field))
    } else {
        Ok(v)
    }
}

/// An optional value: None when empty; `code` when blank or with surrounding white
/// space (refused, not read as absent).
fn optional<'a>(v: &'a str, field: &str, code: ErrorCode) -> Result<Option<&'a str>> {
    if v.is_empty() {
        Ok(None)
    } else if v.trim().is_empty() {
        Err(reject(
            code,
            field,
            format!("{field} is blank; leave it out or send a value"),
        ))
    } else if padded(v) {
        Err(padded_rejection(code, field))
    } else {
        Ok(Some(v))
    }
}

/// A record id: 1..64 printable ASCII without surrounding spaces.
fn record_id<'a>(v: &'a str, field: &str) -> Result<&'a str> {
    if v.is_empty() {
        return Err(Rejection::missing(field));
    }
    let chars = v.chars().count();
    if chars > MAX_ID_LEN {
        return Err(reject(
            ErrorCode::FieldTooLong,
            field,
            format!("{field} has {chars} characters; at most {MAX_ID_LEN}"),
        ));
    }
    if v.trim().is_empty() {
        return Err(Rejection::missing(field));
    }
    if padded(v) {
        return Err(padded_rejection(ErrorCode::MalformedRecord, field));
    }
    if !v.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(reject(
            ErrorCode::MalformedRecord,
            field,
            format!("{field} must be printable ASCII (0x20..0x7E)"),
        ));
    }
    Ok(v)
}

/// A revision: absent is 1 (records.md); 0 is refused, since proto3 and JSON clients
/// that send it meant something else.
fn revision(r: Option<u32>) -> Result<u32> {
    match r {
        None => Ok(1),
        Some(0) => Err(reject(
            ErrorCode::MalformedRecord,
            "revision",
            "revision must be at least 1 (leave it out for 1)",
        )),
        Some(r) => Ok(r),
    }
}

/// The revision a record names for its outcome (1 when absent or invalid).
fn named_revision(r: Option<u32>) -> u32 {
    r.filter(|r| *r > 0).unwrap_or(1)
}

/// Formats an instant for a message, in Asia/Shanghai.
fn when(ms: Millis) -> String {
    time::to_rfc3339(ms)
}

/// A required time within the bounds.
fn time_field(v: &str, field: &str, ctx: &Context<'_>) -> Result<Millis> {
    let v = required(v, field, ErrorCode::InvalidTime)?;
    let invalid = |message: String| reject(ErrorCode::InvalidTime, field, message);
    let earliest = ctx.bounds.earliest;
    let latest = ctx.latest();
    let plausible = |ms: i128| (i128::from(earliest)..=i128::from(latest)).contains(&ms);
    let t = if v.bytes().all(|b| b.is_ascii_digit()) {
        // Epoch milliseconds. Other units are named, not guessed.
        let n: i128 = if v.len() > 30 {
            i128::MAX
        } else {
            v.parse().unwrap_or(i128::MAX)
        };
        if !plausible(n) {
            let unit = if plausible(n.saturating_mul(1000)) {
                " It looks like epoch seconds: send milliseconds (13 digits)."
            } else if plausible(n / 1000) {
                " It looks like epoch microseconds: send milliseconds (13 digits)."
            } else if plausible(n / 1_000_000) {
                " It looks like epoch nanoseconds: send milliseconds (13 digits)."
            } else {
                ""
            };
            let bound = if n < i128::from(earliest) {
                format!("before the earliest accepted time {}", when(earliest))
            } else {
                format!(
                    "in the future (more than {} s after now)",
                    ctx.bounds.max_future_ms / 1000
                )
            };
            return Err(invalid(format!(
                "{field} {n_digits}-digit epoch milliseconds value is {bound}.{unit}",
                n_digits = v.len()
            )));
        }
        i64::try_from(n).unwrap_or(i64::MAX)
    } else {
        match time::parse_wire_time(v) {
            Some(t) => t,
            None => {
                let hint = if chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%dT%H:%M:%S%.f")
                    .is_ok()
                    || chrono::NaiveDateTime::parse_from_str(v, "%Y-%m-%d %H:%M:%S%.f").is_ok()
                {
                    " It has no offset: add one, e.g. +08:00."
                } else {
                    ""
                };
                return Err(invalid(format!(
                    "{field} is not RFC 3339 with an offset (e.g. 2025-07-02T11:00:00+08:00) or epoch milliseconds.{hint}"
                )));
            }
        }
    };
    if t < earliest {
        return Err(invalid(format!(
            "{field} {} is before the earliest accepted time {}",
            when(t),
            when(earliest)
        )));
    }
    if t > latest {
        return Err(invalid(format!(
            "{field} {} is in the future (more than {} s after now)",
            when(t),
            ctx.bounds.max_future_ms / 1000
        )));
    }
    Ok(t)
}

fn optional_time(v: &str, field: &str, ctx: &Context<'_>) -> Result<Option<Millis>> {
    match optional(v, field, ErrorCode::InvalidTime)? {
        None => Ok(None),
        Some(v) => time_field(v, field, ctx).map(Some),
    }
}

/// A known industry code that the platform is registered for.
fn industry(v: &str, field: &str, ctx: &Context<'_>) -> Result<String> {
    let v = required(v, field, ErrorCode::InvalidIndustry)?;
    if !ctx.reference.is_industry(v) {
        return Err(reject(
            ErrorCode::InvalidIndustry,
            field,
            format!(
                "unknown industry (not shown); the industries are {}",
                ctx.reference.industries().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    if !ctx.platform.industries.contains(v) {
        return Err(reject(
            ErrorCode::IndustryNotRegistered,
            field,
            format!("the platform is not registered for {v}"),
        ));
    }
    Ok(v.to_string())
}

fn check_age(birth: Option<NaiveDate>, at: Millis, field: &str, what: &str) -> Result<()> {
    match birth {
        Some(b) if age_on(b, local_date(at)) < MIN_AGE => Err(reject(
            ErrorCode::UnderageWorker,
            field,
            format!("worker is under {MIN_AGE} at {what}"),
        )),
        _ => Ok(()),
    }
}

/// Validates a worker registration.
pub fn worker(w: &proto::Worker, ctx: &Context<'_>) -> Result<Worker> {
    let worker_id = record_id(&w.worker_id, "worker_id")?;
    let revision = revision(w.revision)?;
    let id_type = match optional(&w.id_type, "id_type", ErrorCode::InvalidIdType)? {
        None => IdType::ResidentId,
        Some(v) => IdType::parse(v).ok_or_else(|| {
            reject(
                ErrorCode::InvalidIdType,
                "id_type",
                "id_type must be RESIDENT_ID, HK_MACAO_PERMIT, TAIWAN_PERMIT or FOREIGN_PERMANENT_RESIDENT",
            )
        })?,
    };
    let id_number = IdNumber::parse(
        id_type,
        required(&w.id_number, "id_number", ErrorCode::InvalidIdNumber)?,
        ctx.today(),
    )
    .map_err(|e| reject(ErrorCode::InvalidIdNumber, "id_number", e.to_string()))?;
    if w.name.is_empty() {
        return Err(Rejection::missing("name"));
    }
    let name = PersonName::parse(&w.name)
        .map_err(|e| reject(ErrorCode::InvalidName, "name", e.to_string()))?;
    let mobile = Mobile::parse(required(&w.mobile, "mobile", ErrorCode::InvalidMobile)?)
        .map_err(|_| {
            reject(
                ErrorCode::InvalidMobile,
                "mobile",
                "not a mainland mobile number (11 digits starting 13..19, no country code or separators)",
            )
        })?;
    if w.industries.is_empty() {
        return Err(Rejection::missing("industries"));
    }
    if w.industries.len() > MAX_INDUSTRIES {
        return Err(reject(
            ErrorCode::FieldTooLong,
            "industries",
            format!(
                "industries has {} entries; at most {MAX_INDUSTRIES}",
                w.industries.len()
            ),
        ));
    }
    let mut industries = w
        .industries
        .iter()
        .enumerate()
        .map(|(i, v)| industry(v, &format!("industries[{i}]"), ctx))
        .collect::<Result<Vec<_>>>()?;
    industries.sort();
    industries.dedup();
    let registered_at = time_field(&w.registered_at, "registered_at", ctx)?;
    check_age(
        id_number.birth_date(),
        registered_at,
        "id_number",
        "registered_at",
    )?;
    let status = WorkerStatus::parse(required(&w.status, "status", ErrorCode::InvalidStatus)?)
        .ok_or_else(|| {
            reject(
                ErrorCode::InvalidStatus,
                "status",
                "status must be ACTIVE or LEFT (upper case)",
            )
        })?;
    let left_at = optional_time(&w.left_at, "left_at", ctx)?;
    match (status, left_at) {
        (WorkerStatus::Left, None) => {
            return Err(reject(
                ErrorCode::InvalidStatus,
                "left_at",
                "left_at is required when status is LEFT",
            ));
        }
        (WorkerStatus::Active, Some(_)) => {
            return Err(reject(
                ErrorCode::InvalidStatus,
                "left_at",
                "left_at is only allowed when status is LEFT",
            ));
        }
        (WorkerStatus::Left, Some(l)) if l < registered_at => {
            return Err(reject(
                ErrorCode::InvalidTime,
                "left_at",
                "left_at is before registered_at",
            ));
        }
        _ => {}
    }
    Ok(Worker {
        worker_id: worker_id.to_string(),
        revision,
        id_number,
        name,
        mobile,
        industries,
        registered_at,
        status,
        left_at,
    })
}

/// A known division served by this gateway; `city_or_county` refuses a province.
fn division<'a>(v: &'a str, ctx: &Context<'_>, city_or_county: bool) -> Result<&'a str> {
    let v = required(v, "division_code", ErrorCode::InvalidDivisionCode)?;
    let invalid = |m: String| reject(ErrorCode::InvalidDivisionCode, "division_code", m);
    match ctx.reference.division(v) {
        Some(d) if city_or_county && d.is_province() => Err(invalid(
            "an order is taken in a city or county, not a province".into(),
        )),
        Some(_) if ctx.reference.serves(v) => Ok(v),
        Some(_) => Err(invalid(format!(
            "division {v} is not served by this gateway"
        ))),
        None => Err(invalid(format!(
            "unknown division {} (a 6-digit GB/T 2260 code)",
            shown_division(v)
        ))),
    }
}

/// Validates an order.
pub fn order(o: &proto::Order, ctx: &Context<'_>) -> Result<Order> {
    let order_id = record_id(&o.order_id, "order_id")?;
    let revision = revision(o.revision)?;
    let worker_id = record_id(&o.worker_id, "worker_id")?;
    let industry = industry(&o.industry, "industry", ctx)?;
    let division_code = division(&o.division_code, ctx, true)?;
    let accepted_at = time_field(&o.accepted_at, "accepted_at", ctx)?;
    let status = OrderStatus::parse(required(&o.status, "status", ErrorCode::InvalidStatus)?)
        .ok_or_else(|| {
            reject(
                ErrorCode::InvalidStatus,
                "status",
                "status must be COMPLETED or CANCELLED (upper case)",
            )
        })?;
    let completed_at = match status {
        OrderStatus::Completed => Some(time_field(&o.completed_at, "completed_at", ctx)?),
        OrderStatus::Cancelled => optional_time(&o.completed_at, "completed_at", ctx)?,
    };
    if completed_at.is_some_and(|c| c < accepted_at) {
        return Err(reject(
            ErrorCode::InvalidTimeRange,
            "completed_at",
            "completed_at is before accepted_at",
        ));
    }
    if completed_at.is_some_and(|c| c - accepted_at > ctx.bounds.max_order_ms) {
        return Err(reject(
            ErrorCode::InvalidTimeRange,
            "completed_at",
            format!(
                "completed_at is more than {} hours after accepted_at",
                ctx.bounds.max_order_ms / 3_600_000
            ),
        ));
    }
    let vehicle_plate = optional(&o.vehicle_plate, "vehicle_plate", ErrorCode::InvalidPlate)?
        .map(|v| {
            Plate::parse(v).map_err(|_| {
                reject(
                    ErrorCode::InvalidPlate,
                    "vehicle_plate",
                    "not a GA 36-2018 plate",
                )
            })
        })
        .transpose()?;
    Ok(Order {
        order_id: order_id.to_string(),
        revision,
        worker_id: worker_id.to_string(),
        industry,
        division_code: division_code.to_string(),
        accepted_at,
        completed_at,
        status,
        vehicle_plate,
    })
}

/// Most billable orders one declaration may state (a trillion: far above any
/// platform's month, far below where sums could overflow).
pub const MAX_DECLARED_ORDERS: i64 = 1_000_000_000_000;
/// Largest fee one declaration may state, in fen (a trillion yuan).
pub const MAX_DECLARED_FEN: i64 = 100_000_000_000_000;

/// A required whole number from 0 to `max` (records.md: absent is never 0).
fn amount(v: Option<i64>, field: &str, max: i64) -> Result<i64> {
    match v {
        None => Err(Rejection::missing(field)),
        Some(v) if v < 0 => Err(reject(
            ErrorCode::InvalidAmount,
            field,
            format!("{field} must not be negative"),
        )),
        Some(v) if v > max => Err(reject(
            ErrorCode::InvalidAmount,
            field,
            format!("{field} is implausibly large (at most {max})"),
        )),
        Some(v) => Ok(v),
    }
}

/// Validates a monthly declaration.
pub fn declaration(d: &proto::Declaration, ctx: &Context<'_>) -> Result<Declaration> {
    let declaration_id = record_id(&d.declaration_id, "declaration_id")?;
    let revision = revision(d.revision)?;
    let period = Period::parse(required(&d.period, "period", ErrorCode::InvalidPeriod)?)
        .ok_or_else(|| {
            reject(
                ErrorCode::InvalidPeriod,
                "period",
                "period must be YYYY-MM (e.g. 2025-09)",
            )
        })?;
    if period < ctx.bounds.earliest_period {
        return Err(reject(
            ErrorCode::InvalidPeriod,
            "period",
            format!(
                "{period} is before the earliest accepted period {}",
                ctx.bounds.earliest_period
            ),
        ));
    }
    if !period.has_ended(ctx.now) {
        return Err(reject(
            ErrorCode::InvalidPeriod,
            "period",
            format!("{period} has not ended"),
        ));
    }
    let division_code = division(&d.division_code, ctx, false)?;
    let industry = industry(&d.industry, "industry", ctx)?;
    let figures = Figures {
        order_count: amount(d.order_count, "order_count", MAX_DECLARED_ORDERS)?,
        amount_fen: amount(d.amount_fen, "amount_fen", MAX_DECLARED_FEN)?,
    };
    Ok(Declaration {
        declaration_id: declaration_id.to_string(),
        revision,
        period,
        division_code: division_code.to_string(),
        industry,
        figures,
    })
}

/// Validates an accident report.
pub fn accident(a: &proto::Accident, ctx: &Context<'_>) -> Result<Accident> {
    let report_id = record_id(&a.report_id, "report_id")?;
    let revision = revision(a.revision)?;
    let worker_id = record_id(&a.worker_id, "worker_id")?;
    let order_id = record_id(&a.order_id, "order_id")?;
    let occurred_at = time_field(&a.occurred_at, "occurred_at", ctx)?;
    let division_code = division(&a.division_code, ctx, false)?;
    let injury_kind = InjuryKind::parse(required(
        &a.injury_kind,
        "injury_kind",
        ErrorCode::InvalidInjuryKind,
    )?)
    .ok_or_else(|| {
        reject(
            ErrorCode::InvalidInjuryKind,
            "injury_kind",
            "injury_kind must be TRAFFIC, FALL, ASSAULT or OTHER (upper case)",
        )
    })?;
    let chars = a.description.chars().count();
    if chars > MAX_DESCRIPTION_CHARS {
        return Err(reject(
            ErrorCode::FieldTooLong,
            "description",
            format!("description has {chars} characters; at most {MAX_DESCRIPTION_CHARS}"),
        ));
    }
    Ok(Accident {
        report_id: report_id.to_string(),
        revision,
        worker_id: worker_id.to_string(),
        order_id: order_id.to_string(),
        occurred_at,
        division_code: division_code.to_string(),
        injury_kind,
        description: a.description.clone(),
    })
}

/// The kind, id and revision a wire record names, whatever its validity, for its
/// outcome: the id is bounded (`domain::outcome::echo`), a revision absent or 0 is 1.
/// None when it has no kind.
pub fn identity(r: &proto::Record) -> Option<(RecordKind, String, u32)> {
    let (kind, id, rev) = match r.kind.as_ref()? {
        proto::record::Kind::Worker(w) => (RecordKind::Worker, &w.worker_id, w.revision),
        proto::record::Kind::Order(o) => (RecordKind::Order, &o.order_id, o.revision),
        proto::record::Kind::Declaration(d) => {
            (RecordKind::Declaration, &d.declaration_id, d.revision)
        }
        proto::record::Kind::Accident(a) => (RecordKind::Accident, &a.report_id, a.revision),
    };
    Some((kind, echo(id), named_revision(rev)))
}

/// The id and revision of a record of one kind, as [`identity`] names them.
pub fn name_of(id: &str, revision: Option<u32>) -> (String, u32) {
    (echo(id), named_revision(revision))
}

/// A wire record as it enters the cross-checks: validated, or rejected, and named.
pub fn candidate(r: &proto::Record, ctx: &Context<'_>) -> Candidate {
    let (kind, id, revision) = match identity(r) {
        Some((kind, id, revision)) => (Some(kind), id, revision),
        None => (None, String::new(), 1),
    };
    Candidate {
        kind,
        id,
        revision,
        record: record(r, ctx),
    }
}

/// Validates a record of any kind.
pub fn record(r: &proto::Record, ctx: &Context<'_>) -> Result<Record> {
    match &r.kind {
        Some(proto::record::Kind::Worker(w)) => worker(w, ctx).map(Record::Worker),
        Some(proto::record::Kind::Order(o)) => order(o, ctx).map(Record::Order),
        Some(proto::record::Kind::Declaration(d)) => declaration(d, ctx).map(Record::Declaration),
        Some(proto::record::Kind::Accident(a)) => accident(a, ctx).map(Record::Accident),
        None => Err(Rejection::missing("kind")),
    }
}

/// Check the underage rule for an order against the worker's birth date (needs the
/// stored worker, so `crosscheck` calls it).
pub fn order_age(birth: Option<NaiveDate>, accepted_at: Millis) -> Result<()> {
    check_age(birth, accepted_at, "worker_id", "accepted_at")
}

/// The invariants of validating untrusted request bytes, for the fuzz target
/// `fuzz/fuzz_targets/request.rs` and the test that replays its corpus: `bytes`
/// decoded as each platform request (`SubmitRequest`, `RegisterWorkersRequest`,
/// `ReportOrdersRequest`, `SubmitDeclarationsRequest`, `ReportAccidentsRequest`), and
/// every record validated against the demo platform in Jiangsu: never a panic, and a
/// rejection says why in at most 1,000 characters, names a field path of at most 100,
/// and never repeats a value of the record that could be personal data (8 characters
/// or more, with a digit or a character beyond ASCII).
///
/// # Panics
/// When an invariant does not hold (that is the point).
pub fn check_request(bytes: &[u8]) {
    use prost::Message as _;
    use std::sync::LazyLock;
    static REFERENCE: LazyLock<Option<Reference>> =
        LazyLock::new(|| Reference::load(None, None, &["320000".to_string()]).ok());
    static PLATFORM: LazyLock<Option<PlatformProfile>> = LazyLock::new(|| {
        let uscc = crate::domain::ids::CreditCode::parse(crate::certs::DEMO_PLATFORM_A).ok()?;
        let start = NaiveDate::from_ymd_opt(2025, 7, 1)?;
        Some(PlatformProfile {
            id: 1,
            uscc,
            name: "fuzz".into(),
            industries: ["RIDE_HAILING", "INSTANT_DELIVERY", "INTRACITY_FREIGHT"]
                .into_iter()
                .map(String::from)
                .collect(),
            pilot_starts: ["320100", "320200", "320500"]
                .into_iter()
                .map(|d| (d.to_string(), start))
                .collect(),
            delivery_tier: crate::domain::platform::DeliveryTier::A,
            delivery_tiers: Default::default(),
        })
    });
    let (Some(reference), Some(platform)) = (REFERENCE.as_ref(), PLATFORM.as_ref()) else {
        panic!("the shipped reference data and the demo platform load");
    };
    let ctx = Context {
        // 2026-01-01T00:00:00+08:00: records of 2025 are in the past.
        now: 1_767_196_800_000,
        bounds: Bounds::default(),
        reference,
        platform,
    };
    let check = |result: Result<Record>, values: Vec<&str>| {
        let Err(r) = result else { return };
        assert!(!r.message.is_empty(), "a rejection says why");
        assert!(r.message.chars().count() <= 1000, "message: {}", r.message);
        assert!(r.field.chars().count() <= 100, "field: {}", r.field);
        let personal = |v: &str| {
            v.chars().count() >= 8 && v.chars().any(|c| c.is_ascii_digit() || !c.is_ascii())
        };
        for v in values.into_iter().filter(|v| personal(v)) {
            assert!(!r.message.contains(v), "{v:?} echoed in {:?}", r.message);
        }
    };
    fn worker_values(w: &proto::Worker) -> Vec<&str> {
        vec![w.id_number.as_str(), w.name.as_str(), w.mobile.as_str()]
    }
    if let Ok(req) = proto::SubmitRequest::decode(bytes) {
        for r in &req.records {
            let values = match &r.kind {
                Some(proto::record::Kind::Worker(w)) => worker_values(w),
                Some(proto::record::Kind::Accident(a)) => vec![a.description.as_str()],
                _ => Vec::new(),
            };
            let c = candidate(r, &ctx);
            assert!(c.id.chars().count() <= 200, "id: {}", c.id);
            check(c.record, values);
        }
    }
    if let Ok(req) = proto::RegisterWorkersRequest::decode(bytes) {
        for w in &req.workers {
            check(worker(w, &ctx).map(Record::Worker), worker_values(w));
        }
    }
    if let Ok(req) = proto::ReportOrdersRequest::decode(bytes) {
        for o in &req.orders {
            check(
                order(o, &ctx).map(Record::Order),
                vec![o.vehicle_plate.as_str()],
            );
        }
    }
    if let Ok(req) = proto::SubmitDeclarationsRequest::decode(bytes) {
        for d in &req.declarations {
            check(declaration(d, &ctx).map(Record::Declaration), Vec::new());
        }
    }
    if let Ok(req) = proto::ReportAccidentsRequest::decode(bytes) {
        for a in &req.accidents {
            check(
                accident(a, &ctx).map(Record::Accident),
                vec![a.description.as_str()],
            );
        }
    }
}
