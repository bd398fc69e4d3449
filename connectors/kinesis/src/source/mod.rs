//! The `kinesis` source, direct like the `kafka` one: each batch's input is, per shard, the user
//! records from one sequence number (and sub-sequence number, inside a KPL aggregate) through
//! another, cut from the records already read ahead and recorded in the batch plan before the batch
//! runs. A re-run after a crash reads exactly those records again (`AT_SEQUENCE_NUMBER`), so no
//! write-ahead log is needed.
//!
//! `feed` reads one shard ahead, `shards` lists the shards and orders parents before children,
//! `rows` turns records into rows.

mod feed;
mod lease;
mod rows;
mod scale;
mod shards;

use crate::client::{self, Trouble};
use crate::config::{Aws, KinesisSourceConfig, Start};
use crate::ranges::{Next, Planned, Pos, Position, ShardRange, StartAt};
use arrow::datatypes::{Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use aws_sdk_kinesis::Client;
use feed::{Feed, From, ReadOptions};
use shards::ShardInfo;
use sluice_core::options::Joined;
use sluice_core::{
    BatchTime, BuildContext, BuiltSource, Component, ConfigError, DeadLetters, Error, Guarantee,
    ReplayableSource, Result, SourceConnector, SourceRuntime,
};
use sluice_formats::decoding::PayloadDecoding;
use sluice_formats::payload::{check_envelope, PayloadDecoder};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct KinesisSourceConnector;

impl sluice_core::Bounded for KinesisSourceConnector {
    fn until_caught_up(&self, options: &mut serde_json::Value) -> std::result::Result<(), String> {
        crate::replay::until_caught_up(options);
        Ok(())
    }

    fn replay(
        &self,
        of: &sluice_core::ReplayOf<'_>,
        options: &mut serde_json::Value,
        from: &str,
        to: Option<&str>,
    ) -> std::result::Result<Box<dyn sluice_core::ReplayProgress>, String> {
        crate::replay::replay(of, options, from, to)
    }
}

/// The ids of every shard of `stream`.
pub(crate) async fn list_shards(
    client: &Client,
    stream: &str,
) -> std::result::Result<Vec<String>, Trouble> {
    Ok(shards::list(client, stream).await?.into_keys().collect())
}

impl SourceConnector for KinesisSourceConnector {
    type Config = Joined<PayloadDecoding, Joined<Aws, KinesisSourceConfig>>;
    fn bounded(&self) -> Option<&dyn sluice_core::Bounded> {
        Some(self)
    }
    fn build(
        &self,
        cx: &BuildContext,
        at: &Component,
        options: Self::Config,
    ) -> std::result::Result<BuiltSource, ConfigError> {
        let Joined {
            shared: decoding,
            own: Joined {
                shared: aws,
                own: cfg,
            },
        } = options;
        let path = at.path.as_str();
        aws.check(path)?;
        let start = Start::parse(path, &cfg.start)?;
        let until = cfg
            .until
            .as_deref()
            .map(|u| crate::config::parse_until(path, u))
            .transpose()?;
        crate::config::check_sequences(path, "start_sequences", &cfg.start_sequences)?;
        crate::config::check_sequences(path, "until_sequences", &cfg.until_sequences)?;
        if cfg.max_records_per_shard == Some(0) {
            return Err(ConfigError::new(
                at.key("max_records_per_shard"),
                "at least 1 record",
                "0",
            ));
        }
        if cx.scale_out && (until.is_some() || !cfg.until_sequences.is_empty()) {
            return Err(ConfigError::new(
                at.key("until"),
                "no bounded run with app.scale_out (run backfills with `sluice replay`)",
                "a bound",
            ));
        }
        let scale = cx.scale_out.then(|| scale::Scale {
            instance: cx.instance.clone(),
            table_name: cfg
                .lease_table
                .clone()
                .unwrap_or_else(|| format!("sluice-{}-{}", cx.app_name, at.name)),
            table: None,
            held: BTreeSet::new(),
            synced: None,
            start_fixed: false,
        });
        let decoder = decoding.decoder(cx, at, "data")?;
        let mut fields = decoder.fields();
        if cfg.envelope {
            check_envelope(path, &fields, rows::ENVELOPE)?;
            fields.extend(rows::envelope_fields());
        }
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        Ok(BuiltSource {
            schema: schema.clone(),
            guarantee: Guarantee::Replayable,
            runtime: SourceRuntime::Replayable(Box::new(KinesisSource {
                name: at.name.clone(),
                start,
                until,
                progress: crate::replay::planned(cx.output_scope.as_deref(), &at.name),
                scale,
                decoder,
                schema,
                aws,
                cfg,
                client: None,
                position: None,
                listing: BTreeMap::new(),
                refreshed: None,
                feeds: BTreeMap::new(),
                budget: Arc::new(AtomicUsize::new(0)),
            })),
            caveat: None,
        })
    }
}

pub struct KinesisSource {
    name: String,
    start: Start,
    /// A bounded run's end (ms since the epoch).
    until: Option<i64>,
    /// A replay's progress: the arrival time of the last record planned, per shard.
    progress: Option<Arc<std::sync::Mutex<BTreeMap<String, i64>>>>,
    /// With `app.scale_out`: the lease table and the shards this gateway holds.
    scale: Option<scale::Scale>,
    decoder: PayloadDecoder,
    schema: SchemaRef,
    aws: Aws,
    cfg: KinesisSourceConfig,
    client: Option<Client>,
    /// Where the source stands (set by `origin` or `restore`, before anything else).
    position: Option<Position>,
    listing: BTreeMap<String, ShardInfo>,
    /// When the shard list was last read (None: read it at the next plan).
    refreshed: Option<Instant>,
    feeds: BTreeMap<String, Feed>,
    /// Bytes held by the feeds.
    budget: Arc<AtomicUsize>,
}

impl KinesisSource {
    fn fail(&self, msg: impl std::fmt::Display) -> Error {
        Error::msg(format!(
            "source `{}` ({}): {msg}",
            self.name,
            self.aws.shown()
        ))
    }

    fn trouble(&self, t: Trouble) -> Error {
        self.fail(t.explained())
    }

    async fn client(&mut self) -> Client {
        if self.client.is_none() {
            self.client = Some(client::connect(&self.aws).await);
        }
        self.client.clone().expect("just set")
    }

    /// Where a source without a position begins: `latest` is fixed as the time it is asked.
    fn first_position(&self) -> Position {
        let start = match self.start {
            Start::TrimHorizon => StartAt::TrimHorizon,
            Start::Latest => StartAt::AtTimestamp(sluice_core::time::now_ms()),
            Start::Time(ms) => StartAt::AtTimestamp(ms),
        };
        Position {
            start,
            shards: BTreeMap::new(),
        }
    }

    fn position_mut(&mut self) -> &mut Position {
        if self.position.is_none() {
            self.position = Some(self.first_position());
        }
        self.position.as_mut().expect("just set")
    }

    /// Read the shard list (retrying while the service is unreachable, up to `fetch_timeout`).
    async fn list(&mut self) -> Result<()> {
        let client = self.client().await;
        let name = &self.name;
        let listed = client::patiently(
            self.cfg.fetch_timeout,
            |why, wait| tracing::warn!(source = %name, error = %why, retry_in = ?wait, "kinesis: cannot list the shards; retrying"),
            || shards::list(&client, &self.aws.stream),
        )
        .await;
        match listed {
            Ok(l) => {
                self.listing = l;
                self.refreshed = Some(Instant::now());
                Ok(())
            }
            Err(t) => Err(self.trouble(t)),
        }
    }

    /// Read the shard list if it is due, then start a feed for every shard that may be read.
    async fn refresh(&mut self) -> Result<()> {
        if self
            .refreshed
            .is_none_or(|t| t.elapsed() >= self.cfg.shard_refresh)
        {
            self.list().await?;
        }
        self.start_feeds().await;
        Ok(())
    }

    /// Where a shard the position does not know starts: its `start_sequences` entry, else
    /// `start`.
    fn shard_start(&self, id: &str, start: StartAt) -> From {
        match self.cfg.start_sequences.get(id) {
            Some(seq) => From::At(Pos::new(seq.clone(), 0)),
            None => From::Start(start),
        }
    }

    /// Whether the run is bounded (by time or, for some shards, by sequence number).
    fn bounded(&self) -> bool {
        self.until.is_some() || !self.cfg.until_sequences.is_empty()
    }

    /// How a reader of shard `id` reads.
    fn feed_options(&self, client: Client, id: &str) -> ReadOptions {
        let mut o = self.read_options(client);
        o.until_seq = self
            .cfg
            .until_sequences
            .get(id)
            .map(|s| Pos::new(s.clone(), 0));
        o
    }

    fn read_options(&self, client: Client) -> ReadOptions {
        let mut o = ReadOptions::new(
            client,
            &self.aws.stream,
            &self.name,
            self.budget.clone(),
            &self.cfg,
        );
        o.until = self.until;
        o
    }

    async fn start_feeds(&mut self) {
        if self.scale.is_some() {
            // The lease table decides which shards this gateway reads (`scale::sync`).
            return;
        }
        let client = self.client().await;
        let position = self.position_mut().clone();
        for id in shards::eligible(&self.listing, &position.shards) {
            if self.feeds.contains_key(id) {
                continue;
            }
            let from = match position.shards.get(id) {
                Some(Next::After(p)) => From::After(p.clone()),
                _ => self.shard_start(id, position.start),
            };
            tracing::info!(source = %self.name, shard = id, from = ?from, "kinesis: reading a shard");
            let opts = self.feed_options(client.clone(), id);
            self.feeds
                .insert(id.to_string(), Feed::start(&opts, id, from));
        }
    }

    /// A reader that stopped for good stops the gateway.
    fn check_feeds(&self) -> Result<()> {
        for (id, f) in &self.feeds {
            if let Some(why) = &f.shared.buf.lock().expect("poisoned").fatal {
                return Err(self.fail(format!("shard {id}: {why}")));
            }
        }
        Ok(())
    }

    /// Wait until the feed of `r.shard` holds every record of `r`, starting it again at
    /// `r.first` if it cannot (a re-run after a restart).
    async fn gather(&mut self, r: &ShardRange) -> Result<()> {
        if !self.feeds.get(&r.shard).is_some_and(|f| f.serves(&r.first)) {
            tracing::info!(source = %self.name, shard = %r.shard, first = %r.first, last = %r.last, "kinesis: reading a planned range again");
            let client = self.client().await;
            let opts = self.feed_options(client, &r.shard);
            self.feeds.remove(&r.shard);
            self.feeds.insert(
                r.shard.clone(),
                Feed::start(&opts, &r.shard, From::At(r.first.clone())),
            );
        }
        let feed = &self.feeds[&r.shard];
        feed.shared
            .urgent
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let _calm = Calm(&feed.shared);
        let began = Instant::now();
        let mut warned = Instant::now();
        loop {
            let arrived = feed.shared.arrived.notified();
            {
                let buf = feed.shared.buf.lock().expect("poisoned");
                if buf.fetched.as_ref().is_some_and(|f| f >= &r.last) || buf.ended || buf.reached {
                    return Ok(());
                }
                if let Some(why) = &buf.fatal {
                    return Err(self.fail(format!("shard {}: {why}", r.shard)));
                }
                if began.elapsed() >= self.cfg.fetch_timeout {
                    return Err(self.fail(format!(
                        "the records {}..{} of shard {} planned before the restart did not arrive within {} (fetch_timeout){}",
                        r.first,
                        r.last,
                        r.shard,
                        sluice_core::time::format_duration(self.cfg.fetch_timeout),
                        buf.trouble.as_deref().map(|t| format!("; last error: {t}")).unwrap_or_default()
                    )));
                }
                if warned.elapsed() >= Duration::from_secs(10) {
                    warned = Instant::now();
                    tracing::warn!(source = %self.name, shard = %r.shard, first = %r.first, last = %r.last, "kinesis: still waiting for a planned range");
                }
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), arrived).await;
        }
    }
}

/// Ends a feed's urgency when the batch has its records (or gave up).
struct Calm<'a>(&'a feed::Shared);

impl Drop for Calm<'_> {
    fn drop(&mut self) {
        self.0
            .urgent
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }
}

#[async_trait]
impl ReplayableSource for KinesisSource {
    type Range = Planned;
    type Position = Position;

    async fn plan(&mut self, time: BatchTime, max_records: Option<u64>) -> Result<Planned> {
        self.refresh().await?;
        if self.scale.is_some() {
            // At start a failure stops the gateway (`prepare`); later the leases held are kept,
            // and the round is tried again at the next batch.
            if let Err(e) = self.sync(false).await {
                tracing::warn!(source = %self.name, error = %e, "kinesis: cannot update the leases; retrying at the next batch");
            }
        }
        self.check_feeds()?;
        let position = self.position_mut().clone();
        // What each shard has ready after its last planned record: where that begins in its
        // buffer, how many, and whether the shard ended. (Only readers append meanwhile, and
        // records leave a buffer only when a batch reads them, so the indices hold below.)
        let mut ready: Vec<(String, usize, usize, bool)> = Vec::new();
        for (id, feed) in &self.feeds {
            if self.scale.as_ref().is_some_and(|s| !s.held.contains(id)) {
                continue;
            }
            let after = match position.shards.get(id) {
                Some(Next::Done) => continue,
                Some(Next::After(p)) => Some(p),
                None => None,
            };
            let buf = feed.shared.buf.lock().expect("poisoned");
            let skip = after.map_or(0, |a| buf.records.partition_point(|r| &r.pos <= a));
            ready.push((id.clone(), skip, buf.records.len() - skip, buf.ended));
        }
        let total: usize = ready.iter().map(|r| r.2).sum();
        let cap = self.cfg.max_records_per_shard.map(|n| n as usize);
        let mut ranges = Vec::new();
        let mut finished = false;
        let progress = self.progress.clone();
        let scaled = self.scale.is_some();
        let position = self.position.as_mut().expect("set above");
        for (id, skip, n, ended) in ready {
            let mut take = cap.map_or(n, |c| n.min(c));
            if let Some(max) = max_records {
                let share = ((max as f64) * (n as f64) / (total.max(1) as f64)).ceil() as usize;
                take = take.min(share.max(1));
            }
            let after = match position.shards.get(&id) {
                Some(Next::After(p)) => Some(p.clone()),
                _ => None,
            };
            let end = ended && take == n;
            if take > 0 {
                let (first, last, arrival) = {
                    let buf = self.feeds[&id].shared.buf.lock().expect("poisoned");
                    let last = &buf.records[skip + take - 1];
                    (
                        buf.records[skip].pos.clone(),
                        last.pos.clone(),
                        last.arrival,
                    )
                };
                if let (Some(p), Some(at)) = (&progress, arrival) {
                    p.lock().expect("poisoned").insert(id.clone(), at);
                }
                position
                    .shards
                    .insert(id.clone(), Next::After(last.clone()));
                ranges.push(ShardRange {
                    shard: id.clone(),
                    first,
                    last,
                    records: take as u64,
                    after: scaled.then_some(after).flatten(),
                    end: scaled && end,
                });
            } else if scaled && end {
                // Nothing left of a closed shard: a range of no records ends it in the table.
                let at = after.clone().unwrap_or_else(|| Pos::new("0", 0));
                ranges.push(ShardRange {
                    shard: id.clone(),
                    first: at.clone(),
                    last: at,
                    records: 0,
                    after,
                    end: true,
                });
            }
            if end {
                // Every record of the closed shard is planned: its children may start.
                position.shards.insert(id, Next::Done);
                finished = true;
            }
        }
        if finished {
            self.refreshed = None;
        }
        // Readers of finished shards whose records were all taken.
        let done = &self.position_mut().shards.clone();
        self.feeds.retain(|id, f| {
            !matches!(done.get(id), Some(Next::Done))
                || !f.shared.buf.lock().expect("poisoned").records.is_empty()
        });
        Ok(match self.scale {
            Some(_) => Planned::Claimed {
                batch: time.millis(),
                ranges,
            },
            None => Planned::Ranges(ranges),
        })
    }

    async fn read(&mut self, planned: &Planned, dead: &DeadLetters) -> Result<Vec<RecordBatch>> {
        let mut out = Vec::new();
        let (batch, ranges) = match planned {
            Planned::Ranges(r) => (None, r),
            Planned::Claimed { batch, ranges } => (Some(*batch), ranges),
        };
        for r in ranges {
            if let Some(batch) = batch {
                if !self.claim(r, batch).await? {
                    continue;
                }
                if r.records == 0 {
                    self.finished(&r.shard);
                    continue;
                }
            }
            self.gather(r).await?;
            let recs = self.feeds[&r.shard].take(&r.first, &r.last);
            if recs.len() as u64 != r.records {
                tracing::warn!(source = %self.name, shard = %r.shard, first = %r.first, last = %r.last, planned = r.records, found = recs.len(), "kinesis: a planned range holds a different number of records than when it was planned");
            }
            for chunk in recs.chunks(rows::CHUNK) {
                out.push(self.rows(&r.shard, chunk, dead)?);
            }
            if batch.is_some() && r.end {
                self.finished(&r.shard);
            }
        }
        Ok(out)
    }

    fn project(&mut self, columns: &BTreeSet<String>) {
        self.decoder.project(columns);
    }

    async fn origin(&mut self) -> Result<Option<Position>> {
        // Fails here, at start, when the stream does not exist or the credentials are refused.
        self.list().await?;
        if self.scale.is_some() {
            // The lease table says where each shard goes on.
            return Ok(None);
        }
        Ok(Some(self.position_mut().clone()))
    }

    async fn prepare(&mut self) -> Result<()> {
        self.list().await?;
        if self.scale.is_some() {
            self.sync(true).await?;
        }
        self.start_feeds().await;
        Ok(())
    }

    fn exhausted(&self) -> bool {
        let Some(position) = &self.position else {
            return false;
        };
        if !self.bounded() || self.refreshed.is_none() || self.listing.is_empty() {
            return false;
        }
        // Every shard that may be read is finished, or read up to the bound and fully planned.
        shards::eligible(&self.listing, &position.shards)
            .into_iter()
            .all(|id| {
                self.feeds.get(id).is_some_and(|f| {
                    let buf = f.shared.buf.lock().expect("poisoned");
                    let planned = match (position.shards.get(id), buf.records.back()) {
                        (_, None) => true,
                        (Some(Next::After(p)), Some(last)) => &last.pos <= p,
                        _ => false,
                    };
                    buf.reached && planned
                })
            })
    }

    fn position(&self) -> Position {
        let mut p = self
            .position
            .clone()
            .unwrap_or_else(|| self.first_position());
        // A finished shard no longer listed (past retention) is no one's parent any more.
        if !self.listing.is_empty() {
            p.shards
                .retain(|id, next| *next != Next::Done || self.listing.contains_key(id));
        }
        p
    }

    fn restore(&mut self, position: Position) -> Result<()> {
        self.position = Some(position);
        Ok(())
    }
}
