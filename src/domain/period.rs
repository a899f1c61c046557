//! Months (`YYYY-MM`, Asia/Shanghai): the period of volume statements and declarations.

use std::fmt;

use chrono::{Datelike, NaiveDate};

use super::time::{Millis, local_date, local_midnight};

/// A calendar month, Asia/Shanghai. Serialised as its `YYYY-MM` string.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Period {
    year: i32,
    month: u32,
}

impl Period {
    /// Parses `YYYY-MM` (exactly that shape, ASCII digits, month 01..12, year
    /// 1000..9999). Whether the month is plausible for a record (not before the
    /// scheme) is `validate`'s concern.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        if b.len() != 7
            || b[4] != b'-'
            || !s[..4]
                .bytes()
                .chain(s[5..].bytes())
                .all(|c| c.is_ascii_digit())
        {
            return None;
        }
        let year: i32 = s[..4].parse().ok()?;
        let month: u32 = s[5..].parse().ok()?;
        ((1..=12).contains(&month) && year >= 1000).then_some(Self { year, month })
    }

    /// The local month an instant falls in.
    pub fn of(ms: Millis) -> Self {
        let d = local_date(ms);
        Self {
            year: d.year(),
            month: d.month(),
        }
    }

    pub fn year(self) -> i32 {
        self.year
    }

    pub fn first_day(self) -> NaiveDate {
        NaiveDate::from_ymd_opt(self.year, self.month, 1).unwrap_or_default()
    }

    pub fn next(self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Self {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    /// Whether the month is over at `now` (local time).
    pub fn has_ended(self, now: Millis) -> bool {
        now >= local_midnight(self.next().first_day())
    }

    /// The end of the declaration deadline: the end of day `deadline_day` of the
    /// following month (31 means its last day, whatever its length).
    pub fn deadline_end(self, deadline_day: u32) -> Millis {
        let next = self.next();
        let last = next.next().first_day().pred_opt().map_or(28, |d| d.day());
        let day = deadline_day.clamp(1, last);
        let date = NaiveDate::from_ymd_opt(next.year, next.month, day).unwrap_or_default();
        local_midnight(date.succ_opt().unwrap_or(date))
    }
}

impl std::str::FromStr for Period {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::parse(s).ok_or_else(|| format!("{s:?} is not a month YYYY-MM"))
    }
}

impl TryFrom<String> for Period {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s).ok_or_else(|| format!("{s:?} is not a month YYYY-MM"))
    }
}

impl From<Period> for String {
    fn from(p: Period) -> String {
        p.to_string()
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::time::parse_wire_time;

    #[test]
    fn parses_and_formats() {
        let p = Period::parse("2025-07").expect("valid");
        assert_eq!(p.to_string(), "2025-07");
        for bad in [
            "2025-7",
            "2025-13",
            "2025-00",
            "25-07",
            "2025/07",
            "0999-12",
            "２０２５-07",
        ] {
            assert_eq!(Period::parse(bad), None, "{bad}");
        }
        assert_eq!(
            Period::parse("2025-12")
                .map(|p| p.next().to_string())
                .as_deref(),
            Some("2026-01")
        );
    }

    #[test]
    fn months_end_in_shanghai() {
        let p = Period::parse("2025-07").expect("valid");
        let t = |s| parse_wire_time(s).expect("time");
        assert!(!p.has_ended(t("2025-07-31T23:59:59+08:00")));
        assert!(p.has_ended(t("2025-08-01T00:00:00+08:00")));
        assert_eq!(Period::of(t("2025-07-31T16:30:00Z")).to_string(), "2025-08");
        assert_eq!(p.deadline_end(15), t("2025-08-16T00:00:00+08:00"));
        assert_eq!(p.deadline_end(31), t("2025-09-01T00:00:00+08:00"));
        let sep = Period::parse("2025-09").expect("valid");
        assert_eq!(
            sep.deadline_end(31),
            t("2025-11-01T00:00:00+08:00"),
            "October has 31 days"
        );
        let jan = Period::parse("2024-01").expect("valid");
        assert_eq!(
            jan.deadline_end(30),
            t("2024-03-01T00:00:00+08:00"),
            "clamped to 29 February"
        );
    }
}
