//! Admission of calls: who may start a call now, and how many records a caller may
//! send or receive now. Applied at the call edge (`edge::AdmissionLayer`) before any
//! handler or audit work, and by handlers for record counts (`take_records`).
//!
//! - **Calls in progress** per caller identity (`connections.max_calls_per_identity`):
//!   beyond it RESOURCE_EXHAUSTED at once.
//! - **Calls in progress** in the whole gateway (`connections.max_calls`): beyond it
//!   UNAVAILABLE at once (load shedding: nothing queues without bound).
//! - **Rates** per caller identity, with `governor` (GCRA): calls per second, and
//!   records per second (submitted by a platform, received by a tax or
//!   social-security office). Defaults in `[rate_limits]`; an administrator may set
//!   other rates for one identity (`admin limits put`), which take effect at once.
//!   Over a rate: RESOURCE_EXHAUSTED with `grpc-retry-pushback-ms` saying when to try
//!   again; nothing of the refused call or chunk is applied.
//!
//! Keyed state is bounded: identities not seen for a while are evicted
//! ([`Admission::evict_idle`], run every minute by `app`).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::connections::ConnectionLimits;
use crate::error::ApiError;

/// Default rates per caller identity (configuration `[rate_limits]`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// Calls a second per caller identity, any service (default 5,000: a large platform's
    /// peak of single-order calls). The burst is
    /// one second's worth.
    pub calls_per_second: u32,
    /// Records a second per caller identity: records submitted by a
    /// platform, records received by a tax or social-security office in pulls (default
    /// 100,000). The burst is one second's worth, so a call or chunk may hold at most this many
    /// records (the gateway advertises it to `submit`).
    pub records_per_second: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            calls_per_second: 5_000,
            records_per_second: 100_000,
        }
    }
}

impl RateLimits {
    /// What is wrong with these rates, if anything.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.calls_per_second == 0 {
            out.push("rate_limits.calls_per_second must be at least 1".to_string());
        }
        if self.records_per_second == 0 {
            out.push("rate_limits.records_per_second must be at least 1".to_string());
        }
        out
    }
}

/// Rates set by an administrator for one identity, replacing the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateOverride {
    pub calls_per_second: u32,
    pub records_per_second: u32,
}

/// Refusals so far, for metrics and tests.
#[derive(Debug, Default)]
pub struct AdmissionStats {
    /// Calls refused: the caller had `max_calls_per_identity` calls in progress.
    pub over_identity_calls: AtomicU64,
    /// Calls refused: the gateway had `max_calls` calls in progress (shed).
    pub shed: AtomicU64,
    /// Calls refused: over the caller's calls-per-second rate.
    pub over_call_rate: AtomicU64,
    /// Calls or chunks refused: over the caller's records-per-second rate.
    pub over_record_rate: AtomicU64,
}

struct Limiters {
    calls: DefaultDirectRateLimiter,
    records: DefaultDirectRateLimiter,
    rates: RateOverride,
}

fn quota(per_second: u32) -> Quota {
    Quota::per_second(NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN))
}

/// The gateway's admission state (one per gateway, shared by every call).
pub struct Admission {
    limits: ConnectionLimits,
    defaults: RateLimits,
    calls: DefaultKeyedRateLimiter<String>,
    records: DefaultKeyedRateLimiter<String>,
    overrides: RwLock<HashMap<String, Arc<Limiters>>>,
    in_progress: crate::connections::IdentityCounts,
    global: Arc<Semaphore>,
    clock: DefaultClock,
    /// Refusals so far.
    pub stats: AdmissionStats,
}

/// A call admitted: holds its places (the caller's and the gateway's) until dropped.
pub struct CallPermit {
    admission: Arc<Admission>,
    identity: String,
    _global: OwnedSemaphorePermit,
}

impl Drop for CallPermit {
    fn drop(&mut self) {
        self.admission.release(&self.identity);
    }
}

/// Milliseconds until `n` cells are free again, rounded up, at least 1.
fn millis(d: Duration) -> u64 {
    (d.as_millis() as u64).saturating_add(1)
}

impl Admission {
    /// Admission under `limits` and default `rates`.
    pub fn new(limits: ConnectionLimits, rates: RateLimits) -> Arc<Self> {
        Arc::new(Self {
            global: Arc::new(Semaphore::new(limits.max_calls.max(1))),
            calls: RateLimiter::keyed(quota(rates.calls_per_second)),
            records: RateLimiter::keyed(quota(rates.records_per_second)),
            limits,
            defaults: rates,
            overrides: RwLock::default(),
            in_progress: Default::default(),
            clock: DefaultClock::default(),
            stats: AdmissionStats::default(),
        })
    }

    /// Replaces the per-identity rates with `overrides` (all of them: what the store
    /// holds), keeping the state of identities whose rates did not change.
    pub fn set_overrides(&self, overrides: &[(String, RateOverride)]) {
        let Ok(mut map) = self.overrides.write() else {
            return;
        };
        let mut next = HashMap::with_capacity(overrides.len());
        for (identity, rates) in overrides {
            let kept = map
                .remove(identity)
                .filter(|l| l.rates == *rates)
                .unwrap_or_else(|| {
                    Arc::new(Limiters {
                        calls: RateLimiter::direct(quota(rates.calls_per_second)),
                        records: RateLimiter::direct(quota(rates.records_per_second)),
                        rates: *rates,
                    })
                });
            next.insert(identity.clone(), kept);
        }
        *map = next;
    }

    /// Replaces the per-identity rates with what the store holds.
    pub fn load(&self, rows: &[crate::store::access::RateLimitRow]) {
        let overrides: Vec<(String, RateOverride)> = rows
            .iter()
            .map(|r| {
                (
                    r.identity.clone(),
                    RateOverride {
                        calls_per_second: r.calls_per_second,
                        records_per_second: r.records_per_second,
                    },
                )
            })
            .collect();
        self.set_overrides(&overrides);
    }

    /// The configured default rates.
    pub fn defaults(&self) -> &RateLimits {
        &self.defaults
    }

    fn overridden(&self, identity: &str) -> Option<Arc<Limiters>> {
        self.overrides.read().ok()?.get(identity).cloned()
    }

    /// The rates in force for `identity`.
    pub fn rates_of(&self, identity: &str) -> RateOverride {
        self.overridden(identity)
            .map(|l| l.rates)
            .unwrap_or(RateOverride {
                calls_per_second: self.defaults.calls_per_second,
                records_per_second: self.defaults.records_per_second,
            })
    }

    /// Admits a call by `identity` (its certificate's identity URI), or says why not:
    /// RESOURCE_EXHAUSTED over the caller's calls in progress or call rate, UNAVAILABLE
    /// when the gateway is full.
    pub fn admit(self: &Arc<Self>, identity: &str) -> Result<CallPermit, ApiError> {
        let rate_wait = match self.overridden(identity) {
            Some(l) => l.calls.check().err(),
            None => self.calls.check_key(&identity.to_string()).err(),
        };
        if let Some(not_until) = rate_wait {
            self.stats.over_call_rate.fetch_add(1, Ordering::Relaxed);
            let wait = millis(not_until.wait_time_from(self.clock.now()));
            return Err(ApiError::Throttled {
                message: format!(
                    "over this caller's rate of {} calls a second (rate_limits); nothing was applied: retry in {wait} ms",
                    self.rates_of(identity).calls_per_second
                ),
                retry_after_ms: wait,
            });
        }
        let max = self.limits.max_calls_per_identity;
        if !self.in_progress.try_take(identity, max) {
            self.stats
                .over_identity_calls
                .fetch_add(1, Ordering::Relaxed);
            return Err(ApiError::Throttled {
                message: format!(
                    "this caller has {max} calls in progress, its limit (connections.max_calls_per_identity); nothing was applied: finish or cancel some first"
                ),
                retry_after_ms: 1000,
            });
        }
        let global = match self.global.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                // Give the caller's place back: this call never started.
                self.release(identity);
                self.stats.shed.fetch_add(1, Ordering::Relaxed);
                return Err(overloaded(250));
            }
        };
        Ok(CallPermit {
            admission: self.clone(),
            identity: identity.to_string(),
            _global: global,
        })
    }

    /// Takes `n` records from `identity`'s records-per-second budget, or says why not
    /// (RESOURCE_EXHAUSTED with retry advice; nothing of them may be applied).
    pub fn take_records(&self, identity: &str, n: usize) -> Result<(), ApiError> {
        let Some(cells) = NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX)) else {
            return Ok(());
        };
        let rates = self.rates_of(identity);
        let checked = match self.overridden(identity) {
            Some(l) => l.records.check_n(cells),
            None => self.records.check_key_n(&identity.to_string(), cells),
        };
        let refused = |message: String, wait: u64| {
            self.stats.over_record_rate.fetch_add(1, Ordering::Relaxed);
            Err(ApiError::Throttled {
                message,
                retry_after_ms: wait,
            })
        };
        match checked {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => {
                let wait = millis(not_until.wait_time_from(self.clock.now()));
                refused(
                    format!(
                        "over this caller's rate of {} records a second (rate_limits); nothing of these {n} records was applied: retry in {wait} ms",
                        rates.records_per_second
                    ),
                    wait,
                )
            }
            Err(_) => refused(
                format!(
                    "{n} records at once are more than this caller's rate of {} records a second allows; nothing was applied: send at most {} records a call",
                    rates.records_per_second, rates.records_per_second
                ),
                1000,
            ),
        }
    }

    /// Waits until `n` records may be sent to `identity` (pulls: the gateway paces
    /// what it sends rather than refusing a pull under way).
    pub async fn pace_records(&self, identity: &str, n: usize) {
        let rates = self.rates_of(identity);
        let mut left = n;
        while left > 0 {
            let step = left.min(rates.records_per_second.max(1) as usize);
            let cells = NonZeroU32::new(step as u32).unwrap_or(NonZeroU32::MIN);
            let result = match self.overridden(identity) {
                Some(l) => l.records.until_n_ready(cells).await.map(|_| ()),
                None => self
                    .records
                    .until_key_n_ready(&identity.to_string(), cells)
                    .await
                    .map(|_| ()),
            };
            if result.is_err() {
                return;
            }
            left -= step;
        }
    }

    /// Most records one call or chunk of `identity` may hold under its rate.
    pub fn max_records_at_once(&self, identity: &str) -> usize {
        self.rates_of(identity).records_per_second as usize
    }

    /// Gives back a place of `identity` among its calls in progress.
    fn release(&self, identity: &str) {
        self.in_progress.give_back(identity);
    }

    /// Calls in progress now, in the whole gateway.
    pub fn calls_in_progress(&self) -> usize {
        self.limits.max_calls.max(1) - self.global.available_permits()
    }

    /// Identities with rate state kept (bounded by [`Admission::evict_idle`]).
    pub fn tracked_identities(&self) -> usize {
        self.calls.len().max(self.records.len())
    }

    /// Forgets the rate state of identities whose buckets are full again (nothing to
    /// remember), so that keyed state stays bounded.
    pub fn evict_idle(&self) {
        self.calls.retain_recent();
        self.records.retain_recent();
        self.calls.shrink_to_fit();
        self.records.shrink_to_fit();
    }
}

fn overloaded(retry_after_ms: u64) -> ApiError {
    ApiError::Overloaded {
        message: format!(
            "the gateway is at its limit of calls in progress (connections.max_calls); nothing was applied: retry in {retry_after_ms} ms"
        ),
        retry_after_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_per_identity: usize, max_calls: usize, rates: RateLimits) -> Arc<Admission> {
        Admission::new(
            ConnectionLimits {
                max_calls_per_identity: max_per_identity,
                max_calls,
                ..ConnectionLimits::default()
            },
            rates,
        )
    }

    #[test]
    fn calls_in_progress_are_capped_per_identity_and_in_all() {
        let a = admission(2, 3, RateLimits::default());
        let p1 = a.admit("oip://platform/A").expect("first");
        let _p2 = a.admit("oip://platform/A").expect("second");
        let e = a.admit("oip://platform/A").err().expect("third refused");
        assert!(matches!(e, ApiError::Throttled { .. }), "{e}");
        let _p3 = a.admit("oip://platform/B").expect("another caller");
        let e = a.admit("oip://platform/C").err().expect("gateway full");
        assert!(matches!(e, ApiError::Overloaded { .. }), "{e}");
        // The refused call gave its place back.
        assert_eq!(a.in_progress.held("oip://platform/C"), 0);
        drop(p1);
        assert!(a.admit("oip://platform/A").is_ok(), "a place came free");
        assert_eq!(a.stats.shed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_rate_state_of_idle_identities_is_evicted() {
        let a = admission(10, 100, RateLimits::default());
        for i in 0..10_000 {
            let id = format!("oip://platform/{i}");
            drop(a.admit(&id).expect("admitted"));
            a.take_records(&id, 1).expect("records");
        }
        assert_eq!(a.tracked_identities(), 10_000);
        assert!(a.in_progress.is_empty());
        // One call and one record refill in well under a millisecond at the defaults.
        std::thread::sleep(Duration::from_millis(20));
        a.evict_idle();
        assert_eq!(
            a.tracked_identities(),
            0,
            "bounded: nothing left to remember"
        );
    }

    #[test]
    fn rates_refuse_with_advice_and_overrides_apply_at_once() {
        let a = admission(
            100,
            100,
            RateLimits {
                calls_per_second: 2,
                records_per_second: 10,
            },
        );
        let id = "oip://platform/A";
        let _ = (a.admit(id), a.admit(id));
        match a.admit(id) {
            Err(ApiError::Throttled { retry_after_ms, .. }) => {
                assert!((1..=1001).contains(&retry_after_ms), "{retry_after_ms}")
            }
            other => panic!("{:?}", other.err()),
        }
        assert!(a.admit("oip://platform/B").is_ok(), "others unaffected");
        assert!(a.take_records(id, 10).is_ok());
        assert!(
            a.take_records(id, 1).is_err(),
            "the second's budget is spent"
        );
        assert!(
            matches!(
                a.take_records(id, 11),
                Err(ApiError::Throttled {
                    retry_after_ms: 1000,
                    ..
                })
            ),
            "more than a second's worth at once"
        );
        a.set_overrides(&[(
            id.to_string(),
            RateOverride {
                calls_per_second: 1000,
                records_per_second: 1000,
            },
        )]);
        assert!(
            a.take_records(id, 500).is_ok(),
            "the override applies at once"
        );
        assert!(a.admit(id).is_ok());
        assert_eq!(a.max_records_at_once(id), 1000);
        a.set_overrides(&[]);
        assert_eq!(a.max_records_at_once(id), 10, "back to the default");
    }
}
