//! One batch, end to end after validation: open the store transaction, load what the
//! rules need, decide (`crosscheck`), write, commit. The outcomes are returned only
//! after the commit, so every ACCEPTED record is durable when the caller hears of it.

use std::collections::HashSet;
use std::sync::Arc;

use crate::crosscheck::{self, Candidate};
use crate::domain::time::now_millis;
use crate::domain::{Outcome, PlatformProfile, Record};
use crate::store::{Store, StoreError};

#[derive(Clone)]
pub struct Ingest {
    store: Arc<dyn Store>,
}

impl Ingest {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store }
    }

    /// Applies a batch for `platform` and returns one outcome per candidate, in order.
    pub async fn apply(
        &self,
        platform: &PlatformProfile,
        candidates: Vec<Candidate>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut worker_ids = HashSet::new();
        let mut order_ids = HashSet::new();
        for c in &candidates {
            match &c.record {
                Ok(Record::Worker(w)) => {
                    worker_ids.insert(w.worker_id.as_str());
                }
                Ok(Record::Order(o)) => {
                    order_ids.insert(o.order_id.as_str());
                    worker_ids.insert(o.worker_id.as_str());
                }
                Err(_) => {}
            }
        }
        let worker_ids: Vec<&str> = worker_ids.into_iter().collect();
        let order_ids: Vec<&str> = order_ids.into_iter().collect();

        let mut tx = self.store.begin_ingest(platform.id).await?;
        let mut known = tx.load(&worker_ids, &order_ids).await?;
        let plan = crosscheck::decide(platform, candidates, &mut known);
        if !plan.is_empty() {
            tx.write(&plan, now_millis()).await?;
            tx.commit().await?;
        }
        let rejected = plan.rejections.len();
        tracing::debug!(
            platform = %platform.uscc,
            records = plan.outcomes.len(),
            workers_written = plan.workers.len(),
            orders_written = plan.orders.len(),
            rejected,
            "batch committed"
        );
        Ok(plan.outcomes)
    }
}
