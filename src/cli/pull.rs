//! `oip-gateway pull contributions|social-security`: pulls what changed since a
//! cursor into a CSV or JSON Lines file and prints the cursor to resume from. An
//! interrupted pull keeps what it wrote and prints the cursor of the last record
//! written, so `--since` that cursor continues without gaps or repeats.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Map, Value, json};

use super::{Connection, status_line};
use crate::proto::{
    self, social_security_item, social_security_service_client::SocialSecurityServiceClient,
    tax_item, tax_service_client::TaxServiceClient,
};

/// `pull ...`: what to pull.
#[derive(Subcommand, Debug)]
pub enum PullCommand {
    /// Volume statements, declarations and reconciliation (tax bureau certificate).
    Contributions(PullArgs),
    /// Daily enrolments with the insured person, orders, accidents (social-security
    /// agency certificate). The file holds personal data: keep it accordingly.
    SocialSecurity(PullArgs),
}

/// What a pull reads (filters, where to resume) and where it writes.
#[derive(Args, Debug)]
pub struct PullArgs {
    /// Resume after this cursor (printed by the previous pull); none: from the start.
    #[arg(long)]
    since: Option<String>,
    /// Where to write the records.
    #[arg(long)]
    out: PathBuf,
    /// csv or jsonl; default: from the file's extension (.csv, else jsonl).
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Add to the file instead of replacing it.
    #[arg(long)]
    append: bool,
    /// YYYY-MM (repeatable).
    #[arg(long = "period")]
    periods: Vec<String>,
    /// Division codes inside your grant (repeatable); none: all of the grant.
    #[arg(long = "division")]
    divisions: Vec<String>,
    /// Platform USCCs (repeatable).
    #[arg(long = "platform")]
    platforms: Vec<String>,
    /// Stop after this many records (0: everything).
    #[arg(long, default_value_t = 0)]
    max_records: u32,
}

/// The format of a pulled file.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated values with a header line (fixed columns per pull).
    Csv,
    /// JSON Lines: one object per record, only the fields the record has.
    Jsonl,
}

/// The CSV columns of `pull contributions`, in order.
pub const TAX_COLUMNS: [&str; 19] = [
    "cursor",
    "kind",
    "platform",
    "idempotency_key",
    "correction",
    "period",
    "division_code",
    "industry",
    "billable_count",
    "base_fen_per_order",
    "multiplier",
    "amount_fen",
    "declaration_id",
    "revision",
    "declared_count",
    "declared_amount_fen",
    "status",
    "computed_count",
    "computed_amount_fen",
];

/// The CSV columns of `pull social-security`, in order.
pub const SS_COLUMNS: [&str; 22] = [
    "cursor",
    "kind",
    "platform",
    "idempotency_key",
    "correction",
    "division_code",
    "day",
    "worker_id",
    "id_type",
    "id_number",
    "name",
    "order_count",
    "order_id",
    "revision",
    "industry",
    "accepted_at",
    "completed_at",
    "status",
    "report_id",
    "occurred_at",
    "injury_kind",
    "description",
];

fn header(map: &mut Map<String, Value>, cursor: &str, h: Option<&proto::ItemHeader>) {
    map.insert("cursor".into(), json!(cursor));
    if let Some(h) = h {
        map.insert("platform".into(), json!(h.platform));
        map.insert("idempotency_key".into(), json!(h.idempotency_key));
        map.insert("correction".into(), json!(h.correction));
    }
}

/// One pulled tax item as named fields (None for the closing checkpoint).
pub fn tax_record(c: &proto::ContributionChange) -> Option<Map<String, Value>> {
    let item = c.item.as_ref()?;
    let mut m = Map::new();
    header(&mut m, &c.cursor, item.header.as_ref());
    match item.payload.as_ref()? {
        tax_item::Payload::Statement(s) => {
            m.insert("kind".into(), json!("statement"));
            m.insert("period".into(), json!(s.period));
            m.insert("division_code".into(), json!(s.division_code));
            m.insert("industry".into(), json!(s.industry));
            m.insert("billable_count".into(), json!(s.billable_count));
            m.insert("base_fen_per_order".into(), json!(s.base_fen_per_order));
            m.insert("multiplier".into(), json!(s.multiplier));
            m.insert("amount_fen".into(), json!(s.amount_fen));
        }
        tax_item::Payload::Declaration(d) => {
            m.insert("kind".into(), json!("declaration"));
            if let Some(d) = &d.declaration {
                m.insert("declaration_id".into(), json!(d.declaration_id));
                m.insert("revision".into(), json!(d.revision));
                m.insert("period".into(), json!(d.period));
                m.insert("division_code".into(), json!(d.division_code));
                m.insert("industry".into(), json!(d.industry));
                m.insert("declared_count".into(), json!(d.order_count));
                m.insert("declared_amount_fen".into(), json!(d.amount_fen));
            }
            if let Some(r) = &d.reconciliation {
                m.insert("status".into(), json!(r.status));
                if let Some(f) = &r.computed {
                    m.insert("computed_count".into(), json!(f.order_count));
                    m.insert("computed_amount_fen".into(), json!(f.amount_fen));
                }
            }
        }
    }
    Some(m)
}

/// One pulled social-security item as named fields (None for the checkpoint).
pub fn ss_record(c: &proto::SocialSecurityChange) -> Option<Map<String, Value>> {
    let item = c.item.as_ref()?;
    let mut m = Map::new();
    header(&mut m, &c.cursor, item.header.as_ref());
    match item.payload.as_ref()? {
        social_security_item::Payload::Enrolment(e) => {
            m.insert("kind".into(), json!("enrolment"));
            m.insert("division_code".into(), json!(e.division_code));
            m.insert("day".into(), json!(e.day));
            m.insert("worker_id".into(), json!(e.worker_id));
            m.insert("order_count".into(), json!(e.order_count));
            if let Some(p) = &c.person {
                m.insert("id_type".into(), json!(p.id_type));
                m.insert("id_number".into(), json!(p.id_number));
                m.insert("name".into(), json!(p.name));
            }
        }
        social_security_item::Payload::Order(o) => {
            m.insert("kind".into(), json!("order"));
            m.insert("order_id".into(), json!(o.order_id));
            m.insert("revision".into(), json!(o.revision));
            m.insert("worker_id".into(), json!(o.worker_id));
            m.insert("industry".into(), json!(o.industry));
            m.insert("division_code".into(), json!(o.division_code));
            m.insert("accepted_at".into(), json!(o.accepted_at));
            m.insert("completed_at".into(), json!(o.completed_at));
            m.insert("status".into(), json!(o.status));
        }
        social_security_item::Payload::Accident(a) => {
            m.insert("kind".into(), json!("accident"));
            m.insert("report_id".into(), json!(a.report_id));
            m.insert("revision".into(), json!(a.revision));
            m.insert("worker_id".into(), json!(a.worker_id));
            m.insert("order_id".into(), json!(a.order_id));
            m.insert("division_code".into(), json!(a.division_code));
            m.insert("occurred_at".into(), json!(a.occurred_at));
            m.insert("injury_kind".into(), json!(a.injury_kind));
            m.insert("description".into(), json!(a.description));
        }
        social_security_item::Payload::Worker(_) => return None,
    }
    Some(m)
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(v: Option<&Value>) -> String {
    let s = match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// Writes records to a file as CSV (fixed columns, header first) or JSON Lines.
pub struct RecordWriter {
    out: std::io::BufWriter<std::fs::File>,
    format: Format,
    columns: &'static [&'static str],
}

impl RecordWriter {
    /// Opens `path` (owner-only when created) for `format`, or the one its extension
    /// names (`.csv`, else JSON Lines); appends with `append`, writing the CSV header
    /// only into a new or empty file.
    pub fn create(
        path: &Path,
        format: Option<Format>,
        append: bool,
        columns: &'static [&'static str],
    ) -> anyhow::Result<Self> {
        let format = format.unwrap_or(
            if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("csv"))
            {
                Format::Csv
            } else {
                Format::Jsonl
            },
        );
        let existing = append && path.metadata().is_ok_and(|m| m.len() > 0);
        let mut options = std::fs::OpenOptions::new();
        options
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append);
        // A new file is readable by its owner only: social-security pulls hold ID
        // numbers and names.
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options
            .open(path)
            .map_err(|e| anyhow::anyhow!("--out {}: {e}", path.display()))?;
        let mut w = Self {
            out: std::io::BufWriter::new(file),
            format,
            columns,
        };
        if format == Format::Csv && !existing {
            writeln!(w.out, "{}", columns.join(","))?;
        }
        Ok(w)
    }

    /// Writes one record (CSV: its values in the columns' order, empty where absent).
    pub fn write(&mut self, record: &Map<String, Value>) -> anyhow::Result<()> {
        match self.format {
            Format::Jsonl => {
                serde_json::to_writer(&mut self.out, record)?;
                writeln!(self.out)?;
            }
            Format::Csv => {
                let line: Vec<String> = self
                    .columns
                    .iter()
                    .map(|c| csv_field(record.get(*c)))
                    .collect();
                writeln!(self.out, "{}", line.join(","))?;
            }
        }
        Ok(())
    }

    /// Flushes and syncs the file to disk.
    pub fn finish(mut self) -> anyhow::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        Ok(())
    }
}

fn request(a: &PullArgs) -> proto::PullRequest {
    proto::PullRequest {
        since: a.since.clone().unwrap_or_default(),
        periods: a.periods.clone(),
        divisions: a.divisions.clone(),
        platforms: a.platforms.clone(),
        max_records: a.max_records,
    }
}

/// Drains a pull stream into the file; returns (records written, next cursor).
async fn drain<M>(
    mut stream: tonic::Streaming<M>,
    writer: &mut RecordWriter,
    since: String,
    record: impl Fn(&M) -> Option<Map<String, Value>>,
    cursor: impl Fn(&M) -> &str,
) -> (u64, String, Option<tonic::Status>) {
    let mut written = 0u64;
    let mut last = since;
    loop {
        match stream.message().await {
            Ok(Some(m)) => {
                if let Some(r) = record(&m) {
                    if let Err(e) = writer.write(&r) {
                        return (
                            written,
                            last,
                            Some(tonic::Status::internal(format!("writing the file: {e}"))),
                        );
                    }
                    written += 1;
                }
                last = cursor(&m).to_string();
            }
            Ok(None) => return (written, last, None),
            Err(s) => return (written, last, Some(s)),
        }
    }
}

/// Runs one `pull` command.
pub async fn run(command: PullCommand, c: &Connection) -> anyhow::Result<()> {
    let (args, outcome) = match command {
        PullCommand::Contributions(a) => {
            let mut client = TaxServiceClient::new(c.channel("tax").await?);
            let stream = client
                .pull_contributions(request(&a))
                .await
                .map_err(|s| status_line(&s))?
                .into_inner();
            let mut w = RecordWriter::create(&a.out, a.format, a.append, &TAX_COLUMNS)?;
            let since = a.since.clone().unwrap_or_default();
            let r = drain(stream, &mut w, since, tax_record, |m| m.cursor.as_str()).await;
            w.finish()?;
            (a, r)
        }
        PullCommand::SocialSecurity(a) => {
            let mut client = SocialSecurityServiceClient::new(c.channel("social-security").await?);
            let stream = client
                .pull_social_security(request(&a))
                .await
                .map_err(|s| status_line(&s))?
                .into_inner();
            let mut w = RecordWriter::create(&a.out, a.format, a.append, &SS_COLUMNS)?;
            let since = a.since.clone().unwrap_or_default();
            let r = drain(stream, &mut w, since, ss_record, |m| m.cursor.as_str()).await;
            w.finish()?;
            (a, r)
        }
    };
    let (written, next, error) = outcome;
    crate::outln!(
        "wrote {} to {}",
        super::count(written as usize, "record", "records"),
        args.out.display()
    );
    crate::outln!("next cursor: {next}");
    match error {
        None => Ok(()),
        Some(s) => Err(anyhow::anyhow!(
            "pull interrupted ({}); resume with --since {next}",
            status_line(&s)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(csv_field(Some(&json!("a,b"))), "\"a,b\"");
        assert_eq!(csv_field(Some(&json!("say \"hi\""))), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field(Some(&json!(12))), "12");
        assert_eq!(csv_field(Some(&json!(true))), "true");
        assert_eq!(csv_field(None), "");
    }

    #[test]
    fn checkpoints_are_not_records() {
        let c = proto::ContributionChange {
            cursor: "7".into(),
            item: None,
        };
        assert!(tax_record(&c).is_none());
    }
}
