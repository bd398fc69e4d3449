//! sluice-sql: one DataFusion session per job.
//!
//! Each table a job reads (a source, another job's output, a reference table, `state`) is a
//! [`Slot`]: a table whose contents the engine swaps before every run. The SQL is parsed, analysed
//! and optimised once, when the job is built; each batch only creates the physical plan from the
//! cached logical plan and runs it (planning from SQL costs most of a small batch's time).

mod slot;
mod udf;

pub use slot::Slot;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SessionConfig, SessionContext};
use sluice_core::Format;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A planned job query.
pub struct JobQuery {
    ctx: SessionContext,
    plan: LogicalPlan,
    slots: BTreeMap<String, Arc<Slot>>,
    schema: SchemaRef,
}

/// The names of the tables a query reads (CTE names excluded), lowercased as DataFusion resolves them.
pub fn referenced_tables(sql: &str) -> Result<Vec<String>, String> {
    let ctx = SessionContext::new();
    let state = ctx.state();
    let stmt = state
        .sql_to_statement(sql, &datafusion::common::config::Dialect::Generic)
        .map_err(|e| e.strip_backtrace().to_string())?;
    let refs = state
        .resolve_table_references(&stmt)
        .map_err(|e| e.strip_backtrace().to_string())?;
    let mut names: Vec<String> = refs.iter().map(|r| r.table().to_string()).collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// Default parallelism of a job's query: the machine's cores.
pub fn default_partitions() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

impl JobQuery {
    /// Plan `sql` over `tables` (name, schema). Errors carry DataFusion's message.
    pub async fn plan(
        sql: &str,
        tables: &[(String, SchemaRef)],
        partitions: usize,
    ) -> Result<JobQuery, String> {
        let config = SessionConfig::new()
            .with_target_partitions(partitions.max(1))
            .with_information_schema(false);
        let ctx = SessionContext::new_with_config(config);
        udf::register(&ctx);
        let mut slots = BTreeMap::new();
        for (name, schema) in tables {
            let slot = Arc::new(Slot::new(schema.clone()));
            ctx.register_table(name.as_str(), slot.clone())
                .map_err(|e| e.strip_backtrace().to_string())?;
            slots.insert(name.clone(), slot);
        }
        let state = ctx.state();
        let plan = state
            .create_logical_plan(sql)
            .await
            .map_err(|e| e.strip_backtrace().to_string())?;
        if !matches!(
            plan,
            LogicalPlan::Projection(_)
                | LogicalPlan::Aggregate(_)
                | LogicalPlan::Sort(_)
                | LogicalPlan::Filter(_)
                | LogicalPlan::Limit(_)
                | LogicalPlan::Union(_)
                | LogicalPlan::Join(_)
                | LogicalPlan::Distinct(_)
                | LogicalPlan::SubqueryAlias(_)
                | LogicalPlan::TableScan(_)
                | LogicalPlan::Window(_)
                | LogicalPlan::Values(_)
                | LogicalPlan::Unnest(_)
        ) {
            return Err(format!(
                "expected a query (SELECT ...), found a {} statement",
                plan.display()
            ));
        }
        let plan = state
            .optimize(&plan)
            .map_err(|e| e.strip_backtrace().to_string())?;
        let schema = Arc::new(plan.schema().as_arrow().clone());
        Ok(JobQuery {
            ctx,
            plan,
            slots,
            schema,
        })
    }

    /// The schema of the query's output.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    pub fn slot(&self, name: &str) -> Option<&Arc<Slot>> {
        self.slots.get(name)
    }

    /// Run the query over the slots' current contents.
    pub async fn run(&self) -> Result<Vec<RecordBatch>, DataFusionError> {
        let state = self.ctx.state();
        let physical = state
            .query_planner()
            .create_physical_plan(&self.plan, &state)
            .await?;
        let out = datafusion::physical_plan::collect(physical, self.ctx.task_ctx()).await;
        // Inputs are not needed after the run: release them now rather than at the next batch.
        for slot in self.slots.values() {
            slot.clear();
        }
        Ok(out?.into_iter().filter(|b| b.num_rows() > 0).collect())
    }

    /// The columns of `table` this query reads, from its optimised plan (None: all of them).
    pub fn columns_read(&self, table: &str) -> Option<BTreeSet<String>> {
        use datafusion::common::tree_node::TreeNodeRecursion;
        let mut columns = BTreeSet::new();
        let mut all = false;
        let walked = self.plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                if scan.table_name.table() == table {
                    match &scan.projection {
                        None => all = true,
                        Some(p) => {
                            let schema = scan.source.schema();
                            columns.extend(p.iter().map(|i| schema.field(*i).name().clone()));
                        }
                    }
                    for f in &scan.filters {
                        columns.extend(f.column_refs().into_iter().map(|c| c.name.clone()));
                    }
                }
            }
            Ok(TreeNodeRecursion::Continue)
        });
        (walked.is_ok() && !all).then_some(columns)
    }

    /// The optimised logical plan, for `sluice validate --explain`.
    pub fn explain(&self) -> String {
        self.plan.display_indent().to_string()
    }
}

/// Read a whole file (a reference table: CSV with a header, JSON lines or Parquet) into memory.
pub async fn read_file(
    path: &std::path::Path,
    format: Format,
    schema: Option<SchemaRef>,
) -> Result<(SchemaRef, Vec<RecordBatch>), String> {
    use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions};
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
    let p = path.to_str().ok_or("path is not UTF-8")?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| format!(".{e}"))
        .unwrap_or_default();
    let df = match format {
        Format::Csv => {
            let mut o = CsvReadOptions::new().has_header(true).file_extension(&ext);
            if let Some(s) = &schema {
                o = o.schema(s);
            }
            ctx.read_csv(p, o).await
        }
        Format::Json => {
            let mut o = JsonReadOptions::default().file_extension(&ext);
            if let Some(s) = &schema {
                o = o.schema(s);
            }
            ctx.read_json(p, o).await
        }
        Format::Parquet => {
            ctx.read_parquet(p, ParquetReadOptions::default().file_extension(&ext))
                .await
        }
        other => return Err(format!("a table cannot be read from {other}")),
    }
    .map_err(|e| e.strip_backtrace().to_string())?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let batches = df
        .collect()
        .await
        .map_err(|e| e.strip_backtrace().to_string())?;
    Ok((schema, batches))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    #[tokio::test]
    async fn the_columns_a_query_reads_come_from_its_optimised_plan() {
        let t: SchemaRef = Arc::new(Schema::new(
            ["a", "b", "c", "d"]
                .iter()
                .map(|n| Field::new(*n, DataType::Int64, true))
                .collect::<Vec<_>>(),
        ));
        let u: SchemaRef = Arc::new(Schema::new(vec![Field::new("a", DataType::Int64, true)]));
        let tables = [("t".to_string(), t), ("u".to_string(), u)];
        let read = |sql: &'static str| {
            let tables = tables.clone();
            async move {
                JobQuery::plan(sql, &tables, 1)
                    .await
                    .unwrap()
                    .columns_read("t")
                    .map(|c| c.into_iter().collect::<Vec<_>>())
            }
        };
        let names = |v: &[&str]| Some(v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            read("SELECT a FROM t WHERE b > 1").await,
            names(&["a", "b"])
        );
        assert_eq!(
            read("SELECT t.c FROM t JOIN u ON u.a = t.a").await,
            names(&["a", "c"])
        );
        assert_eq!(
            read("SELECT a FROM u WHERE a IN (SELECT d FROM t)").await,
            names(&["d"])
        );
        assert_eq!(read("SELECT count(*) FROM t").await, names(&[]));
        assert_eq!(read("SELECT * FROM t").await, names(&["a", "b", "c", "d"]));
    }
}
