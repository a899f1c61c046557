//! `oip-gateway status deliveries|declarations|rejections|statements|workers|orders`:
//! a platform's own records as the gateway holds them, one call of a
//! `oip.v1.PlatformService` list RPC each. One line per item, or with `--json` one JSON
//! object per line (the proto message, field names as in the .proto files).
//!
//! The paged listings print one page (`--page-size`, default 100) and end with `more
//! entries exist: continue with --page-token TOKEN` when there are more; an empty
//! listing says `0 entries`. A failed call is one line with the gRPC code and the
//! gateway's message, and a non-zero exit.

use clap::{Args, Subcommand};
use serde_json::{Value, json};
use tonic::transport::Channel;

use super::{Connection, one_line, page_footer, status_line};
use crate::domain::time::to_rfc3339;
use crate::proto::{self, platform_service_client::PlatformServiceClient};

type Client = PlatformServiceClient<Channel>;

/// What `status` lists.
#[derive(Subcommand, Debug)]
pub enum StatusCommand {
    /// Where one record stands with the backends (ListDeliveries): one line per
    /// delivery item, oldest first: queued at, destination, state (PENDING, DELIVERED,
    /// DEAD_LETTERED, DISCARDED, SUPERSEDED), idempotency key, attempts, the backend's
    /// last refusal.
    Deliveries(DeliveriesArgs),
    /// Declarations with their reconciliation as of now (ListDeclarations): id,
    /// revision, period, division, industry, status (MATCHED, MISMATCH, SUPERSEDED),
    /// declared and computed figures.
    Declarations(PageArgs),
    /// Rejections kept for read-back, oldest first (ListRejections): received at,
    /// kind, id, revision, code, field, message.
    Rejections(PageArgs),
    /// Volume statements of one month (ListVolumeStatements): city, industry, billable
    /// orders, base fen per order, float, amount due, open or closed.
    Statements(StatementsArgs),
    /// Workers, current revision of each, personal fields masked (ListWorkers).
    Workers(PageArgs),
    /// Orders, current revision of each (ListOrders).
    Orders(PageArgs),
}

/// One page of a paged listing.
#[derive(Args, Debug)]
pub struct PageArgs {
    /// Items on this page, 1..1000 (a page is also cut at the gateway's byte limit).
    #[arg(
        long,
        default_value_t = 100,
        value_parser = clap::value_parser!(u32).range(1..=1000),
        value_name = "N"
    )]
    pub page_size: u32,
    /// Continue a listing: the token printed at the end of the previous page.
    #[arg(long, value_name = "TOKEN")]
    pub page_token: Option<String>,
    /// Only this record id (worker_id, order_id, declaration_id; for rejections, any
    /// record with that id).
    #[arg(long)]
    pub id: Option<String>,
}

/// `status deliveries`.
#[derive(Args, Debug)]
pub struct DeliveriesArgs {
    /// The record's kind.
    #[arg(long, value_parser = ["worker", "order", "accident", "declaration", "statement", "enrolment"])]
    pub kind: String,
    /// The record's id: worker_id, order_id, report_id or declaration_id; a statement
    /// is YYYY-MM/CITY/INDUSTRY (2025-07/320100/INSTANT_DELIVERY), a daily enrolment
    /// WORKER/YYYY-MM-DD/DIVISION.
    #[arg(long)]
    pub id: String,
}

/// `status statements`.
#[derive(Args, Debug)]
pub struct StatementsArgs {
    /// The month, YYYY-MM (Asia/Shanghai); an open month may be asked for too.
    #[arg(long, value_name = "YYYY-MM")]
    pub period: String,
}

/// Runs one `status` command as the platform of `--cert` (default platform A),
/// printing items (as JSON Lines with `json`) and the page's closing line.
pub async fn run(command: StatusCommand, c: &Connection, json: bool) -> anyhow::Result<()> {
    let mut client = PlatformServiceClient::new(c.channel("platform-a").await?);
    let page = fetch(command, &mut client).await?;
    for item in &page.items {
        if json {
            crate::outln!("{}", item.json);
        } else {
            crate::outln!("{}", item.line);
        }
    }
    if let Some(footer) = page_footer(page.items.len(), &page.next_page_token) {
        if json {
            eprintln!("{footer}");
        } else {
            crate::outln!("{footer}");
        }
    }
    Ok(())
}

/// One listed item, in both forms.
struct Item {
    line: String,
    json: Value,
}

/// What a listing returned.
struct Page {
    items: Vec<Item>,
    next_page_token: String,
}

fn request(p: &PageArgs) -> proto::ListRequest {
    proto::ListRequest {
        page_size: p.page_size,
        page_token: p.page_token.clone().unwrap_or_default(),
        id: p.id.clone().unwrap_or_default(),
    }
}

async fn fetch(command: StatusCommand, client: &mut Client) -> anyhow::Result<Page> {
    let page = match command {
        StatusCommand::Deliveries(a) => {
            let r = client
                .list_deliveries(proto::ListDeliveriesRequest {
                    kind: a.kind,
                    id: a.id,
                })
                .await
                .map_err(|s| status_line(&s))?
                .into_inner();
            Page {
                items: r.deliveries.iter().map(delivery).collect(),
                next_page_token: String::new(),
            }
        }
        StatusCommand::Declarations(p) => {
            let r = client
                .list_declarations(request(&p))
                .await
                .map_err(|s| status_line(&s))?
                .into_inner();
            Page {
                items: r.declarations.iter().map(declaration).collect(),
                next_page_token: r.next_page_token,
            }
        }
        StatusCommand::Rejections(p) => {
            let r = client
                .list_rejections(request(&p))
                .await
                .map_err(|s| status_line(&s))?
                .into_inner();
            Page {
                items: r.rejections.iter().map(rejection).collect(),
                next_page_token: r.next_page_token,
            }
        }
        StatusCommand::Statements(a) => {
            let r = client
                .list_volume_statements(proto::ListVolumeStatementsRequest { period: a.period })
                .await
                .map_err(|s| status_line(&s))?
                .into_inner();
            Page {
                items: r.statements.iter().map(statement).collect(),
                next_page_token: String::new(),
            }
        }
        StatusCommand::Workers(p) => {
            let r = client
                .list_workers(request(&p))
                .await
                .map_err(|s| status_line(&s))?
                .into_inner();
            Page {
                items: r.workers.iter().map(worker).collect(),
                next_page_token: r.next_page_token,
            }
        }
        StatusCommand::Orders(p) => {
            let r = client
                .list_orders(request(&p))
                .await
                .map_err(|s| status_line(&s))?
                .into_inner();
            Page {
                items: r.orders.iter().map(order).collect(),
                next_page_token: r.next_page_token,
            }
        }
    };
    Ok(page)
}

/// `s`, or `-` when empty (so that a line keeps its columns).
fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

fn delivery(d: &proto::Delivery) -> Item {
    let mut line = format!(
        "{}\t{}\t{}\t{}\tattempts={}",
        to_rfc3339(d.queued_at_ms),
        d.destination,
        d.state,
        d.idempotency_key,
        d.attempts
    );
    if d.delivered_at_ms != 0 {
        line.push_str(&format!("\tdelivered={}", to_rfc3339(d.delivered_at_ms)));
    }
    if !d.last_error.is_empty() {
        line.push_str(&format!("\tlast refusal: {}", one_line(&d.last_error)));
    }
    Item {
        line,
        json: json!({
            "idempotency_key": d.idempotency_key,
            "destination": d.destination,
            "state": d.state,
            "attempts": d.attempts,
            "last_error": d.last_error,
            "queued_at_ms": d.queued_at_ms,
            "delivered_at_ms": d.delivered_at_ms,
        }),
    }
}

fn figures(f: Option<&proto::Figures>) -> Value {
    match f {
        Some(f) => json!({"order_count": f.order_count, "amount_fen": f.amount_fen}),
        None => Value::Null,
    }
}

fn figures_text(f: Option<&proto::Figures>) -> String {
    match f {
        Some(f) => format!("{} orders, {} fen", f.order_count, f.amount_fen),
        None => "-".to_string(),
    }
}

fn declaration(s: &proto::StoredDeclaration) -> Item {
    let d = s.declaration.clone().unwrap_or_default();
    let r = s.reconciliation.clone().unwrap_or_default();
    let line = format!(
        "{}\trevision={}\t{}\t{}\t{}\t{}\tdeclared={}\tcomputed={}\treceived={}",
        d.declaration_id,
        d.revision.unwrap_or(1),
        d.period,
        d.division_code,
        d.industry,
        or_dash(&r.status),
        figures_text(r.declared.as_ref()),
        figures_text(r.computed.as_ref()),
        to_rfc3339(s.received_at_ms)
    );
    Item {
        line,
        json: json!({
            "declaration": {
                "declaration_id": d.declaration_id,
                "revision": d.revision,
                "period": d.period,
                "division_code": d.division_code,
                "industry": d.industry,
                "order_count": d.order_count,
                "amount_fen": d.amount_fen,
            },
            "reconciliation": {
                "status": r.status,
                "declared": figures(r.declared.as_ref()),
                "computed": figures(r.computed.as_ref()),
            },
            "received_at_ms": s.received_at_ms,
        }),
    }
}

fn rejection(r: &proto::Rejection) -> Item {
    let line = format!(
        "{}\t{}\t{}\trevision={}\t{}\t{}\t{}",
        to_rfc3339(r.received_at_ms),
        r.kind,
        or_dash(&r.id),
        r.revision,
        r.code,
        or_dash(&r.field),
        one_line(&r.message)
    );
    Item {
        line,
        json: json!({
            "kind": r.kind,
            "id": r.id,
            "revision": r.revision,
            "code": r.code,
            "field": r.field,
            "message": r.message,
            "received_at_ms": r.received_at_ms,
        }),
    }
}

fn statement(s: &proto::VolumeStatement) -> Item {
    let line = format!(
        "{}\t{}\t{}\tbillable={}\tbase={} fen/order\tfloat={}\tamount={} fen\t{}",
        s.period,
        s.division_code,
        s.industry,
        s.billable_count,
        s.base_fen_per_order,
        s.multiplier,
        s.amount_fen,
        if s.closed { "closed" } else { "open" }
    );
    Item {
        line,
        json: json!({
            "period": s.period,
            "division_code": s.division_code,
            "industry": s.industry,
            "billable_count": s.billable_count,
            "base_fen_per_order": s.base_fen_per_order,
            "multiplier": s.multiplier,
            "amount_fen": s.amount_fen,
            "closed": s.closed,
        }),
    }
}

fn worker(s: &proto::StoredWorker) -> Item {
    let w = s.worker.clone().unwrap_or_default();
    let mut line = format!(
        "{}\trevision={}\t{}\t{}\tregistered={}",
        w.worker_id,
        w.revision.unwrap_or(1),
        w.status,
        w.industries.join(","),
        w.registered_at
    );
    if !w.left_at.is_empty() {
        line.push_str(&format!("\tleft={}", w.left_at));
    }
    line.push_str(&format!(
        "\t{} {}\t{}\t{}",
        or_dash(&w.id_type),
        w.id_number,
        w.name,
        w.mobile
    ));
    Item {
        line,
        json: json!({
            "worker": {
                "worker_id": w.worker_id,
                "revision": w.revision,
                "id_type": w.id_type,
                "id_number": w.id_number,
                "name": w.name,
                "mobile": w.mobile,
                "industries": w.industries,
                "registered_at": w.registered_at,
                "status": w.status,
                "left_at": w.left_at,
            },
            "received_at_ms": s.received_at_ms,
        }),
    }
}

fn order(s: &proto::StoredOrder) -> Item {
    let o = s.order.clone().unwrap_or_default();
    let mut line = format!(
        "{}\trevision={}\tworker={}\t{}\t{}\t{}\taccepted={}",
        o.order_id,
        o.revision.unwrap_or(1),
        o.worker_id,
        o.industry,
        o.division_code,
        o.status,
        o.accepted_at
    );
    if !o.completed_at.is_empty() {
        line.push_str(&format!("\tcompleted={}", o.completed_at));
    }
    if !o.vehicle_plate.is_empty() {
        line.push_str(&format!("\tplate={}", o.vehicle_plate));
    }
    Item {
        line,
        json: json!({
            "order": {
                "order_id": o.order_id,
                "revision": o.revision,
                "worker_id": o.worker_id,
                "industry": o.industry,
                "division_code": o.division_code,
                "accepted_at": o.accepted_at,
                "completed_at": o.completed_at,
                "status": o.status,
                "vehicle_plate": o.vehicle_plate,
            },
            "received_at_ms": s.received_at_ms,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejection_reads_as_one_line_with_its_code_field_and_message() {
        let item = rejection(&proto::Rejection {
            kind: "order".into(),
            id: "O-4".into(),
            revision: 1,
            code: "WORKER_NOT_REGISTERED".into(),
            field: "worker_id".into(),
            message: "no such worker".into(),
            received_at_ms: 1_751_425_200_000,
        });
        assert_eq!(
            item.line,
            "2025-07-02T11:00:00+08:00\torder\tO-4\trevision=1\tWORKER_NOT_REGISTERED\tworker_id\tno such worker"
        );
        assert_eq!(item.json["code"], "WORKER_NOT_REGISTERED");
        assert!(!item.line.contains('\n'));
        assert_eq!(one_line("a\nb\tc"), "a b c");
    }

    #[test]
    fn a_declaration_without_figures_still_prints() {
        let item = declaration(&proto::StoredDeclaration::default());
        assert!(item.line.contains("declared=-"), "{}", item.line);
        assert_eq!(item.json["reconciliation"]["declared"], Value::Null);
    }
}
