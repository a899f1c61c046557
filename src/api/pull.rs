//! `oip.v1.TaxService` and `oip.v1.SocialSecurityService`: pulls of the journal (what
//! the gateway sends to the backends, in commit order), limited to the divisions of
//! the caller's grant and to the request's filters.
//!
//! A pull streams every matching item after its `since` cursor up to the end of the
//! journal as it stood when the pull began, then a checkpoint. Each page read is
//! audited before it is sent (for social security, as a read of personal data);
//! if the entry cannot be written the stream ends with UNAVAILABLE instead.

use std::collections::BTreeSet;
use std::sync::Arc;

use prost::Message as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::access::{Access, DivisionScope};
use crate::audit::{self, Auditor, Event};
use crate::deadline::CallDeadline;
use crate::domain::grant::Role;
use crate::domain::ids::CreditCode;
use crate::domain::outcome::quoted;
use crate::domain::period::Period;
use crate::domain::time::{now_millis, parse_wire_time};
use crate::error::ApiError;
use crate::identity::Principal;
use crate::pii::Pii;
use crate::proto::social_security_item::Payload as SsPayload;
use crate::proto::tax_item::Payload as TaxPayload;
use crate::proto::{
    self, social_security_service_server::SocialSecurityService, tax_service_server::TaxService,
};
use crate::reference::Reference;
use crate::store::access::JournalEntry;
use crate::store::{Destination, Store};

/// Journal rows examined per page.
const SCAN: u32 = 2000;

/// What a pull asked for, checked against the caller's grant.
#[derive(Debug, Clone)]
pub struct Filter {
    pub divisions: DivisionScope,
    pub periods: BTreeSet<Period>,
    pub platforms: BTreeSet<String>,
}

impl Filter {
    fn admits(&self, platform: &str, division: &str, period: Option<Period>) -> bool {
        self.divisions.covers(division)
            && (self.platforms.is_empty() || self.platforms.contains(platform))
            && (self.periods.is_empty() || period.is_some_and(|p| self.periods.contains(&p)))
    }
}

/// A journal entry the gateway cannot read: the pull stops rather than skip it.
fn unreadable(entry: &JournalEntry) -> Status {
    tracing::error!(seq = entry.seq, "journal entry cannot be decoded");
    ApiError::DataLoss(format!(
        "journal entry {} cannot be read; resume after it only once it is repaired",
        entry.seq
    ))
    .into()
}

/// The division and period of a tax item, when it passes `filter`.
fn select_tax(
    entry: &JournalEntry,
    filter: &Filter,
) -> Result<Option<(String, proto::TaxItem)>, Status> {
    let item = proto::TaxItem::decode(entry.payload.as_slice()).map_err(|_| unreadable(entry))?;
    let platform = item
        .header
        .as_ref()
        .ok_or_else(|| unreadable(entry))?
        .platform
        .clone();
    let (division, period) = match item.payload.as_ref().ok_or_else(|| unreadable(entry))? {
        TaxPayload::Statement(s) => (s.division_code.clone(), Period::parse(&s.period)),
        TaxPayload::Declaration(d) => {
            let d = d.declaration.as_ref().ok_or_else(|| unreadable(entry))?;
            (d.division_code.clone(), Period::parse(&d.period))
        }
    };
    Ok(filter
        .admits(&platform, &division, period)
        .then_some((division, item)))
}

/// Whether a social-security pull returns the record of this key
/// (`<uscc>/<kind>/...`): worker records are not pulled (the enrolment carries the
/// person), so their items, sealed, are neither opened nor decoded.
fn social_security_pulls(record_key: &str) -> bool {
    record_key.split('/').nth(1) != Some("worker")
}

/// Enrolments, orders and accidents (worker records are not pulled: the enrolment
/// carries the person).
fn select_ss(
    entry: &JournalEntry,
    filter: &Filter,
) -> Result<Option<(String, proto::SocialSecurityItem)>, Status> {
    let item = proto::SocialSecurityItem::decode(entry.payload.as_slice())
        .map_err(|_| unreadable(entry))?;
    let platform = item
        .header
        .as_ref()
        .ok_or_else(|| unreadable(entry))?
        .platform
        .clone();
    let (division, period) = match item.payload.as_ref().ok_or_else(|| unreadable(entry))? {
        SsPayload::Worker(_) => return Ok(None),
        SsPayload::Enrolment(e) => (
            e.division_code.clone(),
            e.day.get(..7).and_then(Period::parse),
        ),
        SsPayload::Order(o) => (
            o.division_code.clone(),
            parse_wire_time(&o.accepted_at).map(Period::of),
        ),
        SsPayload::Accident(a) => (
            a.division_code.clone(),
            parse_wire_time(&a.occurred_at).map(Period::of),
        ),
    };
    Ok(filter
        .admits(&platform, &division, period)
        .then_some((division, item)))
}

/// The shared part of both services.
#[derive(Clone)]
pub struct Puller {
    pub access: Access,
    pub store: Arc<dyn Store>,
    /// Opens the sealed items and identities the pulls return.
    pub pii: Pii,
    pub auditor: Auditor,
    pub reference: Arc<Reference>,
    /// Paces what each office receives (records a second).
    pub admission: Arc<crate::admission::Admission>,
}

/// One authorised pull.
struct Pull {
    caller: Caller,
    destination: Destination,
    filter: Filter,
    since: i64,
    end: i64,
    max_records: u32,
    /// The caller's deadline: the pull stops at it, between pages.
    deadline: Option<CallDeadline>,
}

/// Who pulls, for the page entries.
struct Caller {
    identity: String,
    role: Role,
    trace_id: String,
}

impl Puller {
    /// Authorises the pull and resolves its filter and starting cursor.
    async fn start(
        &self,
        req: &Request<proto::PullRequest>,
        role: Role,
        destination: Destination,
    ) -> Result<Pull, ApiError> {
        let principal = Principal::of_request(req)?;
        let grant = self
            .access
            .divisions(&principal, role, now_millis())
            .await?;
        let r = req.get_ref();
        for d in &r.divisions {
            match self.reference.division(d) {
                None => {
                    return Err(ApiError::InvalidArgument(format!(
                        "unknown division {}",
                        quoted(d)
                    )));
                }
                Some(county) if role == Role::Tax && county.is_county() => {
                    return Err(ApiError::InvalidArgument(crate::access::county_for_tax(
                        &self.reference,
                        county,
                    )));
                }
                Some(_) if !self.reference.serves(d) => {
                    return Err(ApiError::InvalidArgument(format!(
                        "division {} is not served by this gateway (reference.served_divisions): nothing of it is here",
                        quoted(d)
                    )));
                }
                Some(_) => {}
            }
        }
        let divisions = grant.narrow(&r.divisions).map_err(|outside| {
            ApiError::PermissionDenied(format!(
                "{} has no {role} grant covering division {}; an administrator grants it with: oip-gateway admin grants put --identity {} --role {role} --scope {}",
                principal.uri,
                quoted(&outside.to_string()),
                principal.uri,
                quoted(&outside.to_string())
            ))
        })?;
        let periods = r
            .periods
            .iter()
            .map(|p| {
                Period::parse(p).ok_or_else(|| {
                    ApiError::InvalidArgument(format!("period {} is not YYYY-MM", quoted(p)))
                })
            })
            .collect::<Result<_, _>>()?;
        let platforms = r
            .platforms
            .iter()
            .map(|p| {
                CreditCode::parse(p)
                    .map(|_| p.clone())
                    .map_err(|e| ApiError::InvalidArgument(format!("platform {}: {e}", quoted(p))))
            })
            .collect::<Result<_, _>>()?;
        let end = self.store.journal_end().await?;
        let since = match r.since.as_str() {
            "" => 0,
            c => c
                .parse::<i64>()
                .ok()
                .filter(|s| (0..=end).contains(s))
                .ok_or_else(|| {
                    ApiError::InvalidArgument(format!(
                        "unknown cursor {}: cursors are the numbers pulls print as \"next cursor\", at most {end} now (no cursor starts from the beginning)",
                        quoted(c)
                    ))
                })?,
        };
        audit::note(req, divisions.to_string(), 0);
        Ok(Pull {
            caller: Caller {
                identity: principal.uri,
                role,
                trace_id: audit::trace_id(req),
            },
            destination,
            filter: Filter {
                divisions,
                periods,
                platforms,
            },
            since,
            end,
            max_records: r.max_records,
            deadline: req.extensions().get::<CallDeadline>().cloned(),
        })
    }

    /// Streams pages of matching items. `pulled` says from its record key whether an
    /// entry may be pulled at all (the others are skipped unopened); `select` keeps an
    /// entry that passes the filter, as a message; `page` turns selected entries into
    /// messages (it may read more, e.g. persons), returning the messages and the audit
    /// action of the page.
    fn run<M, S, P, Fut>(
        &self,
        pull: Pull,
        pulled: fn(&str) -> bool,
        select: S,
        page: P,
        checkpoint: impl Fn(String) -> M + Send + 'static,
    ) -> ReceiverStream<Result<M, Status>>
    where
        M: Send + 'static,
        S: Fn(&JournalEntry, &Filter) -> Result<Option<(String, M)>, Status> + Send + 'static,
        P: Fn(Arc<dyn Store>, Pii, Vec<(i64, M)>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<(Vec<(i64, M)>, &'static str), ApiError>> + Send,
    {
        let (tx, rx) = mpsc::channel(64);
        let store = self.store.clone();
        let pii = self.pii.clone();
        let auditor = self.auditor.clone();
        let access = self.access.clone();
        let admission = self.admission.clone();
        let Pull {
            caller,
            destination,
            filter,
            since,
            end,
            max_records,
            deadline,
        } = pull;
        if let Some(d) = &deadline {
            d.own();
        }
        tokio::spawn(async move {
            let mut cursor = since;
            let mut sent = 0u64;
            let limit = (max_records > 0).then_some(u64::from(max_records));
            while cursor < end && limit.is_none_or(|l| sent < l) {
                if deadline.as_ref().is_some_and(|d| d.check().is_err()) {
                    let _ = tx
                        .send(Err(ApiError::DeadlineExceeded(
                            "the caller's deadline passed during the pull; resume from the last cursor received".into(),
                        )
                        .into()))
                        .await;
                    return;
                }
                // A grant revoked or expired during a long pull ends it.
                if let Err(status) = still_granted(&access, &caller, &filter).await {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                let scan = u32::try_from(end - cursor).unwrap_or(SCAN).min(SCAN);
                let mut journal = match store.journal(destination, cursor, scan).await {
                    Ok(j) => j,
                    Err(e) => {
                        let _ = tx.send(Err(ApiError::from(e).into())).await;
                        return;
                    }
                };
                let mut divisions = BTreeSet::new();
                let mut selected = Vec::new();
                let mut scanned_to = journal.scanned_to.min(end);
                // An unreadable entry ends the pull after the items before it.
                let mut failure = None;
                for entry in journal.entries.iter_mut().filter(|e| e.seq <= end) {
                    if limit.is_some_and(|l| sent + selected.len() as u64 >= l) {
                        scanned_to = selected.last().map(|(s, _)| *s).unwrap_or(cursor);
                        break;
                    }
                    if !pulled(&entry.record_key) {
                        continue;
                    }
                    // Opened one by one: an entry that does not open ends the pull
                    // after the items before it, like one that does not decode.
                    match pii.open_payload(std::mem::take(&mut entry.payload)) {
                        Ok(clear) => entry.payload = clear,
                        Err(_) => {
                            failure = Some(unreadable(entry));
                            break;
                        }
                    }
                    match select(entry, &filter) {
                        Ok(Some((division, m))) => {
                            divisions.insert(division);
                            selected.push((entry.seq, m));
                        }
                        Ok(None) => {}
                        Err(status) => {
                            failure = Some(status);
                            break;
                        }
                    }
                }
                if !selected.is_empty() {
                    // The office's records-a-second rate: the pull slows, it is not refused.
                    admission
                        .pace_records(&caller.identity, selected.len())
                        .await;
                    let (messages, action) = match page(store.clone(), pii.clone(), selected).await
                    {
                        Ok(x) => x,
                        Err(e) => {
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    };
                    let event = Event {
                        identity: caller.identity.clone(),
                        role: caller.role.as_str().to_string(),
                        action: action.to_string(),
                        scope: divisions.into_iter().collect::<Vec<_>>().join(","),
                        records: messages.len() as i64,
                        outcome: "OK".into(),
                        trace_id: caller.trace_id.clone(),
                    };
                    if let Err(e) = auditor.record(event).await {
                        tracing::error!(error = %e, "audit write failed: pull stopped");
                        let _ = tx
                            .send(Err(crate::error::audit_unavailable(
                                "resume from the last cursor later",
                            )))
                            .await;
                        return;
                    }
                    for (_, m) in messages {
                        sent += 1;
                        if tx.send(Ok(m)).await.is_err() {
                            return;
                        }
                    }
                }
                if let Some(status) = failure {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                if scanned_to <= cursor {
                    break; // nothing more can be read (cannot happen: seqs only grow)
                }
                cursor = scanned_to;
            }
            let _ = tx.send(Ok(checkpoint(cursor.to_string()))).await;
        });
        ReceiverStream::new(rx)
    }
}

/// The caller still holds a live grant covering the pull's divisions.
async fn still_granted(access: &Access, caller: &Caller, filter: &Filter) -> Result<(), Status> {
    let principal = Principal::from_uri(&caller.identity)
        .map_err(|e| Status::from(ApiError::Unauthenticated(e)))?;
    let grant = access
        .divisions(&principal, caller.role, now_millis())
        .await
        .map_err(Status::from)?;
    grant
        .narrow(filter.divisions.divisions())
        .map(|_| ())
        .map_err(|outside| {
            ApiError::PermissionDenied(format!(
                "the grant for division {outside} ended during the pull"
            ))
            .into()
        })
}

/// `oip.v1.TaxService`.
#[derive(Clone)]
pub struct TaxApi(pub Puller);

#[tonic::async_trait]
impl TaxService for TaxApi {
    type PullContributionsStream = ReceiverStream<Result<proto::ContributionChange, Status>>;

    async fn pull_contributions(
        &self,
        req: Request<proto::PullRequest>,
    ) -> Result<Response<Self::PullContributionsStream>, Status> {
        let pull = self.0.start(&req, Role::Tax, Destination::Tax).await?;
        Ok(Response::new(self.0.run(
            pull,
            |_| true,
            |entry, filter| {
                Ok(select_tax(entry, filter)?.map(|(d, item)| {
                    (
                        d,
                        proto::ContributionChange {
                            cursor: entry.seq.to_string(),
                            item: Some(item),
                        },
                    )
                }))
            },
            |_store, _pii, selected| async move {
                Ok((selected, crate::domain::audit::SPECIAL_ACTIONS[0]))
            },
            |cursor| proto::ContributionChange { cursor, item: None },
        )))
    }
}

/// `oip.v1.SocialSecurityService`.
#[derive(Clone)]
pub struct SocialSecurityApi(pub Puller);

/// Adds the insured person to each enrolment of a page.
async fn with_persons(
    store: Arc<dyn Store>,
    pii: Pii,
    mut selected: Vec<(i64, proto::SocialSecurityChange)>,
) -> Result<(Vec<(i64, proto::SocialSecurityChange)>, &'static str), ApiError> {
    let key = |c: &proto::SocialSecurityChange| -> Option<(String, String)> {
        let item = c.item.as_ref()?;
        match item.payload.as_ref()? {
            SsPayload::Enrolment(e) => {
                Some((item.header.as_ref()?.platform.clone(), e.worker_id.clone()))
            }
            _ => None,
        }
    };
    let keys: Vec<_> = selected.iter().filter_map(|(_, c)| key(c)).collect();
    let persons = store.persons(&keys).await?;
    for (_, c) in &mut selected {
        if let Some(p) = key(c).and_then(|k| persons.get(&k)) {
            c.person = Some(proto::InsuredPerson {
                id_type: p.id_type.clone(),
                id_number: pii.open_id_number(&p.id_number)?,
                name: pii.open_name(&p.name)?,
            });
        }
    }
    Ok((selected, crate::domain::audit::SPECIAL_ACTIONS[1]))
}

#[tonic::async_trait]
impl SocialSecurityService for SocialSecurityApi {
    type PullSocialSecurityStream = ReceiverStream<Result<proto::SocialSecurityChange, Status>>;

    async fn pull_social_security(
        &self,
        req: Request<proto::PullRequest>,
    ) -> Result<Response<Self::PullSocialSecurityStream>, Status> {
        let pull = self
            .0
            .start(&req, Role::SocialSecurity, Destination::SocialSecurity)
            .await?;
        Ok(Response::new(self.0.run(
            pull,
            social_security_pulls,
            |entry, filter| {
                Ok(select_ss(entry, filter)?.map(|(d, item)| {
                    (
                        d,
                        proto::SocialSecurityChange {
                            cursor: entry.seq.to_string(),
                            item: Some(item),
                            person: None,
                        },
                    )
                }))
            },
            with_persons,
            |cursor| proto::SocialSecurityChange {
                cursor,
                item: None,
                person: None,
            },
        )))
    }
}
