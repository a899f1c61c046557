//! Three-party reconciliation (三方数据比对): a declaration against the gateway's own
//! figures, computed from the volume statements (kept incrementally with the orders,
//! so a check reads a handful of statement rows whatever the number of orders).

use std::collections::HashMap;

use crate::domain::PlatformProfile;
use crate::domain::fees::{
    Figures, Multiplier, RateBook, ReconciliationStatus, amount_due, exact_amount, round_half_up,
};
use crate::domain::period::Period;
use crate::domain::time::Millis;

/// One volume statement: a platform's billable orders of one month, city and industry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatementKey {
    pub period: Period,
    pub division_code: String,
    pub industry: String,
}

/// Whether a declaration for `declared` (a city, or a province `xx0000`) covers the
/// statement of `city`.
pub fn covers(declared: &str, city: &str) -> bool {
    declared == city
        || (declared.len() == 6
            && declared.ends_with("0000")
            && city.get(..2) == declared.get(..2)
            && city != declared)
}

/// The gateway's figures for a declaration's key: billable orders and the fee due,
/// summed exactly over the statements it covers (each city with its own tier and float)
/// and rounded once, as domain.md says of the monthly total. `closed_at`: when the
/// platform's period closed (its first declaration), so later rate changes do not
/// re-rate it.
pub fn computed<'a>(
    platform: &PlatformProfile,
    rates: &RateBook,
    period: Period,
    declared_division: &str,
    industry: &str,
    statements: impl IntoIterator<Item = (&'a StatementKey, &'a i64)>,
    closed_at: Option<Millis>,
) -> Figures {
    let mut f = Figures::default();
    let mut exact: i128 = 0;
    for (key, count) in statements {
        if key.period != period
            || key.industry != industry
            || !covers(declared_division, &key.division_code)
        {
            continue;
        }
        f.order_count += count;
        let tier = platform.tier_for(&key.division_code);
        match rates.rating(
            platform.uscc.as_str(),
            &key.division_code,
            industry,
            tier,
            period,
            closed_at,
        ) {
            Some(r) => exact += exact_amount(*count, r.base_fen, r.multiplier),
            None => {
                tracing::warn!(%period, division = %key.division_code, industry, "no base rate in force")
            }
        }
    }
    f.amount_fen = round_half_up(exact);
    f
}

/// One volume statement rated: what the tax bureau receives for a month, city and
/// industry. The amount is rounded half-up per statement; a province-level
/// declaration is compared with the exact sum of its cities, rounded once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatedStatement {
    pub key: StatementKey,
    pub billable_count: i64,
    /// 0 when no base rate is in force for the period.
    pub base_fen_per_order: i64,
    pub multiplier: Multiplier,
    pub amount_fen: i64,
}

/// Rates one statement as of `closed_at` (see [`computed`]).
pub fn rate_statement(
    platform: &PlatformProfile,
    rates: &RateBook,
    key: &StatementKey,
    billable_count: i64,
    closed_at: Option<Millis>,
) -> RatedStatement {
    let rating = rates.rating(
        platform.uscc.as_str(),
        &key.division_code,
        &key.industry,
        platform.tier_for(&key.division_code),
        key.period,
        closed_at,
    );
    let (base, multiplier) = rating.map_or((0, Multiplier::ONE), |r| (r.base_fen, r.multiplier));
    RatedStatement {
        key: key.clone(),
        billable_count,
        base_fen_per_order: base,
        multiplier,
        amount_fen: amount_due(billable_count, base, multiplier),
    }
}

/// The status of each declaration among those of one platform: the latest per key
/// (period, division, industry) is compared, earlier ones are SUPERSEDED.
pub fn status(declared: Figures, computed: Figures, superseded: bool) -> ReconciliationStatus {
    if superseded {
        ReconciliationStatus::Superseded
    } else {
        ReconciliationStatus::of(declared, computed)
    }
}

/// Statement counts by key, as loaded for a batch or a listing.
pub type Statements = HashMap<StatementKey, i64>;
