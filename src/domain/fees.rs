//! Fees (按单计费): fee = base amount per order × billable orders × float multiplier,
//! per platform, division, industry and month; only the monthly total is rounded,
//! half-up, to 1 fen. Integer fen and exact decimals throughout, never floating point.
//!
//! Rate tables are bitemporal: every rate row says which periods it applies to
//! (`effective_from`) and when it was recorded (`recorded_at`). An open period is
//! rated with the newest rows; a closed period (declared) only with rows recorded
//! before it closed, so a closed period is never re-rated.

use std::fmt;

use chrono::{Datelike, NaiveDate};

use super::period::Period;
use super::platform::DeliveryTier;
use super::time::Millis;

/// A float multiplier, exact to 4 decimal places (`1.05` is 10500).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Multiplier(i64);

impl Multiplier {
    pub const ONE: Multiplier = Multiplier(10_000);
    const SCALE: i64 = 10_000;

    /// Parses a non-negative decimal with at most 4 decimal places (`1`, `0.95`, `1.0125`).
    pub fn parse(s: &str) -> Option<Self> {
        let (int, frac) = s.split_once('.').unwrap_or((s, ""));
        if int.is_empty()
            || int.len() > 3
            || frac.len() > 4
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let whole: i64 = int.parse().ok()?;
        let frac_val: i64 = if frac.is_empty() {
            0
        } else {
            format!("{frac:0<4}").parse().ok()?
        };
        Some(Self(whole * Self::SCALE + frac_val))
    }

    pub fn ten_thousandths(self) -> i64 {
        self.0
    }

    pub fn from_ten_thousandths(v: i64) -> Self {
        Self(v)
    }
}

impl fmt::Display for Multiplier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:04}", self.0 / Self::SCALE, self.0 % Self::SCALE)
    }
}

/// `count × base_fen × multiplier` exactly, in ten-thousandths of a fen.
pub fn exact_amount(count: i64, base_fen: i64, m: Multiplier) -> i128 {
    i128::from(count) * i128::from(base_fen) * i128::from(m.0)
}

/// An exact amount (ten-thousandths of a fen) rounded half-up to whole fen.
pub fn round_half_up(exact: i128) -> i64 {
    let scale = i128::from(Multiplier::SCALE);
    let rounded = if exact >= 0 {
        (exact + scale / 2) / scale
    } else {
        -((-exact + scale / 2) / scale)
    };
    i64::try_from(rounded).unwrap_or(i64::MAX)
}

/// `count × base_fen × multiplier`, rounded half-up to whole fen.
pub fn amount_due(count: i64, base_fen: i64, m: Multiplier) -> i64 {
    round_half_up(exact_amount(count, base_fen, m))
}

/// Base amount per order for an industry (and, for instant delivery, a tier).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseRate {
    pub industry: String,
    /// None: applies to every tier.
    pub tier: Option<DeliveryTier>,
    pub effective_from: NaiveDate,
    pub fen_per_order: i64,
    pub recorded_at: Millis,
}

/// A float multiplier for one platform in one division for one year (from 1 January).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FloatRate {
    pub uscc: String,
    pub division_code: String,
    pub year: i32,
    pub multiplier: Multiplier,
    pub recorded_at: Millis,
}

/// Every version of every rate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RateBook {
    pub bases: Vec<BaseRate>,
    pub floats: Vec<FloatRate>,
}

/// What a statement is rated with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rating {
    pub base_fen: i64,
    pub multiplier: Multiplier,
}

impl RateBook {
    /// The rating of `period` for a platform's statement. `as_of`: for a closed
    /// period, the instant it closed (rows recorded later are ignored).
    pub fn rating(
        &self,
        uscc: &str,
        division: &str,
        industry: &str,
        tier: DeliveryTier,
        period: Period,
        as_of: Option<Millis>,
    ) -> Option<Rating> {
        let known = |recorded: Millis| as_of.is_none_or(|t| recorded <= t);
        let first = period.first_day();
        let base = self
            .bases
            .iter()
            .filter(|b| b.industry == industry && b.tier.is_none_or(|t| t == tier))
            .filter(|b| b.effective_from <= first && known(b.recorded_at))
            .max_by_key(|b| (b.effective_from, b.recorded_at))?;
        let province = format!("{}0000", division.get(..2).unwrap_or(""));
        let multiplier = [division, province.as_str()]
            .into_iter()
            .find_map(|d| {
                self.floats
                    .iter()
                    .filter(|f| {
                        f.uscc == uscc
                            && f.division_code == d
                            && f.year == first.year()
                            && known(f.recorded_at)
                    })
                    .max_by_key(|f| f.recorded_at)
            })
            .map_or(Multiplier::ONE, |f| f.multiplier);
        Some(Rating {
            base_fen: base.fen_per_order,
            multiplier,
        })
    }
}

/// A count and an amount: what was declared, or what the gateway computed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Figures {
    pub order_count: i64,
    pub amount_fen: i64,
}

/// Where a declaration stands against the gateway's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconciliationStatus {
    /// Count and amount agree.
    Matched,
    /// Count or amount differ; open until a correcting declaration or orders make them agree.
    Mismatch,
    /// A later declaration for the same platform, period, division and industry replaced it.
    Superseded,
}

impl ReconciliationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Matched => "MATCHED",
            Self::Mismatch => "MISMATCH",
            Self::Superseded => "SUPERSEDED",
        }
    }

    pub fn of(declared: Figures, computed: Figures) -> Self {
        if declared == computed {
            Self::Matched
        } else {
            Self::Mismatch
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn multipliers_are_exact_decimals() {
        assert_eq!(Multiplier::parse("1"), Some(Multiplier::ONE));
        assert_eq!(Multiplier::parse("0.95").map(|m| m.0), Some(9_500));
        assert_eq!(
            Multiplier::parse("1.0125")
                .map(|m| m.to_string())
                .as_deref(),
            Some("1.0125")
        );
        for bad in ["", ".5", "1.00001", "-1", "1e3", "abc", "1,5"] {
            assert_eq!(Multiplier::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_the_total_is_rounded_half_up() {
        // 3 orders × 7 fen × 1.05 = 22.05 → 22; 10 × 7 × 1.05 = 73.5 → 74 (half up).
        let m = Multiplier::parse("1.05").expect("m");
        assert_eq!(amount_due(3, 7, m), 22);
        assert_eq!(amount_due(10, 7, m), 74);
        // Rounding each order (7.35 → 7) would give 70: the total is rounded once.
        assert_eq!(amount_due(10, 7, Multiplier::ONE), 70);
        assert_eq!(amount_due(0, 25, m), 0);
    }

    proptest! {
        /// The integer computation equals exact rational arithmetic rounded half up.
        #[test]
        fn amount_matches_exact_rational(count in 0i64..10_000_000, base in 0i64..100, m in 0i64..30_000) {
            let exact_num = i128::from(count) * i128::from(base) * i128::from(m);
            let got = i128::from(amount_due(count, base, Multiplier(m)));
            // got is the nearest integer, ties up: |exact - got| ≤ 1/2, and = 1/2 only upward.
            let diff = exact_num - got * 10_000;
            prop_assert!((-5_000..5_000).contains(&diff));
        }
    }

    #[test]
    fn closed_periods_keep_their_rates() {
        let d = |s: &str| s.parse::<NaiveDate>().expect("date");
        let p = Period::parse("2025-09").expect("p");
        let mut book = RateBook {
            bases: vec![BaseRate {
                industry: "INSTANT_DELIVERY".into(),
                tier: Some(DeliveryTier::A),
                effective_from: d("2025-07-01"),
                fen_per_order: 7,
                recorded_at: 0,
            }],
            floats: vec![],
        };
        let rating = |b: &RateBook, as_of| {
            b.rating("U", "320100", "INSTANT_DELIVERY", DeliveryTier::A, p, as_of)
        };
        assert_eq!(rating(&book, None).map(|r| r.base_fen), Some(7));
        book.floats.push(FloatRate {
            uscc: "U".into(),
            division_code: "320000".into(),
            year: 2025,
            multiplier: Multiplier(11_000),
            recorded_at: 100,
        });
        // Open period: the new float (province-wide) applies. Closed at 50: it does not.
        assert_eq!(
            rating(&book, None).map(|r| r.multiplier),
            Some(Multiplier(11_000))
        );
        assert_eq!(
            rating(&book, Some(50)).map(|r| r.multiplier),
            Some(Multiplier::ONE)
        );
        assert_eq!(
            book.rating("U", "320100", "INSTANT_DELIVERY", DeliveryTier::B, p, None),
            None,
            "no tier B rate"
        );
    }
}
