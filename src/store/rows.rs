//! Conversions between stored rows and the domain, shared by every backend: both
//! store the same columns with the same meaning (text dates and months, comma-joined
//! industry lists, 32-byte hashes), so a row reads back the same whichever database
//! held it. A value that does not convert is a corrupt store
//! ([`StoreError::Corrupt`]), never a default.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;

use chrono::NaiveDate;

use super::access::RateLimitRow;
use super::{DeclarationRow, Page, Result, StoreError, WorkerRow};
use crate::domain::audit::AuditEntry;
use crate::domain::batch::EnrolmentKey;
use crate::domain::batch::Known;
use crate::domain::fees::Figures;
use crate::domain::fees::{BaseRate, FloatRate, Multiplier};
use crate::domain::grant::{Grant, Role};
use crate::domain::ids::CreditCode;
use crate::domain::period::Period;
use crate::domain::platform::DeliveryTier;
use crate::domain::reconcile::{StatementKey, Statements};
use crate::domain::{Declaration, PlatformProfile};

/// A corrupt-store error naming what did not convert.
pub(crate) fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(what.to_string())
}

/// A database error as the store reports it: a row of the wrong shape or a broken
/// constraint is a corrupt store; anything else (busy, locked, a lost connection, a
/// serialization failure or deadlock, which PostgreSQL reports as 40001 and 40P01) is
/// unavailable: nothing was half-applied, and the call may be retried.
pub(crate) fn db_err(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::RowNotFound
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::Decode(_)
        | sqlx::Error::TypeNotFound { .. } => StoreError::Corrupt(e.to_string()),
        sqlx::Error::Database(d) if d.is_foreign_key_violation() || d.is_unique_violation() => {
            StoreError::Corrupt(d.to_string())
        }
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// Industry codes as stored: comma-joined.
pub(crate) fn join(items: &[String]) -> String {
    items.join(",")
}

/// Industry codes from their stored, comma-joined form (empty parts dropped).
pub(crate) fn split(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(str::to_string)
        .collect()
}

/// A stored revision (a positive `u32` on the wire).
pub(crate) fn revision_of(v: i64) -> Result<u32> {
    u32::try_from(v).map_err(|_| corrupt("revision out of range"))
}

/// A page of at most `limit` items from `limit + 1` read: the extra one only says
/// that there is a next page, which starts after the key of the last item kept.
pub(crate) fn page_of<T>(mut items: Vec<T>, limit: u32, key: impl Fn(&T) -> String) -> Page<T> {
    let next = if items.len() > limit as usize {
        items.truncate(limit as usize);
        items.last().map(key)
    } else {
        None
    };
    Page { items, next }
}

/// A stored month (`YYYY-MM`).
pub(crate) fn period_of(s: &str) -> Result<Period> {
    Period::parse(s).ok_or_else(|| corrupt("stored period is not YYYY-MM"))
}

/// Volume statements from `(period, division_code, industry, billable_count)` rows.
pub(crate) fn statements_of(rows: Vec<(String, String, String, i64)>) -> Result<Statements> {
    rows.into_iter()
        .map(|(period, division_code, industry, count)| {
            Ok((
                StatementKey {
                    period: period_of(&period)?,
                    division_code,
                    industry,
                },
                count,
            ))
        })
        .collect()
}

/// A `(worker_id, day, division_code, order_count)` row as an enrolment and its count.
pub(crate) fn enrolment_of(
    (worker_id, day, division_code, count): (String, String, String, i64),
) -> Result<(EnrolmentKey, i64)> {
    let day = NaiveDate::from_str(&day).map_err(|_| corrupt("enrolment day is not a date"))?;
    Ok((
        EnrolmentKey {
            worker_id,
            day,
            division_code,
        },
        count,
    ))
}

/// A stored 32-byte hash (content hash masked for its row, audit chain hash).
pub(crate) fn hash32(bytes: &[u8]) -> Result<[u8; 32]> {
    bytes
        .try_into()
        .map_err(|_| corrupt("a stored hash is not 32 bytes"))
}

/// An audit row as read by [`AUDIT_COLUMNS`].
pub(crate) type AuditRow = (
    i64,
    i64,
    String,
    String,
    String,
    String,
    i64,
    String,
    String,
    Vec<u8>,
);

/// The columns of `audit_log`, in [`AuditRow`] order.
pub(crate) const AUDIT_COLUMNS: &str =
    "seq, at, identity, role, action, scope, records, outcome, trace_id, hash";

/// An audit row as an entry and its stored chain hash.
pub(crate) fn entry_of(row: AuditRow) -> Result<(AuditEntry, [u8; 32])> {
    let (seq, at, identity, role, action, scope, records, outcome, trace_id, hash) = row;
    Ok((
        AuditEntry {
            seq,
            at,
            identity,
            role,
            action,
            scope,
            records,
            outcome,
            trace_id,
        },
        hash32(&hash)?,
    ))
}

/// A stored grant row as a [`Grant`]; a role the gateway does not know is a corrupt
/// store.
pub(crate) fn grant_of(
    identity: String,
    role: &str,
    scope: String,
    expires_at: Option<i64>,
) -> Result<Grant> {
    Ok(Grant {
        identity,
        role: Role::parse(role).ok_or_else(|| corrupt("unknown role in grants"))?,
        scope,
        expires_at,
    })
}

/// A `rate_limits` row (identity, calls/s, records/s, set by, set at).
pub(crate) fn rate_limit_of(
    (identity, calls, records, set_by, set_at): (String, i64, i64, String, i64),
) -> Result<RateLimitRow> {
    let rate = |v: i64| u32::try_from(v).map_err(|_| corrupt("rate out of range in rate_limits"));
    Ok(RateLimitRow {
        identity,
        calls_per_second: rate(calls)?,
        records_per_second: rate(records)?,
        set_by,
        set_at,
    })
}

/// A platform from its row `(id, uscc, name, industries, delivery_tier)`, its
/// `(division, pilot start)` rows and its `(division, tier)` rows.
pub(crate) fn profile_of(
    (id, uscc, name, industries, tier): (i64, String, String, String, String),
    divisions: Vec<(String, String)>,
    tiers: Vec<(String, String)>,
) -> Result<PlatformProfile> {
    let mut pilot_starts = BTreeMap::new();
    for (code, start) in divisions {
        let date = NaiveDate::from_str(&start).map_err(|_| corrupt("pilot_start is not a date"))?;
        pilot_starts.insert(code, date);
    }
    let delivery_tiers = tiers
        .into_iter()
        .map(|(code, t)| {
            Ok((
                code,
                DeliveryTier::parse(&t).ok_or_else(|| corrupt("unknown delivery tier"))?,
            ))
        })
        .collect::<Result<BTreeMap<_, _>>>()?;
    Ok(PlatformProfile {
        delivery_tiers,
        id,
        uscc: CreditCode::parse(&uscc).map_err(|_| corrupt("stored USCC is invalid"))?,
        name,
        industries: split(&industries).into_iter().collect(),
        pilot_starts,
        delivery_tier: DeliveryTier::parse(&tier)
            .ok_or_else(|| corrupt("unknown delivery tier"))?,
    })
}

/// A `base_rates` row (industry, tier or '', effective from, fen per order, recorded at).
pub(crate) fn base_rate_of(
    (industry, tier, from, fen, at): (String, String, String, i64, i64),
) -> Result<BaseRate> {
    Ok(BaseRate {
        industry,
        tier: if tier.is_empty() {
            None
        } else {
            Some(DeliveryTier::parse(&tier).ok_or_else(|| corrupt("unknown tier in base_rates"))?)
        },
        effective_from: NaiveDate::from_str(&from)
            .map_err(|_| corrupt("effective_from is not a date"))?,
        fen_per_order: fen,
        recorded_at: at,
    })
}

/// A `float_rates` row (USCC, division, year, multiplier in ten-thousandths, recorded at).
pub(crate) fn float_rate_of(
    (uscc, division_code, year, m, at): (String, String, i64, i64, i64),
) -> Result<FloatRate> {
    Ok(FloatRate {
        uscc,
        division_code,
        year: i32::try_from(year).map_err(|_| corrupt("year out of range"))?,
        multiplier: Multiplier::from_ten_thousandths(m),
        recorded_at: at,
    })
}

/// A worker as a listing reads it (industries joined, personal data sealed).
#[derive(sqlx::FromRow)]
pub(crate) struct WorkerListing {
    worker_id: String,
    #[sqlx(try_from = "i64")]
    revision: u32,
    id_type: String,
    id_number: Vec<u8>,
    name: Vec<u8>,
    mobile: Vec<u8>,
    industries: String,
    registered_at: i64,
    status: String,
    left_at: Option<i64>,
    received_at: i64,
}

impl From<WorkerListing> for WorkerRow {
    fn from(r: WorkerListing) -> Self {
        WorkerRow {
            worker_id: r.worker_id,
            revision: r.revision,
            id_type: r.id_type,
            id_number: r.id_number,
            name: r.name,
            mobile: r.mobile,
            industries: split(&r.industries),
            registered_at: r.registered_at,
            status: r.status,
            left_at: r.left_at,
            received_at: r.received_at,
        }
    }
}

/// A declaration as a listing reads it (the period as stored, `YYYY-MM`).
#[derive(sqlx::FromRow)]
pub(crate) struct DeclarationListing {
    declaration_id: String,
    #[sqlx(try_from = "i64")]
    revision: u32,
    period: String,
    division_code: String,
    industry: String,
    order_count: i64,
    amount_fen: i64,
    received_at: i64,
    superseded: bool,
}

impl DeclarationListing {
    /// The declaration; its period must be `YYYY-MM`.
    pub(crate) fn row(self) -> Result<DeclarationRow> {
        Ok(DeclarationRow {
            declaration_id: self.declaration_id,
            revision: self.revision,
            period: period_of(&self.period)?,
            division_code: self.division_code,
            industry: self.industry,
            order_count: self.order_count,
            amount_fen: self.amount_fen,
            received_at: self.received_at,
            superseded: self.superseded,
        })
    }
}

/// A stored declaration as read for a scope: id, revision, period, division,
/// industry, order count, amount in fen, arrival (`received_at × 100000 + position`).
pub(crate) type DeclaredRow = (String, i64, String, String, String, i64, i64, i64);

/// Adds the declarations of a scope to `known`: how many there are per statement key,
/// and the current one of each (the latest to arrive; spec: a later declaration of the
/// same month, division and industry supersedes the earlier).
pub(crate) fn add_declared(known: &mut Known, declared: Vec<DeclaredRow>) -> Result<()> {
    let mut latest: HashMap<StatementKey, i64> = HashMap::new();
    for (
        declaration_id,
        revision,
        period,
        division_code,
        industry,
        order_count,
        amount_fen,
        arrival,
    ) in declared
    {
        let key = StatementKey {
            period: period_of(&period)?,
            division_code,
            industry,
        };
        *known.declared.entry(key.clone()).or_default() += 1;
        if latest.get(&key).is_some_and(|a| *a > arrival) {
            continue;
        }
        latest.insert(key.clone(), arrival);
        let declaration = Declaration {
            declaration_id,
            revision: revision_of(revision)?,
            period: key.period,
            division_code: key.division_code.clone(),
            industry: key.industry.clone(),
            figures: Figures {
                order_count,
                amount_fen,
            },
        };
        known.current_declarations.insert(key, declaration);
    }
    Ok(())
}
