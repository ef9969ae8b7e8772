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
use crate::source::table::TableDef;

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
    Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus')",
    )
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

/// Make the open transaction's writes to Citus tables behave as livesync's writes to plain tables:
/// call before its first write to one (Citus opens its shards' sessions then).
///
/// - `session_replication_role = replica` on the shards too, so that their triggers and foreign
///   keys stay quiet as the coordinator's do: Citus sends a `SET LOCAL` to the shards' sessions
///   only with `citus.propagate_set_commands = 'local'`, and only inside what it takes for a
///   multi-statement transaction — a background worker's transaction is none, a `DO` block
///   counts — so both are set in one.
/// - `citus.multi_shard_modify_mode = 'sequential'`: one connection per worker node for the whole
///   transaction. In the default parallel mode a COPY (and so every `INSERT … SELECT` of the
///   executor route) opens a connection per shard and most are closed again at commit: a stream
///   transaction inserting 10 rows took 150–200 ms, against 3–15 ms in sequential mode; and
///   copies load no slower (3.8–4.3 s per million rows against 4.7 s), since the worker nodes
///   still load in parallel.
/// - `synchronous_commit = on` (livesync's workers commit asynchronously otherwise).
///   Crash-sensitive: Citus commits a transaction that wrote to several worker nodes in two
///   phases — the nodes prepare, the coordinator commits, then the nodes commit — and the
///   coordinator's commit (which carries the replication origin's position and the copy's
///   "done" marks) must be durable before the nodes commit. An asynchronous commit lost in a
///   crash would leave the shards with rows the coordinator does not know it loaded: copied or
///   applied again, they would be there twice.
pub fn prepare_writes() -> std::result::Result<(), pgrx::spi::Error> {
    commit_durably()?;
    Spi::run(
        "DO $livesync$ BEGIN
           SET LOCAL citus.multi_shard_modify_mode = 'sequential';
           SET LOCAL citus.propagate_set_commands = 'local';
           SET LOCAL session_replication_role = replica;
         END $livesync$",
    )
}

/// Commit the open transaction synchronously: one that changes Citus tables on the worker nodes
/// (rows, or DDL such as the key built after a copy), see [`prepare_writes`].
pub fn commit_durably() -> std::result::Result<(), pgrx::spi::Error> {
    Spi::run("SELECT pg_catalog.set_config('synchronous_commit', 'on', true)")
}

/// Run `truncate` (a `TRUNCATE` of Citus tables) in a transaction prepared by
/// [`prepare_writes`]. Citus empties the shards from a TRUNCATE trigger on the coordinator's
/// table, and under `session_replication_role = replica` that trigger does not fire: the
/// statement would empty the coordinator's shell only, and the shards would keep every row. So
/// the coordinator's role is `origin` for the statement — set with `set_config`, which Citus does
/// not propagate: the shards' sessions keep `replica`.
pub fn truncate(truncate: &str) -> std::result::Result<(), pgrx::spi::Error> {
    let role =
        Spi::get_one::<String>("SELECT pg_catalog.current_setting('session_replication_role')")?
            .unwrap_or_default();
    Spi::run("SELECT pg_catalog.set_config('session_replication_role', 'origin', true)")?;
    Spi::run(truncate)?;
    Spi::run_with_args(
        "SELECT pg_catalog.set_config('session_replication_role', $1, true)",
        &[role.as_str().into()],
    )
}

/// An existing Citus table can receive source table `def` when rows can be routed: its
/// distribution column (if it has one) must be a source column — a column only the target has
/// would be NULL in every row, which Citus refuses.
pub fn check_target(def: &TableDef, target_q: &str, t: &CitusTable) -> Result<()> {
    if let Some(col) = &t.distribution_column {
        warn_if_nullable(def, target_q, col);
        if !def.columns.iter().any(|c| &c.name == col) {
            return Err(LivesyncError::new(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!("distribution column \"{col}\" of target table {target_q} is not a column of source table {}", def.qualified()),
            )
            .detail("Every row would reach the target without a value for it, and Citus refuses a row whose distribution column is NULL.")
            .hint("Distribute the target by a column the source table has, or pass another target => 'schema.table'."));
        }
    }
    Ok(())
}

/// `add_table(…, distributed_by => column)` for `def`: the column must be a source column, and a
/// source key that lacks it gains it on the target (Citus requires the distribution column in
/// every unique index). Returns the key to build, with a NOTICE when it grew.
pub fn key_for(def: &TableDef, target_q: &str, column: &str) -> Result<Vec<String>> {
    if !def.columns.iter().any(|c| c.name == column) {
        return Err(LivesyncError::unknown_source_column(def, column));
    }
    warn_if_nullable(def, target_q, column);
    let mut key = def.key.clone();
    if !key.is_empty() && !key.iter().any(|k| k == column) {
        key.push(column.to_string());
        pgrx::notice!(
            "the key of {target_q} will be ({}): Citus requires the distribution column in every unique index",
            key.iter().map(spi::quote_identifier).collect::<Vec<_>>().join(", ")
        );
    }
    Ok(key)
}

/// Citus refuses a row whose distribution column is NULL: a source column that allows NULL may
/// stop the table one day (`22004 the partition column of table … cannot be NULL`), said now.
fn warn_if_nullable(def: &TableDef, target_q: &str, column: &str) {
    if def.columns.iter().any(|c| c.name == column && !c.not_null) {
        LivesyncError::new(
            PgSqlErrorCode::ERRCODE_WARNING,
            format!("distribution column \"{column}\" of {target_q} can be NULL on the source"),
        )
        .detail("Citus refuses a row whose distribution column is NULL: such a row, copied or streamed, puts the table in error.")
        .hint(format!(
            "On the source: ALTER TABLE {} ALTER COLUMN {} SET NOT NULL; or distribute by a NOT NULL column.",
            def.qualified(),
            crate::source::quote_ident(column)
        ))
        .report(pgrx::PgLogLevel::WARNING);
    }
}

/// Distribute the empty table `target_q` by `column` (`create_distributed_table`, hash
/// distribution, colocated by Citus's default rule).
pub fn distribute(target_q: &str, column: &str) -> Result<()> {
    let sql = format!(
        "SELECT pg_catalog.create_distributed_table({}::regclass, {})",
        spi::quote_literal(target_q),
        spi::quote_literal(column)
    );
    crate::error::in_subtransaction(|| Spi::run(&sql))
        .map_err(|m| {
            LivesyncError::new(
                PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("could not distribute {target_q} by \"{column}\": {m}"),
            )
            .hint("Check the column, or create the distributed table yourself (create_distributed_table) and add the table again.")
        })?
        .map_err(crate::catalog::spi_err)?;
    pgrx::notice!("created {target_q} as a Citus table distributed by \"{column}\"");
    Ok(())
}

/// Whether `distributed_by => …` can work here: Citus installed in this database.
pub fn check_available() -> Result<()> {
    if installed() {
        return Ok(());
    }
    Err(LivesyncError::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        "distributed_by needs the citus extension on the target",
    )
    .detail("The extension \"citus\" is not installed in this database.")
    .hint("Run livesync on a Citus coordinator (CREATE EXTENSION citus, worker nodes added), or leave out distributed_by for a plain table."))
}

/// `distributed_by => column` for a target that Citus already keeps otherwise.
pub fn already_citus(target_q: &str, t: &CitusTable, column: &str) -> LivesyncError {
    let how = match &t.distribution_column {
        Some(c) => format!(" distributed by \"{c}\""),
        None => String::new(),
    };
    LivesyncError::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("target table {target_q} is already {}{how}, not distributed by \"{column}\"", t.describe()),
    )
    .hint("Leave out distributed_by to sync into the table as Citus keeps it, or pass another target => 'schema.table'.")
}
