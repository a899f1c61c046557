//! How queued outbox items link to the ones before them, the same on every backend
//! (`OutboxItem::daily_enrolment`, `OutboxItem::order_id`): a daily enrolment's or an
//! order's row names its newest item (`latest_item`), each such item names the item of
//! its record before it (`previous`), and an item that a later one of the same list
//! supersedes is stored superseded. The backends read and write the rows; the
//! decisions are made here once.

use std::collections::{HashMap, HashSet};

use super::OutboxItem;
use crate::domain::batch::EnrolmentKey;

/// The newest stored item (`latest_item`) of each order an ingest loaded and each
/// daily enrolment whose count it read; None when the row is not stored or names no
/// item. Queueing chains a new item to it (and supersedes an enrolment's) without
/// reading the row again.
#[derive(Default)]
pub(crate) struct Anchors {
    pub orders: HashMap<String, Option<i64>>,
    pub enrolments: HashMap<EnrolmentKey, Option<i64>>,
}

impl Anchors {
    /// The enrolments of `outbox` whose newest item has not been read yet.
    pub fn unread_enrolments<'a>(&self, outbox: &'a [OutboxItem]) -> Vec<&'a EnrolmentKey> {
        unread(
            outbox.iter().filter_map(|i| i.daily_enrolment.as_ref()),
            &self.enrolments,
        )
    }

    /// The orders of `outbox` whose newest item has not been read yet.
    pub fn unread_orders<'a>(&self, outbox: &'a [OutboxItem]) -> Vec<&'a str> {
        unread(
            outbox.iter().filter_map(|i| i.order_id.as_deref()),
            &self.orders,
        )
    }

    /// The stored newest items of the enrolments that `outbox` queues for: the open
    /// items its new ones supersede (if still open).
    pub fn open_enrolment_items(&self, outbox: &[OutboxItem]) -> Vec<i64> {
        outbox
            .iter()
            .filter_map(|i| i.daily_enrolment.as_ref())
            .collect::<HashSet<_>>()
            .into_iter()
            .filter_map(|k| self.enrolments.get(k).copied().flatten())
            .collect()
    }
}

/// The distinct keys of `keys` that `read` does not hold yet.
fn unread<'a, K, Q>(keys: impl Iterator<Item = &'a Q>, read: &HashMap<K, Option<i64>>) -> Vec<&'a Q>
where
    K: std::borrow::Borrow<Q> + Eq + std::hash::Hash,
    Q: Eq + std::hash::Hash + ?Sized + 'a,
{
    keys.filter(|k| !read.contains_key(*k))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect()
}

/// The newest item queued of each daily enrolment and each order, for their rows.
#[derive(Default)]
pub(crate) struct Newest<'a> {
    pub enrolments: HashMap<&'a EnrolmentKey, i64>,
    pub orders: HashMap<&'a str, i64>,
}

/// How each item of a list being queued is stored.
pub(crate) struct Links<'a> {
    /// Superseded by a later item of the same list (stored superseded, as if queued
    /// before it).
    pub obsolete: Vec<bool>,
    /// The item of the same daily enrolment or order before it (None for others).
    pub previous: Vec<Option<i64>>,
    pub newest: Newest<'a>,
}

/// Links the items of `outbox`, which get the seqs `seqs` (ascending, one per item),
/// to each other and to the stored newest items in `anchors`.
pub(crate) fn link<'a>(outbox: &'a [OutboxItem], seqs: &[i64], anchors: &Anchors) -> Links<'a> {
    let mut later: HashMap<(&str, &str), Vec<&str>> = HashMap::new();
    let mut obsolete = vec![false; outbox.len()];
    for (i, item) in outbox.iter().enumerate().rev() {
        let key = (item.destination.as_str(), item.record_key.as_str());
        obsolete[i] = later
            .get(&key)
            .is_some_and(|prefixes| prefixes.iter().any(|p| item.idempotency_key.starts_with(p)));
        if let Some(p) = item.supersedes.as_deref() {
            later.entry(key).or_default().push(p);
        }
    }
    let mut newest = Newest::default();
    let previous = outbox
        .iter()
        .zip(seqs)
        .map(|(item, seq)| {
            if let Some(k) = item.daily_enrolment.as_ref() {
                return newest
                    .enrolments
                    .insert(k, *seq)
                    .or_else(|| anchors.enrolments.get(k).copied().flatten());
            }
            let id = item.order_id.as_deref()?;
            newest
                .orders
                .insert(id, *seq)
                .or_else(|| anchors.orders.get(id).copied().flatten())
        })
        .collect();
    Links {
        obsolete,
        previous,
        newest,
    }
}

/// A record key's USCC, daily enrolment (worker, day, division) and order id.
pub(crate) type ChainedKey<'a> = (
    &'a str,
    Option<(&'a str, &'a str, &'a str)>,
    Option<&'a str>,
);

/// The record key parts a listing of deliveries walks a chain from: for
/// `<uscc>/enrolment/<worker>/<YYYY-MM-DD>/<division>`, (uscc, Some((worker, day,
/// division)), None); for `<uscc>/order/<order>`, (uscc, None, Some(order)). A worker
/// or order id may hold '/', a USCC may not.
pub(crate) fn chained_key(record_key: &str) -> ChainedKey<'_> {
    let (uscc, rest) = record_key.split_once('/').unwrap_or_default();
    let enrolment = rest.strip_prefix("enrolment/").and_then(|rest| {
        let mut parts = rest.rsplitn(3, '/');
        let (division, day, worker) = (parts.next()?, parts.next()?, parts.next()?);
        Some((worker, day, division))
    });
    (uscc, enrolment, rest.strip_prefix("order/"))
}
