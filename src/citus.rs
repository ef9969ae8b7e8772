//! Citus on the target: the one place that knows about distributed and reference tables.
//!
//! Why livesync cares: a Citus table's rows live in shards on the worker nodes; the table on the
//! coordinator is a shell whose own heap stays empty, and only Citus's planner and COPY hooks
//! route rows to the shards. PostgreSQL's own logical replication (and a plain `CopyFrom`)
//! writes into the shell's heap: no error, and the distributed table reads no rows.
//!
//! Everything here is read from Citus's catalog (`pg_dist_partition`), and only when the citus
//! extension is installed in this database.

use pgrx::prelude::*;

use crate::error::{LivesyncError, Result};

/// How Citus keeps a table (`pg_dist_partition.partmethod` and `repmodel`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Sharded by a distribution column (hash; or the older range and append methods).
    Distributed,
    /// One shard, copied to every node.
    Reference,
    /// One shard on one node: a Citus local table, or a single-shard table of a distributed
    /// schema.
    SingleShard,
}

/// A table Citus manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CitusTable {
    pub kind: Kind,
    /// The distribution column (None for reference and single-shard tables).
    pub distribution_column: Option<String>,
}

impl CitusTable {
    /// "a Citus distributed table", for messages.
    pub fn describe(&self) -> &'static str {
        match self.kind {
            Kind::Distributed => "a Citus distributed table",
            Kind::Reference => "a Citus reference table",
            Kind::SingleShard => "a Citus single-shard table",
        }
    }
}

/// Whether the citus extension is installed in this database.
pub fn installed() -> bool {
    Spi::get_one::<bool>("SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus')")
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// The Citus table `relid` is, None when it is a plain table (or Citus is not installed).
pub fn table(relid: pg_sys::Oid) -> Option<CitusTable> {
    if !installed() {
        return None;
    }
    Spi::connect(|c| {
        let mut rows = c.select(
            "SELECT p.partmethod::text, p.repmodel::text,
                    CASE WHEN p.partkey IS NOT NULL THEN pg_catalog.column_to_column_name(p.logicalrelid, p.partkey) END
               FROM pg_catalog.pg_dist_partition p
              WHERE p.logicalrelid = $1",
            None,
            &[relid.into()],
        )?;
        let Some(row) = rows.next() else { return Ok(None) };
        let method = row.get::<String>(1)?.unwrap_or_default();
        let repmodel = row.get::<String>(2)?.unwrap_or_default();
        let column = row.get::<String>(3)?;
        let kind = match (method.as_str(), repmodel.as_str()) {
            ("n", "t") => Kind::Reference,
            ("n", _) => Kind::SingleShard,
            _ => Kind::Distributed,
        };
        Ok::<_, pgrx::spi::SpiError>(Some(CitusTable { kind, distribution_column: column }))
    })
    .ok()
    .flatten()
}

/// Until livesync routes rows to Citus shards, a Citus target is refused: loading it like a plain
/// table would put every row into the coordinator's shell, where the distributed table never
/// shows them.
pub fn refuse(target_q: &str, t: &CitusTable) -> Result<()> {
    Err(LivesyncError::new(
        PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
        format!("target table {target_q} is {}, which livesync cannot load yet", t.describe()),
    )
    .detail("Rows written into the coordinator's table would stay in its local shell, invisible through the distributed table.")
    .hint("Sync into a plain table instead: pass another target => 'schema.table'."))
}
