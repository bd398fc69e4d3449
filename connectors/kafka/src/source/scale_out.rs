//! Scale-out: this gateway's share of the consumer group, and its claims in the plan log.

use super::*;

impl KafkaSource {
    /// Scale-out: follow the group's assignment — drop the partitions given to another gateway,
    /// start the new ones where the plan log says the group's last valid range ended.
    pub(super) async fn sync_group(&mut self) -> Result<()> {
        let scale = self.scale.as_mut().expect("scale-out");
        let Some(members) = &scale.members else {
            return Ok(());
        };
        let owned = members.owned();
        scale.adopted.retain(|tp| owned.contains(tp));
        let new: Vec<Tp> = owned
            .iter()
            .filter(|tp| !scale.adopted.contains(*tp))
            .cloned()
            .collect();
        let gone: Vec<Tp> = self
            .parts
            .keys()
            .filter(|tp| !owned.contains(*tp))
            .cloned()
            .collect();
        for (topic, partition) in gone {
            if let Some(f) = &self.fetcher {
                f.unassign(&topic, partition).map_err(|e| self.fail(e))?;
            }
            tracing::info!(source = %self.name, topic, partition, "kafka: partition handed over to another gateway of the group");
            self.parts.remove(&(topic, partition));
        }
        if !new.is_empty() {
            self.start_partitions(new.clone()).await?;
            self.scale.as_mut().expect("scale-out").adopted.extend(new);
        }
        Ok(())
    }

    /// Scale-out: the plan log, opened (and read through) on first use.
    pub(super) async fn plan_log(&mut self) -> Result<Arc<Mutex<PlanLog>>> {
        let config = self.client_config();
        let scale = self.scale.as_mut().expect("scale-out");
        if let Some(l) = &scale.log {
            return Ok(l.clone());
        }
        let (topic, instance) = (scale.plan_topic.clone(), scale.instance.clone());
        let log = blocking(move || PlanLog::open(&config, &topic, &instance))
            .await
            .map_err(|e| self.fail(e))?;
        let log = Arc::new(Mutex::new(log));
        self.scale.as_mut().expect("scale-out").log = Some(log.clone());
        Ok(log)
    }

    /// Scale-out: append a batch's ranges to the plan log (unless there already) and say whether
    /// they are this gateway's to read. When they are not, the partitions still here continue
    /// where the group's last valid range ended.
    pub(super) async fn claim(&mut self, batch: i64, ranges: &[PartRange]) -> Result<bool> {
        let log = self.plan_log().await?;
        let rs = ranges.to_vec();
        let (valid, positions) = blocking(move || -> std::result::Result<_, String> {
            let mut l = log.lock().expect("poisoned");
            let valid = l.claim(batch, &rs)?;
            let positions: Vec<(Tp, Option<i64>)> = rs
                .iter()
                .map(|r| {
                    let tp = (r.topic.clone(), r.partition);
                    let until = l.valid_until(&tp);
                    (tp, until)
                })
                .collect();
            Ok((valid, positions))
        })
        .await
        .map_err(|e| self.fail(e))?;
        if valid {
            return Ok(true);
        }
        tracing::warn!(source = %self.name, batch, "kafka: another gateway of the group claimed some of this batch's ranges first (a rebalance): it reads nothing from this source, and its partitions continue where the group's plan log says");
        self.scale.as_mut().expect("scale-out").void.insert(batch);
        for (tp, until) in positions {
            if let (Some(u), Some(part)) = (until, self.parts.get_mut(&tp)) {
                part.next = Some(u);
                self.fetcher
                    .as_ref()
                    .expect("a partition is fetched")
                    .assign(&tp.0, tp.1, Offset::Offset(u))
                    .map_err(|e| Error::msg(format!("source `{}`: {e}", self.name)))?;
            }
        }
        Ok(false)
    }
}
