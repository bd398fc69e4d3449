//! Scale-out membership: a consumer that joins the source's consumer group only to learn which
//! partitions the broker gives this gateway. It never fetches (its partitions are paused as soon
//! as they are assigned); the records come from the source's own assign-mode consumer, which can
//! read any range a batch plan names — also one of a partition that has since moved on.

use crate::context::Ctx;
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::TopicPartitionList;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub type Tp = (String, i32);

/// The group callbacks: keep the assignment, pause what is assigned.
pub struct GroupCtx {
    inner: Ctx,
    owned: Arc<Mutex<BTreeSet<Tp>>>,
}

impl ClientContext for GroupCtx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.inner.log(level, fac, log_message)
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.inner.error(error, reason)
    }
}

impl ConsumerContext for GroupCtx {
    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let mut owned = self.owned.lock().expect("poisoned");
        match rebalance {
            Rebalance::Assign(tpl) => {
                if let Err(e) = consumer.pause(tpl) {
                    tracing::warn!(component = %self.inner.component, error = %e, "kafka: cannot pause the group member's partitions");
                }
                owned.clear();
                owned.extend(
                    tpl.elements()
                        .iter()
                        .map(|e| (e.topic().to_string(), e.partition())),
                );
                tracing::info!(component = %self.inner.component, partitions = %shown(&owned), "kafka: the group assigned partitions to this gateway");
            }
            Rebalance::Revoke(_) => {
                owned.clear();
                tracing::info!(component = %self.inner.component, "kafka: the group is rebalancing; partitions revoked");
            }
            Rebalance::Error(e) => {
                tracing::warn!(component = %self.inner.component, error = %e, "kafka: group rebalance failed");
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        self.inner.commit_callback(result, offsets)
    }
}

fn shown(tps: &BTreeSet<Tp>) -> String {
    tps.iter()
        .map(|(t, p)| format!("{t}/{p}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The group member and the thread that polls it (heartbeats and rebalances need polling).
pub struct Membership {
    consumer: Arc<BaseConsumer<GroupCtx>>,
    owned: Arc<Mutex<BTreeSet<Tp>>>,
    topics: Vec<String>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Membership {
    /// Join `group` from a consumer built on `config` (bootstrap servers, properties).
    pub fn join(mut config: ClientConfig, group: &str, component: &str) -> KafkaResult<Self> {
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            // It never fetches; a start position is never needed.
            .set("auto.offset.reset", "latest");
        let owned = Arc::new(Mutex::new(BTreeSet::new()));
        let ctx = GroupCtx {
            inner: Ctx::new(format!("{component} (group member)")),
            owned: owned.clone(),
        };
        let consumer: Arc<BaseConsumer<GroupCtx>> = Arc::new(config.create_with_context(ctx)?);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let consumer = consumer.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("kafka-group".into())
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        // Paused partitions deliver nothing; this serves callbacks.
                        let _ = consumer.poll(Duration::from_millis(100));
                    }
                    // Leave the group at once, so the others take the partitions over now
                    // rather than after the session timeout.
                    consumer.unsubscribe();
                    let _ = consumer.poll(Duration::from_millis(100));
                })
                .expect("spawn a thread")
        };
        Ok(Membership {
            consumer,
            owned,
            topics: Vec::new(),
            stop,
            thread: Some(thread),
        })
    }

    /// Subscribe to exactly these topics (a change makes the group rebalance).
    pub fn subscribe(&mut self, topics: Vec<String>) -> KafkaResult<()> {
        if topics != self.topics {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            self.consumer.subscribe(&names)?;
            self.topics = topics;
        }
        Ok(())
    }

    /// The partitions the group gives this gateway now (empty during a rebalance).
    pub fn owned(&self) -> BTreeSet<Tp> {
        self.owned.lock().expect("poisoned").clone()
    }

    /// Commit offsets as a member of the group (for lag monitoring and tools).
    pub fn commit(&self, tpl: &TopicPartitionList) -> KafkaResult<()> {
        self.consumer.commit(tpl, CommitMode::Async)
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
