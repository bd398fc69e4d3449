//! A scale-out source's share of the stream: the leases it holds, renewed, taken and balanced at
//! most every third of `lease_duration` (see `lease` for the protocol), and the claim of each
//! planned range before it is read.

use super::feed::{Feed, From};
use super::lease::{Lease, LeaseTable};
use super::KinesisSource;
use crate::ranges::{Next, ShardRange};
use sluice_core::Result;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

pub struct Scale {
    pub instance: String,
    pub table_name: String,
    pub table: Option<LeaseTable>,
    /// Shards whose lease this gateway holds.
    pub held: BTreeSet<String>,
    pub synced: Option<Instant>,
    /// The shared start position was read from the table.
    pub start_fixed: bool,
}

impl KinesisSource {
    fn scale(&mut self) -> &mut Scale {
        self.scale.as_mut().expect("scale-out")
    }

    async fn open_table(&mut self) -> Result<()> {
        if self.scale().table.is_some() {
            return Ok(());
        }
        let client =
            crate::client::dynamodb(&self.aws, self.cfg.dynamodb_endpoint.as_deref()).await;
        let (name, instance) = (
            self.scale().table_name.clone(),
            self.scale().instance.clone(),
        );
        let table = LeaseTable::open(client, &name, &instance, self.cfg.lease_duration)
            .await
            .map_err(|t| self.fail(format!("the lease table `{name}`: {t:?}")))?;
        self.scale().table = Some(table);
        Ok(())
    }

    fn table(&self) -> &LeaseTable {
        self.scale
            .as_ref()
            .and_then(|s| s.table.as_ref())
            .expect("opened")
    }

    /// Renew, drop, take and balance leases, if due (`now`: at once).
    pub(super) async fn sync(&mut self, now: bool) -> Result<()> {
        let due = self.cfg.lease_duration / 3;
        if !now && self.scale().synced.is_some_and(|t| t.elapsed() < due) {
            return Ok(());
        }
        self.open_table().await?;
        if !self.scale().start_fixed {
            let mine = self.position_mut().start;
            let start = self
                .table()
                .start(mine)
                .await
                .map_err(|t| self.trouble(t))?;
            self.position_mut().start = start;
            self.scale().start_fixed = true;
        }
        let ids: Vec<String> = self.listing.keys().cloned().collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        self.table()
            .ensure(&refs)
            .await
            .map_err(|t| self.trouble(t))?;
        let leases = {
            let s = self.scale.as_mut().expect("scale-out");
            s.table.as_mut().expect("opened").leases().await
        }
        .map_err(|t| self.trouble(t))?;
        self.renew(&leases).await?;
        // Shards that may be read: not finished, parents finished.
        let done: BTreeMap<String, Next> = leases
            .iter()
            .filter(|(_, l)| l.done)
            .map(|(id, _)| (id.clone(), Next::Done))
            .collect();
        let eligible: Vec<String> = super::shards::eligible(&self.listing, &done)
            .into_iter()
            .map(str::to_string)
            .collect();
        let me = self.scale().instance.clone();
        // Leases this gateway held before a restart are its own again.
        for id in &eligible {
            if leases.get(id).is_some_and(|l| l.owner == me) && !self.scale().held.contains(id) {
                self.adopt(id, &leases[id]).await?;
            }
        }
        let mut workers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        workers.entry(me.clone()).or_default();
        for id in &eligible {
            let l = &leases[id];
            if !l.owner.is_empty() && !self.table().takeable(id, l) {
                workers.entry(l.owner.clone()).or_default().push(id.clone());
            }
        }
        let target = eligible.len().div_ceil(workers.len());
        for id in &eligible {
            if self.scale().held.len() >= target {
                break;
            }
            let l = &leases[id];
            if self.scale().held.contains(id) || !self.table().takeable(id, l) {
                continue;
            }
            if self
                .table()
                .take(id, l)
                .await
                .map_err(|t| self.trouble(t))?
            {
                tracing::info!(source = %self.name, shard = %id, from = %l.owner, "kinesis: took the lease of a shard");
                self.adopt(id, l).await?;
            }
        }
        // Still below its share: one lease from the busiest gateway, as KCL steals.
        if self.scale().held.len() < target {
            let busiest = workers
                .iter()
                .filter(|(w, _)| **w != me)
                .max_by_key(|(_, s)| s.len())
                .filter(|(_, s)| s.len() > target)
                .and_then(|(_, s)| s.last().cloned());
            if let Some(id) = busiest {
                let l = &leases[&id];
                if self
                    .table()
                    .take(&id, l)
                    .await
                    .map_err(|t| self.trouble(t))?
                {
                    tracing::info!(source = %self.name, shard = %id, from = %l.owner, "kinesis: took the lease of a shard from a busier gateway");
                    self.adopt(&id, l).await?;
                }
            }
        }
        // Readers of shards this gateway does not hold (started to re-run a batch claimed before
        // a restart) stop: a batch that needs one again starts it (`gather`).
        let held = self.scale().held.clone();
        self.feeds.retain(|id, _| held.contains(id));
        self.scale().synced = Some(Instant::now());
        Ok(())
    }

    /// Renew the leases held; drop those another gateway took.
    async fn renew(&mut self, leases: &BTreeMap<String, Lease>) -> Result<()> {
        let me = self.scale().instance.clone();
        for id in self.scale().held.clone() {
            let still = match leases.get(&id) {
                Some(l) if l.owner == me && !l.done => {
                    self.table().renew(&id).await.map_err(|t| self.trouble(t))?
                }
                _ => false,
            };
            if !still {
                self.drop_shard(&id, "its lease was taken or finished");
            }
        }
        Ok(())
    }

    pub(super) fn drop_shard(&mut self, id: &str, why: &str) {
        if self.scale().held.remove(id) {
            tracing::info!(source = %self.name, shard = %id, why, "kinesis: no longer reading a shard");
        }
        self.feeds.remove(id);
        self.position_mut().shards.remove(id);
    }

    /// Start reading a shard whose lease this gateway now holds, after its last claimed range.
    async fn adopt(&mut self, id: &str, lease: &Lease) -> Result<()> {
        let (at, finished) = self
            .table()
            .chain_end(id, lease.checkpoint.clone())
            .await
            .map_err(|t| self.trouble(t))?;
        if finished {
            return Ok(());
        }
        let start = self.position_mut().start;
        let from = match &at {
            Some(p) => From::After(p.clone()),
            None => self.shard_start(id, start),
        };
        match &at {
            Some(p) => {
                self.position_mut()
                    .shards
                    .insert(id.to_string(), Next::After(p.clone()));
            }
            None => {
                self.position_mut().shards.remove(id);
            }
        }
        tracing::info!(source = %self.name, shard = id, from = ?from, "kinesis: reading a shard");
        let client = self.client().await;
        let opts = self.feed_options(client, id);
        self.feeds
            .insert(id.to_string(), Feed::start(&opts, id, from));
        self.scale().held.insert(id.to_string());
        Ok(())
    }

    /// Claim a planned range for `batch`; false (and the shard dropped) if another gateway's
    /// claim came first. Waits out an unreachable table up to `fetch_timeout`.
    pub(super) async fn claim(&mut self, r: &ShardRange, batch: i64) -> Result<bool> {
        self.open_table().await?;
        let (name, table) = (&self.name, self.table());
        let claimed = crate::client::patiently(
            self.cfg.fetch_timeout,
            |why, wait| tracing::warn!(source = %name, shard = %r.shard, error = %why, retry_in = ?wait, "kinesis: cannot claim a range in the lease table; retrying"),
            || table.claim(&r.shard, r.after.as_ref(), &r.last, r.end, batch),
        )
        .await;
        let won = claimed.map_err(|t| self.trouble(t))?;
        if !won {
            tracing::info!(source = %self.name, shard = %r.shard, batch, "kinesis: another gateway claimed the range first; this batch reads nothing of the shard");
            self.drop_shard(&r.shard, "another gateway claimed its next range");
        }
        Ok(won)
    }

    /// A claimed range ended its shard: the children may start (here or elsewhere).
    pub(super) fn finished(&mut self, id: &str) {
        self.drop_shard(id, "read to its end");
        self.refreshed = None;
    }
}
