//! Building a pipeline from a checked config: connector factories, reference tables, job order and
//! SQL planning. Everything `sluice validate` checks happens here, before anything starts.

use crate::event_time::{windowed_schema, EventTime};
use crate::job::{InputKind, JobRuntime, ProcWindow};
use crate::reference::ReferenceTable;
use crate::state::KeyedState;
use sluice_config::{AppConfig, AppSection, DiagnosticKind, EventTimeConfig, NamedJob};
use sluice_core::arrow::datatypes::{DataType, SchemaRef};
use sluice_core::options::suggest;
use sluice_core::schema::parse_schema;
use sluice_core::{
    BuildContext, ConfigError, DeadLetters, Guarantee, Registry, Sink, SourceRuntime,
};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

/// Errors found while building: config keys and SQL.
#[derive(Debug)]
pub struct BuildError(pub Vec<DiagnosticKind>);

impl From<ConfigError> for BuildError {
    fn from(e: ConfigError) -> Self {
        BuildError(vec![DiagnosticKind::Key(e)])
    }
}

pub(crate) struct SourceSlot {
    pub name: String,
    /// The connector type (`socket`, `file`, …).
    pub kind: String,
    pub guarantee: Guarantee,
    pub caveat: Option<String>,
    pub runtime: Option<SourceRuntime>,
}

/// A built pipeline, ready to run.
pub struct Pipeline {
    pub(crate) app: AppSection,
    pub(crate) sources: Vec<SourceSlot>,
    pub(crate) tables: Vec<ReferenceTable>,
    pub(crate) jobs: Vec<JobRuntime>,
    pub(crate) sinks: BTreeMap<String, Box<dyn Sink>>,
    pub(crate) dead: DeadLetters,
    /// Where relative paths (the checkpoint directory) are resolved.
    pub(crate) base_dir: PathBuf,
    /// This gateway's name (`app.instance` or derived), as the components were built with.
    pub(crate) instance: String,
}

impl Pipeline {
    /// Build every component of `config`. `base_dir` is where relative paths are resolved.
    pub async fn build(
        config: AppConfig,
        registry: &Registry,
        base_dir: PathBuf,
    ) -> Result<Pipeline, BuildError> {
        let instance = instance_name(&config.app, &base_dir);
        let cx = BuildContext {
            app_name: config.app.name.clone(),
            batch_interval: config.app.batch_interval,
            base_dir: base_dir.clone(),
            scale_out: config.app.scale_out,
            instance: instance.clone(),
            output_scope: match &config.app.replay_scope {
                Some(r) => Some(r.clone()),
                None if config.app.scale_out => Some(instance.clone()),
                None => None,
            },
        };
        let mut errors = Vec::new();
        let mut schemas: HashMap<String, (SchemaRef, InputKind)> = HashMap::new();

        let mut sources = Vec::new();
        for c in &config.sources {
            let factory = registry
                .source(&c.kind)
                .expect("type checked by the config");
            match factory.build(&cx, &format!("sources.{}", c.name), c.options.clone()) {
                Ok(built) => {
                    schemas.insert(c.name.clone(), (built.schema.clone(), InputKind::Stream));
                    sources.push(SourceSlot {
                        name: c.name.clone(),
                        kind: c.kind.clone(),
                        guarantee: built.guarantee,
                        caveat: built.caveat,
                        runtime: Some(built.runtime),
                    });
                }
                Err(e) => errors.push(DiagnosticKind::Key(e)),
            }
        }
        let mut tables = Vec::new();
        for t in &config.tables {
            match ReferenceTable::load(t, &base_dir).await {
                Ok(rt) => {
                    schemas.insert(t.name.clone(), (rt.schema.clone(), InputKind::Table));
                    tables.push(rt);
                }
                Err(e) => errors.push(DiagnosticKind::Key(e)),
            }
        }
        let mut sinks = BTreeMap::new();
        for c in &config.sinks {
            let factory = registry.sink(&c.kind).expect("type checked by the config");
            match factory.build(&cx, &format!("sinks.{}", c.name), c.options.clone()) {
                Ok(s) => {
                    sinks.insert(c.name.clone(), s);
                }
                Err(e) => errors.push(DiagnosticKind::Key(e)),
            }
        }

        errors.extend(
            name_collisions(&config, &sinks)
                .into_iter()
                .map(DiagnosticKind::Key),
        );

        let order = match job_order(&config.jobs, &schemas) {
            Ok(o) => o,
            Err(mut e) => {
                errors.append(&mut e);
                return Err(BuildError(errors));
            }
        };
        let mut jobs = Vec::new();
        for (job, refs) in order {
            match build_job(&config.app, job, &refs, &schemas).await {
                Ok(rt) => {
                    schemas.insert(job.name.clone(), (rt.out_schema.clone(), InputKind::Stream));
                    jobs.push(rt);
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(BuildError(errors));
        }
        project_sources(&mut sources, &jobs);
        Ok(Pipeline {
            app: config.app,
            sources,
            tables,
            jobs,
            sinks,
            dead: DeadLetters::default(),
            base_dir,
            instance,
        })
    }

    /// A line per source → sink path with its end-to-end guarantee, for `sluice validate`.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if self.app.scale_out {
            let instance = &self.instance;
            lines.push(format!(
                "scale-out: this gateway is instance `{instance}`; kafka sources share their partitions with the other gateways of their consumer group; file and object-store sinks write under <path>/{instance}/"
            ));
        }
        for j in &self.jobs {
            let srcs: Vec<&SourceSlot> = self
                .sources
                .iter()
                .filter(|s| j.inputs.iter().any(|(n, _)| n == &s.name))
                .collect();
            let plan = j.query.explain().lines().count();
            lines.push(format!(
                "job `{}`: reads [{}], writes [{}] ({} plan step(s))",
                j.name,
                j.inputs
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                j.sinks.join(", "),
                plan
            ));
            for s in srcs {
                for k in &j.sinks {
                    let idempotent = self.sinks.get(k).is_some_and(|s| s.idempotent());
                    let unconfirmed = self.sinks.get(k).is_some_and(|s| s.unconfirmed());
                    let durable = self.app.checkpoint_dir.is_some();
                    let g = match (durable, s.guarantee, idempotent) {
                        _ if unconfirmed => "at-most-once: the sink's peer never confirms a write (MQTT QoS 0), so what is lost on the way is never written again",
                        (false, _, _) => "at-most-once across restarts: no checkpoint_dir, so a crash loses what was not yet written",
                        (true, Guarantee::Unacknowledged, true) => "exactly-once for what was received: the write-ahead log keeps it; lines not yet durable at a crash are lost (the peer never resends)",
                        (true, _, true) => "exactly-once: re-run batches read identical input and overwrite their output",
                        (true, _, false) => "at-least-once: re-run batches are written again (the sink is not idempotent)",
                    };
                    lines.push(format!("  {} ({}) -> {}: {}", s.name, s.guarantee, k, g));
                    if let Some(c) = &s.caveat {
                        lines.push(format!("    but: {c}"));
                    }
                }
            }
        }
        lines
    }

    /// The optimised plan of every job.
    pub fn explain(&self) -> Vec<(String, String)> {
        self.jobs
            .iter()
            .map(|j| (j.name.clone(), j.query.explain()))
            .collect()
    }
}

/// Jobs in dependency order, each with the names it reads. Unknown names and cycles are errors.
fn job_order<'a>(
    jobs: &'a [NamedJob],
    schemas: &HashMap<String, (SchemaRef, InputKind)>,
) -> Result<Vec<(&'a NamedJob, Vec<String>)>, Vec<DiagnosticKind>> {
    let mut errors = Vec::new();
    let mut refs: Vec<(&NamedJob, Vec<String>)> = Vec::new();
    let job_names: Vec<String> = jobs.iter().map(|j| j.name.clone()).collect();
    for j in jobs {
        let names = match sluice_sql::referenced_tables(&j.job.sql) {
            Ok(n) => n,
            Err(message) => {
                errors.push(DiagnosticKind::Sql {
                    job: j.name.clone(),
                    message,
                });
                continue;
            }
        };
        let mut known: Vec<String> = schemas
            .keys()
            .cloned()
            .chain(job_names.iter().cloned())
            .collect();
        if j.job.state.is_some() {
            known.push("state".into());
        }
        known.sort();
        for n in &names {
            if n == &j.name {
                errors.push(DiagnosticKind::Key(ConfigError::new(
                    format!("jobs.{}.sql", j.name),
                    "a query that does not read its own output (use `state` for that)",
                    format!("a query reading `{n}`"),
                )));
            } else if !known.contains(n) {
                let e = ConfigError::new(
                    format!("jobs.{}.sql", j.name),
                    format!("tables defined in this file ({})", known.join(", ")),
                    format!("a query reading `{n}`, which is not defined"),
                );
                errors.push(DiagnosticKind::Key(match suggest(n, &known) {
                    Some(s) => e.with_hint(format!("did you mean `{s}`?")),
                    None => e,
                }));
            }
        }
        refs.push((j, names));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // Kahn's algorithm, keeping file order among ready jobs.
    let mut done: Vec<String> = Vec::new();
    let mut ordered = Vec::new();
    while ordered.len() < refs.len() {
        let before = ordered.len();
        for (j, names) in &refs {
            if done.contains(&j.name) {
                continue;
            }
            if names
                .iter()
                .all(|n| !job_names.contains(n) || done.contains(n))
            {
                done.push(j.name.clone());
                ordered.push((*j, names.clone()));
            }
        }
        if ordered.len() == before {
            let stuck: Vec<String> = refs
                .iter()
                .map(|(j, _)| j.name.clone())
                .filter(|n| !done.contains(n))
                .collect();
            return Err(vec![DiagnosticKind::Key(ConfigError::new(
                format!("jobs.{}.sql", stuck[0]),
                "jobs that do not read each other in a cycle",
                format!("a cycle among jobs {}", stuck.join(", ")),
            ))]);
        }
    }
    Ok(ordered)
}

/// Tell each replayable source which of its columns the jobs read, so it decodes only those
/// (Spark's column pruning). Push sources keep every column: their write-ahead log is the only
/// copy of what they received. A job with an event-time window over the source reads all of it.
fn project_sources(sources: &mut [SourceSlot], jobs: &[JobRuntime]) {
    for s in sources.iter_mut() {
        let Some(SourceRuntime::Replayable(r)) = &mut s.runtime else {
            continue;
        };
        let mut columns = std::collections::BTreeSet::new();
        let mut read = false;
        let mut all = false;
        for j in jobs
            .iter()
            .filter(|j| j.inputs.iter().any(|(n, _)| n == &s.name))
        {
            read = true;
            match (&j.event, j.query.columns_read(&s.name)) {
                (Some(_), _) | (_, None) => all = true,
                (None, Some(c)) => columns.extend(c),
            }
        }
        if read && !all {
            tracing::info!(source = %s.name, columns = ?columns, "the jobs read only these columns of the source: the others are not decoded");
            r.project(&columns);
        }
    }
}

/// `app.instance`, else the host name and a hash of the checkpoint directory's absolute path:
/// the same across restarts, different for two gateways on one machine.
fn instance_name(app: &sluice_config::AppSection, base_dir: &std::path::Path) -> String {
    if let Some(i) = &app.instance {
        return i.clone();
    }
    let host = ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|f| std::fs::read_to_string(f).ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "gateway".into());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let dir = app
        .checkpoint_dir
        .as_deref()
        .map(|d| base_dir.join(d))
        .unwrap_or_default();
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let hash = crc32fast::hash(dir.to_string_lossy().as_bytes());
    format!("{host}-{hash:08x}")
}

async fn build_job(
    app: &AppSection,
    job: &NamedJob,
    refs: &[String],
    schemas: &HashMap<String, (SchemaRef, InputKind)>,
) -> Result<JobRuntime, DiagnosticKind> {
    let cfg = &job.job;
    let key = |k: &str| format!("jobs.{}.{k}", job.name);
    let mut tables = Vec::new();
    let mut inputs = Vec::new();
    let mut state = None;
    let mut event = None;
    for n in refs {
        if let (Some(s), true) = (&cfg.state, n == "state" && !schemas.contains_key(n)) {
            let schema = parse_schema(&s.schema).expect("validated state schema");
            tables.push((n.clone(), schema.clone()));
            inputs.push((n.clone(), InputKind::State));
            state = Some(KeyedState::new(s, schema));
            continue;
        }
        let (schema, kind) = schemas[n].clone();
        let schema = match (&cfg.event_time, kind) {
            (Some(et), InputKind::Stream) => {
                if event.is_some() {
                    return Err(DiagnosticKind::Key(ConfigError::new(
                        key("event_time"),
                        "a job that reads one stream (join streams in an upstream job)",
                        "a job reading several streams",
                    )));
                }
                let e = event_time(et, n, &schema, &key)?;
                event = Some(e);
                windowed_schema(&schema)
            }
            _ => schema,
        };
        tables.push((n.clone(), schema));
        inputs.push((n.clone(), kind));
    }
    if cfg.event_time.is_some() && event.is_none() {
        return Err(DiagnosticKind::Key(ConfigError::new(
            key("event_time"),
            "a job that reads a source or another job",
            "a job reading no stream",
        )));
    }
    if let (Some(s), None) = (&cfg.state, &state) {
        // A stateful job that does not read `state` still keeps it.
        state = Some(KeyedState::new(
            s,
            parse_schema(&s.schema).expect("validated"),
        ));
    }
    let partitions = cfg
        .partitions
        .unwrap_or_else(sluice_sql::default_partitions);
    let query = sluice_sql::JobQuery::plan(&cfg.sql, &tables, partitions)
        .await
        .map_err(|message| DiagnosticKind::Sql {
            job: job.name.clone(),
            message,
        })?;
    let out_schema = match &state {
        Some(s) => state_output(s, &query, &key)?,
        None => query.schema(),
    };
    let window = cfg
        .window
        .as_ref()
        .map(|w| ProcWindow::new(w.length, w.slide.unwrap_or(app.batch_interval)));
    Ok(JobRuntime {
        name: job.name.clone(),
        query,
        sinks: cfg.sinks.clone(),
        inputs,
        window,
        event,
        late: cfg.event_time.as_ref().map(|e| e.late).unwrap_or_default(),
        state,
        out_schema,
    })
}

/// The event time of a job reading the stream `input` (of `schema`) by `et.column`.
fn event_time(
    et: &EventTimeConfig,
    input: &str,
    schema: &SchemaRef,
    key: &dyn Fn(&str) -> String,
) -> Result<EventTime, DiagnosticKind> {
    let Ok(i) = schema.index_of(&et.column) else {
        let cols: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        return Err(DiagnosticKind::Key(ConfigError::new(
            key("event_time.column"),
            format!("a column of `{input}` ({})", cols.join(", ")),
            format!("\"{}\"", et.column),
        )));
    };
    let ty = schema.field(i).data_type();
    if !matches!(ty, DataType::Timestamp(_, _) | DataType::Int64) {
        return Err(DiagnosticKind::Key(ConfigError::new(
            key("event_time.column"),
            "a column of type timestamp or int64 (milliseconds)",
            format!("column `{}` of type {ty}", et.column),
        )));
    }
    let ms = |d: std::time::Duration| d.as_millis() as i64;
    Ok(EventTime::new(
        input,
        schema.clone(),
        i,
        ms(et.length),
        ms(et.slide.unwrap_or(et.length)),
        ms(et.watermark.unwrap_or_default()),
        ms(et.max_future),
    ))
}

/// A stateful job's output schema, once its query's columns are checked against `state.schema`.
fn state_output(
    state: &KeyedState,
    query: &sluice_sql::JobQuery,
    key: &dyn Fn(&str) -> String,
) -> Result<SchemaRef, DiagnosticKind> {
    let q = query.schema();
    let st = state.schema();
    if q.fields().len() != st.fields().len() {
        return Err(DiagnosticKind::Key(ConfigError::new(
            key("sql"),
            format!(
                "a query returning the {} column(s) of state.schema",
                st.fields().len()
            ),
            format!("a query returning {} column(s)", q.fields().len()),
        )));
    }
    for (a, b) in q.fields().iter().zip(st.fields()) {
        if !sluice_core::arrow::compute::can_cast_types(a.data_type(), b.data_type()) {
            return Err(DiagnosticKind::Key(ConfigError::new(
                key("sql"),
                format!(
                    "column `{}` of a type that converts to {}",
                    b.name(),
                    b.data_type()
                ),
                format!("{}", a.data_type()),
            )));
        }
    }
    Ok(state.out_schema())
}

/// Sinks that name their output the same whatever the writer (a file sink's `prefix`) and that
/// more than one writer uses: they would overwrite each other's files and manifest entries.
fn name_collisions(
    config: &AppConfig,
    sinks: &BTreeMap<String, Box<dyn Sink>>,
) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    for (name, sink) in sinks {
        let Some(option) = sink.fixed_name_option() else {
            continue;
        };
        let mut writers: Vec<String> = config
            .jobs
            .iter()
            .filter(|j| j.job.sinks.contains(name))
            .map(|j| format!("job `{}`", j.name))
            .collect();
        if config.app.dead_letter.as_ref() == Some(name) {
            writers.push("the dead-letter output (app.dead_letter)".into());
        }
        if writers.len() > 1 {
            errors.push(
                ConfigError::new(
                    format!("sinks.{name}.{option}"),
                    format!("a sink with a fixed `{option}` written by one job only (its files are named by `{option}` and the batch time, not by the job)"),
                    format!("written by {}", writers.join(" and ")),
                )
                .with_hint(format!("remove `{option}` (files are then named after each job), or give each writer a sink of its own")),
            );
        }
    }
    errors
}
