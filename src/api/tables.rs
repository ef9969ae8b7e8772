//! `livesync.add_table` and `livesync.remove_table`.
//!
//! `add_table` does everything that can fail because of the user's input synchronously, in the
//! caller's transaction, so mistakes are reported at once and nothing is half-created: it checks
//! the source table, checks or creates the target table, puts the source table into the
//! connector's publication and records the table as `pending`. The copy itself is done by the
//! connector's worker (see `src/copy/`).

use pgrx::prelude::*;

use crate::catalog::{self, tables};
use crate::copy::target::{self, qualified};
use crate::error::{LivesyncError, OrRaise, Result};
use crate::runtime::{block_on_interruptible, new_runtime};
use crate::source::conninfo::SourceConninfo;
use crate::source::table::{self, TableDef};
use crate::source::timecol;
use crate::source::{connect, publication};
use crate::timescale::HypertableSpec;

/// The connector named `name`, or the only one when `name` is NULL.
pub(crate) fn resolve_connector(name: Option<&str>) -> Result<catalog::Connector> {
    catalog::lock_connector_by_name(&connector_name(
        name,
        "livesync.add_table('schema.table', connector => 'name')",
    )?)
}

/// `name`, or the only connector's name when `name` is NULL; `example` shows a call naming one.
pub(crate) fn connector_name(name: Option<&str>, example: &str) -> Result<String> {
    if let Some(n) = name {
        return Ok(n.to_string());
    }
    let all = catalog::connector_names()?;
    match all.as_slice() {
        [only] => Ok(only.clone()),
        [] => Err(LivesyncError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            "no connector exists",
        )
        .hint("Add one first: SELECT livesync.add_connector('host=... dbname=... user=...');")),
        _ => Err(LivesyncError::new(
            PgSqlErrorCode::ERRCODE_AMBIGUOUS_PARAMETER,
            "more than one connector exists",
        )
        .detail(format!("Connectors: {}.", all.join(", ")))
        .hint(format!("Name the connector: {example}."))),
    }
}

/// Until this transaction ends, the worker's publication discovery leaves this connector alone
/// (it would otherwise race with the publication change made here, which the source commits
/// before this transaction does).
fn lock_table_set(c: &catalog::Connector) {
    Spi::run_with_args(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[crate::worker::LOCK_CLASS_TABLES.into(), c.id.into()],
    )
    .map_err(catalog::spi_err)
    .or_raise();
}

/// Split a (possibly quoted) qualified name with the target's own parser.
pub(crate) fn parse_qualified(spelled: &str, default_schema: &str) -> Result<(String, String)> {
    let parts = Spi::get_one_with_args::<Vec<String>>(
        "SELECT pg_catalog.parse_ident($1)",
        &[spelled.into()],
    )
    .map_err(|_| {
        LivesyncError::invalid_parameter(format!("invalid table name \"{spelled}\"")).hint(
            "Write schema.table; quote names with special characters: 'public.\"Weird Name\"'.",
        )
    })?
    .unwrap_or_default();
    match parts.as_slice() {
        [name] => Ok((default_schema.to_string(), name.clone())),
        [schema, name] => Ok((schema.clone(), name.clone())),
        _ => Err(
            LivesyncError::invalid_parameter(format!("invalid table name \"{spelled}\""))
                .detail("Expected table or schema.table."),
        ),
    }
}

/// Wake the connector's worker once this transaction commits, so the copy starts at once instead
/// of at its next look at the catalog (within a second).
fn wake_worker_after_commit(c: &catalog::Connector) {
    if let Ok(Some(pid)) = catalog::live_worker_pid(c.id) {
        pgrx::register_xact_callback(pgrx::PgXactCallbackEvent::Commit, move || {
            crate::worker::wake(pid);
        });
    }
}

/// Run `f` against the connector's source.
pub(crate) fn with_source<R>(
    c: &catalog::Connector,
    f: impl AsyncFnOnce(&tokio_postgres::Client, &SourceConninfo) -> Result<R>,
) -> Result<R> {
    let conninfo = catalog::conninfo(c.id)?.unwrap_or_default();
    let info = SourceConninfo::parse(&conninfo).map_err(|e| {
        LivesyncError::invalid_parameter(format!(
            "invalid connection string of connector \"{}\": {}",
            c.name, e.0
        ))
    })?;
    let rt = new_runtime();
    block_on_interruptible(&rt, async {
        let client = connect::connect(&info, "livesync add_table")
            .await
            .map_err(|e| LivesyncError::from_connect(&e))?;
        f(&client, &info).await
    })
}

/// Read source table `source_table`; an error naming the source when it does not exist.
async fn describe_source(
    client: &tokio_postgres::Client,
    info: &SourceConninfo,
    source_table: &str,
) -> Result<TableDef> {
    match table::describe(client, source_table).await {
        Ok(Some(d)) => Ok(d),
        Ok(None) => Err(LivesyncError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
            format!("relation \"{source_table}\" does not exist on the source at \"{}\"", info.endpoint_with_db()),
        )
        .hint("Check the name and the schema; names with capitals or special characters need double quotes: '\"MyTable\"'.")),
        Err(e) => Err(LivesyncError::source_query(&info.endpoint(), &e)),
    }
}

/// What the user asked for with `hypertable`, `time_column` and `chunk_interval`.
struct HypertableRequest<'a> {
    wanted: bool,
    time_column: Option<&'a str>,
    chunk_interval: Option<&'a str>,
}

/// Decide the hypertable's time column and chunk width for `def`, reading the source through
/// `client` (statistics for the suggestion, the column's span for the width).
async fn plan_hypertable(
    client: &tokio_postgres::Client,
    info: &SourceConninfo,
    def: &TableDef,
    req: &HypertableRequest<'_>,
    chunk_bytes: i64,
) -> Result<(HypertableSpec, timecol::Suggestion)> {
    let suggestion = timecol::suggest_from_source(client, def)
        .await
        .map_err(|e| LivesyncError::source_query(&info.endpoint(), &e))?;
    let column = match req.time_column {
        Some(name) => name.to_string(),
        None => suggestion.column.clone().ok_or_else(|| {
            LivesyncError::new(
                PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                format!("source table {} has no column to partition a hypertable by", def.qualified()),
            )
            .detail(format!("{}.", suggestion.reason))
            .hint("Name one: time_column => '…' (a NOT NULL timestamptz, timestamp, date or integer column).")
        })?,
    };
    let Some(col) = def.columns.iter().find(|c| c.name == column) else {
        return Err(LivesyncError::unknown_source_column(def, &column));
    };
    let Some(kind) = timecol::time_kind(col.type_oid) else {
        return Err(LivesyncError::new(
            PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
            format!(
                "column \"{column}\" has type {}, which cannot partition a hypertable",
                col.type_name
            ),
        )
        .hint("Use a timestamptz, timestamp, date or integer column."));
    };
    if !col.not_null {
        return Err(LivesyncError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "column \"{column}\" of source table {} can be NULL",
                def.qualified()
            ),
        )
        .detail("A hypertable's time column is NOT NULL; a NULL on the source would stop the sync.")
        .hint(format!(
            "On the source: ALTER TABLE {} ALTER COLUMN {} SET NOT NULL;",
            def.qualified(),
            crate::source::quote_ident(&column)
        )));
    }
    let chunk_interval = match req.chunk_interval {
        Some(ci) => ci.to_string(),
        None => {
            let span = timecol::span_on_source(client, def, &column, kind).await;
            timecol::chunk_interval(kind, span, def.size_bytes, chunk_bytes).ok_or_else(|| {
                LivesyncError::invalid_parameter(format!(
                    "chunk_interval is required for integer time column \"{column}\""
                ))
                .detail("The source table is empty, so no width can be derived from its data.")
                .hint("Give the chunk width in the column's own units, e.g. chunk_interval => '86400000' for milliseconds per day.")
            })?
        }
    };
    Ok((
        HypertableSpec {
            time_column: column,
            chunk_interval,
            integer: kind == timecol::TimeKind::Integer,
        },
        suggestion,
    ))
}

#[pg_extern]
fn add_table(
    source_table: &str,
    target: default!(Option<&str>, "NULL"),
    connector: default!(Option<&str>, "NULL"),
    hypertable: default!(Option<bool>, "NULL"),
    time_column: default!(Option<&str>, "NULL"),
    chunk_interval: default!(Option<&str>, "NULL"),
    indexes: default!(&str, "'key'"),
    append_only: default!(bool, "false"),
    distributed_by: default!(Option<&str>, "NULL"),
) {
    if !matches!(indexes, "key" | "all" | "none") {
        LivesyncError::invalid_parameter(format!("invalid value for indexes: \"{indexes}\""))
            .hint("Use 'key' (the primary key or replica identity index, the default), 'all' (also the source's other indexes) or 'none'.")
            .raise();
    }
    let ht_options = time_column.is_some() || chunk_interval.is_some();
    if hypertable == Some(false) && ht_options {
        LivesyncError::invalid_parameter(
            "time_column and chunk_interval apply to hypertables only",
        )
        .hint("Pass hypertable => true, or leave them out.")
        .raise();
    }
    let req = HypertableRequest {
        wanted: hypertable.unwrap_or(ht_options),
        time_column,
        chunk_interval,
    };
    if req.wanted && distributed_by.is_some() {
        LivesyncError::invalid_parameter(
            "a target cannot be both a hypertable and a Citus distributed table",
        )
        .hint("Pass either hypertable => true or distributed_by => 'column'.")
        .raise();
    }
    if req.wanted {
        crate::timescale::check_available().or_raise();
    }
    if distributed_by.is_some() {
        crate::citus::check_available().or_raise();
    }
    // Suggest a hypertable only where one could be made, and only to a caller who did not say.
    let suggest = hypertable.is_none() && !req.wanted && crate::timescale::installed();
    let chunk_bytes = if req.wanted {
        crate::timescale::chunk_bytes()
    } else {
        0
    };

    let c = resolve_connector(connector).or_raise();
    lock_table_set(&c);

    let (def, spec, suggestion) = with_source(&c, async |client, info| {
        let def = describe_source(client, info, source_table).await?;
        if !matches!(def.kind.as_str(), "r" | "p") {
            return Ok((def, None, None));
        }
        if req.wanted {
            let (spec, s) = plan_hypertable(client, info, &def, &req, chunk_bytes).await?;
            return Ok((def, Some(spec), Some(s)));
        }
        if suggest {
            let s = timecol::suggest_from_source(client, &def).await.ok();
            return Ok((def, None, s));
        }
        Ok((def, None, None))
    })
    .or_raise();

    let what = match def.kind.as_str() {
        "r" | "p" => None,
        "v" => Some("a view"),
        "m" => Some("a materialized view"),
        "f" => Some("a foreign table"),
        "S" => Some("a sequence"),
        _ => Some("not a table"),
    };
    if let Some(what) = what {
        LivesyncError::new(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("{} is {what} on the source", def.qualified()),
        )
        .detail("Logical replication publishes tables (and partitioned tables) only.")
        .hint("Sync the table(s) the view or foreign table reads from instead.")
        .raise();
    }

    if let Some(existing) = tables::find(c.id, &def.schema, &def.name).or_raise() {
        pgrx::notice!(
            "table {} is already synced by connector \"{}\" (into {}), skipping",
            def.qualified(),
            c.name,
            qualified(&existing.target_schema, &existing.target_name)
        );
        return;
    }

    // What a restart during the copy costs (see src/copy/resume.rs): said once, here.
    if def.resume_key().is_none() {
        if def.has_children() {
            pgrx::notice!(
                "source table {} is copied as one range (its rows are in partitions or chunks): a restart during its copy copies it again whole, and its copy keeps one source snapshot to its end",
                def.qualified()
            );
        } else {
            pgrx::notice!(
                "source table {} has no primary key or replica identity index carried whole in its changes: a restart during its copy starts it over, and its copy keeps one source snapshot to its end (livesync.max_snapshot_age does not apply)",
                def.qualified()
            );
        }
    }

    // A table without replica identity in a publication that publishes UPDATE and DELETE makes
    // the *source* reject its application's own UPDATEs and DELETEs of it: refuse, unless the
    // user asks for an append-only table (a publication of inserts and truncates only).
    if append_only {
        pgrx::notice!(
            "source table {} is synced append-only: its INSERTs and TRUNCATEs are replicated, its UPDATEs and DELETEs are not",
            def.qualified()
        );
    } else if !def.has_replica_identity() {
        let q = def.qualified().replace('\'', "''");
        LivesyncError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("source table {} has no primary key or replica identity", def.qualified()),
        )
        .detail("In the connector's publication, which publishes UPDATE and DELETE, the source would reject every UPDATE and DELETE of it by its own applications.")
        .hint(format!(
            "On the source: ALTER TABLE {} REPLICA IDENTITY FULL; (or add a primary key), then add the table again; or, for a table that only ever receives inserts: SELECT livesync.add_table('{q}', append_only => true);",
            def.qualified()
        ))
        .raise();
    }

    let (tschema, tname) = match target {
        Some(t) => parse_qualified(t, &def.schema).or_raise(),
        None => (def.schema.clone(), def.name.clone()),
    };
    let target_q = qualified(&tschema, &tname);
    if let Some(other) = tables::find_by_target(&tschema, &tname).or_raise() {
        LivesyncError::new(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!(
                "target table {target_q} already receives source table {}",
                qualified(&other.source_schema, &other.source_name)
            ),
        )
        .hint("Pass another target => 'schema.table'.")
        .raise();
    }

    let target_relid = Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT pg_catalog.to_regclass($1)::oid",
        &[target_q.as_str().into()],
    )
    .map_err(catalog::spi_err)
    .or_raise();
    let created = target_relid.is_none();
    // A Citus table cannot have one of several equal rows picked by its ctid, which is how
    // changes of a table without a key (REPLICA IDENTITY FULL) are applied.
    let citus_target =
        distributed_by.is_some() || target_relid.and_then(crate::citus::table).is_some();
    if citus_target && def.key.is_empty() && !append_only {
        LivesyncError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("source table {} has no primary key or replica identity index, which a Citus target needs", def.qualified()),
        )
        .detail("Under REPLICA IDENTITY FULL livesync changes one of several equal rows, picked by its ctid; a statement on a Citus table cannot pick rows by ctid.")
        .hint(format!(
            "On the source: add a primary key to {}, then add the table again; or, for a table that only ever receives inserts: SELECT livesync.add_table('{}', append_only => true);",
            def.qualified(),
            def.qualified().replace('\'', "''")
        ))
        .raise();
    }
    // Sequences owned by its columns (serial, identity): created on the target (in the target
    // table's schema, under their source names) before the table, so that a `nextval` default
    // builds there; kept in step once the table is copied (src/sequences.rs).
    let source_q = def.qualified();
    let owned = with_source(&c, async |client, info| {
        crate::sequences::owned_by(client, &source_q)
            .await
            .map_err(|e| LivesyncError::source_query(&info.endpoint(), &e))
    })
    .or_raise();
    let mut owned_targets = Vec::new();
    for s in &owned {
        if let Some(other) = catalog::sequences::find_by_target(&tschema, &s.name).or_raise() {
            pgrx::notice!(
                "sequence {} is not kept in step: target sequence {} already follows {}",
                qualified(&s.schema, &s.name),
                qualified(&tschema, &s.name),
                qualified(&other.source_schema, &other.source_name)
            );
            continue;
        }
        if crate::sequences::create_on_target(s, &tschema, &s.name).or_raise() {
            pgrx::notice!(
                "created sequence {} on the target",
                qualified(&tschema, &s.name)
            );
        }
        owned_targets.push(s.clone());
    }
    let mut build_key =
        target::prepare(&def, &tschema, &tname, spec.as_ref(), distributed_by).or_raise();
    if created {
        // A column the sequence belongs to draws from it on the target too (an identity column
        // becomes a plain column with that default; a serial default the target could not
        // resolve is set again, schema-qualified).
        for s in &owned_targets {
            let Some((col, _)) = &s.owner_column else {
                continue;
            };
            let has_default = catalog::first_value_rw::<bool>(
                "SELECT atthasdef FROM pg_catalog.pg_attribute WHERE attrelid = pg_catalog.to_regclass($1) AND attname = $2",
                &[target_q.as_str().into(), col.as_str().into()],
            )
            .or_raise()
            .unwrap_or(true);
            if !has_default {
                let seq_q = qualified(&tschema, &s.name);
                Spi::run(&format!(
                    "ALTER TABLE {target_q} ALTER COLUMN {} SET DEFAULT pg_catalog.nextval({}::regclass)",
                    spi::quote_identifier(col),
                    spi::quote_literal(&seq_q)
                ))
                .map_err(catalog::spi_err)
                .or_raise();
            }
        }
    }
    let mut build_indexes = None;
    match indexes {
        _ if !created && indexes != "key" => pgrx::notice!(
            "target table {target_q} exists: its indexes are left as they are (indexes => '{indexes}' applies to tables livesync creates)"
        ),
        "none" => {
            if build_key.take().is_some() {
                LivesyncError::new(PgSqlErrorCode::ERRCODE_WARNING, format!("target table {target_q} gets no index"))
                    .detail("Every UPDATE and DELETE streamed to it will scan the whole table to find its row.")
                    .hint("Create an index on the key columns yourself, or add the table with indexes => 'key'.")
                    .report(PgLogLevel::WARNING);
            }
        }
        "all" => {
            let source_q = def.qualified();
            let found = with_source(&c, async |client, info| {
                let rows = client
                    .query(table::OTHER_INDEXES_QUERY, &[&source_q])
                    .await
                    .map_err(|e| LivesyncError::source_query(&info.endpoint(), &e))?;
                Ok(rows.iter().map(table::IndexDef::from_row).collect::<Vec<_>>())
            })
            .or_raise();
            let stmts = target::plan_indexes(&target_q, &tschema, &found);
            build_indexes = (!stmts.is_empty()).then_some(stmts);
        }
        _ => {}
    }
    if let (Some(spec), false) = (&spec, def.key.is_empty()) {
        if !def.key.contains(&spec.time_column) {
            pgrx::notice!(
                "the key of {target_q} will be ({}, {}): TimescaleDB requires the time column in every unique index",
                def.key.iter().map(|k| spi::quote_identifier(k)).collect::<Vec<_>>().join(", "),
                spi::quote_identifier(&spec.time_column)
            );
        }
    }
    if let Some(s) = suggestion.as_ref().filter(|_| spec.is_none()) {
        if let Some(col) = &s.column {
            LivesyncError::new(
                PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
                format!("TimescaleDB is installed on the target; {} would suit a hypertable", s.reason),
            )
            .hint(format!(
                "To sync into a hypertable instead: SELECT livesync.remove_table('{}'); DROP TABLE {target_q}; SELECT livesync.add_table('{}', hypertable => true, time_column => '{}');",
                def.qualified().replace('\'', "''"),
                def.qualified().replace('\'', "''"),
                col.replace('\'', "''")
            ))
            .report(PgLogLevel::NOTICE);
        }
    }

    // The source is not changed here: the connector's worker puts the table into its
    // publication once this transaction commits (a rolled-back add_table leaves the source as
    // it was). What would make that fail is checked now.
    let source_q = def.qualified();
    let needs_schema = def.source_hypertable.is_some();
    with_source(&c, async |client, info| {
        let (owner, superuser) =
            publication::privileges(client, &source_q).await.map_err(|e| LivesyncError::source_query(&info.endpoint(), &e))?;
        if !owner && !superuser {
            return Err(LivesyncError::new(
                PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                format!("role \"{}\" does not own source table {source_q}", info.user()),
            )
            .detail("Adding a table to the connector's publication requires owning it on the source.")
            .hint(format!(
                "On the source: ALTER TABLE {source_q} OWNER TO {}; or connect as the table's owner.",
                crate::source::quote_ident(&info.user())
            )));
        }
        if needs_schema {
            let version: i32 = client
                .query_one("SELECT current_setting('server_version_num')::int4", &[])
                .await
                .map_err(|e| LivesyncError::source_query(&info.endpoint(), &e))?
                .get(0);
            if version < 150000 {
                return Err(LivesyncError::new(
                    PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                    format!("source table {source_q} is a hypertable, which livesync syncs from PostgreSQL 15 or later only"),
                )
                .detail(format!(
                    "The source runs PostgreSQL {}.{}; its hypertable's rows are in chunks, and only PostgreSQL 15 can publish every chunk, including new ones, from their first row (ALTER PUBLICATION … ADD TABLES IN SCHEMA).",
                    version / 10000,
                    version % 10000 / 100
                ))
                .hint("Upgrade the source to PostgreSQL 15 or later."));
            }
            if !superuser {
                let schema = def.source_hypertable.as_ref().map(|h| h.chunk_schema.clone()).unwrap_or_default();
                return Err(LivesyncError::new(
                    PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
                    format!("source table {source_q} is a hypertable, whose chunks only a superuser can publish"),
                )
                .hint(format!(
                    "Publishing the hypertable's chunks (ALTER PUBLICATION … ADD TABLES IN SCHEMA {}) requires a superuser on the source; connect as one.",
                    crate::source::quote_ident(&schema)
                )));
            }
        }
        Ok(())
    })
    .or_raise();
    if let Some(h) = def
        .source_hypertable
        .as_ref()
        .filter(|_| def.key.is_empty())
    {
        LivesyncError::new(
            PgSqlErrorCode::ERRCODE_WARNING,
            format!("source hypertable {} has no primary key", def.qualified()),
        )
        .detail(format!(
            "When a change reaches compressed data on the source, TimescaleDB decompresses it by re-inserting rows into its chunks (schema \"{}\"); livesync recognizes those rows by the target's key, and without one they would be duplicated.",
            h.chunk_schema
        ))
        .hint("Give the source table a primary key, or do not compress it on the source.")
        .report(PgLogLevel::WARNING);
    }

    let table_id = tables::insert(&tables::NewSyncTable {
        connector_id: c.id,
        source_schema: &def.schema,
        source_name: &def.name,
        target_schema: &tschema,
        target_name: &tname,
        build_key,
        build_key_primary: def.key_is_primary,
        build_indexes,
        est_rows: def.est_rows as i64,
        est_bytes: def.size_bytes,
        hypertable: spec,
        source_hypertable: def.source_hypertable.clone(),
        published: false,
        append_only,
        distributed_by: distributed_by.map(str::to_string),
    })
    .or_raise();
    for s in &owned_targets {
        catalog::sequences::insert(
            c.id,
            Some(table_id),
            (&s.schema, &s.name),
            (&tschema, &s.name),
        )
        .or_raise();
    }
    wake_worker_after_commit(&c);
}

#[pg_extern]
fn remove_table(source_table: &str, connector: default!(Option<&str>, "NULL")) {
    let c = resolve_connector(connector).or_raise();
    lock_table_set(&c);
    let (schema, name) = parse_qualified(source_table, "public").or_raise();
    let Some(t) = tables::find(c.id, &schema, &name).or_raise() else {
        LivesyncError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!(
                "table {} is not synced by connector \"{}\"",
                qualified(&schema, &name),
                c.name
            ),
        )
        .hint("SELECT source_table FROM livesync.table_progress lists the synced tables.")
        .raise();
    };
    // The worker drops it from the publication once this commits (see `copy::reconcile`).
    tables::add_unpublish(c.id, &t.source_schema, &t.source_name).or_raise();
    wake_worker_after_commit(&c);
    tables::delete(t.id).or_raise();
}

#[pg_extern]
fn resync_table(source_table: &str, connector: default!(Option<&str>, "NULL")) {
    let c = resolve_connector(connector).or_raise();
    let (schema, name) = parse_qualified(source_table, "public").or_raise();
    let Some(t) = tables::find(c.id, &schema, &name).or_raise() else {
        LivesyncError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!(
                "table {} is not synced by connector \"{}\"",
                qualified(&schema, &name),
                c.name
            ),
        )
        .raise();
    };
    // The copy starts over from a new snapshot; rows of the old copy must go first.
    Spi::run(&format!(
        "TRUNCATE {}",
        qualified(&t.target_schema, &t.target_name)
    ))
    .map_err(catalog::spi_err)
    .or_raise();
    tables::mark_pending(t.id).or_raise();
    wake_worker_after_commit(&c);
}

/// `livesync.suggest_time_column('public.metrics')`: the column a hypertable for this source table
/// would be partitioned by, why, and the chunk width livesync would pick; NULLs and the reason
/// when no column qualifies.
#[pg_extern]
fn suggest_time_column(
    source_table: &str,
    connector: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(time_column, Option<String>),
        name!(reason, String),
        name!(chunk_interval, Option<String>),
    ),
> {
    let c = resolve_connector(connector).or_raise();
    let chunk_bytes = crate::timescale::chunk_bytes();
    let row = with_source(&c, async |client, info| {
        let def = describe_source(client, info, source_table).await?;
        let s = timecol::suggest_from_source(client, &def)
            .await
            .map_err(|e| LivesyncError::source_query(&info.endpoint(), &e))?;
        let interval = match (&s.column, s.kind) {
            (Some(col), Some(kind)) => {
                let span = timecol::span_on_source(client, &def, col, kind).await;
                timecol::chunk_interval(kind, span, def.size_bytes, chunk_bytes)
            }
            _ => None,
        };
        Ok((s.column, s.reason, interval))
    })
    .or_raise();
    TableIterator::once(row)
}
