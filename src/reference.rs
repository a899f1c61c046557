//! Reference data: GB/T 2260 divisions and the industries of the scheme.
//!
//! Both are data shipped in `reference/` (compiled in as the default) and can be
//! replaced by files named in the configuration, so a county, a new province or a new
//! industry needs no release.

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
    for (line, cols) in csv_rows(&base_text, "base rates")? {
        let [industry, tier, from, fen] = cols.as_slice() else {
            return Err(parse_err(
                "base rates",
                line,
                "expected industry,tier,effective_from,fen_per_order",
            ));
        };
        let tier = match *tier {
            "" => None,
            t => Some(
                DeliveryTier::parse(t)
                    .ok_or_else(|| parse_err("base rates", line, "tier must be A, B or empty"))?,
            ),
        };
        bases.push(BaseRate {
            industry: industry.to_string(),
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
    for (line, cols) in csv_rows(&floats_text, "floats")? {
        let [uscc, division, year, m] = cols.as_slice() else {
            return Err(parse_err(
                "floats",
                line,
                "expected uscc,division_code,year,multiplier",
            ));
        };
        floats.push(FloatRate {
            uscc: uscc.to_string(),
            division_code: division.to_string(),
            year: year
                .parse()
                .map_err(|_| parse_err("floats", line, "year must be a number"))?,
            multiplier: Multiplier::parse(m).ok_or_else(|| {
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
        for (line, cols) in csv_rows(divisions, "divisions")? {
            let [code, name, plate] = cols.as_slice() else {
                return Err(parse_err(
                    "divisions",
                    line,
                    "expected code,name,plate_prefix",
                ));
            };
            if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
                return Err(parse_err("divisions", line, "code must be 6 digits"));
            }
            let plate_prefix = (!plate.is_empty()).then(|| plate.to_string());
            div.insert(
                code.to_string(),
                Division {
                    code: code.to_string(),
                    name: name.to_string(),
                    plate_prefix,
                },
            );
        }
        let mut ind = BTreeMap::new();
        for (line, cols) in csv_rows(industries, "industries")? {
            let [code, name] = cols.as_slice() else {
                return Err(parse_err("industries", line, "expected code,name"));
            };
            if code.is_empty() || !code.bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
                return Err(parse_err(
                    "industries",
                    line,
                    "code must be UPPER_SNAKE_CASE",
                ));
            }
            ind.insert(code.to_string(), name.to_string());
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

fn parse_err(what: &'static str, line: usize, reason: &str) -> ReferenceError {
    ReferenceError::Parse {
        what,
        line,
        reason: reason.to_string(),
    }
}

/// Data rows of a small CSV (no quoting): skips `#` comments, blank lines and the header.
fn csv_rows<'a>(
    text: &'a str,
    what: &'static str,
) -> Result<Vec<(usize, Vec<&'a str>)>, ReferenceError> {
    let mut rows = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    if rows.next().is_none() {
        return Err(parse_err(what, 1, "no header"));
    }
    Ok(rows
        .map(|(n, l)| (n, l.split(',').map(str::trim).collect()))
        .collect())
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

    #[test]
    fn unknown_served_division_is_an_error() {
        let e = Reference::from_text(DEFAULT_DIVISIONS, DEFAULT_INDUSTRIES, &["110000".into()]);
        assert!(matches!(e, Err(ReferenceError::UnknownServed(_))));
    }
}
