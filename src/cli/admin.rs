//! `oip-gateway admin ...` and `oip-gateway audit verify`: the administrator's
//! commands, each one call of `oip.v1.AdminService` (audited like any other call).

use clap::{Args, Subcommand};
use tonic::transport::Channel;

use super::{Connection, status_line};
use crate::proto::{self, admin_service_client::AdminServiceClient};

type Client = AdminServiceClient<Channel>;

#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Registered platforms: list, or register / update one.
    Platforms {
        #[command(subcommand)]
        action: PlatformAction,
    },
    /// Who may do what: list, grant, revoke.
    Grants {
        #[command(subcommand)]
        action: GrantAction,
    },
    /// Base amounts per order and float multipliers: list, or append a new version.
    Rates {
        #[command(subcommand)]
        action: RateAction,
    },
    /// Items a backend kept refusing: list, replay or discard them.
    DeadLetters {
        #[command(subcommand)]
        action: DeadLetterCommand,
    },
    /// Read the audit log.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
}

#[derive(Subcommand, Debug)]
pub enum PlatformAction {
    List,
    /// Registers a platform or replaces its registration.
    Put {
        #[arg(long)]
        uscc: String,
        #[arg(long)]
        name: String,
        /// RIDE_HAILING, INSTANT_DELIVERY, INTRACITY_FREIGHT (repeatable).
        #[arg(long = "industry", required = true)]
        industries: Vec<String>,
        /// DIVISION=PILOT_START, e.g. 320100=2025-07-01 (repeatable).
        #[arg(long = "division", required = true)]
        divisions: Vec<String>,
        /// Instant-delivery tier, A or B.
        #[arg(long, default_value = "A")]
        tier: String,
        /// DIVISION=TIER where it differs (repeatable).
        #[arg(long = "tier-override")]
        tier_overrides: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum GrantAction {
    /// Every grant, or those of one identity.
    List {
        #[arg(long)]
        identity: Option<String>,
    },
    /// Grants a role over scopes (division codes; the platform's USCC; * for admin).
    Put {
        /// e.g. oip://tax/js-tax-320500
        #[arg(long)]
        identity: String,
        /// platform, tax, social-security or admin.
        #[arg(long)]
        role: String,
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
        /// RFC 3339; none: no expiry.
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// Revokes scopes of a role (every scope when none is given).
    Revoke {
        #[arg(long)]
        identity: String,
        #[arg(long)]
        role: String,
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum RateAction {
    List,
    /// Appends a base amount per order (a new version; nothing is overwritten).
    AddBase {
        #[arg(long)]
        industry: String,
        /// A or B (instant delivery); none: every tier.
        #[arg(long)]
        tier: Option<String>,
        /// YYYY-MM-DD
        #[arg(long)]
        effective_from: String,
        #[arg(long)]
        fen_per_order: i64,
    },
    /// Appends a float multiplier for a platform, division and year.
    AddFloat {
        #[arg(long)]
        uscc: String,
        #[arg(long)]
        division: String,
        #[arg(long)]
        year: i32,
        /// Decimal, e.g. 1.05
        #[arg(long)]
        multiplier: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum DeadLetterCommand {
    /// Print every dead letter: seq, destination, idempotency key, attempts, reason.
    List {
        /// social-security or tax (default: both).
        #[arg(long)]
        destination: Option<String>,
    },
    /// Put dead letters back in their queue; they are delivered again in order.
    Replay(DeadLetterPick),
    /// Give up on dead letters (kept for the record, never delivered).
    Discard(DeadLetterPick),
}

#[derive(Args, Debug)]
pub struct DeadLetterPick {
    /// Outbox seqs as listed (repeatable).
    #[arg(long = "seq", required_unless_present = "all", conflicts_with = "all")]
    seqs: Vec<i64>,
    /// Every dead letter (of --destination, if given).
    #[arg(long)]
    all: bool,
    #[arg(long)]
    destination: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum AuditAction {
    /// Entries oldest first, tab-separated: seq, time, identity, role, action, scope,
    /// records, outcome, trace id.
    Query {
        #[arg(long)]
        identity: Option<String>,
        /// RFC 3339, inclusive.
        #[arg(long)]
        from: Option<String>,
        /// RFC 3339, exclusive.
        #[arg(long)]
        to: Option<String>,
        /// e.g. oip.v1.AdminService/PutGrant, personal-data-read.
        #[arg(long)]
        action: Option<String>,
        /// Stop after this many entries.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
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
    println!(
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
    for g in &g.grants {
        println!(
            "{}\t{}\t{}\texpires={}\tgranted={}",
            g.identity,
            g.role,
            g.scope,
            if g.expires_at.is_empty() {
                "never"
            } else {
                &g.expires_at
            },
            g.granted_at
        );
    }
}

fn print_rates(r: &proto::RateTables) {
    for b in &r.base_rates {
        println!(
            "base\t{}\ttier={}\tfrom={}\t{} fen/order\trecorded={}",
            b.industry,
            if b.tier.is_empty() { "*" } else { &b.tier },
            b.effective_from,
            b.fen_per_order.unwrap_or_default(),
            b.recorded_at
        );
    }
    for f in &r.floats {
        println!(
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
        AdminCommand::Platforms { action } => match action {
            PlatformAction::List => {
                let r = admin
                    .list_platforms(proto::ListPlatformsRequest {})
                    .await
                    .map_err(|s| status_line(&s))?;
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
                let r = admin
                    .revoke_grant(proto::RevokeRequest {
                        identity,
                        role,
                        scopes,
                    })
                    .await
                    .map_err(|s| status_line(&s))?;
                println!("revoked {}", r.get_ref().revoked);
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
                },
        } => {
            let mut page_token = String::new();
            let mut n = 0usize;
            while n < limit {
                let page = admin
                    .query_audit(proto::QueryAuditRequest {
                        identity: identity.clone().unwrap_or_default(),
                        from: from.clone().unwrap_or_default(),
                        to: to.clone().unwrap_or_default(),
                        action: action.clone().unwrap_or_default(),
                        page_size: (limit - n).min(1000) as u32,
                        page_token,
                    })
                    .await
                    .map_err(|s| status_line(&s))?
                    .into_inner();
                for e in &page.entries {
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                        e.seq,
                        e.at,
                        e.identity,
                        e.role,
                        e.action,
                        e.scope,
                        e.records,
                        e.outcome,
                        e.trace_id
                    );
                }
                n += page.entries.len();
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
        }
    }
    Ok(())
}

/// `audit verify`: exits non-zero, naming the first bad entry, when the chain breaks.
pub async fn verify(c: &Connection) -> anyhow::Result<()> {
    let v = client(c)
        .await?
        .verify_audit(proto::VerifyAuditRequest {})
        .await
        .map_err(|s| status_line(&s))?
        .into_inner();
    if v.ok {
        println!("audit log intact: {} entries verified", v.checked);
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

/// `dead-letters ...` (also reachable as `admin dead-letters ...`).
pub async fn dead_letters(action: DeadLetterCommand, admin: &mut Client) -> anyhow::Result<()> {
    let pick = |p: DeadLetterPick| proto::DeadLetterSelection {
        seqs: p.seqs,
        all: p.all,
        destination: p.destination.unwrap_or_default(),
    };
    match action {
        DeadLetterCommand::List { destination } => {
            let mut page_token = String::new();
            let mut n = 0;
            loop {
                let page = admin
                    .list_dead_letters(proto::ListDeadLettersRequest {
                        destination: destination.clone().unwrap_or_default(),
                        page_size: 1000,
                        page_token,
                    })
                    .await
                    .map_err(|s| status_line(&s))?
                    .into_inner();
                for d in &page.dead_letters {
                    println!(
                        "{}\t{}\t{}\tattempts={}\t{}",
                        d.seq, d.destination, d.idempotency_key, d.attempts, d.last_error
                    );
                }
                n += page.dead_letters.len();
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            println!("{n} dead letters");
        }
        DeadLetterCommand::Replay(p) => {
            let r = admin
                .replay_dead_letters(pick(p))
                .await
                .map_err(|s| status_line(&s))?;
            println!("replayed {}", r.get_ref().changed);
        }
        DeadLetterCommand::Discard(p) => {
            let r = admin
                .discard_dead_letters(pick(p))
                .await
                .map_err(|s| status_line(&s))?;
            println!("discarded {}", r.get_ref().changed);
        }
    }
    Ok(())
}

/// The `admin` client for `dead-letters` at the top level.
pub async fn connect(c: &Connection) -> anyhow::Result<Client> {
    client(c).await
}
