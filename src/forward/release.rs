//! Volume statements to tax. A platform's month is *released* when it closes, as
//! configured: on its first declaration for the month (or, if it declares nothing, at
//! the end of the declaration deadline, so undeclared volume still reaches tax), or a
//! number of days after the month ends. Release queues every statement of the month;
//! a later change to one of them (late or corrected orders) is queued by the ingest
//! that makes it, as a correction (see `crosscheck::StatementSend`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::domain::period::Period;
use crate::domain::time::{Millis, local_midnight, now_millis};
use crate::ingest::Ingest;
use crate::store::Store;

/// When a platform's month is released to tax.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleasePolicy {
    /// At the platform's first declaration for the month, or at the end of the
    /// declaration deadline (day `deadline_day` of the next month) without one.
    OnDeclaration { deadline_day: u32 },
    /// `days` days after the month ends (local midnight, Asia/Shanghai).
    AfterMonthEnd { days: u32 },
}

impl ReleasePolicy {
    /// Whether `period`, closed at `closed_at` (its first declaration), is due at `now`.
    /// A month is never released before it ends.
    pub fn due(self, period: Period, closed_at: Option<Millis>, now: Millis) -> bool {
        if !period.has_ended(now) {
            return false;
        }
        match self {
            ReleasePolicy::OnDeclaration { deadline_day } => {
                closed_at.is_some() || now >= period.deadline_end(deadline_day)
            }
            ReleasePolicy::AfterMonthEnd { days } => {
                let first = period.next().first_day();
                let release_day = first
                    .checked_add_days(chrono::Days::new(u64::from(days)))
                    .unwrap_or(first);
                now >= local_midnight(release_day)
            }
        }
    }
}

/// Releases every month that is due; returns how many were released.
pub async fn release_due(
    ingest: &Ingest,
    store: &dyn Store,
    policy: ReleasePolicy,
    now: Millis,
) -> anyhow::Result<usize> {
    let mut released = 0;
    for month in store.unreleased_months().await? {
        if !policy.due(month.period, month.closed_at, now) {
            continue;
        }
        let Some(platform) = store.platform(&month.uscc).await? else {
            continue;
        };
        // One month failing does not hold back the others; it is tried again later.
        match ingest.release_month(&platform, month.period).await {
            Ok(_) => released += 1,
            Err(e) => {
                tracing::warn!(platform = %month.uscc, period = %month.period, error = %e, "cannot release month")
            }
        }
    }
    Ok(released)
}

/// Looks for due months every `every`, and whenever a batch commits (a declaration
/// may have closed a month).
pub fn spawn(
    ingest: Ingest,
    store: Arc<dyn Store>,
    policy: ReleasePolicy,
    every: Duration,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            // Registered before looking, so a batch committing meanwhile is not missed.
            let woken = wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if let Err(e) = release_due(&ingest, store.as_ref(), policy, now_millis()).await {
                tracing::warn!(error = %e, "cannot release statements; retrying");
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = woken => {}
                _ = stop.changed() => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn at(y: i32, m: u32, d: u32) -> Millis {
        local_midnight(NaiveDate::from_ymd_opt(y, m, d).expect("date"))
    }

    #[test]
    fn a_month_is_never_released_before_it_ends() {
        let october = Period::parse("2026-10").expect("period");
        let p = ReleasePolicy::OnDeclaration { deadline_day: 15 };
        assert!(!p.due(october, Some(at(2026, 10, 20)), at(2026, 10, 31)));
        assert!(p.due(october, Some(at(2026, 10, 20)), at(2026, 11, 1)));
        let p = ReleasePolicy::AfterMonthEnd { days: 0 };
        assert!(!p.due(october, None, at(2026, 11, 1) - 1));
        assert!(p.due(october, None, at(2026, 11, 1)));
    }

    #[test]
    fn on_declaration_releases_at_the_first_declaration_or_the_deadline() {
        let october = Period::parse("2026-10").expect("period");
        let p = ReleasePolicy::OnDeclaration { deadline_day: 15 };
        assert!(!p.due(october, None, at(2026, 11, 15)));
        assert!(p.due(october, Some(at(2026, 11, 3)), at(2026, 11, 3)));
        assert!(!p.due(october, None, at(2026, 11, 16) - 1));
        assert!(p.due(october, None, at(2026, 11, 16)));
    }

    #[test]
    fn after_month_end_waits_the_configured_days_whatever_is_declared() {
        let december = Period::parse("2026-12").expect("period");
        let p = ReleasePolicy::AfterMonthEnd { days: 10 };
        assert!(!p.due(december, Some(at(2027, 1, 2)), at(2027, 1, 11) - 1));
        assert!(p.due(december, None, at(2027, 1, 11)));
    }
}
