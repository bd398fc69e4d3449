//! Reading a planned range: fetching its records (again, after a restart) and turning them into
//! rows with the envelope columns.

use super::*;

/// Rows per output record batch.
pub(super) const CHUNK: usize = 32 * 1024;

impl KafkaSource {
    pub(super) fn rows(
        &self,
        topic: &str,
        partition: i32,
        recs: &[Rec],
        dead: &DeadLetters,
    ) -> Result<RecordBatch> {
        let payloads: Vec<&[u8]> = recs.iter().map(|r| r.value().unwrap_or(b"")).collect();
        let decoded = self.decoder.decode(&payloads);
        for (i, reason) in decoded.failed {
            let r = &recs[i];
            let shown = &payloads[i][..payloads[i].len().min(4096)];
            dead.push(DeadLetter {
                origin: self.name.clone(),
                reason: format!(
                    "{reason} (topic {topic} partition {partition} offset {})",
                    r.offset
                ),
                payload: String::from_utf8_lossy(shown).into_owned(),
            });
        }
        let mut columns: Vec<ArrayRef> = decoded.columns;
        if self.cfg.envelope {
            let n = decoded.kept.len();
            let mut key = BinaryBuilder::with_capacity(n, 0);
            let mut topics = StringBuilder::with_capacity(n, n * topic.len());
            let mut partitions = Int32Builder::with_capacity(n);
            let mut offsets = Int64Builder::with_capacity(n);
            let mut ts = TimestampMillisecondBuilder::with_capacity(n);
            let mut ts_type = StringBuilder::with_capacity(n, n * 6);
            let mut headers = MapBuilder::new(None, StringBuilder::new(), BinaryBuilder::new());
            for &i in &decoded.kept {
                let r = &recs[i];
                key.append_option(r.key());
                topics.append_value(topic);
                partitions.append_value(partition);
                offsets.append_value(r.offset);
                ts.append_option(r.timestamp);
                ts_type.append_value(match r.timestamp_type {
                    1 => "create",
                    2 => "log_append",
                    _ => "none",
                });
                for (k, v) in &r.headers {
                    headers.keys().append_value(k);
                    headers.values().append_option(v.as_deref());
                }
                headers
                    .append(true)
                    .map_err(|e| Error::msg(e.to_string()))?;
            }
            columns.push(Arc::new(key.finish()));
            columns.push(Arc::new(topics.finish()));
            columns.push(Arc::new(partitions.finish()));
            columns.push(Arc::new(offsets.finish()));
            columns.push(Arc::new(ts.finish()));
            columns.push(Arc::new(ts_type.finish()));
            columns.push(Arc::new(headers.finish()));
        }
        Ok(RecordBatch::try_new(self.schema.clone(), columns)?)
    }

    /// Wait until the prefetched records of `r` are all here, fetching them again if they are
    /// not (a re-run after a restart).
    pub(super) async fn gather(&mut self, r: &PartRange) -> Result<()> {
        self.fetcher()?;
        let tp = (r.topic.clone(), r.partition);
        let served = {
            let f = self.fetcher.as_ref().expect("started");
            let buffers = f.shared.buffers.lock().expect("poisoned");
            match buffers.get(&r.topic).and_then(|t| t.get(&r.partition)) {
                None => false,
                Some(b) => match (b.fetch_from, b.records.front()) {
                    (Some(f), _) if f > r.from => false,
                    (None, Some(first)) if first.offset > r.from => false,
                    _ => self.parts.contains_key(&tp),
                },
            }
        };
        if !served {
            tracing::info!(source = %self.name, topic = %r.topic, partition = r.partition, from = r.from, until = r.until, "kafka: fetching a planned range again");
            self.fetcher
                .as_ref()
                .expect("started")
                .assign(&r.topic, r.partition, Offset::Offset(r.from))
                .map_err(|e| self.fail(e))?;
            let next = self.restored.get(&tp).copied().or(Some(r.until));
            let end = self
                .bounds(std::slice::from_ref(&tp))
                .await?
                .get(&tp)
                .map(|b| b.2);
            self.parts.insert(tp.clone(), Part { next, end });
        }
        let began = Instant::now();
        let mut warned = Instant::now();
        let _waiting = Waiting::new(&self.fetcher.as_ref().expect("started").shared);
        loop {
            let f = self.fetcher.as_ref().expect("started");
            let arrived = f.shared.arrived.notified();
            let have = {
                let buffers = f.shared.buffers.lock().expect("poisoned");
                buffers
                    .get(&r.topic)
                    .and_then(|t| t.get(&r.partition))
                    .and_then(|b| b.records.back())
                    .map(|l| l.offset)
            };
            if have.is_some_and(|o| o >= r.until - 1) {
                return Ok(());
            }
            if f.shared
                .out_of_range
                .load(std::sync::atomic::Ordering::Relaxed)
            {
                let consumer = self.consumer();
                let (t, p) = tp.clone();
                if let Ok((low, _)) =
                    blocking(move || consumer.fetch_watermarks(&t, p, REQUEST_TIMEOUT)).await
                {
                    if low >= r.until {
                        return match self.cfg.on_data_loss {
                            OnDataLoss::Fail => Err(self.fail(format!(
                                "data loss: the planned offsets {}..{} of {}/{} are no longer on the broker (it starts at {low}). Set on_data_loss = \"earliest\" to skip them",
                                r.from, r.until, r.topic, r.partition
                            ))),
                            OnDataLoss::Earliest => {
                                tracing::warn!(source = %self.name, topic = %r.topic, partition = r.partition, lost = r.until - r.from, "kafka: data loss: a planned range is no longer on the broker; skipped (on_data_loss = \"earliest\")");
                                Ok(())
                            }
                        };
                    }
                }
            }
            if began.elapsed() >= self.cfg.fetch_timeout {
                let trouble = f.consumer.context().trouble();
                return Err(self.fail(format!(
                    "the records {}..{} of {}/{} planned before the restart did not arrive within {} (fetch_timeout){}",
                    r.from,
                    r.until,
                    r.topic,
                    r.partition,
                    sluice_core::time::format_duration(self.cfg.fetch_timeout),
                    trouble.map(|t| format!("; broker: {t}")).unwrap_or_default()
                )));
            }
            if warned.elapsed() >= Duration::from_secs(10) {
                warned = Instant::now();
                tracing::warn!(source = %self.name, topic = %r.topic, partition = r.partition, from = r.from, until = r.until, got_until = ?have, "kafka: still waiting for a planned range");
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), arrived).await;
        }
    }
}
