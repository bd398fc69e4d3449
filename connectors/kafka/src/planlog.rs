//! Scale-out: the plan log. Gateways sharing a source append each batch's offset ranges to one
//! single-partition topic before they read them, and the log's order decides who owns a range:
//! an entry is **valid** when each of its ranges starts exactly where the last valid entry for
//! that partition ended (or is the first for it); otherwise it is void, all of it. Every gateway
//! reads the same log, so all agree, whatever the timing of a rebalance or a kill:
//!
//! - a gateway given a partition starts it where the last valid entry ended — also when the
//!   gateway that wrote that entry was killed before running the batch: that gateway finishes the
//!   batch from its checkpoint when it restarts (its entry is valid, so the range is its own);
//! - a gateway that planned a range but was overtaken (another gateway appended a range of the
//!   partition first) finds its entry void, reads nothing for it, and moves on.
//!
//! So every offset is in exactly one valid entry, run by exactly one gateway.

use crate::context::Ctx;
use crate::ranges::PartRange;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::Message;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{Duration, Instant};

type Tp = (String, i32);

/// One appended plan.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    instance: String,
    batch: i64,
    ranges: Vec<PartRange>,
}

/// What the entries read so far decide.
#[derive(Default)]
struct Ledger {
    instance: String,
    /// Per partition: where its last valid range ended.
    valid_until: HashMap<Tp, i64>,
    /// This gateway's entries: batch time → valid.
    mine: HashMap<i64, bool>,
}

impl Ledger {
    fn apply(&mut self, e: Entry) {
        let valid = e.ranges.iter().all(|r| {
            self.valid_until
                .get(&(r.topic.clone(), r.partition))
                .is_none_or(|&u| u == r.from)
        });
        if valid {
            for r in &e.ranges {
                self.valid_until
                    .insert((r.topic.clone(), r.partition), r.until);
            }
        }
        if e.instance == self.instance && !e.ranges.is_empty() {
            // A retried append may land twice; the first decides (the second is void).
            self.mine.entry(e.batch).or_insert(valid);
        }
    }
}

pub struct PlanLog {
    topic: String,
    consumer: BaseConsumer<Ctx>,
    producer: FutureProducer<Ctx>,
    /// The next log offset to read.
    read_to: i64,
    ledger: Ledger,
}

const TIMEOUT: Duration = Duration::from_secs(30);

impl PlanLog {
    /// Open (creating it if missing: one partition, the broker's default replication factor) the
    /// plan log `topic` and read it through.
    pub fn open(config: &ClientConfig, topic: &str, instance: &str) -> Result<PlanLog, String> {
        let admin: AdminClient<_> = config
            .create()
            .map_err(|e| format!("cannot create an admin client: {e}"))?;
        let created = futures::executor::block_on(admin.create_topics(
            // -1: the broker's `default.replication.factor` — the plan log is what hand-off
            // relies on, so it should be as durable as the cluster's other topics.
            &[NewTopic::new(topic, 1, TopicReplication::Fixed(-1))],
            &AdminOptions::new().operation_timeout(Some(TIMEOUT)),
        ))
        .map_err(|e| format!("cannot create the plan log topic `{topic}`: {e}"))?;
        for r in created {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((_, e)) => {
                    return Err(format!("cannot create the plan log topic `{topic}`: {e}"))
                }
            }
        }
        let component = format!("plan log `{topic}`");
        let mut c = config.clone();
        c.set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("isolation.level", "read_committed")
            // librdkafka assigns partitions only to a consumer with a group; this one never
            // joins it or commits.
            .set("group.id", format!("{topic}.reader"));
        let consumer: BaseConsumer<Ctx> = c
            .create_with_context(Ctx::new(component.clone()))
            .map_err(|e| format!("cannot create the plan log reader: {e}"))?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .map_err(|e| e.to_string())?;
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        let mut p = config.clone();
        p.set("enable.idempotence", "true")
            .set("linger.ms", "0")
            .set("message.timeout.ms", TIMEOUT.as_millis().to_string());
        let producer: FutureProducer<Ctx> = p
            .create_with_context(Ctx::new(component))
            .map_err(|e| format!("cannot create the plan log writer: {e}"))?;
        let mut log = PlanLog {
            topic: topic.to_string(),
            consumer,
            producer,
            read_to: 0,
            ledger: Ledger {
                instance: instance.to_string(),
                ..Ledger::default()
            },
        };
        log.catch_up(None)?;
        Ok(log)
    }

    /// Read what the log holds now — with `past`, at least through that offset. Only a claim's
    /// answer must be exact, and it is: the log is read through the claim's own entry. (The end
    /// is not asked of the broker: some answer it wrongly, measured on tansu's memory engine.)
    pub fn catch_up(&mut self, past: Option<i64>) -> Result<(), String> {
        let began = Instant::now();
        loop {
            let need = past.is_some_and(|p| self.read_to <= p);
            // Through `past`: done. Without it: until the log is quiet (a busy one, a second).
            if !need && (past.is_some() || began.elapsed() > Duration::from_secs(1)) {
                return Ok(());
            }
            match self
                .consumer
                .poll(Duration::from_millis(if need { 200 } else { 50 }))
            {
                None if !need => return Ok(()),
                None => {}
                Some(Err(e)) => tracing::debug!(error = %e, "kafka: plan log read error"),
                Some(Ok(m)) => {
                    self.read_to = m.offset() + 1;
                    match m.payload().map(serde_json::from_slice::<Entry>) {
                        Some(Ok(e)) => self.ledger.apply(e),
                        _ => {
                            tracing::warn!(topic = %self.topic, offset = m.offset(), "kafka: unreadable plan log entry ignored")
                        }
                    }
                }
            }
            if need && began.elapsed() > TIMEOUT {
                return Err(format!(
                    "the plan log `{}` did not deliver offset {} within {}s",
                    self.topic,
                    past.unwrap_or(self.read_to),
                    TIMEOUT.as_secs()
                ));
            }
        }
    }

    /// Append an entry; returns its offset in the log.
    fn append(&mut self, batch: i64, ranges: &[PartRange]) -> Result<i64, String> {
        let entry = Entry {
            instance: self.ledger.instance.clone(),
            batch,
            ranges: ranges.to_vec(),
        };
        let payload = serde_json::to_vec(&entry).expect("plain struct");
        let key = format!("{}/{batch}", self.ledger.instance);
        let delivery = self
            .producer
            .send_result(
                FutureRecord::to(&self.topic)
                    .partition(0)
                    .key(&key)
                    .payload(&payload),
            )
            .map_err(|(e, _)| format!("cannot append to the plan log: {e}"))?;
        let offset = match futures::executor::block_on(delivery) {
            Ok(Ok(d)) => d.offset,
            Ok(Err((e, _))) => return Err(format!("cannot append to the plan log: {e}")),
            Err(_) => return Err("cannot append to the plan log: the producer stopped".into()),
        };
        Ok(offset)
    }

    /// Read the whole log as it is now: append an empty entry (it changes nothing) and read
    /// through it. For a gateway taking partitions over, so it starts them where the group's
    /// last valid ranges ended (were it to start earlier, its first claim would be void).
    pub fn read_through(&mut self) -> Result<(), String> {
        let offset = self.append(-1, &[])?;
        self.catch_up(Some(offset))
    }

    /// Where the last valid range of a partition ended, if any.
    pub fn valid_until(&self, tp: &Tp) -> Option<i64> {
        self.ledger.valid_until.get(tp).copied()
    }

    /// Append this gateway's plan for `batch` unless it is in the log already, and say whether
    /// it is valid: whether the ranges are this gateway's to read.
    /// Only what was read already is searched for an earlier entry: reading the log to its quiet
    /// end here would cost every batch an idle poll, and an entry appended twice is harmless (the
    /// first decides, and reading through the new one reads the first).
    pub fn claim(&mut self, batch: i64, ranges: &[PartRange]) -> Result<bool, String> {
        if let Some(&valid) = self.ledger.mine.get(&batch) {
            return Ok(valid);
        }
        let offset = self.append(batch, ranges)?;
        self.catch_up(Some(offset))?;
        self.ledger.mine.get(&batch).copied().ok_or_else(|| {
            format!(
                "the plan log `{}` does not show the entry appended for batch {batch} at offset {offset}",
                self.topic
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(instance: &str, batch: i64, ranges: &[(i32, i64, i64)]) -> Entry {
        Entry {
            instance: instance.into(),
            batch,
            ranges: ranges
                .iter()
                .map(|&(partition, from, until)| PartRange {
                    topic: "t".into(),
                    partition,
                    from,
                    until,
                })
                .collect(),
        }
    }

    #[test]
    fn the_first_range_from_the_last_valid_end_wins_and_a_void_entry_moves_nothing() {
        let mut a = Ledger {
            instance: "a".into(),
            ..Ledger::default()
        };
        a.apply(entry("a", 1, &[(0, 0, 10), (1, 0, 5)]));
        // B took partition 1 over after A's entry and starts where it ended: valid.
        a.apply(entry("b", 1, &[(1, 5, 9)]));
        // A had planned partition 1 from 5 too before it learnt of the move: void, all of it,
        // so partition 0 does not move either.
        a.apply(entry("a", 2, &[(0, 10, 20), (1, 5, 12)]));
        // The same entry appended twice (a retry): the first decides.
        a.apply(entry("a", 3, &[(0, 10, 15)]));
        a.apply(entry("a", 3, &[(0, 10, 15)]));
        assert_eq!(a.mine, HashMap::from([(1, true), (2, false), (3, true)]));
        assert_eq!(a.valid_until[&("t".to_string(), 0)], 15);
        assert_eq!(a.valid_until[&("t".to_string(), 1)], 9);
    }
}
