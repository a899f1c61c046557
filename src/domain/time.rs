//! Times on the wire and the local calendar (Asia/Shanghai) used for days and months.
//!
//! China has used a fixed UTC+8 offset without daylight saving since 1991, so the
//! local calendar is a fixed offset; no time-zone database is needed.

use chrono::{DateTime, FixedOffset, NaiveDate, TimeZone, Utc};

/// An instant, in milliseconds since the Unix epoch (UTC).
pub type Millis = i64;

/// Asia/Shanghai: UTC+08:00.
pub fn shanghai() -> FixedOffset {
    FixedOffset::east_opt(8 * 3600).unwrap_or_else(|| unreachable!("+08:00 is a valid offset"))
}

/// Parses a wire time: RFC 3339 with an offset, or epoch milliseconds as decimal digits.
pub fn parse_wire_time(s: &str) -> Option<Millis> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<i64>()
            .ok()
            .filter(|ms| *ms <= 253_402_300_799_999);
    }
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The local (Asia/Shanghai) calendar date of an instant.
pub fn local_date(ms: Millis) -> NaiveDate {
    to_local(ms).date_naive()
}

/// The instant as a local RFC 3339 string with +08:00 offset.
pub fn to_rfc3339(ms: Millis) -> String {
    to_local(ms).to_rfc3339()
}

fn to_local(ms: Millis) -> DateTime<FixedOffset> {
    let utc = DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or_default();
    utc.with_timezone(&shanghai())
}

/// Local midnight (Asia/Shanghai) that starts `date`, as epoch milliseconds.
pub fn local_midnight(date: NaiveDate) -> Millis {
    let naive = date.and_hms_opt(0, 0, 0).unwrap_or_default();
    shanghai()
        .from_local_datetime(&naive)
        .single()
        .map(|t| t.timestamp_millis())
        .unwrap_or_default()
}

/// The current instant.
pub fn now_millis() -> Millis {
    Utc::now().timestamp_millis()
}

/// Whole years between `birth` and `on` (a birthday on 29 February counts on 1 March
/// in non-leap years).
pub fn age_on(birth: NaiveDate, on: NaiveDate) -> i32 {
    use chrono::Datelike;
    let mut years = on.year() - birth.year();
    if (on.month(), on.day()) < (birth.month(), birth.day()) {
        years -= 1;
    }
    years
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339_and_epoch_millis() {
        let a = parse_wire_time("2025-07-02T11:00:00+08:00");
        assert_eq!(a, Some(1_751_425_200_000));
        assert_eq!(parse_wire_time("1751425200000"), a);
        assert_eq!(parse_wire_time("2025-07-02 11:00"), None);
        assert_eq!(parse_wire_time(""), None);
        assert_eq!(
            parse_wire_time("2025-07-02T11:00:00"),
            None,
            "offset required"
        );
    }

    #[test]
    fn local_day_is_shanghai() {
        // 2025-07-01T16:30Z is 2025-07-02 00:30 in Shanghai.
        let ms = parse_wire_time("2025-07-01T16:30:00Z").unwrap_or_default();
        assert_eq!(
            local_date(ms),
            NaiveDate::from_ymd_opt(2025, 7, 2).unwrap_or_default()
        );
        assert_eq!(to_rfc3339(ms), "2025-07-02T00:30:00+08:00");
    }

    #[test]
    fn age_counts_birthdays() {
        let d = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default();
        assert_eq!(age_on(d(2009, 7, 2), d(2025, 7, 1)), 15);
        assert_eq!(age_on(d(2009, 7, 2), d(2025, 7, 2)), 16);
        assert_eq!(age_on(d(2008, 2, 29), d(2024, 2, 28)), 15);
        assert_eq!(age_on(d(2008, 2, 29), d(2024, 2, 29)), 16);
    }
}
