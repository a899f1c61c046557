//! Delivery items of a plan: workers, orders and accidents to social security (with
//! their personal data, which that backend needs), declarations with their
//! reconciliation, and volume statements, to tax (aggregates only: a `TaxItem` cannot
//! carry personal data).

use prost::Message;

use std::collections::HashMap;

use crate::domain::batch::{EnrolmentKey, Plan, Reconciliation, Write};
use crate::domain::fees::{Figures, ReconciliationStatus};
use crate::domain::reconcile::RatedStatement;
use crate::domain::time::to_rfc3339;
use crate::domain::{Accident, Declaration, Order, PlatformProfile, Worker};
use crate::proto::{self, social_security_item, tax_item};
use crate::store::{Destination, OutboxItem};

/// The call that stored what an item delivers, carried in its header
/// (`ItemHeader.trace_id`, `traceparent`): the gateway's trace id and the caller's W3C
/// `traceparent` (empty when none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    pub id: String,
    pub parent: String,
}

impl Trace {
    fn header(
        &self,
        idempotency_key: String,
        platform: &PlatformProfile,
        correction: bool,
    ) -> proto::ItemHeader {
        proto::ItemHeader {
            idempotency_key,
            platform: platform.uscc.to_string(),
            correction,
            trace_id: self.id.clone(),
            traceparent: self.parent.clone(),
        }
    }
}

fn header(
    platform: &PlatformProfile,
    kind: &str,
    id: &str,
    revision: u32,
    correction: bool,
    trace: &Trace,
) -> (String, proto::ItemHeader) {
    let record_key = format!("{}/{kind}/{id}", platform.uscc);
    let header = trace.header(format!("{record_key}/{revision}"), platform, correction);
    (record_key, header)
}

fn worker(w: &Worker) -> proto::Worker {
    proto::Worker {
        worker_id: w.worker_id.clone(),
        revision: Some(w.revision),
        id_type: w.id_number.id_type().as_str().to_string(),
        id_number: w.id_number.as_str().to_string(),
        name: w.name.as_str().to_string(),
        mobile: w.mobile.as_str().to_string(),
        industries: w.industries.clone(),
        registered_at: to_rfc3339(w.registered_at),
        status: w.status.as_str().to_string(),
        left_at: w.left_at.map(to_rfc3339).unwrap_or_default(),
    }
}

fn order(o: &Order) -> proto::Order {
    proto::Order {
        order_id: o.order_id.clone(),
        revision: Some(o.revision),
        worker_id: o.worker_id.clone(),
        industry: o.industry.clone(),
        division_code: o.division_code.clone(),
        accepted_at: to_rfc3339(o.accepted_at),
        completed_at: o.completed_at.map(to_rfc3339).unwrap_or_default(),
        status: o.status.as_str().to_string(),
        vehicle_plate: o
            .vehicle_plate
            .as_ref()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default(),
    }
}

fn accident(a: &Accident) -> proto::Accident {
    proto::Accident {
        report_id: a.report_id.clone(),
        revision: Some(a.revision),
        worker_id: a.worker_id.clone(),
        order_id: a.order_id.clone(),
        occurred_at: to_rfc3339(a.occurred_at),
        division_code: a.division_code.clone(),
        injury_kind: a.injury_kind.as_str().to_string(),
        description: a.description.clone(),
    }
}

fn figures(f: Figures) -> proto::Figures {
    proto::Figures {
        order_count: f.order_count,
        amount_fen: f.amount_fen,
    }
}

fn social_security<'a, T>(
    platform: &'a PlatformProfile,
    trace: &'a Trace,
    kind: &'a str,
    writes: &'a [Write<T>],
    id: impl Fn(&T) -> (&str, u32) + 'a,
    payload: impl Fn(&T) -> social_security_item::Payload + 'a,
) -> impl Iterator<Item = OutboxItem> + 'a {
    writes.iter().map(move |w| {
        let (record_id, revision) = id(&w.record);
        let (record_key, header) = header(platform, kind, record_id, revision, w.correction, trace);
        let idempotency_key = header.idempotency_key.clone();
        OutboxItem {
            destination: Destination::SocialSecurity,
            record_key,
            idempotency_key,
            supersedes: None,
            payload: proto::SocialSecurityItem {
                header: Some(header),
                payload: Some(payload(&w.record)),
            }
            .encode_to_vec(),
            daily_enrolment: None,
            order_id: None,
        }
    })
}

/// Daily enrolments whose count the plan changes, with their new count (0 withdraws the
/// enrolment), versioned by the platform's batch number.
fn enrolments<'a>(
    plan: &'a Plan,
    platform: &'a PlatformProfile,
    before: &'a HashMap<EnrolmentKey, i64>,
    batch: u64,
    trace: &'a Trace,
) -> impl Iterator<Item = OutboxItem> + 'a {
    plan.enrolment_deltas.iter().map(move |(key, delta)| {
        let old = before.get(key).copied().unwrap_or(0);
        let id = format!("{}/{}/{}", key.worker_id, key.day, key.division_code);
        let record_key = format!("{}/enrolment/{id}", platform.uscc);
        let idempotency_key = format!("{record_key}/{batch}");
        let header = trace.header(idempotency_key.clone(), platform, old > 0);
        let payload = proto::SocialSecurityItem {
            header: Some(header),
            payload: Some(social_security_item::Payload::Enrolment(
                proto::DailyEnrolment {
                    worker_id: key.worker_id.clone(),
                    day: key.day.to_string(),
                    division_code: key.division_code.clone(),
                    order_count: (old + delta).max(0),
                },
            )),
        };
        OutboxItem {
            destination: Destination::SocialSecurity,
            supersedes: Some(format!("{record_key}/")),
            record_key,
            idempotency_key,
            payload: payload.encode_to_vec(),
            daily_enrolment: Some(key.clone()),
            order_id: None,
        }
    })
}

fn tax(
    record_key: String,
    header: proto::ItemHeader,
    payload: tax_item::Payload,
    supersedes: Option<String>,
) -> OutboxItem {
    OutboxItem {
        destination: Destination::Tax,
        supersedes,
        record_key,
        idempotency_key: header.idempotency_key.clone(),
        payload: proto::TaxItem {
            header: Some(header),
            payload: Some(payload),
        }
        .encode_to_vec(),
        daily_enrolment: None,
        order_id: None,
    }
}

/// A declaration with its reconciliation, as tax receives it.
fn declaration(d: &Declaration, reconciliation: Option<&Reconciliation>) -> tax_item::Payload {
    tax_item::Payload::Declaration(proto::DeclarationItem {
        declaration: Some(proto::Declaration {
            declaration_id: d.declaration_id.clone(),
            revision: Some(d.revision),
            period: d.period.to_string(),
            division_code: d.division_code.clone(),
            industry: d.industry.clone(),
            order_count: Some(d.figures.order_count),
            amount_fen: Some(d.figures.amount_fen),
        }),
        reconciliation: reconciliation.map(|r| proto::Reconciliation {
            status: ReconciliationStatus::of(r.declared, r.computed)
                .as_str()
                .to_string(),
            declared: Some(figures(r.declared)),
            computed: Some(figures(r.computed)),
        }),
    })
}

/// Volume statements to tax (aggregates only), versioned by the platform's batch
/// number: `<platform>/statement/<period>/<city>/<industry>/<batch>`.
pub fn statements<'a>(
    platform: &'a PlatformProfile,
    sends: impl IntoIterator<Item = (&'a RatedStatement, bool)> + 'a,
    batch: u64,
    trace: &'a Trace,
) -> impl Iterator<Item = OutboxItem> + 'a {
    sends.into_iter().map(move |(s, correction)| {
        let k = &s.key;
        let record_key = format!(
            "{}/statement/{}/{}/{}",
            platform.uscc, k.period, k.division_code, k.industry
        );
        let header = trace.header(format!("{record_key}/{batch}"), platform, correction);
        let supersedes = Some(format!("{record_key}/"));
        tax(
            record_key,
            header,
            tax_item::Payload::Statement(proto::StatementItem {
                period: k.period.to_string(),
                division_code: k.division_code.clone(),
                industry: k.industry.clone(),
                billable_count: s.billable_count,
                base_fen_per_order: s.base_fen_per_order,
                multiplier: s.multiplier.to_string(),
                amount_fen: s.amount_fen,
            }),
            supersedes,
        )
    })
}

/// The items that deliver what `plan` stores, in the order the backends should see them.
/// `enrolments_before`: the stored counts of the enrolments the plan changes; `batch`:
/// the platform's batch number, which versions derived items (daily enrolments,
/// statements, reconciliation updates); `trace`: the call that stored them.
pub fn items(
    plan: &Plan,
    platform: &PlatformProfile,
    enrolments_before: &HashMap<EnrolmentKey, i64>,
    batch: u64,
    trace: &Trace,
) -> Vec<OutboxItem> {
    let r = &plan.revisions;
    let mut out = Vec::with_capacity(
        r.workers.len() + r.orders.len() + r.accidents.len() + r.declarations.len(),
    );
    // Every accepted revision is forwarded, in order (one idempotency key each).
    out.extend(social_security(
        platform,
        trace,
        "worker",
        &r.workers,
        |w: &Worker| (&w.worker_id, w.revision),
        |w| social_security_item::Payload::Worker(worker(w)),
    ));
    out.extend(
        social_security(
            platform,
            trace,
            "order",
            &r.orders,
            |o: &Order| (&o.order_id, o.revision),
            |o| social_security_item::Payload::Order(order(o)),
        )
        .zip(&r.orders)
        .map(|(item, w)| OutboxItem {
            order_id: Some(w.record.order_id.clone()),
            ..item
        }),
    );
    out.extend(enrolments(plan, platform, enrolments_before, batch, trace));
    out.extend(social_security(
        platform,
        trace,
        "accident",
        &r.accidents,
        |a: &Accident| (&a.report_id, a.revision),
        |a| social_security_item::Payload::Accident(accident(a)),
    ));
    out.extend(statements(
        platform,
        plan.statement_sends
            .iter()
            .map(|s| (&s.statement, s.correction)),
        batch,
        trace,
    ));
    for (w, figures) in r.declarations.iter().zip(&r.declaration_figures) {
        let d = &w.record;
        let (record_key, header) = header(
            platform,
            "declaration",
            &d.declaration_id,
            d.revision,
            w.correction,
            trace,
        );
        out.push(tax(record_key, header, declaration(d, Some(figures)), None));
    }
    // The same revision with new computed figures: a correction of what tax holds.
    for (d, reconciliation) in &plan.reconciliation_updates {
        let (record_key, mut header) = header(
            platform,
            "declaration",
            &d.declaration_id,
            d.revision,
            true,
            trace,
        );
        // Earlier pending updates of this revision are obsolete.
        let updates = format!("{}/reconciliation/", header.idempotency_key);
        header.idempotency_key = format!("{updates}{batch}");
        out.push(tax(
            record_key,
            header,
            declaration(d, Some(reconciliation)),
            Some(updates),
        ));
    }
    out
}
