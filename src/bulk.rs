//! The bulk-file format (records.md, "Bulk files"): JSON Lines in, one record a line
//! with `kind` first; and the outcome report, JSON Lines out, one line per input
//! record in input order.
//!
//! A line is decoded from its bytes on its own, so one bad line never stops the file:
//! a line that is not UTF-8, not JSON, not an object, names a key twice or a key the
//! kind does not have, or gives a value of the wrong JSON type is REJECTED here
//! (MALFORMED_RECORD, or MISSING_FIELD for a missing `kind`), naming the line's kind,
//! id and field where they can be read, and never its content. The rules for each
//! ambiguity are in the README ("Input rules"):
//! - a UTF-8 byte-order mark at the start of a line and a CR before its LF are dropped;
//! - strings are JSON strings (a number is not read as its digits), except times,
//!   which may also be a JSON whole number of epoch milliseconds;
//! - numbers (`revision`, `order_count`, `amount_fen`) are JSON whole numbers (a
//!   string is not read as its number; `12.0` and `1.2e1` are refused);
//! - `null` is the same as an absent key; values are never trimmed (the gateway refuses
//!   surrounding spaces with the field's own code).

use std::cell::RefCell;

use serde::Serialize;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::domain::outcome::{echo, key_name, shown_key};
use crate::domain::{ErrorCode, RecordKind};
use crate::proto::{self, record};

/// The UTF-8 byte-order mark, which Windows tools write at the start of a file.
pub const BOM: &[u8] = b"\xEF\xBB\xBF";

/// A line that could not become a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// The record kind when the line names a known one, else empty.
    pub kind: String,
    /// The record's id when it can be read (bounded, `domain::outcome::echo`).
    pub id: String,
    pub code: ErrorCode,
    /// The key at fault, when there is one.
    pub field: String,
    /// What is wrong, without the line's content.
    pub message: String,
}

/// One line of the outcome report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportLine {
    /// 1-based line number in the input file (empty lines count).
    pub line: usize,
    pub kind: String,
    pub id: String,
    pub outcome: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub code: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub field: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl ReportLine {
    /// A line rejected before it was sent.
    pub fn rejected(line: usize, e: LineError) -> Self {
        Self {
            line,
            kind: e.kind,
            id: e.id,
            outcome: "REJECTED".into(),
            code: e.code.as_str().into(),
            field: e.field,
            message: e.message,
            warnings: vec![],
        }
    }

    /// From the gateway's outcome; the field path loses its `records[N].<kind>.` prefix.
    pub fn from_outcome(line: usize, o: proto::RecordOutcome) -> Self {
        let outcome = o.outcome().as_str_name().to_string();
        let field = match o.field.split_once("].") {
            Some((_, rest)) => rest.split_once('.').map_or(rest, |(_, f)| f).to_string(),
            None => String::new(),
        };
        Self {
            line,
            kind: o.kind,
            id: o.id,
            outcome,
            code: o.code,
            field,
            message: o.message,
            warnings: o.warnings,
        }
    }
}

/// The line without its line end (LF, and a CR before it) and without a leading
/// byte-order mark; None when nothing but white space is left (empty lines are
/// skipped, records.md).
pub fn content(raw: &[u8]) -> Option<&[u8]> {
    let raw = raw.strip_suffix(b"\n").unwrap_or(raw);
    let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
    let raw = raw.strip_prefix(BOM).unwrap_or(raw);
    (!raw.iter().all(u8::is_ascii_whitespace)).then_some(raw)
}

/// Decodes one line (as [`content`] returns it) into a record.
pub fn parse_line(line: &[u8]) -> Result<proto::Record, LineError> {
    match std::str::from_utf8(line) {
        Ok(text) => parse_text(text),
        Err(e) => Err(not_utf8(line, e)),
    }
}

fn malformed(field: &str, message: impl Into<String>) -> LineError {
    LineError {
        kind: String::new(),
        id: String::new(),
        code: ErrorCode::MalformedRecord,
        field: field.into(),
        message: message.into(),
    }
}

/// How the message of a line that is not UTF-8 begins.
pub const NOT_UTF8: &str = "line is not valid UTF-8";

/// A line with bytes that are not UTF-8: named by what a lossy reading finds (kind, id
/// and the key whose value holds the bad bytes), never by its content.
fn not_utf8(line: &[u8], e: std::str::Utf8Error) -> LineError {
    let at = e.valid_up_to() + 1;
    let mut err = malformed(
        "",
        format!(
            "{NOT_UTF8} (byte {at}): save the file as UTF-8; GBK or GB18030 text, as Chinese spreadsheet tools write it, must be converted"
        ),
    );
    let lossy = String::from_utf8_lossy(line);
    if let Ok(Value::Object(map)) = strict(&lossy) {
        if let Some(kind) = map
            .get("kind")
            .and_then(Value::as_str)
            .and_then(RecordKind::parse)
        {
            err.kind = kind.as_str().into();
            if let Some(id) = map.get(id_key(kind)).and_then(Value::as_str) {
                err.id = echo(id);
            }
        }
        let holds = |v: &Value| match v {
            Value::String(s) => s.contains('\u{FFFD}'),
            Value::Array(items) => items
                .iter()
                .any(|i| i.as_str().is_some_and(|s| s.contains('\u{FFFD}'))),
            _ => false,
        };
        if let Some((key, _)) = map.iter().find(|(_, v)| holds(v)) {
            err.field = field_name(key);
        }
    }
    err
}

/// A key as it may appear in a field path: itself when it looks like a key, else empty.
fn field_name(key: &str) -> String {
    key_name(key).unwrap_or_default().to_string()
}

/// The kind and id a line names, read leniently (for naming a line that is refused).
fn name_leniently(text: &str, e: &mut LineError) {
    if let Ok(Value::Object(map)) = serde_json::from_str::<Value>(text)
        && let Some(kind) = map
            .get("kind")
            .and_then(Value::as_str)
            .and_then(RecordKind::parse)
    {
        e.kind = kind.as_str().into();
        if let Some(id) = map.get(id_key(kind)).and_then(Value::as_str) {
            e.id = echo(id);
        }
    }
}

/// The key of a kind's record id.
fn id_key(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Worker => "worker_id",
        RecordKind::Order => "order_id",
        RecordKind::Declaration => "declaration_id",
        RecordKind::Accident => "report_id",
    }
}

/// The known key closest to an unknown one (a typo such as `workerid`), when it is
/// close enough to be a likely meaning.
fn closest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    let key = key.to_ascii_lowercase();
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(&key, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

/// The keys a record of `kind` may have, besides `kind`.
fn keys(kind: RecordKind) -> &'static [&'static str] {
    match kind {
        RecordKind::Worker => &[
            "worker_id",
            "revision",
            "id_type",
            "id_number",
            "name",
            "mobile",
            "industries",
            "registered_at",
            "status",
            "left_at",
        ],
        RecordKind::Order => &[
            "order_id",
            "revision",
            "worker_id",
            "industry",
            "division_code",
            "accepted_at",
            "completed_at",
            "status",
            "vehicle_plate",
        ],
        RecordKind::Declaration => &[
            "declaration_id",
            "revision",
            "period",
            "division_code",
            "industry",
            "order_count",
            "amount_fen",
        ],
        RecordKind::Accident => &[
            "report_id",
            "revision",
            "worker_id",
            "order_id",
            "occurred_at",
            "division_code",
            "injury_kind",
            "description",
        ],
    }
}

/// Why strict JSON reading failed.
enum StrictError {
    /// A key appears twice in one object (the key).
    Duplicate(String),
    Syntax(serde_json::Error),
}

/// Reads JSON like `serde_json::from_str::<Value>`, but refuses an object that names a
/// key twice (serde_json keeps the last value; the platform's own tools may have read
/// the first).
fn strict(text: &str) -> Result<Value, StrictError> {
    let duplicate = RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let value = Strict {
        duplicate: &duplicate,
    }
    .deserialize(&mut de)
    .and_then(|v| de.end().map(|()| v));
    match (value, duplicate.into_inner()) {
        (_, Some(key)) => Err(StrictError::Duplicate(key)),
        (Ok(v), None) => Ok(v),
        (Err(e), None) => Err(StrictError::Syntax(e)),
    }
}

#[derive(Clone, Copy)]
struct Strict<'a> {
    duplicate: &'a RefCell<Option<String>>,
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;
    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                *self.duplicate.borrow_mut() = Some(key);
                return Err(de::Error::custom("duplicate key"));
            }
            let value = map.next_value_seed(self)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

/// serde_json's message without its " at line 1 column N" tail, and the column.
fn syntax_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let reason = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(head, _)| head);
    format!("line is not valid JSON: {reason} at column {}", e.column())
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "true or false",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn parse_text(text: &str) -> Result<proto::Record, LineError> {
    let value = match strict(text) {
        Ok(v) => v,
        Err(StrictError::Duplicate(key)) => {
            let mut e = malformed(
                &field_name(&key),
                format!(
                    "the key {} appears twice in the line; send each key once",
                    shown_key(&key)
                ),
            );
            name_leniently(text, &mut e);
            return Err(e);
        }
        Err(StrictError::Syntax(e)) => {
            let mut message = syntax_message(&e);
            let trimmed = text.trim();
            if text.contains('\r') {
                message.push_str(
                    "; the line holds a carriage return: lines must end with LF or CRLF, not CR alone",
                );
            } else if matches!(trimmed, "{" | "[" | "}" | "]" | "},") || trimmed.ends_with(": {") {
                message.push_str(
                    "; a bulk file is JSON Lines: one whole record per line, not pretty-printed JSON",
                );
            }
            return Err(malformed("", message));
        }
    };
    let Value::Object(map) = value else {
        return Err(malformed(
            "",
            format!("line is {}, not a JSON object", json_type(&value)),
        ));
    };
    let kind = match map.get("kind") {
        None | Some(Value::Null) => {
            // A key that is almost `kind` (`Kind`, `kidn`, `type`) is the likely cause.
            let hint = map
                .keys()
                .find(|k| {
                    ["kind", "type", "record_type"]
                        .iter()
                        .any(|c| k.eq_ignore_ascii_case(c))
                        || closest(k, &["kind"]).is_some()
                })
                .map(|k| format!(" (the line has {}: did you mean `kind`?)", shown_key(k)))
                .unwrap_or_default();
            return Err(LineError {
                code: ErrorCode::MissingField,
                ..malformed(
                    "kind",
                    format!("kind is required: worker, order, declaration or accident{hint}"),
                )
            });
        }
        Some(Value::String(k)) if k.trim().is_empty() => {
            return Err(LineError {
                code: ErrorCode::MissingField,
                ..malformed(
                    "kind",
                    "kind is required: worker, order, declaration or accident",
                )
            });
        }
        Some(Value::String(k)) => RecordKind::parse(k).ok_or_else(|| {
            malformed(
                "kind",
                "kind must be worker, order, declaration or accident",
            )
        })?,
        Some(other) => {
            return Err(malformed(
                "kind",
                format!("kind must be a JSON string, not {}", json_type(other)),
            ));
        }
    };
    let named = |mut e: LineError| {
        e.kind = kind.as_str().into();
        if let Some(id) = map.get(id_key(kind)).and_then(Value::as_str) {
            e.id = echo(id);
        }
        e
    };
    let allowed = keys(kind);
    if let Some(key) = map
        .keys()
        .find(|k| k.as_str() != "kind" && !allowed.contains(&k.as_str()))
    {
        let hint = closest(key, allowed)
            .map(|k| format!(" (did you mean `{k}`?)"))
            .unwrap_or_default();
        return Err(named(malformed(
            &field_name(key),
            format!(
                "unknown key {}{hint} for {}; its keys are kind, {}",
                shown_key(key),
                match kind {
                    RecordKind::Worker => "a worker",
                    RecordKind::Order => "an order",
                    RecordKind::Declaration => "a declaration",
                    RecordKind::Accident => "an accident",
                },
                allowed.join(", ")
            ),
        )));
    }
    let f = Fields { map: &map };
    build(kind, &f)
        .map(|kind| proto::Record { kind: Some(kind) })
        .map_err(named)
}

fn build(kind: RecordKind, f: &Fields<'_>) -> Result<record::Kind, LineError> {
    Ok(match kind {
        RecordKind::Worker => record::Kind::Worker(proto::Worker {
            worker_id: f.str("worker_id")?,
            revision: f.revision()?,
            id_type: f.str("id_type")?,
            id_number: f.str("id_number")?,
            name: f.str("name")?,
            mobile: f.str("mobile")?,
            industries: f.str_list("industries")?,
            registered_at: f.time("registered_at")?,
            status: f.str("status")?,
            left_at: f.time("left_at")?,
        }),
        RecordKind::Order => record::Kind::Order(proto::Order {
            order_id: f.str("order_id")?,
            revision: f.revision()?,
            worker_id: f.str("worker_id")?,
            industry: f.str("industry")?,
            division_code: f.str("division_code")?,
            accepted_at: f.time("accepted_at")?,
            completed_at: f.time("completed_at")?,
            status: f.str("status")?,
            vehicle_plate: f.str("vehicle_plate")?,
        }),
        RecordKind::Declaration => record::Kind::Declaration(proto::Declaration {
            declaration_id: f.str("declaration_id")?,
            revision: f.revision()?,
            period: f.str("period")?,
            division_code: f.str("division_code")?,
            industry: f.str("industry")?,
            order_count: f.int("order_count")?,
            amount_fen: f.int("amount_fen")?,
        }),
        RecordKind::Accident => record::Kind::Accident(proto::Accident {
            report_id: f.str("report_id")?,
            revision: f.revision()?,
            worker_id: f.str("worker_id")?,
            order_id: f.str("order_id")?,
            occurred_at: f.time("occurred_at")?,
            division_code: f.str("division_code")?,
            injury_kind: f.str("injury_kind")?,
            description: f.str("description")?,
        }),
    })
}

/// Typed reads of a line's keys; absent and `null` are the same.
struct Fields<'a> {
    map: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn get(&self, field: &str) -> Option<&Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    /// A string; absent is empty (the gateway then says MISSING_FIELD where it is
    /// required).
    fn str(&self, field: &str) -> Result<String, LineError> {
        match self.get(field) {
            None => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(malformed(
                field,
                format!("{field} must be a JSON string, not {}", json_type(other)),
            )),
        }
    }

    /// A time: a string, or a JSON whole number of epoch milliseconds (its digits).
    fn time(&self, field: &str) -> Result<String, LineError> {
        match self.get(field) {
            Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
                (Some(v), _) => Ok(v.to_string()),
                (None, Some(v)) => Ok(v.to_string()),
                _ => Err(malformed(
                    field,
                    format!(
                        "{field} must be an RFC 3339 string or whole epoch milliseconds (no fraction or exponent)"
                    ),
                )),
            },
            _ => self.str(field),
        }
    }

    /// `revision`: absent is None (read as 1); a JSON whole number 0..=4294967295.
    fn revision(&self) -> Result<Option<u32>, LineError> {
        let field = "revision";
        match self.get(field) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .map(Some)
                .ok_or_else(|| {
                    malformed(
                        field,
                        "revision must be a whole number from 1 to 4294967295",
                    )
                }),
            Some(other) => Err(malformed(
                field,
                format!("revision must be a JSON number, not {}", json_type(other)),
            )),
        }
    }

    /// A whole number (negative allowed: the gateway names the rule it breaks); absent
    /// is None, never 0.
    fn int(&self, field: &str) -> Result<Option<i64>, LineError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Number(n)) => match (n.as_i64(), n.as_u64()) {
                (Some(v), _) => Ok(Some(v)),
                (None, Some(_)) => Err(LineError {
                    code: ErrorCode::InvalidAmount,
                    ..malformed(field, format!("{field} is too large"))
                }),
                _ => Err(malformed(
                    field,
                    format!("{field} must be a whole number (no fraction or exponent)"),
                )),
            },
            Some(other) => Err(malformed(
                field,
                format!("{field} must be a JSON number, not {}", json_type(other)),
            )),
        }
    }

    fn str_list(&self, field: &str) -> Result<Vec<String>, LineError> {
        match self.get(field) {
            None => Ok(vec![]),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(malformed(
                        &format!("{field}[{i}]"),
                        format!(
                            "{field}[{i}] must be a JSON string, not {}",
                            json_type(other)
                        ),
                    )),
                })
                .collect(),
            Some(other) => Err(malformed(
                field,
                format!(
                    "{field} must be a JSON array of strings, not {}",
                    json_type(other)
                ),
            )),
        }
    }
}

/// The invariants of decoding one untrusted line, for the fuzz target
/// (`fuzz/fuzz_targets/bulk_line.rs`) and the tests that replay its corpus: never a
/// panic; a refusal names at most a bounded id and field, says why in at most 300
/// characters, and never repeats a value of the line unless it looks like a code.
///
/// # Panics
/// When an invariant does not hold (that is the point).
pub fn check_line(raw: &[u8]) {
    let Some(line) = content(raw) else {
        return;
    };
    let Err(e) = parse_line(line) else {
        return;
    };
    assert!(e.message.chars().count() <= 301, "message: {}", e.message);
    assert!(e.id.chars().count() <= 65, "id: {}", e.id);
    assert!(e.field.chars().count() <= 64, "field: {}", e.field);
    assert!(!e.message.is_empty());
    if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(line) {
        // Values that could be personal data: long enough, with a digit or beyond ASCII.
        let personal = |v: &str| {
            v.chars().count() >= 8 && v.chars().any(|c| c.is_ascii_digit() || !c.is_ascii())
        };
        for v in map
            .values()
            .filter_map(Value::as_str)
            .filter(|v| personal(v))
        {
            assert!(!e.message.contains(v), "{v:?} echoed in {:?}", e.message);
        }
        for k in map.keys().filter(|k| personal(k) && key_name(k).is_none()) {
            assert!(
                !e.message.contains(k.as_str()),
                "{k:?} echoed in {:?}",
                e.message
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> Result<proto::Record, LineError> {
        parse_line(content(s.as_bytes()).unwrap_or_default())
    }

    fn order(r: Result<proto::Record, LineError>) -> proto::Order {
        match r {
            Ok(proto::Record {
                kind: Some(record::Kind::Order(o)),
            }) => o,
            other => panic!("{other:?}"),
        }
    }

    const ORDER: &str = r#"{"kind":"order","order_id":"O-1","worker_id":"W001","industry":"INSTANT_DELIVERY","division_code":"320100","accepted_at":"2025-07-02T11:00:00+08:00","completed_at":1751427300000,"status":"COMPLETED"}"#;

    #[test]
    fn parses_the_spec_example() {
        let o = order(parse(ORDER));
        assert_eq!(o.order_id, "O-1");
        assert_eq!(o.completed_at, "1751427300000");
        assert_eq!(o.revision, None);
    }

    #[test]
    fn bom_and_crlf_are_dropped() {
        let line = format!("\u{FEFF}{ORDER}\r\n");
        assert_eq!(order(parse(&line)).order_id, "O-1");
        assert_eq!(content(b"\xEF\xBB\xBF\r\n"), None);
        assert_eq!(content(b"  \t\r\n"), None);
    }

    #[test]
    fn invalid_utf8_names_kind_id_and_field() {
        // 张三 in GBK.
        let mut line = br#"{"kind":"worker","worker_id":"W3","name":""#.to_vec();
        line.extend_from_slice(b"\xD5\xC5\xC8\xFD");
        line.extend_from_slice(br#"","mobile":"13800138000"}"#);
        let e = parse_line(&line).unwrap_err();
        assert_eq!(e.code, ErrorCode::MalformedRecord);
        assert_eq!(
            (e.kind.as_str(), e.id.as_str(), e.field.as_str()),
            ("worker", "W3", "name")
        );
        assert!(
            e.message.contains("UTF-8") && e.message.contains("GBK"),
            "{}",
            e.message
        );
        assert!(e.message.contains("byte 43"), "{}", e.message);
    }

    #[test]
    fn json_syntax_errors_say_where() {
        let e = parse(r#"{"kind":"order","order_id":"O-1" "status":"X"}"#).unwrap_err();
        assert_eq!((e.code, e.field.as_str()), (ErrorCode::MalformedRecord, ""));
        assert!(
            e.message
                .starts_with("line is not valid JSON: expected `,` or `}` at column"),
            "{}",
            e.message
        );
        let e = parse(r#"[1,2]"#).unwrap_err();
        assert_eq!(e.message, "line is an array, not a JSON object");
        let e = parse(r#"{"kind":"order"} trailing"#).unwrap_err();
        assert!(e.message.contains("trailing characters"), "{}", e.message);
    }

    #[test]
    fn repeated_keys_are_refused_and_named() {
        let line = ORDER
            .replace(
                r#""status":"COMPLETED""#,
                r#""status":"CANCELLED","x":1,"status":"COMPLETED""#,
            )
            .replace(r#","x":1"#, "");
        let e = parse(&line).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str(), e.kind.as_str(), e.id.as_str()),
            (ErrorCode::MalformedRecord, "status", "order", "O-1")
        );
        assert!(
            e.message.contains("`status` appears twice"),
            "{}",
            e.message
        );
        // Escaped spellings of the same key are the same key.
        let e = parse(r#"{"kind":"order","order_id":"a","order\u005fid":"b"}"#).unwrap_err();
        assert_eq!(e.field, "order_id");
        // Also inside nested values.
        let e = parse(r#"{"kind":"worker","industries":[{"a":1,"a":2}]}"#).unwrap_err();
        assert_eq!(e.field, "a");
    }

    #[test]
    fn line_end_and_layout_mistakes_are_named() {
        let cr_only = format!("{ORDER}\r{ORDER}");
        let e = parse(&cr_only).unwrap_err();
        assert!(e.message.contains("carriage return"), "{}", e.message);
        let e = parse("{").unwrap_err();
        assert!(e.message.contains("JSON Lines"), "{}", e.message);
        let e = parse(r#"  "kind": "order","#).unwrap_err();
        assert_eq!(e.code, ErrorCode::MalformedRecord);
    }

    #[test]
    fn kinds_and_keys() {
        let e = parse(r#"{"kind":" "}"#).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            (ErrorCode::MissingField, "kind")
        );
        let e = parse(r#"{"order_id":"O-1"}"#).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            (ErrorCode::MissingField, "kind")
        );
        let e = parse(r#"{"Kind":"order","order_id":"O-1"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::MissingField);
        assert!(e.message.contains("did you mean `kind`"), "{}", e.message);
        let e = parse(r#"{"kind":"invoice"}"#).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            (ErrorCode::MalformedRecord, "kind")
        );
        assert!(
            !e.message.contains("invoice"),
            "never echoed: {}",
            e.message
        );
        let e = parse(r#"{"kind":7}"#).unwrap_err();
        assert_eq!(e.message, "kind must be a JSON string, not a number");
        let e = parse(&ORDER.replace("\"status\"", "\"vehicle_plat\":\"苏A12345\",\"status\""))
            .unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str(), e.kind.as_str(), e.id.as_str()),
            (ErrorCode::MalformedRecord, "vehicle_plat", "order", "O-1")
        );
        assert!(
            e.message.contains("did you mean `vehicle_plate`"),
            "{}",
            e.message
        );
        let e = parse(r#"{"kind":"worker","workerid":"W1"}"#).unwrap_err();
        assert!(
            e.message.contains("did you mean `worker_id`"),
            "{}",
            e.message
        );
        let e = parse(r#"{"kind":"worker","colour":"red"}"#).unwrap_err();
        assert!(!e.message.contains("did you mean"), "{}", e.message);
    }

    #[test]
    fn types_are_not_guessed() {
        let e = parse(&ORDER.replace(r#""order_id":"O-1""#, r#""order_id":12345"#)).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str()),
            (ErrorCode::MalformedRecord, "order_id")
        );
        assert_eq!(e.message, "order_id must be a JSON string, not a number");
        let decl = r#"{"kind":"declaration","declaration_id":"D-1","period":"2025-09","division_code":"321300","industry":"INSTANT_DELIVERY","order_count":"12","amount_fen":84}"#;
        let e = parse(decl).unwrap_err();
        assert_eq!(
            (e.code, e.field.as_str(), e.id.as_str()),
            (ErrorCode::MalformedRecord, "order_count", "D-1")
        );
        assert_eq!(e.message, "order_count must be a JSON number, not a string");
        for bad in ["12.0", "1.2e1", "-0.5"] {
            let e = parse(&decl.replace(r#""12""#, bad)).unwrap_err();
            assert_eq!(e.field, "order_count", "{bad}");
        }
        let e = parse(&decl.replace(r#""12""#, "18446744073709551615")).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidAmount);
        let e = parse(&ORDER.replace("1751427300000", "1751427300000.5")).unwrap_err();
        assert_eq!(e.field, "completed_at");
        let e = parse(&ORDER.replace(r#""order_id":"O-1""#, r#""order_id":"O-1","revision":"2""#))
            .unwrap_err();
        assert_eq!(e.field, "revision");
        let e = parse(r#"{"kind":"worker","industries":"INSTANT_DELIVERY"}"#).unwrap_err();
        assert_eq!(e.field, "industries");
        let e = parse(r#"{"kind":"worker","industries":["A",3]}"#).unwrap_err();
        assert_eq!(e.field, "industries[1]");
    }

    #[test]
    fn absent_and_null_are_absent_never_zero() {
        let decl = r#"{"kind":"declaration","declaration_id":"D-1","period":"2025-09","division_code":"321300","industry":"INSTANT_DELIVERY","amount_fen":null}"#;
        match parse(decl) {
            Ok(proto::Record {
                kind: Some(record::Kind::Declaration(d)),
            }) => assert_eq!(
                (d.order_count, d.amount_fen, d.revision),
                (None, None, None)
            ),
            other => panic!("{other:?}"),
        }
        let o = order(parse(
            &ORDER.replace(r#""order_id":"O-1""#, r#""order_id":"O-1","revision":0"#),
        ));
        assert_eq!(o.revision, Some(0), "0 is kept for the gateway to refuse");
    }

    #[test]
    fn messages_never_carry_content() {
        let e = parse(r#"{"kind":"worker","worker_id":"W1","id_number":["11010519491231002X"]}"#)
            .unwrap_err();
        assert_eq!((e.id.as_str(), e.field.as_str()), ("W1", "id_number"));
        assert!(!e.message.contains("1101"));
        let e = parse(r#"{"kind":"worker","11010519491231002X":1}"#).unwrap_err();
        assert!(!e.message.contains("1101") && e.field.is_empty(), "{e:?}");
        let e = parse(r#"{"kind":"13800138000"}"#).unwrap_err();
        assert!(!e.message.contains("1380"), "{e:?}");
        let long = format!(
            r#"{{"kind":"order","order_id":"{}","x":1}}"#,
            "o".repeat(100_000)
        );
        let e = parse(&long).unwrap_err();
        assert!(
            e.id.chars().count() <= 65 && e.message.len() < 400,
            "{}",
            e.message.len()
        );
    }

    /// The README's "Bulk file format" names exactly the keys each kind has, and its
    /// example line of each kind decodes.
    #[test]
    fn the_readme_documents_every_key_of_every_kind() {
        let readme = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"),
        )
        .unwrap_or_default();
        let section = readme
            .split("## Bulk file format")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .unwrap_or_default();
        for kind in [
            RecordKind::Worker,
            RecordKind::Order,
            RecordKind::Declaration,
            RecordKind::Accident,
        ] {
            let part = section
                .split(&format!("**{}**", kind.as_str()))
                .nth(1)
                .unwrap_or_default();
            let documented: Vec<&str> = part
                .lines()
                .skip_while(|l| !l.starts_with("| `"))
                .take_while(|l| l.starts_with('|'))
                .filter_map(|l| l.split('`').nth(1))
                .collect();
            assert_eq!(
                documented,
                keys(kind),
                "{} keys in the README",
                kind.as_str()
            );
            let example = part
                .lines()
                .find(|l| l.starts_with('{'))
                .unwrap_or_default();
            assert!(
                parse(example).is_ok(),
                "{} example: {example}",
                kind.as_str()
            );
        }
    }

    /// The corpus of the fuzz target (`fuzz/seeds/bulk_line/`: one input of each fault
    /// kind, named; `fuzz/corpus/bulk_line/`: a fuzzing run's minimized corpus),
    /// replayed as a plain test on every run.
    #[test]
    fn the_fuzz_corpus_decodes_cleanly() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut n = 0;
        let dirs = [root.join("seeds/bulk_line"), root.join("corpus/bulk_line")];
        for entry in dirs.iter().flat_map(std::fs::read_dir).flatten().flatten() {
            let bytes = std::fs::read(entry.path()).unwrap_or_default();
            check_line(&bytes);
            // Every line of a corpus file, as submit reads them.
            for line in bytes.split_inclusive(|b| *b == b'\n') {
                check_line(line);
            }
            n += 1;
        }
        assert!(n >= 1000, "the corpus has {n} inputs");
    }

    proptest! {
        /// Untrusted input: any bytes decode or fail cleanly, never panic, and a failure
        /// is bounded.
        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            check_line(&bytes);
        }

        /// Lines that are almost records: a valid line with one byte changed.
        #[test]
        fn near_records_never_panic(at in 0usize..220, byte in any::<u8>()) {
            let mut line = ORDER.as_bytes().to_vec();
            let i = at % line.len();
            line[i] = byte;
            check_line(&line);
        }

        #[test]
        fn never_panics_on_json_shaped_lines(kind in "(worker|order|declaration|accident|x)", key in "[a-z_]{1,12}", v in any::<i64>()) {
            let _ = parse_line(format!(r#"{{"kind":"{kind}","{key}":{v},"revision":{v}}}"#).as_bytes());
        }
    }
}
