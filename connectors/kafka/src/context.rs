//! librdkafka's callbacks: its log lines go to `tracing`, connection trouble is logged once when it
//! starts and once when it ends (librdkafka itself retries with backoff), commit failures are
//! logged, and the producer's delivery failures are kept for the batch that caused them.

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::ProducerContext;
use rdkafka::TopicPartitionList;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

pub struct Ctx {
    /// `source `orders`` or `sink `out``, for the log.
    pub component: String,
    trouble: Mutex<Option<String>>,
    troubled: AtomicBool,
    failed: Mutex<Vec<String>>,
}

impl Ctx {
    pub fn new(component: String) -> Ctx {
        Ctx {
            component,
            trouble: Mutex::new(None),
            troubled: AtomicBool::new(false),
            failed: Mutex::new(Vec::new()),
        }
    }

    /// Records flow again: end a reported trouble. Cheap when there is none.
    pub fn healthy(&self) {
        if !self.troubled.load(Ordering::Relaxed) {
            return;
        }
        self.troubled.store(false, Ordering::Relaxed);
        let mut t = self.trouble.lock().expect("poisoned");
        if let Some(was) = t.take() {
            tracing::info!(component = %self.component, after = %was, "kafka: connected again");
        }
    }

    /// The connection trouble being retried, if any (for status and errors).
    pub fn trouble(&self) -> Option<String> {
        self.trouble.lock().expect("poisoned").clone()
    }

    /// Delivery failures since the last call.
    pub fn take_failures(&self) -> Vec<String> {
        std::mem::take(&mut *self.failed.lock().expect("poisoned"))
    }
}

impl ClientContext for Ctx {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::warn!(component = %self.component, facility = fac, "librdkafka: {log_message}")
            }
            RDKafkaLogLevel::Warning | RDKafkaLogLevel::Notice => {
                tracing::debug!(component = %self.component, facility = fac, "librdkafka: {log_message}")
            }
            _ => {
                tracing::trace!(component = %self.component, facility = fac, "librdkafka: {log_message}")
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let mut t = self.trouble.lock().expect("poisoned");
        if t.is_none() {
            tracing::warn!(component = %self.component, error = %error, reason, "kafka: broker trouble; librdkafka retries with backoff");
        }
        *t = Some(format!("{error}: {reason}"));
        self.troubled.store(true, Ordering::Relaxed);
    }
}

impl ConsumerContext for Ctx {
    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(component = %self.component, error = %e, "kafka: committing the group's offsets failed (they are only for monitoring; the next batch commits again)");
        }
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = result {
            self.failed.lock().expect("poisoned").push(e.to_string());
        }
    }
}
