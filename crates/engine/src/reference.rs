//! Reference tables: files joined by jobs (Spark's `transform` with a static RDD), re-read when the
//! file's modification time changes. A reload that fails keeps the previous contents and says why.

use sluice_config::NamedTable;
use sluice_core::arrow::datatypes::SchemaRef;
use sluice_core::arrow::record_batch::RecordBatch;
use sluice_core::schema::parse_schema;
use sluice_core::ConfigError;
use sluice_core::Format;
use std::path::PathBuf;
use std::time::SystemTime;

pub struct ReferenceTable {
    pub name: String,
    path: PathBuf,
    format: Format,
    declared: Option<SchemaRef>,
    reload: bool,
    modified: Option<SystemTime>,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

fn modified(p: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl ReferenceTable {
    pub async fn load(t: &NamedTable, base: &std::path::Path) -> Result<Self, ConfigError> {
        let key = format!("tables.{}", t.name);
        let path = base.join(&t.table.path);
        let format = match t.table.format {
            Some(f) => f.get(),
            None => match path.extension().and_then(|e| e.to_str()) {
                Some("csv") => Format::Csv,
                Some("json") | Some("jsonl") | Some("ndjson") => Format::Json,
                Some("parquet") => Format::Parquet,
                _ => {
                    return Err(ConfigError::new(
                        format!("{key}.format"),
                        "\"csv\", \"json\" or \"parquet\" (the file's extension does not say)",
                        "nothing",
                    ))
                }
            },
        };
        let declared =
            match &t.table.schema {
                None => None,
                Some(s) => Some(parse_schema(s).map_err(|e| {
                    ConfigError::new(format!("{key}.schema"), e, format!("\"{s}\""))
                })?),
            };
        if !path.is_file() {
            return Err(ConfigError::new(
                format!("{key}.path"),
                "the path of a readable file",
                format!("\"{}\", which does not exist", t.table.path),
            ));
        }
        let modified = modified(&path);
        let (schema, batches) = sluice_sql::read_file(&path, format, declared.clone())
            .await
            .map_err(|e| {
                ConfigError::new(
                    format!("{key}.path"),
                    "a file that reads as the table's format",
                    format!("an error: {e}"),
                )
            })?;
        Ok(ReferenceTable {
            name: t.name.clone(),
            path,
            format,
            declared,
            reload: t.table.reload,
            modified,
            schema,
            batches,
        })
    }

    /// Re-read the file if it changed since the last read.
    pub async fn refresh(&mut self) {
        if !self.reload {
            return;
        }
        let m = modified(&self.path);
        if m.is_none() || m == self.modified {
            return;
        }
        match sluice_sql::read_file(&self.path, self.format, self.declared.clone()).await {
            Ok((schema, batches)) if schema.fields() == self.schema.fields() => {
                tracing::info!(table = %self.name, rows = batches.iter().map(|b| b.num_rows()).sum::<usize>(), "reference table reloaded");
                self.batches = batches;
                self.modified = m;
            }
            Ok(_) => {
                tracing::warn!(table = %self.name, "reference table changed its columns; keeping the previous contents");
                self.modified = m;
            }
            Err(e) => {
                tracing::warn!(table = %self.name, error = %e, "reference table reload failed; keeping the previous contents")
            }
        }
    }
}
