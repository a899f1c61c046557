//! `oip-gateway admin ...`: the administrator's commands (platforms, grants, rates,
//! dead letters, the audit log), each one call of `oip.v1.AdminService` (audited like
//! any other call) or, where a command must say what it could not do, a listing first.

use std::collections::BTreeMap;

use clap::{Args, Subcommand};
use tonic::transport::Channel;

use super::{Connection, one_line, page_footer, status_line};
use crate::proto::{self, admin_service_client::AdminServiceClient};

type Client = AdminServiceClient<Channel>;

/// The destinations a dead letter can have.
const DESTINATIONS: [&str; 2] = ["social-security", "tax"];

/// `admin ...`.
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Registered platforms: list, or register / update one.
    Platforms {
        /// What to do with platforms.
        #[command(subcommand)]
        action: PlatformAction,
    },
    /// Who may do what: list, grant, revoke.
    Grants {
        /// What to do with grants.
        #[command(subcommand)]
        action: GrantAction,
    },
    /// Base amounts per order and float multipliers: list, or append a new version.
    Rates {
        /// What to do with the rate tables.
        #[command(subcommand)]
        action: RateAction,
    },
    /// Rate limits per caller identity: list, set or clear (live, no restart).
    Limits {
        /// What to do with rate limits.
        #[command(subcommand)]
        action: LimitAction,
    },
    /// Items a backend kept refusing: list, replay or discard them.
    DeadLetters {
        /// What to do with dead letters.
        #[command(subcommand)]
        action: DeadLetterCommand,
    },
    /// The audit log: read entries, or check its hash chain.
    Audit {
        /// What to do with the audit log.
        #[command(subcommand)]
        action: AuditAction,
    },
}

/// `admin platforms ...`.
#[derive(Subcommand, Debug)]
pub enum PlatformAction {
    /// Every registered platform, one per line: USCC, name, industries, delivery tier
    /// (and its overrides), divisions with their pilot starts.
    List,
    /// Registers a platform or replaces its registration (it also needs a `platform`
    /// grant: `admin grants put`).
    Put {
        /// The platform's unified social credit code (18 characters, checked).
        #[arg(long)]
        uscc: String,
        /// The platform's name (1..100 characters).
        #[arg(long)]
        name: String,
        /// RIDE_HAILING, INSTANT_DELIVERY, INTRACITY_FREIGHT (repeatable).
        #[arg(long = "industry", required = true, value_name = "CODE")]
        industries: Vec<String>,
        /// DIVISION=PILOT_START, e.g. 320100=2025-07-01 (repeatable).
        #[arg(long = "division", required = true, value_name = "CODE=YYYY-MM-DD")]
        divisions: Vec<String>,
        /// Instant-delivery tier, A or B.
        #[arg(long, default_value = "A")]
        tier: String,
        /// DIVISION=TIER where it differs (repeatable).
        #[arg(long = "tier-override", value_name = "CODE=TIER")]
        tier_overrides: Vec<String>,
    },
}

/// `admin limits ...`.
#[derive(Subcommand, Debug)]
pub enum LimitAction {
    /// The default rates and every identity's own: identity, calls a second, records a
    /// second, who set them and when.
    List,
    /// Sets one identity's rates, replacing the defaults for it (takes effect on its
    /// next call).
    Put {
        /// The identity URI, e.g. oip://platform/<USCC> or oip://tax/js-tax-320500.
        #[arg(long, value_name = "URI")]
        identity: String,
        /// Calls a second, any service (at least 1).
        #[arg(long, value_name = "N")]
        calls_per_second: u32,
        /// Records a second, submitted or pulled (at least 1); also the most records
        /// one call or chunk may hold for this identity.
        #[arg(long, value_name = "N")]
        records_per_second: u32,
    },
    /// Removes one identity's rates: the defaults apply again at once.
    Clear {
        /// The identity URI.
        #[arg(long, value_name = "URI")]
        identity: String,
    },
}

/// `admin grants ...`.
#[derive(Subcommand, Debug)]
pub enum GrantAction {
    /// Every grant, or those of one identity: identity, role, scope, expiry, when
    /// granted.
    List {
        /// Only the grants of this identity URI.
        #[arg(long, value_name = "URI")]
        identity: Option<String>,
    },
    /// Grants a role over scopes (division codes; the platform's USCC; * for admin).
    Put {
        /// The identity URI to grant to, e.g. oip://tax/js-tax-320500.
        #[arg(long, value_name = "URI")]
        identity: String,
        /// platform, tax, social-security or admin.
        #[arg(long)]
        role: String,
        /// A division code (tax, social-security), the platform's USCC (platform) or *
        /// (admin) (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// RFC 3339; none: no expiry.
        #[arg(long, value_name = "TIME")]
        expires_at: Option<String>,
    },
    /// Revokes scopes of a role (every scope when none is given).
    Revoke {
        /// The identity URI to revoke from.
        #[arg(long, value_name = "URI")]
        identity: String,
        /// The role whose scopes are revoked.
        #[arg(long)]
        role: String,
        /// A scope to revoke (repeatable); none: every scope of the role.
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
}

/// `admin rates ...`.
#[derive(Subcommand, Debug)]
pub enum RateAction {
    /// Every version of the base amounts and floats, with when each was recorded.
    List,
    /// Appends a base amount per order (a new version; nothing is overwritten).
    AddBase {
        /// The industry code, e.g. INSTANT_DELIVERY.
        #[arg(long)]
        industry: String,
        /// A or B (instant delivery); none: every tier.
        #[arg(long)]
        tier: Option<String>,
        /// First day it applies, YYYY-MM-DD.
        #[arg(long, value_name = "YYYY-MM-DD")]
        effective_from: String,
        /// The base amount in fen per order (0..10000).
        #[arg(long)]
        fen_per_order: i64,
    },
    /// Appends a float multiplier for a platform, division and year.
    AddFloat {
        /// The platform's USCC.
        #[arg(long)]
        uscc: String,
        /// The city or province code it applies in.
        #[arg(long)]
        division: String,
        /// The calendar year it applies to.
        #[arg(long)]
        year: i32,
        /// Decimal, e.g. 1.05
        #[arg(long)]
        multiplier: String,
    },
}

/// `admin dead-letters ...`.
#[derive(Subcommand, Debug)]
pub enum DeadLetterCommand {
    /// Print every dead letter: seq, destination, idempotency key, attempts, reason;
    /// then the count.
    List {
        /// Only those of this destination (default: both).
        #[arg(long, value_parser = DESTINATIONS)]
        destination: Option<String>,
    },
    /// Put dead letters back in their queue; they are delivered again in order. Seqs
    /// that are not dead letters are named, and the command exits non-zero.
    Replay(DeadLetterPick),
    /// Give up on dead letters (kept for the record, never delivered). Seqs that are
    /// not dead letters are named, and the command exits non-zero.
    Discard(DeadLetterPick),
}

/// Which dead letters: listed seqs, or all (one of the two is required).
#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("pick").required(true).multiple(false)))]
pub struct DeadLetterPick {
    /// Outbox seqs as listed (repeatable).
    #[arg(long = "seq", value_name = "SEQ", group = "pick")]
    seqs: Vec<i64>,
    /// Every dead letter (of --destination, if given).
    #[arg(long, group = "pick")]
    all: bool,
    /// Only dead letters of this destination (default: both).
    #[arg(long, value_parser = DESTINATIONS)]
    destination: Option<String>,
}

/// `admin audit ...`.
#[derive(Subcommand, Debug)]
pub enum AuditAction {
    /// Entries oldest first, tab-separated: seq, time, identity, role, action, scope,
    /// records, outcome, trace id. Ends with how to continue when more entries exist,
    /// or `0 entries`.
    Query {
        /// Only entries of this identity URI.
        #[arg(long, value_name = "URI")]
        identity: Option<String>,
        /// RFC 3339, inclusive.
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
        /// RFC 3339, exclusive.
        #[arg(long, value_name = "TIME")]
        to: Option<String>,
        /// e.g. oip.v1.AdminService/PutGrant, personal-data-read.
        #[arg(long)]
        action: Option<String>,
        /// Stop after this many entries.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
        limit: u32,
        /// Continue a query: the token printed when it stopped at --limit (pass the same
        /// filters).
        #[arg(long, value_name = "TOKEN")]
        page_token: Option<String>,
    },
    /// Check the hash chain; exits non-zero naming the first altered or missing entry.
    Verify,
}

async fn client(c: &Connection) -> anyhow::Result<Client> {
    Ok(AdminServiceClient::new(c.channel("admin").await?))
}

fn pairs(key: &str, items: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| anyhow::anyhow!("--{key} {p:?}: expected CODE=VALUE"))
        })
        .collect()
}

fn print_platform(p: &proto::PlatformRegistration) {
    let divisions: Vec<String> = p
        .divisions
        .iter()
        .map(|d| format!("{}={}", d.division_code, d.pilot_start))
        .collect();
    let overrides: Vec<String> = p
        .delivery_tier_overrides
        .iter()
        .map(|(d, t)| format!("{d}={t}"))
        .collect();
    crate::outln!(
        "{}\t{}\t{}\ttier={}{}\t{}",
        p.uscc,
        p.name,
        p.industries.join(","),
        p.delivery_tier,
        if overrides.is_empty() {
            String::new()
        } else {
            format!(" ({})", overrides.join(","))
        },
        divisions.join(",")
    );
}

fn print_grants(g: &proto::GrantsResponse) {
    if g.grants.is_empty() {
        crate::outln!("0 grants");
    }
    let now = chrono::Utc::now();
    for g in &g.grants {
        let expired = chrono::DateTime::parse_from_rfc3339(&g.expires_at).is_ok_and(|t| t <= now);
        crate::outln!(
            "{}\t{}\t{}\t{}={}\tgranted={}\tby={}",
            g.identity,
            g.role,
            g.scope,
            if expired { "EXPIRED" } else { "expires" },
            if g.expires_at.is_empty() {
                "never"
            } else {
                &g.expires_at
            },
            g.granted_at,
            g.granted_by
        );
    }
}

fn print_rate_limits(r: &proto::RateLimitsResponse) {
    if let Some(d) = &r.defaults {
        crate::outln!(
            "default\tcalls={}/s\trecords={}/s",
            d.calls_per_second.unwrap_or_default(),
            d.records_per_second.unwrap_or_default()
        );
    }
    for o in &r.overrides {
        crate::outln!(
            "{}\tcalls={}/s\trecords={}/s\tset={}\tby={}",
            o.identity,
            o.calls_per_second.unwrap_or_default(),
            o.records_per_second.unwrap_or_default(),
            o.set_at,
            o.set_by
        );
    }
}

fn print_rates(r: &proto::RateTables) {
    for b in &r.base_rates {
        crate::outln!(
            "base\t{}\ttier={}\tfrom={}\t{} fen/order\trecorded={}",
            b.industry,
            if b.tier.is_empty() { "*" } else { &b.tier },
            b.effective_from,
            b.fen_per_order.unwrap_or_default(),
            b.recorded_at
        );
    }
    for f in &r.floats {
        crate::outln!(
            "float\t{}\t{}\t{}\t×{}\trecorded={}",
            f.uscc,
            f.division_code,
            f.year.unwrap_or_default(),
            f.multiplier,
            f.recorded_at
        );
    }
}

/// Runs one `admin` command.
pub async fn run(command: AdminCommand, c: &Connection) -> anyhow::Result<()> {
    let mut admin = client(c).await?;
    match command {
        AdminCommand::Limits { action } => {
            let r = match action {
                LimitAction::List => {
                    admin
                        .list_rate_limits(proto::ListRateLimitsRequest {})
                        .await
                }
                LimitAction::Put {
                    identity,
                    calls_per_second,
                    records_per_second,
                } => {
                    admin
                        .put_rate_limit(proto::RateLimit {
                            identity,
                            calls_per_second: Some(calls_per_second),
                            records_per_second: Some(records_per_second),
                            ..Default::default()
                        })
                        .await
                }
                LimitAction::Clear { identity } => {
                    admin
                        .clear_rate_limit(proto::ClearRateLimitRequest { identity })
                        .await
                }
            }
            .map_err(|s| status_line(&s))?;
            print_rate_limits(r.get_ref());
        }
        AdminCommand::Platforms { action } => match action {
            PlatformAction::List => {
                let r = admin
                    .list_platforms(proto::ListPlatformsRequest {})
                    .await
                    .map_err(|s| status_line(&s))?;
                if r.get_ref().platforms.is_empty() {
                    crate::outln!("0 platforms");
                }
                for p in &r.get_ref().platforms {
                    print_platform(p);
                }
            }
            PlatformAction::Put {
                uscc,
                name,
                industries,
                divisions,
                tier,
                tier_overrides,
            } => {
                let reg = proto::PlatformRegistration {
                    uscc,
                    name,
                    industries,
                    divisions: pairs("division", &divisions)?
                        .into_iter()
                        .map(|(division_code, pilot_start)| proto::DivisionPilot {
                            division_code,
                            pilot_start,
                        })
                        .collect(),
                    delivery_tier: tier,
                    delivery_tier_overrides: pairs("tier-override", &tier_overrides)?
                        .into_iter()
                        .collect(),
                };
                let r = admin.put_platform(reg).await.map_err(|s| status_line(&s))?;
                print_platform(r.get_ref());
            }
        },
        AdminCommand::Grants { action } => match action {
            GrantAction::List { identity } => {
                let r = admin
                    .list_grants(proto::ListGrantsRequest {
                        identity: identity.unwrap_or_default(),
                    })
                    .await
                    .map_err(|s| status_line(&s))?;
                print_grants(r.get_ref());
            }
            GrantAction::Put {
                identity,
                role,
                scopes,
                expires_at,
            } => {
                let r = admin
                    .put_grant(proto::GrantRequest {
                        identity,
                        role,
                        scopes,
                        expires_at: expires_at.unwrap_or_default(),
                    })
                    .await
                    .map_err(|s| status_line(&s))?;
                print_grants(r.get_ref());
            }
            GrantAction::Revoke {
                identity,
                role,
                scopes,
            } => {
                let held: Vec<String> = admin
                    .list_grants(proto::ListGrantsRequest {
                        identity: identity.clone(),
                    })
                    .await
                    .map_err(|s| status_line(&s))?
                    .into_inner()
                    .grants
                    .into_iter()
                    .filter(|g| g.role == role)
                    .map(|g| g.scope)
                    .collect();
                let r = admin
                    .revoke_grant(proto::RevokeRequest {
                        identity: identity.clone(),
                        role: role.clone(),
                        scopes: scopes.clone(),
                    })
                    .await
                    .map_err(|s| status_line(&s))?
                    .into_inner();
                crate::outln!("revoked {}", r.revoked);
                if r.configured > 0 {
                    eprintln!(
                        "warning: {} of them the configuration grants again at the next start (granted_by configuration); to end them for good, also remove {identity} from admins, [[platforms]] or [[grants]] before that start",
                        r.configured
                    );
                }
                let missing: Vec<&String> = scopes.iter().filter(|s| !held.contains(s)).collect();
                if r.revoked == 0 || !missing.is_empty() {
                    let what = if missing.is_empty() {
                        format!("{identity} holds no {role} grant")
                    } else {
                        format!(
                            "{identity} holds no {role} grant for {}",
                            missing
                                .iter()
                                .map(|s| s.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    };
                    anyhow::bail!(
                        "not revoked: {what} (its grants: `oip-gateway admin grants list --identity {identity}`)"
                    );
                }
            }
        },
        AdminCommand::Rates { action } => {
            let tables = match action {
                RateAction::List => admin.list_rates(proto::ListRatesRequest {}).await,
                RateAction::AddBase {
                    industry,
                    tier,
                    effective_from,
                    fen_per_order,
                } => {
                    admin
                        .append_rates(proto::RateTables {
                            base_rates: vec![proto::BaseRateRow {
                                industry,
                                tier: tier.unwrap_or_default(),
                                effective_from,
                                fen_per_order: Some(fen_per_order),
                                recorded_at: String::new(),
                            }],
                            floats: vec![],
                        })
                        .await
                }
                RateAction::AddFloat {
                    uscc,
                    division,
                    year,
                    multiplier,
                } => {
                    admin
                        .append_rates(proto::RateTables {
                            base_rates: vec![],
                            floats: vec![proto::FloatRow {
                                uscc,
                                division_code: division,
                                year: Some(year),
                                multiplier,
                                recorded_at: String::new(),
                            }],
                        })
                        .await
                }
            }
            .map_err(|s| status_line(&s))?;
            print_rates(tables.get_ref());
        }
        AdminCommand::DeadLetters { action } => dead_letters(action, &mut admin).await?,
        AdminCommand::Audit {
            action:
                AuditAction::Query {
                    identity,
                    from,
                    to,
                    action,
                    limit,
                    page_token,
                },
        } => {
            let filters = proto::QueryAuditRequest {
                identity: identity.unwrap_or_default(),
                from: from.unwrap_or_default(),
                to: to.unwrap_or_default(),
                action: action.unwrap_or_default(),
                page_size: 0,
                page_token: page_token.unwrap_or_default(),
            };
            query_audit(&mut admin, filters, limit).await?;
        }
        AdminCommand::Audit {
            action: AuditAction::Verify,
        } => verify(&mut admin).await?,
    }
    Ok(())
}

/// `admin audit query`: at most `limit` entries from `request.page_token` on, then
/// how to continue when more exist, or `0 entries`.
async fn query_audit(
    admin: &mut Client,
    mut request: proto::QueryAuditRequest,
    limit: u32,
) -> anyhow::Result<()> {
    let mut n = 0u32;
    let next = loop {
        request.page_size = (limit - n).min(1000);
        let page = admin
            .query_audit(request.clone())
            .await
            .map_err(|s| status_line(&s))?
            .into_inner();
        for e in &page.entries {
            crate::outln!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                e.seq,
                e.at,
                e.identity,
                e.role,
                e.action,
                one_line(&e.scope),
                e.records,
                e.outcome,
                e.trace_id
            );
        }
        n = n.saturating_add(u32::try_from(page.entries.len()).unwrap_or(u32::MAX));
        if page.next_page_token.is_empty() || n >= limit {
            break page.next_page_token;
        }
        request.page_token = page.next_page_token;
    };
    if let Some(footer) = page_footer(n as usize, &next) {
        crate::outln!("{footer}");
    }
    if n == 0 && (!request.action.is_empty() || !request.identity.is_empty()) {
        eprintln!(
            "note: --action and --identity match exactly. Actions are full method names (oip.v1.PlatformService/Submit, oip.v1.TaxService/PullContributions, ...) and {}; identities are full URIs (oip://tax/js-tax-320000)",
            crate::domain::audit::SPECIAL_ACTIONS.join(", ")
        );
    }
    Ok(())
}

/// `admin audit verify`: exits non-zero, naming the first bad entry, when the chain
/// breaks.
async fn verify(admin: &mut Client) -> anyhow::Result<()> {
    let v = admin
        .verify_audit(proto::VerifyAuditRequest {})
        .await
        .map_err(|s| status_line(&s))?
        .into_inner();
    if v.ok {
        crate::outln!("audit log intact: {} entries verified", v.checked);
        Ok(())
    } else {
        anyhow::bail!(
            "audit log broken at entry {}: {} ({} entries verified before it)",
            v.first_bad_seq,
            v.problem,
            v.checked
        )
    }
}

/// Every dead letter (of `destination`, or of both when empty), by seq.
async fn all_dead_letters(
    admin: &mut Client,
    destination: &str,
) -> anyhow::Result<Vec<proto::DeadLetter>> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = admin
            .list_dead_letters(proto::ListDeadLettersRequest {
                destination: destination.to_string(),
                page_size: 1000,
                page_token,
            })
            .await
            .map_err(|s| status_line(&s))?
            .into_inner();
        all.extend(page.dead_letters);
        if page.next_page_token.is_empty() {
            return Ok(all);
        }
        page_token = page.next_page_token;
    }
}

/// How the seqs asked for stand: dead letters to act on, seqs that are no dead letter,
/// and dead letters of another destination than the one given.
#[derive(Debug, Default, PartialEq, Eq)]
struct Sorted {
    act_on: Vec<i64>,
    not_dead: Vec<i64>,
    elsewhere: Vec<(i64, String)>,
}

/// Sorts `seqs` (repeats dropped, order kept) by the dead letters that exist.
fn sort_seqs(seqs: &[i64], dead: &BTreeMap<i64, String>, destination: Option<&str>) -> Sorted {
    let mut sorted = Sorted::default();
    let mut seen = std::collections::BTreeSet::new();
    for &seq in seqs {
        if !seen.insert(seq) {
            continue;
        }
        match dead.get(&seq) {
            None => sorted.not_dead.push(seq),
            Some(d) if destination.is_some_and(|want| want != d) => {
                sorted.elsewhere.push((seq, d.clone()))
            }
            Some(_) => sorted.act_on.push(seq),
        }
    }
    sorted
}

/// `seq 7` or `seqs 7, 9`.
fn seq_list(seqs: &[i64]) -> String {
    let list: Vec<String> = seqs.iter().map(i64::to_string).collect();
    format!(
        "{} {}",
        if seqs.len() == 1 { "seq" } else { "seqs" },
        list.join(", ")
    )
}

/// Why the seqs that were not acted on were not, as one line; None when every seq
/// was a dead letter.
fn not_acted_on(s: &Sorted, verb: &str, destination: Option<&str>) -> Option<String> {
    let mut parts = Vec::new();
    if !s.not_dead.is_empty() {
        parts.push(format!(
            "{} {} (see `oip-gateway admin dead-letters list`)",
            seq_list(&s.not_dead),
            if s.not_dead.len() == 1 {
                "is not a dead letter"
            } else {
                "are not dead letters"
            },
        ));
    }
    for (seq, d) in &s.elsewhere {
        parts.push(format!(
            "seq {seq} is a dead letter of {d}, not of {}",
            destination.unwrap_or_default()
        ));
    }
    if parts.is_empty() {
        None
    } else {
        Some(format!("not {verb}: {}", parts.join("; ")))
    }
}

/// `admin dead-letters ...`.
async fn dead_letters(action: DeadLetterCommand, admin: &mut Client) -> anyhow::Result<()> {
    match action {
        DeadLetterCommand::List { destination } => {
            let letters = all_dead_letters(admin, destination.as_deref().unwrap_or("")).await?;
            for d in &letters {
                crate::outln!(
                    "{}\t{}\t{}\tattempts={}\t{}",
                    d.seq,
                    d.destination,
                    d.idempotency_key,
                    d.attempts,
                    one_line(&d.last_error)
                );
            }
            crate::outln!(
                "{}",
                super::count(letters.len(), "dead letter", "dead letters")
            );
        }
        DeadLetterCommand::Replay(p) => act(admin, p, true).await?,
        DeadLetterCommand::Discard(p) => act(admin, p, false).await?,
    }
    Ok(())
}

/// Replays or discards the picked dead letters. With `--seq`, the dead letters are
/// listed first, so that seqs that are not dead letters (or of another destination)
/// are named and the command fails instead of quietly changing nothing; the others
/// are acted on.
async fn act(admin: &mut Client, p: DeadLetterPick, replay: bool) -> anyhow::Result<()> {
    let verb = if replay { "replayed" } else { "discarded" };
    let destination = p.destination.clone().unwrap_or_default();
    let call = |admin: &mut Client, seqs: Vec<i64>, all: bool| {
        let selection = proto::DeadLetterSelection {
            seqs,
            all,
            destination: destination.clone(),
        };
        let mut admin = admin.clone();
        async move {
            let r = if replay {
                admin.replay_dead_letters(selection).await
            } else {
                admin.discard_dead_letters(selection).await
            };
            r.map(tonic::Response::into_inner)
                .map_err(|s| status_line(&s))
        }
    };
    let superseded_line = |n: u64| {
        format!(
            "superseded {n}, not replayed: a newer version of the record is already delivered or on its way (see `oip-gateway status deliveries`)"
        )
    };
    if p.all {
        let answer = call(admin, vec![], true).await?;
        crate::outln!("{verb} {}", answer.changed);
        if answer.superseded > 0 {
            crate::outln!("{}", superseded_line(answer.superseded));
        }
        return Ok(());
    }
    let dead: BTreeMap<i64, String> = all_dead_letters(admin, "")
        .await?
        .into_iter()
        .map(|d| (d.seq, d.destination))
        .collect();
    let sorted = sort_seqs(&p.seqs, &dead, p.destination.as_deref());
    let answer = if sorted.act_on.is_empty() {
        proto::DeadLetterActionResponse::default()
    } else {
        call(admin, sorted.act_on.clone(), false).await?
    };
    let changed = answer.changed;
    crate::outln!("{verb} {changed}");
    if answer.superseded > 0 {
        crate::outln!("{}", superseded_line(answer.superseded));
    }
    let asked = sorted.act_on.len() as u64;
    if changed + answer.superseded < asked {
        let missed = asked - changed - answer.superseded;
        crate::outln!(
            "{missed} of the dead letters picked {} no longer dead letters when the call ran",
            if missed == 1 { "was" } else { "were" }
        );
    }
    match not_acted_on(&sorted, verb, p.destination.as_deref()) {
        None => Ok(()),
        Some(why) => Err(anyhow::anyhow!("{why}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_that_are_no_dead_letters_are_named() {
        let dead: BTreeMap<i64, String> = [(5, "tax".to_string()), (7, "social-security".into())]
            .into_iter()
            .collect();
        let s = sort_seqs(&[5, 1234, 5, 7, 99], &dead, Some("tax"));
        assert_eq!(
            s,
            Sorted {
                act_on: vec![5],
                not_dead: vec![1234, 99],
                elsewhere: vec![(7, "social-security".into())],
            }
        );
        assert_eq!(
            not_acted_on(&s, "replayed", Some("tax")).as_deref(),
            Some(
                "not replayed: seqs 1234, 99 are not dead letters (see `oip-gateway admin dead-letters list`); seq 7 is a dead letter of social-security, not of tax"
            )
        );
        let s = sort_seqs(&[1234], &dead, None);
        assert_eq!(
            not_acted_on(&s, "discarded", None).as_deref(),
            Some(
                "not discarded: seq 1234 is not a dead letter (see `oip-gateway admin dead-letters list`)"
            )
        );
        assert_eq!(
            not_acted_on(&sort_seqs(&[5, 7], &dead, None), "replayed", None),
            None
        );
    }
}
