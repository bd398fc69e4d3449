//! Building a `kafka` source from its options: the schema (payload and envelope columns) and the
//! source's first state.

use super::*;

/// Envelope columns, after the value's.
pub(super) const ENVELOPE: &[&str] = &[
    "key",
    "topic",
    "partition",
    "offset",
    "timestamp",
    "timestamp_type",
    "headers",
];

pub struct KafkaSourceConnector;

impl sluice_core::Bounded for KafkaSourceConnector {
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

impl SourceConnector for KafkaSourceConnector {
    type Config = Joined<PayloadDecoding, KafkaSourceConfig>;
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
            own: cfg,
        } = options;
        let path = at.path.as_str();
        let name = at.name.clone();
        let (pattern, start, until) = check(cx, path, &cfg)?;
        let decoder = decoding.decoder(cx, at, "value")?;
        let mut fields = decoder.fields();
        if cfg.envelope {
            check_envelope(path, &fields, ENVELOPE)?;
            fields.extend(envelope_fields());
        }
        let group_id = cfg
            .group_id
            .clone()
            .unwrap_or_else(|| format!("sluice-{}-{name}", cx.app_name));
        let schema: SchemaRef = Arc::new(Schema::new(fields));
        let scale = cx.scale_out.then(|| Scale {
            instance: cx.instance.clone(),
            plan_topic: cfg
                .plan_topic
                .clone()
                .unwrap_or_else(|| format!("{group_id}.plans")),
            members: None,
            log: None,
            adopted: BTreeSet::new(),
            void: BTreeSet::new(),
        });
        Ok(BuiltSource {
            schema: schema.clone(),
            guarantee: Guarantee::Replayable,
            runtime: SourceRuntime::Replayable(Box::new(KafkaSource {
                schema,
                name,
                start,
                until,
                pattern,
                interval: cx.batch_interval,
                decoder,
                group_id,
                fetcher: None,
                parts: BTreeMap::new(),
                restored: BTreeMap::new(),
                fixed: false,
                refreshed: None,
                scale,
                cfg,
            })),
            caveat: None,
        })
    }
}

/// The options' checks that need no broker; returns the topic pattern, the start and the bound.
fn check(
    cx: &BuildContext,
    path: &str,
    cfg: &KafkaSourceConfig,
) -> std::result::Result<(Option<regex::Regex>, Start, Option<Until>), ConfigError> {
    let ways = [
        !cfg.topics.is_empty(),
        cfg.topic_pattern.is_some(),
        !cfg.assign.is_empty(),
    ];
    if ways.iter().filter(|w| **w).count() != 1 {
        return Err(ConfigError::new(
            format!("{path}.topics"),
            "exactly one of `topics`, `topic_pattern` and `assign`",
            match ways.iter().filter(|w| **w).count() {
                0 => "none of them".to_string(),
                _ => "more than one".to_string(),
            },
        ));
    }
    let pattern = cfg
        .topic_pattern
        .as_deref()
        .map(|p| {
            regex::Regex::new(&format!("^(?:{p})$")).map_err(|e| {
                ConfigError::new(
                    format!("{path}.topic_pattern"),
                    "a regular expression",
                    format!("\"{p}\" ({e})"),
                )
            })
        })
        .transpose()?;
    if cx.scale_out {
        if !cfg.assign.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.assign"),
                "`topics` or `topic_pattern` with app.scale_out (the group divides the partitions)",
                "explicit partitions",
            ));
        }
        if cfg.until.is_some() || !cfg.until_offsets.is_empty() {
            return Err(ConfigError::new(
                format!("{path}.until"),
                "no bounded run with app.scale_out (run backfills with `sluice replay`)",
                "a bound",
            ));
        }
    }
    let start = Start::parse(path, &cfg.start)?;
    let until = cfg
        .until
        .as_deref()
        .map(|u| Until::parse(path, u))
        .transpose()?;
    for (key, map) in [
        ("until_offsets", &cfg.until_offsets),
        ("start_offsets", &cfg.start_offsets),
    ] {
        for (topic, parts) in map {
            for (p, offset) in parts {
                if p.parse::<i32>().map_or(true, |p| p < 0) || *offset < 0 {
                    return Err(ConfigError::new(
                        format!("{path}.{key}.{topic}.\"{p}\""),
                        "a partition number mapped to an offset ≥ 0, e.g. { \"0\" = 42 }",
                        format!("\"{p}\" = {offset}"),
                    ));
                }
            }
        }
    }
    if cfg.bootstrap_servers.trim().is_empty() {
        return Err(ConfigError::new(
            format!("{path}.bootstrap_servers"),
            "host:port of at least one broker",
            "an empty string",
        ));
    }
    if cfg.max_rate_per_partition == Some(0) {
        return Err(ConfigError::new(
            format!("{path}.max_rate_per_partition"),
            "at least 1 record per second",
            "0",
        ));
    }
    check_properties(path, &cfg.properties)?;
    Ok((pattern, start, until))
}

pub(super) fn envelope_fields() -> Vec<Field> {
    vec![
        Field::new("key", DataType::Binary, true),
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            true,
        ),
        Field::new("timestamp_type", DataType::Utf8, false),
        Field::new("headers", headers_type(), false),
    ]
}

fn headers_type() -> DataType {
    let map = MapBuilder::new(None, StringBuilder::new(), BinaryBuilder::new()).finish();
    map.data_type().clone()
}
