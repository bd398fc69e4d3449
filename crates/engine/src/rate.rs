//! Backpressure: Spark's PID rate estimator, and the per-source rate limit it sets.
//!
//! After every batch the estimator compares the rate at which records arrived with the rate at which
//! the batch processed them, and with the scheduling delay that built up; the next rate is lowered
//! (or raised) to the rate the engine can sustain. Receivers wait in `store` for their rate limit
//! (so they stop reading their socket); replayable sources plan at most `rate × interval` records.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// A token bucket whose rate can change while receivers wait on it. `None` = unlimited.
#[derive(Clone, Default)]
pub struct RateLimit(Arc<Mutex<Bucket>>);

#[derive(Default)]
struct Bucket {
    rate: Option<f64>,
    tokens: f64,
    last: Option<Instant>,
}

/// The largest burst a bucket lets through at once, in seconds of its rate.
const BURST_SECS: f64 = 0.1;

impl RateLimit {
    pub fn new(rate: Option<f64>) -> Self {
        let r = RateLimit::default();
        r.set(rate);
        r
    }

    /// Records per second now allowed (None: no limit).
    pub fn current(&self) -> Option<f64> {
        self.0.lock().unwrap().rate
    }

    /// Records one burst may hold (None: no limit).
    pub fn block_budget(&self) -> Option<usize> {
        self.current().map(|r| (r * BURST_SECS).max(1.0) as usize)
    }

    pub fn set(&self, rate: Option<f64>) {
        let mut b = self.0.lock().unwrap();
        if b.rate != rate {
            b.rate = rate;
            b.tokens = b.tokens.min(rate.unwrap_or(0.0) * BURST_SECS);
        }
    }

    /// Wait until `n` records may pass. A block larger than a burst passes when the bucket is not in
    /// debt, and the debt it leaves delays the next one: the average rate holds.
    pub async fn acquire(&self, n: u64) {
        loop {
            let wait = {
                let mut b = self.0.lock().unwrap();
                let Some(rate) = b.rate else { return };
                let now = Instant::now();
                let elapsed = b.last.map_or(0.0, |l| (now - l).as_secs_f64());
                b.last = Some(now);
                b.tokens = (b.tokens + elapsed * rate).min(rate * BURST_SECS);
                if b.tokens >= 0.0 {
                    b.tokens -= n as f64;
                    return;
                }
                Duration::from_secs_f64((-b.tokens / rate).min(1.0))
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Spark's `PIDRateEstimator` (proportional 1.0, integral 0.2, derivative 0.0 by default).
pub struct PidEstimator {
    interval_ms: f64,
    proportional: f64,
    integral: f64,
    derivative: f64,
    min_rate: f64,
    first: bool,
    latest_time: i64,
    latest_rate: f64,
    latest_error: f64,
}

impl PidEstimator {
    pub fn new(interval: Duration, min_rate: f64) -> Self {
        PidEstimator {
            interval_ms: interval.as_millis() as f64,
            proportional: 1.0,
            integral: 0.2,
            derivative: 0.0,
            min_rate,
            first: true,
            latest_time: -1,
            latest_rate: -1.0,
            latest_error: -1.0,
        }
    }

    /// After a batch finished at `time_ms` with `records`, `processing_ms` and `scheduling_ms`:
    /// the new rate, or None when there is nothing to learn from (first batch, empty batch).
    pub fn compute(
        &mut self,
        time_ms: i64,
        records: u64,
        processing_ms: f64,
        scheduling_ms: f64,
    ) -> Option<f64> {
        if time_ms <= self.latest_time || records == 0 || processing_ms <= 0.0 {
            return None;
        }
        let since = (time_ms - self.latest_time) as f64 / 1000.0;
        let processing_rate = records as f64 / processing_ms * 1000.0;
        let error = self.latest_rate - processing_rate;
        // The delay already queued, as records per second this batch would need to catch up.
        let historical = scheduling_ms * processing_rate / self.interval_ms;
        let d_error = (error - self.latest_error) / since;
        let new_rate = (self.latest_rate
            - self.proportional * error
            - self.integral * historical
            - self.derivative * d_error)
            .max(self.min_rate);
        self.latest_time = time_ms;
        if self.first {
            self.latest_rate = processing_rate;
            self.latest_error = 0.0;
            self.first = false;
            None
        } else {
            self.latest_rate = new_rate;
            self.latest_error = error;
            Some(new_rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input at 3× what the batches can process: the rate falls to the processing rate, and the
    /// integral term pulls it below while scheduling delay is queued.
    #[test]
    fn pid_converges_to_the_processing_rate() {
        let interval = Duration::from_secs(1);
        let mut pid = PidEstimator::new(interval, 100.0);
        let capacity = 10_000.0; // records per second of processing
        let mut rate = 30_000.0;
        let mut delay = 0.0;
        let mut t = 0;
        let mut rates = Vec::new();
        for _ in 0..30 {
            t += 1000;
            let records = rate;
            let processing_ms = records / capacity * 1000.0;
            if let Some(r) = pid.compute(t, records as u64, processing_ms, delay) {
                rate = r;
                rates.push(r);
            }
            delay = (delay + processing_ms - 1000.0).max(0.0);
        }
        assert!(rates[0] <= capacity + 1.0, "first estimate {}", rates[0]);
        let last = *rates.last().unwrap();
        assert!(
            (last - capacity).abs() / capacity < 0.05,
            "settles at {last}"
        );
        assert!(delay < 1.0, "the queued delay drains: {delay}");
    }

    #[test]
    fn pid_never_goes_below_the_minimum_or_learns_from_empty_batches() {
        let mut pid = PidEstimator::new(Duration::from_secs(1), 100.0);
        assert_eq!(pid.compute(1000, 0, 5.0, 0.0), None);
        assert_eq!(pid.compute(2000, 1000, 1000.0, 0.0), None); // first measurement
        let r = pid.compute(3000, 10, 10_000.0, 60_000.0).unwrap();
        assert_eq!(r, 100.0);
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_holds_the_average_rate() {
        let limit = RateLimit::new(Some(1000.0));
        let start = tokio::time::Instant::now();
        for _ in 0..50 {
            limit.acquire(100).await;
        }
        // 5,000 records at 1,000/s: at least 4.9 s of (virtual) time.
        assert!(
            start.elapsed() >= Duration::from_millis(4800),
            "{:?}",
            start.elapsed()
        );
        limit.set(None);
        let t = tokio::time::Instant::now();
        limit.acquire(1_000_000).await;
        assert_eq!(t.elapsed(), Duration::ZERO);
    }
}
