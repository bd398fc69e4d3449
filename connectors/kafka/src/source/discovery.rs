//! Finding the partitions: metadata refreshes, subscriptions, where each new partition starts
//! (a time, the origin, the checkpoint), bounded runs' ends, and the data-loss check.

use super::*;

impl KafkaSource {
    /// Every `metadata_refresh`: read the partitions of the configured topics and start fetching
    /// the new ones. Returns whether it was due.
    pub(super) async fn refresh(&mut self) -> Result<bool> {
        let due = self
            .refreshed
            .is_none_or(|t| t.elapsed() >= self.cfg.metadata_refresh);
        if !due {
            return Ok(false);
        }
        self.fetcher()?;
        let consumer = self.consumer();
        let wanted: Vec<Tp> = if !self.cfg.assign.is_empty() {
            self.cfg
                .assign
                .iter()
                .flat_map(|(t, ps)| ps.iter().map(move |p| (t.clone(), *p)))
                .collect()
        } else {
            let topics = self.cfg.topics.clone();
            let all = self.pattern.is_some();
            let found = blocking(move || -> std::result::Result<Vec<TopicParts>, String> {
                let md = if all {
                    consumer.fetch_metadata(None, REQUEST_TIMEOUT)
                } else if topics.len() == 1 {
                    consumer.fetch_metadata(Some(&topics[0]), REQUEST_TIMEOUT)
                } else {
                    consumer.fetch_metadata(None, REQUEST_TIMEOUT)
                }
                .map_err(|e| e.to_string())?;
                Ok(md
                    .topics()
                    .iter()
                    .map(|t| {
                        (
                            t.name().to_string(),
                            t.partitions().iter().map(|p| p.id()).collect(),
                            t.error()
                                .map(|e| rdkafka::types::RDKafkaErrorCode::from(e).to_string()),
                        )
                    })
                    .collect())
            })
            .await;
            let found = match found {
                Ok(f) => f,
                Err(e) => {
                    tracing::warn!(source = %self.name, error = %e, "kafka: cannot read the topics' partitions; retrying at the next batch");
                    return Ok(false);
                }
            };
            let mut wanted = Vec::new();
            for (topic, parts, error) in found {
                let chosen = match &self.pattern {
                    Some(re) => re.is_match(&topic) && !topic.starts_with("__"),
                    None => self.cfg.topics.contains(&topic),
                };
                if !chosen {
                    continue;
                }
                if let Some(e) = error {
                    if self.refreshed.is_none() {
                        tracing::warn!(source = %self.name, topic, error = %e, "kafka: topic not readable yet");
                    }
                    continue;
                }
                wanted.extend(parts.into_iter().map(|p| (topic.clone(), p)));
            }
            if self.refreshed.is_none() && self.pattern.is_none() {
                for t in &self.cfg.topics {
                    if !wanted.iter().any(|(w, _)| w == t) {
                        tracing::warn!(source = %self.name, topic = %t, "kafka: topic not found (yet); it is read once it exists");
                    }
                }
            }
            wanted
        };
        self.refreshed = Some(Instant::now());
        if self.scale.is_some() {
            // The group divides the partitions: follow its assignment (`sync_group`).
            let mut topics: BTreeSet<String> = wanted.into_iter().map(|(t, _)| t).collect();
            topics.extend(self.cfg.topics.iter().cloned());
            self.subscribe(topics.into_iter().collect())?;
            return Ok(true);
        }
        let new: Vec<Tp> = wanted
            .into_iter()
            .filter(|tp| !self.parts.contains_key(tp))
            .collect();
        if !new.is_empty() {
            self.start_partitions(new).await?;
        }
        Ok(true)
    }

    /// Scale-out: join the group (once) and subscribe to `topics`.
    pub(super) fn subscribe(&mut self, topics: Vec<String>) -> Result<()> {
        let config = self.client_config();
        let component = format!("source `{}`", self.name);
        let scale = self.scale.as_mut().expect("scale-out");
        if scale.members.is_none() {
            tracing::info!(source = %self.name, group = %self.group_id, instance = %scale.instance, plan_log = %scale.plan_topic, "kafka: scale-out: joining the consumer group");
            scale.members = Some(
                Membership::join(config, &self.group_id, &component).map_err(|e| {
                    Error::msg(format!("{component}: cannot join the consumer group: {e}"))
                })?,
            );
        }
        let members = scale.members.as_mut().expect("joined");
        members
            .subscribe(topics)
            .map_err(|e| Error::msg(format!("{component}: cannot subscribe: {e}")))
    }

    /// Decide where each new partition starts and start fetching it.
    pub(super) async fn start_partitions(&mut self, new: Vec<Tp>) -> Result<()> {
        let mut starts: Vec<(Tp, Offset, String)> = Vec::new();
        let mut ask: Vec<Tp> = Vec::new();
        let logged = self.logged_positions(&new).await?;
        for tp in new {
            if let Some(&n) = logged.get(&tp) {
                starts.push((
                    tp,
                    Offset::Offset(n),
                    format!("the group's plan log: offset {n}"),
                ));
            } else if let Some(&n) = self.restored.get(&tp).filter(|_| self.scale.is_none()) {
                starts.push((tp, Offset::Offset(n), format!("checkpoint offset {n}")));
            } else if let Some(&n) = self
                .cfg
                .start_offsets
                .get(&tp.0)
                .and_then(|m| m.get(&tp.1.to_string()))
            {
                starts.push((tp, Offset::Offset(n), format!("start_offsets {n}")));
            } else if self.fixed && self.scale.is_none() {
                starts.push((
                    tp,
                    Offset::Beginning,
                    "a partition new since the first start: earliest".into(),
                ));
            } else {
                match self.start {
                    Start::Earliest => starts.push((tp, Offset::Beginning, "earliest".into())),
                    Start::Latest => starts.push((tp, Offset::End, "latest".into())),
                    Start::Committed | Start::Time(_) => ask.push(tp),
                }
            }
        }
        if !ask.is_empty() {
            starts.extend(self.broker_starts(ask).await?);
        }
        // `earliest` and `latest` become offsets now, so the first plan records every partition's
        // position, records or not: a restart never applies `start` again.
        let starts = self.resolve(starts).await;
        self.assign(starts).await
    }

    /// Scale-out: where the group's plan log says each of `new` goes on (the checkpoint's position
    /// may be stale: another gateway had the partition meanwhile). Empty otherwise.
    async fn logged_positions(&mut self, new: &[Tp]) -> Result<BTreeMap<Tp, i64>> {
        if self.scale.is_none() {
            return Ok(BTreeMap::new());
        }
        let log = self.plan_log().await?;
        let asked = new.to_vec();
        blocking(move || -> std::result::Result<_, String> {
            let mut l = log.lock().expect("poisoned");
            l.read_through()?;
            Ok(asked
                .into_iter()
                .filter_map(|tp| l.valid_until(&tp).map(|u| (tp, u)))
                .collect())
        })
        .await
        .map_err(|e| self.fail(e))
    }

    /// `start = "committed"` or a time: the broker's answer for each partition of `ask`.
    async fn broker_starts(&self, ask: Vec<Tp>) -> Result<Vec<(Tp, Offset, String)>> {
        let consumer = self.consumer();
        let start = self.start;
        let asked = ask.clone();
        let answer = blocking(move || {
            let mut tpl = TopicPartitionList::new();
            for (t, p) in &asked {
                match start {
                    Start::Time(ms) => {
                        tpl.add_partition_offset(t, *p, Offset::Offset(ms))?;
                    }
                    _ => {
                        tpl.add_partition(t, *p);
                    }
                }
            }
            match start {
                Start::Time(_) => consumer.offsets_for_times(tpl, REQUEST_TIMEOUT),
                _ => consumer.committed_offsets(tpl, REQUEST_TIMEOUT),
            }
        })
        .await
        .map_err(|e| {
            self.fail(format!(
                "cannot read the start offsets (`start = \"{}\"`): {e}",
                self.cfg.start
            ))
        })?;
        Ok(ask
            .into_iter()
            .map(|tp| {
                let found = answer
                    .find_partition(&tp.0, tp.1)
                    .map(|e| e.offset())
                    .unwrap_or(Offset::Invalid);
                let (offset, why) = match (self.start, found) {
                    (Start::Time(ms), Offset::Offset(n)) => {
                        (Offset::Offset(n), format!("time {ms}: offset {n}"))
                    }
                    (Start::Time(ms), _) => (
                        Offset::End,
                        format!("time {ms}: no record at or after it, latest"),
                    ),
                    (_, Offset::Offset(n)) => (Offset::Offset(n), format!("committed offset {n}")),
                    _ => (
                        Offset::Beginning,
                        "no committed offset: earliest".to_string(),
                    ),
                };
                (tp, offset, why)
            })
            .collect())
    }

    /// Starts fetching each partition at its start (`why` says where that came from, for the log).
    async fn assign(&mut self, starts: Vec<(Tp, Offset, String)>) -> Result<()> {
        let tps: Vec<Tp> = starts.iter().map(|(tp, _, _)| tp.clone()).collect();
        let bounds = self.bounds(&tps).await?;
        let fetcher = self.fetcher.as_ref().expect("fetcher started");
        for ((topic, partition), offset, why) in starts {
            let tp = (topic.clone(), partition);
            let (offset, end) = match bounds.get(&tp) {
                // A bounded run needs to know where each partition starts, to know when it is done.
                Some(&(low, high, end)) => (
                    match offset {
                        Offset::Beginning => Offset::Offset(low),
                        Offset::End => Offset::Offset(high),
                        o => o,
                    },
                    Some(end),
                ),
                None => (offset, None),
            };
            fetcher.assign(&topic, partition, offset).map_err(|e| {
                Error::msg(format!(
                    "source `{}`: cannot fetch {topic}/{partition}: {e}",
                    self.name
                ))
            })?;
            if why.starts_with("checkpoint")
                && (self.cfg.start != "latest" || !self.cfg.start_offsets.is_empty())
            {
                tracing::info!(source = %self.name, topic, partition, start = %why, "kafka: the checkpoint's offset wins over `start`");
            } else {
                tracing::info!(source = %self.name, topic, partition, start = %why, "kafka: reading partition");
            }
            let next = match offset {
                Offset::Offset(n) => Some(n),
                _ => None,
            };
            self.parts.insert((topic, partition), Part { next, end });
        }
        Ok(())
    }

    /// Replace `Beginning` / `End` with the partition's low / high watermark. A partition whose
    /// watermarks cannot be read keeps the symbolic start (and is recorded from its first record).
    pub(super) async fn resolve(
        &self,
        starts: Vec<(Tp, Offset, String)>,
    ) -> Vec<(Tp, Offset, String)> {
        let symbolic: Vec<Tp> = starts
            .iter()
            .filter(|(_, o, _)| matches!(o, Offset::Beginning | Offset::End))
            .map(|(tp, _, _)| tp.clone())
            .collect();
        if symbolic.is_empty() {
            return starts;
        }
        let consumer = self.consumer();
        let marks = blocking(
            move || -> rdkafka::error::KafkaResult<BTreeMap<Tp, (i64, i64)>> {
                let mut out = BTreeMap::new();
                for (t, p) in symbolic {
                    let m = consumer.fetch_watermarks(&t, p, REQUEST_TIMEOUT)?;
                    out.insert((t, p), m);
                }
                Ok(out)
            },
        )
        .await;
        let marks = match marks {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(source = %self.name, error = %e, "kafka: cannot read the partitions' watermarks; their start is recorded from their first record");
                return starts;
            }
        };
        starts
            .into_iter()
            .map(|(tp, o, why)| match (o, marks.get(&tp)) {
                (Offset::Beginning, Some(&(low, _))) => {
                    (tp, Offset::Offset(low), format!("{why} (offset {low})"))
                }
                (Offset::End, Some(&(_, high))) => {
                    (tp, Offset::Offset(high), format!("{why} (offset {high})"))
                }
                other => (tp, other.0, why),
            })
            .collect()
    }

    /// For a bounded run: each partition's (low watermark, high watermark, stop offset), for those
    /// of `tps` that have a stop (`until_offsets`, or `until`).
    pub(super) async fn bounds(&self, tps: &[Tp]) -> Result<BTreeMap<Tp, (i64, i64, i64)>> {
        let wanted: Vec<Tp> = tps
            .iter()
            .filter(|tp| self.until.is_some() || self.explicit_end(tp).is_some())
            .cloned()
            .collect();
        if wanted.is_empty() {
            return Ok(BTreeMap::new());
        }
        let consumer = self.consumer();
        let until = self.until;
        let asked = wanted.clone();
        let found = blocking(
            move || -> rdkafka::error::KafkaResult<Vec<(i64, i64, Option<i64>)>> {
                let mut out = Vec::new();
                for (t, p) in &asked {
                    let (low, high) = consumer.fetch_watermarks(t, *p, REQUEST_TIMEOUT)?;
                    let at = match until {
                        Some(Until::Time(ms)) => Some(crate::replay::offset_at_time(
                            &*consumer,
                            t,
                            *p,
                            ms,
                            high,
                            REQUEST_TIMEOUT,
                        )?),
                        _ => None,
                    };
                    out.push((low, high, at));
                }
                Ok(out)
            },
        )
        .await
        .map_err(|e| {
            self.fail(format!(
                "cannot read where the bounded run ends (`until`): {e}"
            ))
        })?;
        Ok(wanted
            .into_iter()
            .zip(found)
            .map(|(tp, (low, high, at))| {
                let end = self.explicit_end(&tp).or(at).unwrap_or(high);
                tracing::info!(source = %self.name, topic = %tp.0, partition = tp.1, end, "kafka: bounded run: the partition is read up to this offset");
                (tp, (low, high, end))
            })
            .collect())
    }

    pub(super) fn explicit_end(&self, tp: &Tp) -> Option<i64> {
        self.cfg
            .until_offsets
            .get(&tp.0)
            .and_then(|m| m.get(&tp.1.to_string()))
            .copied()
    }

    /// After the consumer reported an offset out of range, and with each metadata refresh
    /// (`due`; some brokers answer a fetch past the end with nothing rather than an error):
    /// compare the next offset of each partition that has nothing fetched with what the broker
    /// still has, and fail or skip ahead as `on_data_loss` says.
    pub(super) async fn check_data_loss(&mut self, due: bool) -> Result<()> {
        let Some(f) = &self.fetcher else {
            return Ok(());
        };
        let reported = f
            .shared
            .out_of_range
            .swap(false, std::sync::atomic::Ordering::Relaxed);
        if !reported && !due {
            return Ok(());
        }
        let tps: Vec<(Tp, i64)> = {
            let buffers = f.shared.buffers.lock().expect("poisoned");
            self.parts
                .iter()
                .filter_map(|(tp, part)| {
                    let b = buffers.get(&tp.0).and_then(|t| t.get(&tp.1))?;
                    if !b.records.is_empty() {
                        return None;
                    }
                    Some((tp.clone(), part.next.or(b.fetch_from)?))
                })
                .collect()
        };
        for (tp, next) in tps {
            let consumer = self.consumer();
            let (t, p) = tp.clone();
            let Ok((low, high)) =
                blocking(move || consumer.fetch_watermarks(&t, p, REQUEST_TIMEOUT)).await
            else {
                continue;
            };
            if next >= low && next <= high {
                continue;
            }
            let (topic, partition) = &tp;
            let what = if next < low {
                format!("offsets {next}..{low} of {topic}/{partition} are no longer on the broker (retention or deletion)")
            } else {
                format!("{topic}/{partition} ends at offset {high} but the source was at {next} (was the topic re-created?)")
            };
            match self.cfg.on_data_loss {
                OnDataLoss::Fail => {
                    return Err(self.fail(format!(
                        "data loss: {what}. Set on_data_loss = \"earliest\" to continue from offset {low}, skipping what is lost"
                    )))
                }
                OnDataLoss::Earliest => {
                    let lost = if next < low { low - next } else { 0 };
                    tracing::warn!(source = %self.name, topic, partition, lost, from = low, "kafka: data loss ({what}); continuing from the earliest offset (on_data_loss = \"earliest\")");
                    self.fetcher
                        .as_ref()
                        .expect("started")
                        .assign(topic, *partition, Offset::Offset(low))
                        .map_err(|e| self.fail(e))?;
                    self.parts.get_mut(&tp).expect("known").next = Some(low);
                }
            }
        }
        Ok(())
    }
}
