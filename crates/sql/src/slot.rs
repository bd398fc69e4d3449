//! A table whose contents the engine replaces before each run of a job.

use async_trait::async_trait;
use datafusion::arrow::array::new_null_array;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use std::sync::{Arc, RwLock};

#[derive(Debug)]
pub struct Slot {
    schema: SchemaRef,
    batches: RwLock<Vec<RecordBatch>>,
}

impl Slot {
    /// A slot with `schema`'s columns, all nullable (inputs differ in nullability only).
    pub fn new(schema: SchemaRef) -> Self {
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect();
        Slot {
            schema: Arc::new(Schema::new(fields)),
            batches: RwLock::new(Vec::new()),
        }
    }

    /// Replace the contents. Columns are matched to the slot's by name (input written under an
    /// older schema — blocks in the write-ahead log, window contents — may order its columns
    /// otherwise), cast where their types differ; a column the input lacks is NULL.
    pub fn set(&self, batches: Vec<RecordBatch>) -> Result<()> {
        let mut conformed = Vec::with_capacity(batches.len());
        for b in batches {
            if b.num_rows() == 0 {
                continue;
            }
            if b.schema() == self.schema {
                conformed.push(b);
                continue;
            }
            let input = b.schema();
            let cols = self
                .schema
                .fields()
                .iter()
                .map(|f| match input.index_of(f.name()) {
                    Ok(i) if b.column(i).data_type() == f.data_type() => Ok(b.column(i).clone()),
                    Ok(i) => cast(b.column(i), f.data_type()),
                    Err(_) => Ok(new_null_array(f.data_type(), b.num_rows())),
                })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            conformed.push(RecordBatch::try_new(self.schema.clone(), cols)?);
        }
        *self.batches.write().unwrap() = conformed;
        Ok(())
    }

    /// Drop the contents.
    pub fn clear(&self) {
        self.batches.write().unwrap().clear();
    }
}

#[async_trait]
impl TableProvider for Slot {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // Zero-copy slices of the session's batch size, so operators' intermediate arrays stay small
        // however large the blocks a source delivered.
        let size = state.config().batch_size().max(1);
        let batches: Vec<RecordBatch> = self
            .batches
            .read()
            .unwrap()
            .iter()
            .flat_map(|b| {
                (0..b.num_rows())
                    .step_by(size)
                    .map(move |o| b.slice(o, size.min(b.num_rows() - o)))
            })
            .collect();
        let n = state
            .config()
            .target_partitions()
            .max(1)
            .min(batches.len().max(1));
        let mut partitions = vec![Vec::new(); n];
        for (i, b) in batches.into_iter().enumerate() {
            partitions[i % n].push(b);
        }
        Ok(MemorySourceConfig::try_new_exec(
            &partitions,
            self.schema.clone(),
            projection.cloned(),
        )?)
    }
}
