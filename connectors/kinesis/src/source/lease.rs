//! Scale-out: several gateways share a stream's shards through a DynamoDB lease table, as KCL
//! workers do — one lease per shard with its owner and a counter the owner bumps to renew it; a
//! lease whose counter has not moved for `lease_duration` is taken by another gateway, and a
//! gateway holding fewer than its share takes one from the busiest. Leases only divide the work.
//!
//! Which gateway processes a range is decided by a claim: before reading a planned range, its
//! gateway writes the item (`claim#<shard>`, <position before the range>) if it does not exist. The
//! first claim wins; a gateway whose claim lost (its lease was taken meanwhile) reads nothing of
//! that shard in that batch, and a batch re-run after a restart finds its own claim. Claims chain:
//! each names the last record of its range, so a gateway that takes a lease starts after the last
//! claimed range, wherever the lease's checkpoint (a hint) stands. A killed gateway's claimed
//! batches are finished by the gateway itself when it restarts (its checkpoint holds their plans).

use crate::client::Trouble;
use crate::ranges::{Pos, StartAt};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TableStatus,
};
use aws_sdk_dynamodb::Client;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

type Item = HashMap<String, AttributeValue>;

/// One shard's lease as last read.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub owner: String,
    pub counter: i64,
    /// The last claimed record (a hint: claims after it may exist).
    pub checkpoint: Option<Pos>,
    /// Every record of the shard was claimed: its children may start.
    pub done: bool,
}

pub struct LeaseTable {
    client: Client,
    table: String,
    instance: String,
    duration: Duration,
    /// Per shard, the counter last seen and when it was seen to change.
    seen: HashMap<String, (i64, Instant)>,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}
fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}
fn pos_text(p: &Pos) -> String {
    serde_json::to_string(p).expect("a position serializes")
}
fn text(item: &Item, k: &str) -> Option<String> {
    item.get(k).and_then(|v| v.as_s().ok()).cloned()
}
fn num(item: &Item, k: &str) -> i64 {
    item.get(k)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
fn flag(item: &Item, k: &str) -> bool {
    item.get(k)
        .and_then(|v| v.as_bool().ok())
        .copied()
        .unwrap_or(false)
}
fn pos(item: &Item, k: &str) -> Option<Pos> {
    text(item, k).and_then(|t| serde_json::from_str(&t).ok())
}

/// Whether a DynamoDB error is a failed condition (someone else won).
fn lost<E: aws_sdk_dynamodb::error::ProvideErrorMetadata>(
    e: &aws_sdk_dynamodb::error::SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
) -> bool {
    e.as_service_error()
        .and_then(|s| s.code())
        .is_some_and(|c| c == "ConditionalCheckFailedException")
}

/// Items are keyed by `kind` (partition) and `key` (sort): the start item (`start`/`start`), the
/// leases (`lease`/shard, read together with one Query) and each shard's claims
/// (`claim#<shard>`/the record before the range), which the lease rounds never read.
const LEASE: &str = "lease";

fn claim_of(shard: &str, after: Option<&Pos>) -> (String, String) {
    (
        format!("claim#{shard}"),
        after.map_or("start".to_string(), |p| p.to_string()),
    )
}

fn item_key(kind: &str, key: &str) -> Item {
    HashMap::from([("kind".to_string(), s(kind)), ("key".to_string(), s(key))])
}

impl LeaseTable {
    /// The table `table`, created (on demand billing) when missing.
    pub async fn open(
        client: Client,
        table: &str,
        instance: &str,
        duration: Duration,
    ) -> Result<LeaseTable, Trouble> {
        let made = client
            .create_table()
            .table_name(table)
            .set_attribute_definitions(Some(
                ["kind", "key"]
                    .map(|name| {
                        AttributeDefinition::builder()
                            .attribute_name(name)
                            .attribute_type(ScalarAttributeType::S)
                            .build()
                            .expect("complete")
                    })
                    .to_vec(),
            ))
            .set_key_schema(Some(
                [("kind", KeyType::Hash), ("key", KeyType::Range)]
                    .map(|(name, kind)| {
                        KeySchemaElement::builder()
                            .attribute_name(name)
                            .key_type(kind)
                            .build()
                            .expect("complete")
                    })
                    .to_vec(),
            ))
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        if let Err(e) = made {
            let exists = e
                .as_service_error()
                .and_then(|s| aws_sdk_dynamodb::error::ProvideErrorMetadata::code(s))
                .is_some_and(|c| c == "ResourceInUseException");
            if !exists {
                return Err(Trouble::of(&e));
            }
        }
        for _ in 0..600 {
            let d = client
                .describe_table()
                .table_name(table)
                .send()
                .await
                .map_err(|e| Trouble::of(&e))?;
            if d.table.and_then(|t| t.table_status) == Some(TableStatus::Active) {
                return Ok(LeaseTable {
                    client,
                    table: table.to_string(),
                    instance: instance.to_string(),
                    duration,
                    seen: HashMap::new(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(Trouble::Transient(format!(
            "the lease table {table} did not become ACTIVE"
        )))
    }

    /// Where shards without a claim start, the same for every gateway: the first gateway's.
    pub async fn start(&self, mine: StartAt) -> Result<StartAt, Trouble> {
        let text = serde_json::to_string(&mine).expect("serializes");
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item_key("start", "start")))
            .item("start", s(text))
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", "key")
            .send()
            .await;
        match put {
            Ok(_) => Ok(mine),
            Err(e) if lost(&e) => {
                let item = self.get("start", "start").await?.unwrap_or_default();
                Ok(text_start(&item).unwrap_or(mine))
            }
            Err(e) => Err(Trouble::of(&e)),
        }
    }

    async fn get(&self, kind: &str, key: &str) -> Result<Option<Item>, Trouble> {
        self.client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(item_key(kind, key)))
            .consistent_read(true)
            .send()
            .await
            .map(|o| o.item)
            .map_err(|e| Trouble::of(&e))
    }

    /// Make a free lease for each of `shards` that has none.
    pub async fn ensure(&self, shards: &[&str]) -> Result<(), Trouble> {
        for shard in shards {
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item_key(LEASE, shard)))
                .item("owner", s(""))
                .item("counter", n(0))
                .condition_expression("attribute_not_exists(#k)")
                .expression_attribute_names("#k", "key")
                .send()
                .await;
            if let Err(e) = put {
                if !lost(&e) {
                    return Err(Trouble::of(&e));
                }
            }
        }
        Ok(())
    }

    /// Every lease, by shard; notes when each counter moved.
    pub async fn leases(&mut self) -> Result<BTreeMap<String, Lease>, Trouble> {
        let mut out = BTreeMap::new();
        let mut from: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("#kind = :lease")
                .expression_attribute_names("#kind", "kind")
                .expression_attribute_values(":lease", s(LEASE))
                .consistent_read(true)
                .set_exclusive_start_key(from.take())
                .send()
                .await
                .map_err(|e| Trouble::of(&e))?;
            for item in page.items.unwrap_or_default() {
                let Some(shard) = text(&item, "key") else {
                    continue;
                };
                out.insert(
                    shard,
                    Lease {
                        owner: text(&item, "owner").unwrap_or_default(),
                        counter: num(&item, "counter"),
                        checkpoint: pos(&item, "checkpoint"),
                        done: flag(&item, "done"),
                    },
                );
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => from = Some(k),
                _ => break,
            }
        }
        let now = Instant::now();
        for (shard, l) in &out {
            match self.seen.get(shard) {
                Some((c, _)) if *c == l.counter => {}
                _ => {
                    self.seen.insert(shard.clone(), (l.counter, now));
                }
            }
        }
        Ok(out)
    }

    /// Whether `lease` of `shard` can be taken: free, or its owner stopped renewing it.
    pub fn takeable(&self, shard: &str, lease: &Lease) -> bool {
        lease.owner.is_empty()
            || (lease.owner != self.instance
                && self
                    .seen
                    .get(shard)
                    .is_some_and(|(_, t)| t.elapsed() >= self.duration))
    }

    /// Renew a lease this gateway holds; false if it was taken.
    pub async fn renew(&self, shard: &str) -> Result<bool, Trouble> {
        self.update_owned(
            shard,
            "SET #c = #c + :one",
            &[("#c", "counter")],
            &[(":one", n(1))],
        )
        .await
    }

    async fn update_owned(
        &self,
        shard: &str,
        update: &str,
        names: &[(&str, &str)],
        values: &[(&str, AttributeValue)],
    ) -> Result<bool, Trouble> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(item_key(LEASE, shard)))
            .update_expression(update)
            .condition_expression("#o = :me")
            .expression_attribute_names("#o", "owner")
            .expression_attribute_values(":me", s(&self.instance));
        for (k, name) in names {
            req = req.expression_attribute_names(*k, *name);
        }
        for (k, v) in values {
            req = req.expression_attribute_values(*k, v.clone());
        }
        match req.send().await {
            Ok(_) => Ok(true),
            Err(e) if lost(&e) => Ok(false),
            Err(e) => Err(Trouble::of(&e)),
        }
    }

    /// Take `lease` of `shard` as read (its counter unchanged since); false if someone was faster.
    pub async fn take(&self, shard: &str, lease: &Lease) -> Result<bool, Trouble> {
        let r = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(item_key(LEASE, shard)))
            .update_expression("SET #o = :me, #c = #c + :one")
            .condition_expression("#c = :seen AND #o = :was")
            .expression_attribute_names("#o", "owner")
            .expression_attribute_names("#c", "counter")
            .expression_attribute_values(":me", s(&self.instance))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":seen", n(lease.counter))
            .expression_attribute_values(":was", s(&lease.owner))
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if lost(&e) => Ok(false),
            Err(e) => Err(Trouble::of(&e)),
        }
    }

    /// Claim the range of `shard` after `after` (None: from the shard's start) through `last`
    /// for `batch`: true if this gateway's claim is the one (now, or before a restart).
    pub async fn claim(
        &self,
        shard: &str,
        after: Option<&Pos>,
        last: &Pos,
        end: bool,
        batch: i64,
    ) -> Result<bool, Trouble> {
        let (kind, key) = claim_of(shard, after);
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item_key(&kind, &key)))
            .item("by", s(&self.instance))
            .item("batch", n(batch))
            .item("last", s(pos_text(last)))
            .item("end", AttributeValue::Bool(end))
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", "key")
            .send()
            .await;
        let won = match put {
            Ok(_) => true,
            Err(e) if lost(&e) => {
                let item = self.get(&kind, &key).await?.unwrap_or_default();
                text(&item, "by").as_deref() == Some(self.instance.as_str())
                    && num(&item, "batch") == batch
            }
            Err(e) => return Err(Trouble::of(&e)),
        };
        if won {
            // The hint where the next owner starts; only the owner moves it.
            let mut update = "SET #p = :p".to_string();
            let mut names = vec![("#p", "checkpoint")];
            let mut values = vec![(":p", s(pos_text(last)))];
            if end {
                update.push_str(", #d = :t");
                names.push(("#d", "done"));
                values.push((":t", AttributeValue::Bool(true)));
            }
            self.update_owned(shard, &update, &names, &values).await?;
        }
        Ok(won)
    }

    /// After `from` (the lease's checkpoint), the end of the chain of claims: where a new owner
    /// starts, and whether the shard was finished.
    pub async fn chain_end(
        &self,
        shard: &str,
        from: Option<Pos>,
    ) -> Result<(Option<Pos>, bool), Trouble> {
        let mut at = from;
        loop {
            let (kind, key) = claim_of(shard, at.as_ref());
            match self.get(&kind, &key).await? {
                None => return Ok((at, false)),
                Some(item) => {
                    if flag(&item, "end") {
                        return Ok((at, true));
                    }
                    at = pos(&item, "last");
                }
            }
        }
    }
}

fn text_start(item: &Item) -> Option<StartAt> {
    text(item, "start").and_then(|t| serde_json::from_str(&t).ok())
}
