//! Reference data: GB/T 2260 divisions and the industries of the scheme.
//!
//! Both, like the fee tables, are data shipped in `reference/` (compiled in as the default)
//! and can be replaced by files named in the configuration, so a county, a new province or
//! a new industry needs no release. Every table is CSV read with the `csv` crate: a header
//! naming the columns, `#` comment lines, blank lines ignored, fields trimmed and quoted
//! with `"` when they hold a comma.

use std::collections::BTreeMap;
use std::path::Path;

use crate::domain::fees::{BaseRate, FloatRate, Multiplier};
use crate::domain::platform::DeliveryTier;
use crate::domain::time::Millis;

/// A GB/T 2260 administrative division.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Division {
    pub code: String,
    pub name: String,
    pub plate_prefix: Option<String>,
}

impl Division {
    /// A province-level code (`xx0000`).
    pub fn is_province(&self) -> bool {
        self.code.ends_with("0000")
    }

    /// A county-level code (districts, county-level cities, counties: not `xxxx00`).
    pub fn is_county(&self) -> bool {
        !self.code.ends_with("00")
    }
}

/// The loaded reference tables, plus which divisions this gateway serves.
#[derive(Debug, Clone)]
pub struct Reference {
    divisions: BTreeMap<String, Division>,
    industries: BTreeMap<String, String>,
    /// Division-code prefixes served (`"32"` for all of Jiangsu).
    served_prefixes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{what} line {line}: {reason}")]
    Parse {
        what: &'static str,
        line: usize,
        reason: String,
    },
    #[error("served division {0} is not in the division list")]
    UnknownServed(String),
}

const DEFAULT_BASE_RATES: &str = include_str!("../reference/base-rates.csv");
const DEFAULT_FLOATS: &str = include_str!("../reference/floats.csv");

/// Rate tables read from CSV (the shipped ones when no file is given), all stamped as
/// recorded at `recorded_at`.
pub fn load_rates(
    base_file: Option<&Path>,
    floats_file: Option<&Path>,
    recorded_at: Millis,
) -> Result<(Vec<BaseRate>, Vec<FloatRate>), ReferenceError> {
    let base_text = read_or(base_file, DEFAULT_BASE_RATES)?;
    let floats_text = read_or(floats_file, DEFAULT_FLOATS)?;
    let mut bases = Vec::new();
    let base_columns = ["industry", "tier", "effective_from", "fen_per_order"];
    for (line, [industry, tier, from, fen]) in csv_rows(&base_text, "base rates", base_columns)? {
        let tier = match tier.as_str() {
            "" => None,
            t => Some(
                DeliveryTier::parse(t)
                    .ok_or_else(|| parse_err("base rates", line, "tier must be A, B or empty"))?,
            ),
        };
        bases.push(BaseRate {
            industry,
            tier,
            effective_from: from
                .parse()
                .map_err(|_| parse_err("base rates", line, "effective_from must be YYYY-MM-DD"))?,
            fen_per_order: fen.parse().ok().filter(|f: &i64| *f >= 0).ok_or_else(|| {
                parse_err(
                    "base rates",
                    line,
                    "fen_per_order must be a whole number of fen",
                )
            })?,
            recorded_at,
        });
    }
    let mut floats = Vec::new();
    let float_columns = ["uscc", "division_code", "year", "multiplier"];
    for (line, [uscc, division, year, m]) in csv_rows(&floats_text, "floats", float_columns)? {
        floats.push(FloatRate {
            uscc,
            division_code: division,
            year: year
                .parse()
                .map_err(|_| parse_err("floats", line, "year must be a number"))?,
            multiplier: Multiplier::parse(&m).ok_or_else(|| {
                parse_err("floats", line, "multiplier must be a decimal like 1.05")
            })?,
            recorded_at,
        });
    }
    Ok((bases, floats))
}

const DEFAULT_DIVISIONS: &str = include_str!("../reference/divisions.csv");
const DEFAULT_INDUSTRIES: &str = include_str!("../reference/industries.csv");

impl Reference {
    /// Loads the tables (the shipped ones when no file is given) and checks that every
    /// served division is known.
    pub fn load(
        divisions_file: Option<&Path>,
        industries_file: Option<&Path>,
        served: &[String],
    ) -> Result<Self, ReferenceError> {
        let divisions_text = read_or(divisions_file, DEFAULT_DIVISIONS)?;
        let industries_text = read_or(industries_file, DEFAULT_INDUSTRIES)?;
        Self::from_text(&divisions_text, &industries_text, served)
    }

    /// The shipped tables, serving every division in them.
    pub fn builtin() -> Self {
        Self::from_text(
            DEFAULT_DIVISIONS,
            DEFAULT_INDUSTRIES,
            &["320000".to_string()],
        )
        .unwrap_or_else(|e| unreachable!("shipped reference data is valid: {e}"))
    }

    fn from_text(
        divisions: &str,
        industries: &str,
        served: &[String],
    ) -> Result<Self, ReferenceError> {
        let mut div = BTreeMap::new();
        let columns = ["code", "name", "plate_prefix"];
        for (line, [code, name, plate]) in csv_rows(divisions, "divisions", columns)? {
            if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
                return Err(parse_err("divisions", line, "code must be 6 digits"));
            }
            let plate_prefix = (!plate.is_empty()).then_some(plate);
            // A later line for the same code replaces the earlier one.
            div.insert(
                code.clone(),
                Division {
                    code,
                    name,
                    plate_prefix,
                },
            );
        }
        let mut ind = BTreeMap::new();
        for (line, [code, name]) in csv_rows(industries, "industries", ["code", "name"])? {
            if code.is_empty() || !code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
                return Err(parse_err(
                    "industries",
                    line,
                    "code must be UPPER_SNAKE_CASE",
                ));
            }
            ind.insert(code, name);
        }
        let mut served_prefixes = Vec::new();
        for s in served {
            if !div.contains_key(s) {
                return Err(ReferenceError::UnknownServed(s.clone()));
            }
            served_prefixes.push(significant_prefix(s).to_string());
        }
        Ok(Self {
            divisions: div,
            industries: ind,
            served_prefixes,
        })
    }

    pub fn division(&self, code: &str) -> Option<&Division> {
        self.divisions.get(code)
    }

    /// The prefecture-level city (`xxxx00`) a known city or county rolls up to; `None`
    /// for a province, an unknown code or a county whose city is not in the list.
    pub fn city_of(&self, code: &str) -> Option<&Division> {
        let d = self.divisions.get(code)?;
        if d.is_province() {
            return None;
        }
        self.divisions.get(&format!("{}00", code.get(..4)?))
    }

    /// Known and inside one of the served divisions.
    pub fn serves(&self, code: &str) -> bool {
        self.divisions.contains_key(code)
            && self
                .served_prefixes
                .iter()
                .any(|p| code.starts_with(p.as_str()))
    }

    pub fn divisions(&self) -> impl Iterator<Item = &Division> {
        self.divisions.values()
    }

    pub fn is_industry(&self, code: &str) -> bool {
        self.industries.contains_key(code)
    }

    pub fn industries(&self) -> impl Iterator<Item = &str> {
        self.industries.keys().map(String::as_str)
    }
}

/// `320000` → `32`, `320500` → `3205`, `320505` → `320505`.
fn significant_prefix(code: &str) -> &str {
    code.strip_suffix("0000")
        .or_else(|| code.strip_suffix("00"))
        .unwrap_or(code)
}

fn read_or(path: Option<&Path>, default: &str) -> Result<String, ReferenceError> {
    match path {
        None => Ok(default.to_string()),
        Some(p) => std::fs::read_to_string(p).map_err(|source| ReferenceError::Read {
            path: p.display().to_string(),
            source,
        }),
    }
}

fn parse_err(what: &'static str, line: usize, reason: impl Into<String>) -> ReferenceError {
    ReferenceError::Parse {
        what,
        line,
        reason: reason.into(),
    }
}

/// The data rows of a reference CSV, each with its line number, read with the `csv` crate:
/// lines starting with `#` and blank lines are skipped, whitespace around a field is
/// trimmed, and a field may be quoted (`"a, b"`; `""` is a quote inside one). The first row
/// is the header and must name `columns` in order; every data row has exactly that many
/// fields.
fn csv_rows<const N: usize>(
    text: &str,
    what: &'static str,
    columns: [&str; N],
) -> Result<Vec<(usize, [String; N])>, ReferenceError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .comment(Some(b'#'))
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(text.as_bytes());
    let expected = columns.join(",");
    let mut header_seen = false;
    let mut rows = Vec::new();
    let mut record = csv::StringRecord::new();
    loop {
        let more = reader.read_record(&mut record).map_err(|e| {
            let line = e.position().map_or(1, |p| record_line(text, p));
            parse_err(what, line, e.to_string())
        })?;
        if !more {
            break;
        }
        let line = record.position().map_or(1, |p| record_line(text, p));
        // A line of blanks, or a comment indented by blanks.
        let blank = record.len() == 1 && record[0].is_empty();
        if blank || record.get(0).is_some_and(|f| f.starts_with('#')) {
            continue;
        }
        if !header_seen {
            header_seen = true;
            let named = record.len() == N
                && record
                    .iter()
                    .zip(columns)
                    .all(|(f, c)| f.eq_ignore_ascii_case(c));
            if !named {
                return Err(parse_err(what, line, format!("header must be {expected}")));
            }
            continue;
        }
        if record.len() != N {
            return Err(parse_err(
                what,
                line,
                format!(
                    "expected {expected} ({N} fields), found {} field{}",
                    record.len(),
                    if record.len() == 1 { "" } else { "s" }
                ),
            ));
        }
        rows.push((line, std::array::from_fn(|i| record[i].to_string())));
    }
    if !header_seen {
        return Err(parse_err(what, 1, format!("no header ({expected})")));
    }
    Ok(rows)
}

/// The line a record starts on. The reader gives where it started reading, which is
/// before the blank and `#` lines it skipped on the way to the record.
fn record_line(text: &str, start: &csv::Position) -> usize {
    let mut line = usize::try_from(start.line()).unwrap_or(usize::MAX);
    let from = usize::try_from(start.byte()).unwrap_or(usize::MAX);
    let mut rest = text.as_bytes().get(from..).unwrap_or_default();
    while let [b'\n' | b'\r' | b'#', ..] = rest {
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            break;
        };
        rest = &rest[end + 1..];
        line = line.saturating_add(1);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_serves_jiangsu() {
        let r = Reference::builtin();
        assert!(r.serves("320100"));
        assert!(r.serves("320000"));
        assert!(!r.serves("110100"));
        assert!(!r.serves("329900"), "unknown code");
        assert_eq!(
            r.division("320500")
                .and_then(|d| d.plate_prefix.clone())
                .as_deref(),
            Some("苏E")
        );
        assert!(r.is_industry("INSTANT_DELIVERY"));
        assert!(!r.is_industry("TAKEAWAY"));
    }

    #[test]
    fn serving_one_city_only() {
        let r = Reference::from_text(DEFAULT_DIVISIONS, DEFAULT_INDUSTRIES, &["320500".into()])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(r.serves("320500"));
        assert!(!r.serves("320100"));
    }

    fn parse_error(r: Result<Reference, ReferenceError>) -> (&'static str, usize, String) {
        match r {
            Err(ReferenceError::Parse { what, line, reason }) => (what, line, reason),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn shipped_divisions_load() {
        let r =
            Reference::load(None, None, &["320000".to_string()]).unwrap_or_else(|e| panic!("{e}"));
        let provinces = r.divisions().filter(|d| d.is_province()).count();
        assert_eq!(provinces, 34, "every province-level division");
        for code in ["110000", "650000", "710000", "810000", "820000"] {
            assert!(r.division(code).is_some(), "{code}");
        }
        let cities: Vec<&Division> = r
            .divisions()
            .filter(|d| d.code.starts_with("32") && d.code.ends_with("00") && !d.is_province())
            .collect();
        assert_eq!(cities.len(), 13);
        assert!(
            cities.iter().all(|c| c.plate_prefix.is_some()),
            "every city has its plate prefix"
        );
        let counties: Vec<&Division> = r
            .divisions()
            .filter(|d| d.code.starts_with("32") && !d.code.ends_with("00"))
            .collect();
        assert_eq!(counties.len(), 95, "Jiangsu's county-level divisions");
        for c in counties {
            assert!(r.serves(&c.code), "{}", c.code);
            assert!(
                r.city_of(&c.code).is_some(),
                "{} rolls up to a city",
                c.code
            );
            assert!(!c.name.is_ascii(), "{} is named in Chinese", c.code);
        }
    }

    #[test]
    fn a_county_is_served_and_rolls_up_to_its_city() {
        let r = Reference::builtin();
        let wuzhong = r.division("320506").map(|d| d.name.as_str());
        assert_eq!(wuzhong, Some("吴中区"));
        assert!(r.serves("320506"));
        assert_eq!(r.city_of("320506").map(|d| d.code.as_str()), Some("320500"));
        assert_eq!(
            r.city_of("320500").map(|d| d.code.as_str()),
            Some("320500"),
            "a city is its own city"
        );
        assert!(r.city_of("320000").is_none(), "a province has no city");
        assert!(r.city_of("320599").is_none(), "unknown code");
    }

    #[test]
    fn cities_and_provinces_are_known() {
        let r = Reference::builtin();
        assert_eq!(
            r.division("320100").map(|d| d.name.as_str()),
            Some("南京市")
        );
        let beijing = r.division("110000").unwrap_or_else(|| panic!("110000"));
        assert_eq!(beijing.name, "北京市");
        assert!(beijing.is_province());
        assert_eq!(beijing.plate_prefix, None);
        assert!(!r.serves("110000"), "known but not served");
        assert!(
            !r.serves("330100"),
            "not in the list: another province's city"
        );
    }

    #[test]
    fn a_bad_line_is_named_with_its_number() {
        let divisions =
            "# comment\n\ncode,name,plate_prefix\n320000,江苏省,\n# another\n32050,吴中区,\n";
        let (what, line, reason) =
            parse_error(Reference::from_text(divisions, DEFAULT_INDUSTRIES, &[]));
        assert_eq!((what, line), ("divisions", 6), "{reason}");
        assert_eq!(reason, "code must be 6 digits");

        let divisions = "code,name,plate_prefix\n320000,江苏省,\n320500,苏州市\n";
        let e = Reference::from_text(divisions, DEFAULT_INDUSTRIES, &[])
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("divisions line 3: expected code,name,plate_prefix (3 fields), found 2 fields")
        );

        let crlf = "code,name,plate_prefix\r\n\r\n# c\r\n320000,江苏省,\r\n\"32,0500\",苏州市,\r\n";
        let (what, line, _) = parse_error(Reference::from_text(crlf, DEFAULT_INDUSTRIES, &[]));
        assert_eq!((what, line), ("divisions", 5), "CRLF line ends");

        let industries = "# only a comment\n";
        let (what, line, _) = parse_error(Reference::from_text(DEFAULT_DIVISIONS, industries, &[]));
        assert_eq!((what, line), ("industries", 1));

        let without_header = "320000,江苏省,\n";
        let (what, line, reason) = parse_error(Reference::from_text(
            without_header,
            DEFAULT_INDUSTRIES,
            &[],
        ));
        assert_eq!((what, line), ("divisions", 1));
        assert_eq!(reason, "header must be code,name,plate_prefix");
    }

    #[test]
    fn a_quoted_field_may_hold_a_comma() {
        let divisions = "\u{feff}# edition\ncode,name,plate_prefix\n  # indented comment\n   \n320000, 江苏省 ,\n\"320500\",\"苏州市, 姑苏\",\"苏E\"\n320506,\"吴中区 \"\"太湖\"\"\",\n";
        let r = Reference::from_text(
            divisions,
            "code,name\nRIDE_HAILING,\"出行, 网约车\"\n",
            &["320000".into()],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            r.division("320000").map(|d| d.name.as_str()),
            Some("江苏省")
        );
        let suzhou = r.division("320500").unwrap_or_else(|| panic!("320500"));
        assert_eq!(suzhou.name, "苏州市, 姑苏");
        assert_eq!(suzhou.plate_prefix.as_deref(), Some("苏E"));
        assert_eq!(
            r.division("320506").map(|d| d.name.as_str()),
            Some("吴中区 \"太湖\"")
        );
        assert!(r.is_industry("RIDE_HAILING"));
    }

    #[test]
    fn rate_files_are_read_as_csv() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let base = dir.path().join("base.csv");
        let floats = dir.path().join("floats.csv");
        let write = |p: &Path, t: &str| std::fs::write(p, t).unwrap_or_else(|e| panic!("{e}"));
        write(
            &base,
            "# rates\nindustry,tier,effective_from,fen_per_order\n\"RIDE_HAILING\", ,2025-07-01, 1\n",
        );
        write(
            &floats,
            "uscc,division_code,year,multiplier\n91320100MA1DEMA010,\"320000\",2026,1.05\n",
        );
        let (bases, fl) =
            load_rates(Some(&base), Some(&floats), 0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(bases.len(), 1);
        assert_eq!(bases[0].industry, "RIDE_HAILING");
        assert_eq!(bases[0].tier, None);
        assert_eq!(bases[0].fen_per_order, 1);
        assert_eq!(fl.len(), 1);
        assert_eq!(fl[0].division_code, "320000");
        assert_eq!(fl[0].year, 2026);

        write(
            &floats,
            "uscc,division_code,year,multiplier\n\n91320100MA1DEMA010,320000,twenty,1.05\n",
        );
        let e = load_rates(None, Some(&floats), 0)
            .err()
            .map(|e| e.to_string());
        assert_eq!(e.as_deref(), Some("floats line 3: year must be a number"));
        write(
            &base,
            "industry,tier,effective_from\nRIDE_HAILING,,2025-07-01\n",
        );
        let e = load_rates(Some(&base), None, 0)
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some("base rates line 1: header must be industry,tier,effective_from,fen_per_order")
        );
        assert!(load_rates(None, None, 0).is_ok(), "the shipped tables");
    }

    #[test]
    fn unknown_served_division_is_an_error() {
        let e = Reference::from_text(DEFAULT_DIVISIONS, DEFAULT_INDUSTRIES, &["330100".into()]);
        assert!(matches!(e, Err(ReferenceError::UnknownServed(_))));
    }
}
