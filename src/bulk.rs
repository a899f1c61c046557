//! The bulk-file format (records.md, "Bulk files"): JSON Lines in, one record a line
//! with `kind` first; and the outcome report, JSON Lines out, one line per input
//! record in input order.
//!
//! Fields are read leniently where that is unambiguous (a number where a string is
//! expected becomes its digits, so epoch-millisecond times work) and strictly
//! otherwise; a line that cannot become a record is answered locally as REJECTED
//! without personal data in the message.

use serde::Serialize;
use serde_json::{Map, Value};

use crate::domain::{ErrorCode, RecordKind};
use crate::proto::{self, record};

/// A line that could not become a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    pub kind: String,
    pub id: String,
    pub code: ErrorCode,
    pub field: String,
    pub message: String,
}

/// One line of the outcome report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportLine {
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

struct Fields<'a> {
    map: &'a Map<String, Value>,
    kind: &'static str,
}

impl Fields<'_> {
    fn type_error(&self, field: &str, expected: &str) -> LineError {
        LineError {
            kind: self.kind.into(),
            id: String::new(),
            code: ErrorCode::MissingField,
            field: field.into(),
            message: format!("{field} must be {expected}"),
        }
    }

    /// A string field; numbers become their digits; absent or null is empty.
    fn str(&self, field: &str) -> Result<String, LineError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(String::new()),
            Some(Value::String(s)) => Ok(s.clone()),
            Some(Value::Number(n)) => Ok(n.to_string()),
            Some(_) => Err(self.type_error(field, "a string")),
        }
    }

    fn revision(&self) -> Result<u32, LineError> {
        match self.map.get("revision") {
            None | Some(Value::Null) => Ok(0),
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| self.type_error("revision", "a whole number ≥ 1")),
            Some(_) => Err(self.type_error("revision", "a whole number ≥ 1")),
        }
    }

    /// A whole number (negative allowed: the gateway names the rule it breaks).
    fn int(&self, field: &str) -> Result<i64, LineError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(0),
            Some(Value::Number(n)) => n
                .as_i64()
                .ok_or_else(|| self.type_error(field, "a whole number")),
            Some(_) => Err(self.type_error(field, "a whole number")),
        }
    }

    fn str_list(&self, field: &str) -> Result<Vec<String>, LineError> {
        match self.map.get(field) {
            None | Some(Value::Null) => Ok(vec![]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| self.type_error(field, "a list of strings"))
                })
                .collect(),
            Some(_) => Err(self.type_error(field, "a list of strings")),
        }
    }
}

/// Parses one non-empty line into a record.
pub fn parse_line(line: &str) -> Result<proto::Record, LineError> {
    let whole = |code, field: &str, message: &str| LineError {
        kind: String::new(),
        id: String::new(),
        code,
        field: field.into(),
        message: message.into(),
    };
    let value: Value = serde_json::from_str(line).map_err(|_| {
        whole(
            ErrorCode::MissingField,
            "",
            "line is not a valid JSON object",
        )
    })?;
    let Value::Object(map) = value else {
        return Err(whole(
            ErrorCode::MissingField,
            "",
            "line is not a JSON object",
        ));
    };
    let kind = match map.get("kind").and_then(Value::as_str) {
        None => return Err(whole(ErrorCode::MissingField, "kind", "kind is required")),
        Some(k) => RecordKind::parse(k).ok_or_else(|| {
            whole(
                ErrorCode::MissingField,
                "kind",
                "kind must be worker, order, declaration or accident",
            )
        })?,
    };
    let f = Fields {
        map: &map,
        kind: kind.as_str(),
    };
    let id_field = match kind {
        RecordKind::Worker => "worker_id",
        RecordKind::Order => "order_id",
        RecordKind::Declaration => "declaration_id",
        RecordKind::Accident => "report_id",
    };
    let id = f.str(id_field).unwrap_or_default();
    let built = (|| {
        Ok(match kind {
            RecordKind::Worker => record::Kind::Worker(proto::Worker {
                worker_id: f.str("worker_id")?,
                revision: f.revision()?,
                id_type: f.str("id_type")?,
                id_number: f.str("id_number")?,
                name: f.str("name")?,
                mobile: f.str("mobile")?,
                industries: f.str_list("industries")?,
                registered_at: f.str("registered_at")?,
                status: f.str("status")?,
                left_at: f.str("left_at")?,
            }),
            RecordKind::Order => record::Kind::Order(proto::Order {
                order_id: f.str("order_id")?,
                revision: f.revision()?,
                worker_id: f.str("worker_id")?,
                industry: f.str("industry")?,
                division_code: f.str("division_code")?,
                accepted_at: f.str("accepted_at")?,
                completed_at: f.str("completed_at")?,
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
                occurred_at: f.str("occurred_at")?,
                division_code: f.str("division_code")?,
                injury_kind: f.str("injury_kind")?,
                description: f.str("description")?,
            }),
        })
    })();
    let kind = built.map_err(|mut e: LineError| {
        e.id = id;
        e
    })?;
    Ok(proto::Record { kind: Some(kind) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_spec_example() {
        let r = parse_line(
            r#"{"kind":"order","order_id":"O-1","worker_id":"W001","industry":"INSTANT_DELIVERY","division_code":"320100","accepted_at":"2025-07-02T11:00:00+08:00","completed_at":1751427300000,"status":"COMPLETED"}"#,
        );
        let Ok(proto::Record {
            kind: Some(record::Kind::Order(o)),
        }) = r
        else {
            panic!("{r:?}")
        };
        assert_eq!(o.order_id, "O-1");
        assert_eq!(o.completed_at, "1751427300000");
    }

    #[test]
    fn bad_lines_are_named_without_their_content() {
        let e = parse_line("{not json").unwrap_err();
        assert_eq!((e.code, e.field.as_str()), (ErrorCode::MissingField, ""));
        let e = parse_line(r#"{"kind":"invoice"}"#).unwrap_err();
        assert_eq!(e.field, "kind");
        let e =
            parse_line(r#"{"kind":"worker","worker_id":"W1","id_number":["11010519491231002X"]}"#)
                .unwrap_err();
        assert_eq!((e.id.as_str(), e.field.as_str()), ("W1", "id_number"));
        assert!(!e.message.contains("1101"));
    }

    #[test]
    fn report_field_drops_the_call_prefix() {
        let o = proto::RecordOutcome {
            field: "records[12].order.worker_id".into(),
            outcome: proto::Outcome::Rejected as i32,
            ..Default::default()
        };
        assert_eq!(ReportLine::from_outcome(3, o).field, "worker_id");
    }

    proptest! {
        /// Untrusted input: any line parses or fails cleanly, never panics.
        #[test]
        fn never_panics(line in ".{0,200}") {
            let _ = parse_line(&line);
        }

        #[test]
        fn never_panics_on_json_shaped_lines(kind in "(worker|order|x)", key in "[a-z_]{1,12}", v in any::<i64>()) {
            let _ = parse_line(&format!(r#"{{"kind":"{kind}","{key}":{v},"revision":{v}}}"#));
        }
    }
}
