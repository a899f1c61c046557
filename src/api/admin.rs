//! `oip.v1.AdminService` for administrators: platforms, grants, rate tables, dead
//! letters and the audit log. Every call needs a live admin grant; the audit layer
//! records each one (a grant change names who, what role and which scopes).

use std::collections::BTreeSet;
use std::sync::Arc;

use chrono::NaiveDate;
use tonic::{Request, Response, Status};

use crate::access::Access;
use crate::api::paging;
use crate::audit;
use crate::deadline::{CallDeadline, CommitGuard};
use crate::domain::PlatformProfile;
use crate::domain::fees::{BaseRate, FloatRate, Multiplier, RateBook};
use crate::domain::grant::{Grant, Role};
use crate::domain::ids::CreditCode;
use crate::domain::outcome::{quoted, shown_division};
use crate::domain::platform::DeliveryTier;
use crate::domain::time::{now_millis, parse_wire_time, to_rfc3339};
use crate::error::ApiError;
use crate::identity::Principal;
use crate::ingest::Ingest;
use crate::proto::{self, admin_service_server::AdminService};
use crate::reference::Reference;
use crate::store::access::AuditQuery;
use crate::store::{
    DeadLetterAction, DeadLetterSelection, Destination, PlatformRegistration, Store,
};

#[derive(Clone)]
pub struct AdminApi {
    pub access: Access,
    pub store: Arc<dyn Store>,
    pub reference: Arc<Reference>,
    pub ingest: Ingest,
    pub auditor: audit::Auditor,
    /// Largest listing page, in encoded bytes (`limits.max_page_bytes`).
    pub max_page_bytes: usize,
    /// Takes rate changes live (PutRateLimit, ClearRateLimit).
    pub admission: Arc<crate::admission::Admission>,
}

/// Highest rate an administrator may set (calls or records a second).
const MAX_RATE: u32 = 10_000_000;

/// Most scopes granted or revoked in one call.
const MAX_SCOPES: usize = 1000;

/// The commit gate of an administrator's change, taken right before it is written:
/// Err (nothing applied) when the caller's deadline has passed; while the guard lives,
/// the deadline cannot answer DEADLINE_EXCEEDED for a change being written.
fn gate(deadline: Option<&CallDeadline>) -> Result<Option<CommitGuard>, ApiError> {
    deadline
        .map(CallDeadline::begin_commit)
        .transpose()
        .map_err(Into::into)
}

/// Longest platform name, in characters.
const MAX_PLATFORM_NAME_CHARS: usize = 100;

/// Listing names, which tag their page tokens.
const AUDIT: &str = "audit";
const DEAD_LETTERS: &str = "dead-letters";

/// The sequence number an opaque page token of `listing` resumes after (0: the start).
fn seq_after(listing: &str, token: &str) -> Result<i64, ApiError> {
    match paging::key_of(listing, token)? {
        None => Ok(0),
        Some(k) => k.parse().map_err(|_| paging::invalid(listing)),
    }
}

fn bad(m: impl Into<String>) -> ApiError {
    ApiError::InvalidArgument(m.into())
}

fn role(s: &str) -> Result<Role, ApiError> {
    Role::parse(s).ok_or_else(|| {
        bad(format!(
            "role must be platform, tax, social-security or admin, not {}",
            quoted(s)
        ))
    })
}

/// Earliest and latest dates an administrator may give (rates, pilot starts).
const EARLIEST_DATE: (i32, u32, u32) = (2000, 1, 1);
const LATEST_DATE: (i32, u32, u32) = (2100, 12, 31);
/// Highest base rate, in fen per order (national rates are 1 to 25 fen; a rate above
/// 100 yuan per order is a typo).
const MAX_FEN_PER_ORDER: i64 = 10_000;

/// An optional instant: RFC 3339 with an offset, or 13-digit epoch milliseconds (a
/// 10-digit number is epoch seconds and refused, not read as 1970), from
/// 2000-01-01T00:00:00+08:00; no surrounding spaces.
fn opt_time(key: &str, s: &str) -> Result<Option<i64>, ApiError> {
    if s.is_empty() {
        return Ok(None);
    }
    let invalid = |why: &str| bad(format!("{key}: {} {why}", quoted(s)));
    if s.trim() != s {
        return Err(invalid("has surrounding spaces"));
    }
    if s.bytes().all(|b| b.is_ascii_digit()) && s.len() != 13 {
        return Err(invalid(
            "is not 13-digit epoch milliseconds (10 digits are seconds)",
        ));
    }
    let t = parse_wire_time(s).ok_or_else(|| {
        invalid(
            "is not an RFC 3339 time with an offset (e.g. 2026-11-30T00:00:00+08:00) or 13-digit epoch milliseconds",
        )
    })?;
    if t < crate::validate::Bounds::default().earliest {
        return Err(invalid("is before 2000-01-01T00:00:00+08:00"));
    }
    Ok(Some(t))
}

/// A date `YYYY-MM-DD` from 2000-01-01 to 2100-12-31, exactly (no spaces).
fn date(key: &str, s: &str) -> Result<NaiveDate, ApiError> {
    let invalid = || {
        bad(format!(
            "{key}: {} is not a YYYY-MM-DD date from 2000-01-01 to 2100-12-31",
            quoted(s)
        ))
    };
    let d: NaiveDate = if s.len() == 10 && s.trim() == s {
        s.parse().map_err(|_| invalid())?
    } else {
        return Err(invalid());
    };
    let bound = |(y, m, day): (i32, u32, u32)| NaiveDate::from_ymd_opt(y, m, day);
    match (bound(EARLIEST_DATE), bound(LATEST_DATE)) {
        (Some(lo), Some(hi)) if (lo..=hi).contains(&d) => Ok(d),
        _ => Err(invalid()),
    }
}

fn tier(key: &str, s: &str) -> Result<DeliveryTier, ApiError> {
    match s {
        "" => Ok(DeliveryTier::A),
        t => DeliveryTier::parse(t).ok_or_else(|| bad(format!("{key}: tiers are A or B"))),
    }
}

/// A wire registration, checked against the reference data.
fn registration(
    r: proto::PlatformRegistration,
    reference: &Reference,
) -> Result<PlatformRegistration, ApiError> {
    CreditCode::parse(&r.uscc).map_err(|e| bad(format!("uscc: {e}")))?;
    if r.name.trim().is_empty() {
        return Err(bad("name: required"));
    }
    if r.name.chars().count() > MAX_PLATFORM_NAME_CHARS
        || r.name.chars().any(char::is_control)
        || crate::domain::ids::has_invisible(&r.name)
        || r.name.trim() != r.name
    {
        return Err(bad(format!(
            "name: 1..{MAX_PLATFORM_NAME_CHARS} characters, no control or invisible characters, no surrounding spaces"
        )));
    }
    if r.industries.is_empty() {
        return Err(bad("industries: at least one"));
    }
    if let Some(x) = r.industries.iter().find(|x| !reference.is_industry(x)) {
        return Err(bad(format!("industries: unknown industry {}", quoted(x))));
    }
    if r.divisions.is_empty() {
        return Err(bad("divisions: at least one, each with its pilot start"));
    }
    let mut seen = BTreeSet::new();
    if let Some(d) = r.divisions.iter().find(|d| !seen.insert(&d.division_code)) {
        return Err(bad(format!(
            "divisions: {} is listed twice",
            quoted(&d.division_code)
        )));
    }
    let pilot_starts = r
        .divisions
        .iter()
        .map(|d| {
            if !reference.serves(&d.division_code) {
                return Err(bad(format!(
                    "divisions: {} is unknown or not served",
                    quoted(&d.division_code)
                )));
            }
            Ok((
                d.division_code.clone(),
                date("pilot_start", &d.pilot_start)?,
            ))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let delivery_tiers = r
        .delivery_tier_overrides
        .iter()
        .map(|(d, t)| {
            if reference.division(d).is_none() {
                return Err(bad(format!(
                    "delivery_tier_overrides: unknown division {}",
                    quoted(d)
                )));
            }
            let pilot: Vec<&str> = pilot_starts.iter().map(|(p, _)| p.as_str()).collect();
            if let Some(why) = crate::domain::platform::tier_override_problem(d, &pilot) {
                return Err(bad(format!("delivery_tier_overrides: {why}")));
            }
            Ok((d.clone(), tier("delivery_tier_overrides", t)?))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PlatformRegistration {
        uscc: r.uscc,
        name: r.name,
        industries: r.industries,
        pilot_starts,
        delivery_tier: tier("delivery_tier", &r.delivery_tier)?,
        delivery_tiers,
    })
}

fn wire_platform(p: PlatformProfile) -> proto::PlatformRegistration {
    proto::PlatformRegistration {
        uscc: p.uscc.to_string(),
        name: p.name,
        industries: p.industries.into_iter().collect(),
        divisions: p
            .pilot_starts
            .into_iter()
            .map(|(division_code, start)| proto::DivisionPilot {
                division_code,
                pilot_start: start.to_string(),
            })
            .collect(),
        delivery_tier: p.delivery_tier.as_str().to_string(),
        delivery_tier_overrides: p
            .delivery_tiers
            .into_iter()
            .map(|(d, t)| (d, t.as_str().to_string()))
            .collect(),
    }
}

fn wire_rates(book: &RateBook) -> proto::RateTables {
    proto::RateTables {
        base_rates: book
            .bases
            .iter()
            .map(|b| proto::BaseRateRow {
                industry: b.industry.clone(),
                tier: b.tier.map(|t| t.as_str().to_string()).unwrap_or_default(),
                effective_from: b.effective_from.to_string(),
                fen_per_order: Some(b.fen_per_order),
                recorded_at: to_rfc3339(b.recorded_at),
            })
            .collect(),
        floats: book
            .floats
            .iter()
            .map(|f| proto::FloatRow {
                uscc: f.uscc.clone(),
                division_code: f.division_code.clone(),
                year: Some(f.year),
                multiplier: f.multiplier.to_string(),
                recorded_at: to_rfc3339(f.recorded_at),
            })
            .collect(),
    }
}

fn wire_grants(rows: Vec<crate::store::access::GrantRow>) -> proto::GrantsResponse {
    proto::GrantsResponse {
        grants: rows
            .into_iter()
            .map(|r| proto::Grant {
                identity: r.grant.identity,
                role: r.grant.role.as_str().to_string(),
                scope: r.grant.scope,
                expires_at: r.grant.expires_at.map(to_rfc3339).unwrap_or_default(),
                granted_at: to_rfc3339(r.granted_at),
                granted_by: r.granted_by,
            })
            .collect(),
    }
}

fn destination(s: &str) -> Result<Option<Destination>, ApiError> {
    match s {
        "" => Ok(None),
        "social-security" => Ok(Some(Destination::SocialSecurity)),
        "tax" => Ok(Some(Destination::Tax)),
        other => Err(ApiError::InvalidArgument(format!(
            "destination must be social-security, tax or empty, not {}",
            quoted(other)
        ))),
    }
}

impl AdminApi {
    /// The calling administrator's identity URI.
    async fn admin<T>(&self, req: &Request<T>) -> Result<String, ApiError> {
        let principal = Principal::of_request(req)?;
        self.access.admin(&principal, now_millis()).await?;
        Ok(principal.uri)
    }

    /// An administrator about to change something: the intent is audited (outcome
    /// STARTED) before the change, so a change is never made unaudited even if the
    /// call's own entry later cannot be written.
    /// Reloads the stored rates into admission and lists them with the defaults.
    async fn rate_limits_now(&self) -> Result<proto::RateLimitsResponse, ApiError> {
        let rows = self.store.rate_limits().await?;
        self.admission.load(&rows);
        let d = self.admission.defaults();
        Ok(proto::RateLimitsResponse {
            defaults: Some(proto::RateLimit {
                calls_per_second: Some(d.calls_per_second),
                records_per_second: Some(d.records_per_second),
                ..Default::default()
            }),
            overrides: rows
                .into_iter()
                .map(|r| proto::RateLimit {
                    identity: r.identity,
                    calls_per_second: Some(r.calls_per_second),
                    records_per_second: Some(r.records_per_second),
                    set_by: r.set_by,
                    set_at: to_rfc3339(r.set_at),
                })
                .collect(),
        })
    }

    async fn changer<T>(&self, req: &Request<T>, scope: String) -> Result<String, ApiError> {
        let by = self.admin(req).await?;
        let note = req
            .extensions()
            .get::<audit::CallNote>()
            .cloned()
            .unwrap_or_default();
        note.set(scope, 0);
        note.started(&self.auditor, 0).await?;
        Ok(by)
    }

    async fn act(
        &self,
        req: Request<proto::DeadLetterSelection>,
        action: DeadLetterAction,
    ) -> Result<Response<proto::DeadLetterActionResponse>, Status> {
        let r = req.get_ref();
        let scope = format!(
            "{} {}",
            r.destination,
            if r.all {
                "all".to_string()
            } else {
                format!("{:?}", r.seqs)
            }
        );
        let by = self.changer(&req, scope).await?;
        let deadline = req.extensions().get::<CallDeadline>().cloned();
        let r = req.into_inner();
        let by_seqs = !r.seqs.is_empty();
        if r.all == by_seqs {
            return Err(ApiError::InvalidArgument(
                "select dead letters by seqs or with all = true (exactly one)".into(),
            )
            .into());
        }
        let selection = DeadLetterSelection {
            destination: destination(&r.destination)?,
            seqs: r.seqs,
        };
        let _gate = gate(deadline.as_ref())?;
        let handled = self
            .store
            .handle_dead_letters(&selection, action, &by, now_millis())
            .await
            .map_err(ApiError::from)?;
        tracing::info!(admin = %by, ?action, changed = handled.changed, superseded = handled.superseded,
            "dead letters handled");
        Ok(Response::new(proto::DeadLetterActionResponse {
            changed: handled.changed,
            superseded: handled.superseded,
        }))
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn put_rate_limit(
        &self,
        req: Request<proto::RateLimit>,
    ) -> Result<Response<proto::RateLimitsResponse>, Status> {
        let r = req.get_ref();
        let scope = format!(
            "{} calls={} records={}",
            r.identity,
            r.calls_per_second.map_or("-".into(), |v| v.to_string()),
            r.records_per_second.map_or("-".into(), |v| v.to_string())
        );
        let by = self.changer(&req, scope).await?;
        Principal::from_uri(&r.identity).map_err(|e| bad(format!("identity: {e}")))?;
        let rate = |key: &str, v: Option<u32>| match v {
            None => Err(bad(format!("{key} is required"))),
            Some(0) => Err(bad(format!("{key}: at least 1"))),
            Some(v) if v > MAX_RATE => Err(bad(format!("{key}: at most {MAX_RATE}"))),
            Some(v) => Ok(v),
        };
        let row = crate::store::access::RateLimitRow {
            identity: r.identity.clone(),
            calls_per_second: rate("calls_per_second", r.calls_per_second)?,
            records_per_second: rate("records_per_second", r.records_per_second)?,
            set_by: by.clone(),
            set_at: now_millis(),
        };
        let _gate = gate(req.extensions().get::<CallDeadline>())?;
        self.store
            .put_rate_limit(&row)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(admin = %by, identity = %row.identity, calls_per_second = row.calls_per_second, records_per_second = row.records_per_second, "rate limit set");
        Ok(Response::new(self.rate_limits_now().await?))
    }

    async fn clear_rate_limit(
        &self,
        req: Request<proto::ClearRateLimitRequest>,
    ) -> Result<Response<proto::RateLimitsResponse>, Status> {
        let identity = req.get_ref().identity.clone();
        let by = self.changer(&req, identity.clone()).await?;
        let _gate = gate(req.extensions().get::<CallDeadline>())?;
        let cleared = self
            .store
            .clear_rate_limit(&identity)
            .await
            .map_err(ApiError::from)?;
        if !cleared {
            return Err(ApiError::NotFound(format!(
                "{} has no rates of its own (it has the defaults); see `oip-gateway admin limits list`",
                quoted(&identity)
            ))
            .into());
        }
        tracing::info!(admin = %by, identity = %identity, "rate limit cleared");
        Ok(Response::new(self.rate_limits_now().await?))
    }

    async fn list_rate_limits(
        &self,
        req: Request<proto::ListRateLimitsRequest>,
    ) -> Result<Response<proto::RateLimitsResponse>, Status> {
        self.admin(&req).await?;
        Ok(Response::new(self.rate_limits_now().await?))
    }

    async fn put_platform(
        &self,
        req: Request<proto::PlatformRegistration>,
    ) -> Result<Response<proto::PlatformRegistration>, Status> {
        self.changer(&req, req.get_ref().uscc.clone()).await?;
        audit::note(&req, req.get_ref().uscc.clone(), 1);
        let deadline = req.extensions().get::<CallDeadline>().cloned();
        let reg = registration(req.into_inner(), &self.reference)?;
        let _gate = gate(deadline.as_ref())?;
        let profile = self
            .store
            .upsert_platform(&reg)
            .await
            .map_err(ApiError::from)?;
        self.access.invalidate();
        tracing::info!(platform = %profile.uscc, "platform registered");
        Ok(Response::new(wire_platform(profile)))
    }

    async fn list_platforms(
        &self,
        req: Request<proto::ListPlatformsRequest>,
    ) -> Result<Response<proto::ListPlatformsResponse>, Status> {
        self.admin(&req).await?;
        let platforms = self.store.platforms().await.map_err(ApiError::from)?;
        audit::note(&req, "", platforms.len() as i64);
        Ok(Response::new(proto::ListPlatformsResponse {
            platforms: platforms.into_iter().map(wire_platform).collect(),
        }))
    }

    async fn put_grant(
        &self,
        req: Request<proto::GrantRequest>,
    ) -> Result<Response<proto::GrantsResponse>, Status> {
        let r = req.get_ref();
        let scope = format!("{} {} {}", r.identity, r.role, r.scopes.join(","));
        let by = self.changer(&req, scope.clone()).await?;
        audit::note(&req, scope, r.scopes.len() as i64);
        let role = role(&r.role)?;
        let expires_at = opt_time("expires_at", &r.expires_at)?;
        if expires_at.is_some_and(|t| t <= now_millis()) {
            // A past expiry ends grants held now (kept, listed as expired); for a
            // scope not held it would make a grant that is never live.
            let held: Vec<String> = self
                .store
                .list_grants(Some(&r.identity))
                .await
                .map_err(ApiError::from)?
                .into_iter()
                .filter(|g| g.grant.role == role)
                .map(|g| g.grant.scope)
                .collect();
            if let Some(scope) = r.scopes.iter().find(|s| !held.contains(s)) {
                return Err(bad(format!(
                    "expires_at: {} is not in the future: a new grant over {} would never be live (a past expiry only ends grants held now)",
                    quoted(&r.expires_at),
                    quoted(scope)
                ))
                .into());
            }
        }
        if r.scopes.is_empty() || r.scopes.len() > MAX_SCOPES {
            return Err(bad(format!("scopes: 1..{MAX_SCOPES} in one call")).into());
        }
        let grants = r
            .scopes
            .iter()
            .map(|scope| {
                let g = Grant {
                    identity: r.identity.clone(),
                    role,
                    scope: scope.clone(),
                    expires_at,
                };
                crate::access::check_grant(&g, &self.reference).map_err(bad)?;
                Ok(g)
            })
            .collect::<Result<Vec<_>, ApiError>>()?;
        let _gate = gate(req.extensions().get::<CallDeadline>())?;
        self.store
            .put_grants(&grants, &by, now_millis())
            .await
            .map_err(ApiError::from)?;
        self.access.invalidate();
        tracing::info!(admin = %by, identity = %r.identity, %role, scopes = r.scopes.len(), "grant made");
        let rows = self
            .store
            .list_grants(Some(&r.identity))
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(wire_grants(rows)))
    }

    async fn revoke_grant(
        &self,
        req: Request<proto::RevokeRequest>,
    ) -> Result<Response<proto::RevokeResponse>, Status> {
        let r = req.get_ref();
        let by = self
            .changer(
                &req,
                format!("{} {} {}", r.identity, r.role, r.scopes.join(",")),
            )
            .await?;
        let role = role(&r.role)?;
        if r.scopes.len() > MAX_SCOPES {
            return Err(bad(format!("scopes: at most {MAX_SCOPES} in one call")).into());
        }
        let configured = self
            .store
            .list_grants(Some(&r.identity))
            .await
            .map_err(ApiError::from)?
            .into_iter()
            .filter(|g| {
                g.grant.role == role
                    && g.granted_by == crate::store::access::CONFIGURATION
                    && (r.scopes.is_empty() || r.scopes.contains(&g.grant.scope))
            })
            .count() as u64;
        if role == Role::Admin {
            // Never the last administrator: nobody could grant anything again until a
            // restart re-read `admins`.
            let now = crate::domain::time::now_millis();
            let others = self
                .store
                .list_grants(None)
                .await
                .map_err(ApiError::from)?
                .into_iter()
                .any(|g| {
                    g.grant.role == Role::Admin
                        && g.grant.identity != r.identity
                        && g.grant.is_live(now)
                });
            let held = self
                .store
                .grants(&r.identity)
                .await
                .map_err(ApiError::from)?
                .into_iter()
                .any(|g| g.role == Role::Admin && g.is_live(now));
            if held && !others {
                return Err(ApiError::FailedPrecondition(format!(
                    "{} holds the only live admin grant: revoking it would leave no administrator; grant another first (oip-gateway admin grants put --identity oip://admin/<name> --role admin --scope '*'). Nothing was revoked",
                    r.identity
                ))
                .into());
            }
        }
        let _gate = gate(req.extensions().get::<CallDeadline>())?;
        let revoked = self
            .store
            .revoke_grants(&r.identity, role, &r.scopes)
            .await
            .map_err(ApiError::from)?;
        self.access.invalidate();
        audit::note(
            &req,
            format!("{} {} {}", r.identity, r.role, r.scopes.join(",")),
            revoked as i64,
        );
        tracing::info!(admin = %by, identity = %r.identity, %role, revoked, "grant revoked");
        Ok(Response::new(proto::RevokeResponse {
            revoked,
            configured: configured.min(revoked),
        }))
    }

    async fn list_grants(
        &self,
        req: Request<proto::ListGrantsRequest>,
    ) -> Result<Response<proto::GrantsResponse>, Status> {
        self.admin(&req).await?;
        let identity = req.get_ref().identity.clone();
        let rows = self
            .store
            .list_grants((!identity.is_empty()).then_some(identity.as_str()))
            .await
            .map_err(ApiError::from)?;
        audit::note(&req, identity, rows.len() as i64);
        Ok(Response::new(wire_grants(rows)))
    }

    async fn list_rates(
        &self,
        req: Request<proto::ListRatesRequest>,
    ) -> Result<Response<proto::RateTables>, Status> {
        self.admin(&req).await?;
        let book = self.store.rate_book().await.map_err(ApiError::from)?;
        Ok(Response::new(wire_rates(&book)))
    }

    async fn append_rates(
        &self,
        req: Request<proto::RateTables>,
    ) -> Result<Response<proto::RateTables>, Status> {
        let by = self.changer(&req, "rates".into()).await?;
        let now = now_millis();
        let r = req.get_ref();
        let bases = r
            .base_rates
            .iter()
            .enumerate()
            .map(|(i, b)| {
                if !self.reference.is_industry(&b.industry) {
                    return Err(bad(format!(
                        "base_rates[{i}].industry: unknown industry {}",
                        quoted(&b.industry)
                    )));
                }
                let fen_per_order = match b.fen_per_order {
                    None => {
                        return Err(bad(format!(
                            "base_rates[{i}].fen_per_order is required (absent is never 0)"
                        )));
                    }
                    Some(f) if !(0..=MAX_FEN_PER_ORDER).contains(&f) => {
                        return Err(bad(format!(
                            "base_rates[{i}].fen_per_order must be 0..={MAX_FEN_PER_ORDER}"
                        )));
                    }
                    Some(f) => f,
                };
                Ok(BaseRate {
                    industry: b.industry.clone(),
                    tier: match b.tier.as_str() {
                        "" => None,
                        t => Some(tier("base_rates.tier", t)?),
                    },
                    effective_from: date("base_rates.effective_from", &b.effective_from)?,
                    fen_per_order,
                    recorded_at: now,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let floats = r
            .floats
            .iter()
            .enumerate()
            .map(|(i, f)| {
                CreditCode::parse(&f.uscc).map_err(|e| bad(format!("floats[{i}].uscc: {e}")))?;
                if self.reference.division(&f.division_code).is_none() {
                    return Err(bad(format!(
                        "floats[{i}].division_code: unknown division {}",
                        shown_division(&f.division_code)
                    )));
                }
                let year = match f.year {
                    None => {
                        return Err(bad(format!(
                            "floats[{i}].year is required (absent is never year 0)"
                        )));
                    }
                    Some(y) if !(2000..=2100).contains(&y) => {
                        return Err(bad(format!("floats[{i}].year {y} is outside 2000..2100")));
                    }
                    Some(y) => y,
                };
                Ok(FloatRate {
                    uscc: f.uscc.clone(),
                    division_code: f.division_code.clone(),
                    year,
                    multiplier: Multiplier::parse(&f.multiplier).ok_or_else(|| {
                        bad(format!(
                            "floats[{i}].multiplier {} is not a decimal",
                            quoted(&f.multiplier)
                        ))
                    })?,
                    recorded_at: now,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let scope: BTreeSet<String> = bases
            .iter()
            .map(|b| b.industry.clone())
            .chain(floats.iter().map(|f| f.uscc.clone()))
            .collect();
        audit::note(
            &req,
            scope.into_iter().collect::<Vec<_>>().join(","),
            (bases.len() + floats.len()) as i64,
        );
        let _gate = gate(req.extensions().get::<CallDeadline>())?;
        self.store
            .append_rates(&bases, &floats)
            .await
            .map_err(ApiError::from)?;
        let book = self.store.rate_book().await.map_err(ApiError::from)?;
        self.ingest.set_rates(book.clone());
        tracing::info!(admin = %by, base_rates = bases.len(), floats = floats.len(), "rates appended");
        Ok(Response::new(wire_rates(&book)))
    }

    async fn query_audit(
        &self,
        req: Request<proto::QueryAuditRequest>,
    ) -> Result<Response<proto::QueryAuditResponse>, Status> {
        self.admin(&req).await?;
        let r = req.get_ref();
        let limit = paging::page_size(r.page_size);
        let after = seq_after(AUDIT, &r.page_token)?;
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        // One more than the page, to tell whether another page follows.
        let query = AuditQuery {
            identity: some(&r.identity),
            from: opt_time("from", &r.from)?,
            to: opt_time("to", &r.to)?,
            action: some(&r.action),
            after,
            limit: limit + 1,
        };
        let mut rows = self
            .store
            .query_audit(&query)
            .await
            .map_err(ApiError::from)?;
        let more = paging::one_past(&mut rows, limit, |last| last.seq.to_string());
        let entries = rows
            .into_iter()
            .map(|e| {
                let key = e.seq.to_string();
                let entry = proto::AuditEntry {
                    seq: e.seq,
                    at: to_rfc3339(e.at),
                    identity: e.identity,
                    role: e.role,
                    action: e.action,
                    scope: e.scope,
                    records: e.records,
                    outcome: e.outcome,
                    trace_id: e.trace_id,
                };
                (entry, key)
            })
            .collect();
        let (entries, next) = paging::bounded(entries, more, self.max_page_bytes);
        audit::note(&req, r.identity.clone(), entries.len() as i64);
        Ok(Response::new(proto::QueryAuditResponse {
            entries,
            next_page_token: next.map(|k| paging::token(AUDIT, &k)).unwrap_or_default(),
        }))
    }

    async fn verify_audit(
        &self,
        req: Request<proto::VerifyAuditRequest>,
    ) -> Result<Response<proto::VerifyAuditResponse>, Status> {
        self.admin(&req).await?;
        let v = audit::verify(self.store.as_ref())
            .await
            .map_err(ApiError::from)?;
        audit::note(&req, "", v.checked as i64);
        let (first_bad_seq, problem) = match &v.problem {
            None => (0, String::new()),
            Some(p @ crate::domain::audit::ChainBreak::Missing { expected, .. }) => {
                (*expected, p.to_string())
            }
            Some(p @ crate::domain::audit::ChainBreak::Altered { seq })
            | Some(p @ crate::domain::audit::ChainBreak::UnconfirmedAnchor { seq }) => {
                (*seq, p.to_string())
            }
        };
        Ok(Response::new(proto::VerifyAuditResponse {
            ok: v.problem.is_none(),
            checked: v.checked,
            first_bad_seq,
            problem,
        }))
    }

    async fn list_dead_letters(
        &self,
        req: Request<proto::ListDeadLettersRequest>,
    ) -> Result<Response<proto::ListDeadLettersResponse>, Status> {
        self.admin(&req).await?;
        let r = req.get_ref();
        let after = seq_after(DEAD_LETTERS, &r.page_token)?;
        let limit = paging::page_size(r.page_size);
        let mut rows = self
            .store
            .dead_letters(destination(&r.destination)?, after, limit + 1)
            .await
            .map_err(ApiError::from)?;
        let more = paging::one_past(&mut rows, limit, |last| last.seq.to_string());
        let dead_letters = rows
            .into_iter()
            .map(|d| {
                let key = d.seq.to_string();
                let letter = proto::DeadLetter {
                    seq: d.seq,
                    destination: d.destination,
                    record_key: d.record_key,
                    idempotency_key: d.idempotency_key,
                    attempts: d.attempts,
                    last_error: d.last_error.unwrap_or_default(),
                    created_at: to_rfc3339(d.created_at),
                };
                (letter, key)
            })
            .collect();
        let (dead_letters, next) = paging::bounded(dead_letters, more, self.max_page_bytes);
        Ok(Response::new(proto::ListDeadLettersResponse {
            dead_letters,
            next_page_token: next
                .map(|k| paging::token(DEAD_LETTERS, &k))
                .unwrap_or_default(),
        }))
    }

    async fn replay_dead_letters(
        &self,
        req: Request<proto::DeadLetterSelection>,
    ) -> Result<Response<proto::DeadLetterActionResponse>, Status> {
        self.act(req, DeadLetterAction::Replay).await
    }

    async fn discard_dead_letters(
        &self,
        req: Request<proto::DeadLetterSelection>,
    ) -> Result<Response<proto::DeadLetterActionResponse>, Status> {
        self.act(req, DeadLetterAction::Discard).await
    }
}
