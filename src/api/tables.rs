//! `livesync.add_table` and `livesync.remove_table`.
//!
//! `add_table` does everything that can fail because of the user's input synchronously, in the
//! caller's transaction, so mistakes are reported at once and nothing is half-created: it checks
//! the source table, checks or creates the target table, puts the source table into the
//! connector's publication and records the table as `pending`. The copy itself is done by the
//! connector's worker (see `src/copy/`).

use pgrx::prelude::*;

use crate::catalog::{self, tables};
use crate::error::{LivesyncError, OrRaise, Result};
use crate::runtime::{block_on_interruptible, new_runtime};
use crate::source::conninfo::SourceConninfo;
use crate::copy::target::{self, qualified};
use crate::source::table;
use crate::source::{connect, publication};

/// The connector named `name`, or the only one when `name` is NULL.
fn resolve_connector(name: Option<&str>) -> Result<catalog::Connector> {
    if let Some(n) = name {
        return catalog::lock_connector_by_name(n);
    }
    let all = catalog::connector_names()?;
    match all.as_slice() {
        [only] => catalog::lock_connector_by_name(only),
        [] => Err(LivesyncError::new(PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT, "no connector exists")
            .hint("Add one first: SELECT livesync.add_connector('host=... dbname=... user=...');")),
        _ => Err(LivesyncError::new(
            PgSqlErrorCode::ERRCODE_AMBIGUOUS_PARAMETER,
            "more than one connector exists",
        )
        .detail(format!("Connectors: {}.", all.join(", ")))
        .hint("Name the connector: livesync.add_table('schema.table', connector => 'name').")),
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
fn parse_qualified(spelled: &str, default_schema: &str) -> Result<(String, String)> {
    let parts = Spi::get_one_with_args::<Vec<String>>("SELECT pg_catalog.parse_ident($1)", &[spelled.into()])
        .map_err(|_| LivesyncError::invalid_parameter(format!("invalid table name \"{spelled}\""))
            .hint("Write schema.table; quote names with special characters: 'public.\"Weird Name\"'."))?
        .unwrap_or_default();
    match parts.as_slice() {
        [name] => Ok((default_schema.to_string(), name.clone())),
        [schema, name] => Ok((schema.clone(), name.clone())),
        _ => Err(LivesyncError::invalid_parameter(format!("invalid table name \"{spelled}\""))
            .detail("Expected table or schema.table.")),
    }
}

/// Run `f` against the connector's source.
fn with_source<R>(
    c: &catalog::Connector,
    f: impl AsyncFnOnce(&tokio_postgres::Client, &SourceConninfo) -> Result<R>,
) -> Result<R> {
    let conninfo = catalog::conninfo(c.id)?.unwrap_or_default();
    let info = SourceConninfo::parse(&conninfo)
        .map_err(|e| LivesyncError::invalid_parameter(format!("invalid connection string of connector \"{}\": {}", c.name, e.0)))?;
    let rt = new_runtime();
    block_on_interruptible(&rt, async {
        let client = connect::connect(&info, "livesync add_table").await.map_err(|e| LivesyncError::from_connect(&e))?;
        f(&client, &info).await
    })
}

#[pg_extern]
fn add_table(
    source_table: &str,
    target: default!(Option<&str>, "NULL"),
    connector: default!(Option<&str>, "NULL"),
) {
    let c = resolve_connector(connector).or_raise();
    lock_table_set(&c);

    let def = with_source(&c, async |client, info| {
        match table::describe(client, source_table).await {
            Ok(Some(d)) => Ok(d),
            Ok(None) => Err(LivesyncError::new(
                PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                format!("relation \"{source_table}\" does not exist on the source at \"{}\"", info.endpoint_with_db()),
            )
            .hint("Check the name and the schema; names with capitals or special characters need double quotes: '\"MyTable\"'.")),
            Err(e) => Err(LivesyncError::source_query(&info.endpoint(), &e)),
        }
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

    let (tschema, tname) = match target {
        Some(t) => parse_qualified(t, &def.schema).or_raise(),
        None => (def.schema.clone(), def.name.clone()),
    };
    let target_q = qualified(&tschema, &tname);
    if let Some(other) = tables::find_by_target(&tschema, &tname).or_raise() {
        LivesyncError::new(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!("target table {target_q} already receives source table {}", qualified(&other.source_schema, &other.source_name)),
        )
        .hint("Pass another target => 'schema.table'.")
        .raise();
    }

    let build_key = target::prepare(&def, &tschema, &tname).or_raise();

    if !def.has_replica_identity() {
        LivesyncError::new(
            PgSqlErrorCode::ERRCODE_WARNING,
            format!("source table {} has no primary key or replica identity", def.qualified()),
        )
        .detail("The initial copy works, but UPDATE and DELETE on it cannot be replicated.")
        .hint(format!("On the source: ALTER TABLE {} REPLICA IDENTITY FULL; or add a primary key.", def.qualified()))
        .report(PgLogLevel::WARNING);
    }

    let publication = c.publication_name.clone();
    with_source(&c, async |client, info| {
        publication::add_table(client, &publication, &def.schema, &def.name).await.map_err(|e| {
            let err = LivesyncError::source_query(&info.endpoint(), &e);
            if e.as_db_error().is_some_and(|d| d.code() == &tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
                err.hint(format!(
                    "Adding a table to a publication requires owning it. On the source: ALTER TABLE {} OWNER TO {}; or connect as the table's owner.",
                    def.qualified(),
                    crate::source::quote_ident(&info.user())
                ))
            } else {
                err
            }
        })
    })
    .or_raise();

    tables::insert(&tables::NewSyncTable {
        connector_id: c.id,
        source_schema: &def.schema,
        source_name: &def.name,
        target_schema: &tschema,
        target_name: &tname,
        build_key,
        build_key_primary: def.key_is_primary,
        est_rows: def.est_rows as i64,
        est_bytes: def.size_bytes,
    })
    .or_raise();
}

#[pg_extern]
fn remove_table(source_table: &str, connector: default!(Option<&str>, "NULL")) {
    let c = resolve_connector(connector).or_raise();
    lock_table_set(&c);
    let (schema, name) = parse_qualified(source_table, "public").or_raise();
    let Some(t) = tables::find(c.id, &schema, &name).or_raise() else {
        LivesyncError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("table {} is not synced by connector \"{}\"", qualified(&schema, &name), c.name),
        )
        .hint("SELECT source_table FROM livesync.table_progress lists the synced tables.")
        .raise();
    };
    let publication = c.publication_name.clone();
    let removed = with_source(&c, async |client, info| {
        publication::drop_table(client, &publication, &t.source_schema, &t.source_name)
            .await
            .map_err(|e| LivesyncError::source_query(&info.endpoint(), &e))
    });
    if let Err(e) = removed {
        LivesyncError::new(
            PgSqlErrorCode::ERRCODE_WARNING,
            format!("table {} stays in publication \"{}\" on the source", qualified(&schema, &name), publication),
        )
        .detail(format!("Could not reach the source: {}.", e.message))
        .hint(format!(
            "When the source is reachable, run on it: ALTER PUBLICATION {} DROP TABLE {};",
            spi::quote_identifier(&publication),
            qualified(&t.source_schema, &t.source_name)
        ))
        .report(PgLogLevel::WARNING);
    }
    tables::delete(t.id).or_raise();
}

#[pg_extern]
fn resync_table(source_table: &str, connector: default!(Option<&str>, "NULL")) {
    let c = resolve_connector(connector).or_raise();
    let (schema, name) = parse_qualified(source_table, "public").or_raise();
    let Some(t) = tables::find(c.id, &schema, &name).or_raise() else {
        LivesyncError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("table {} is not synced by connector \"{}\"", qualified(&schema, &name), c.name),
        )
        .raise();
    };
    // The copy starts over from a new snapshot; rows of the old copy must go first.
    Spi::run(&format!("TRUNCATE {}", qualified(&t.target_schema, &t.target_name)))
        .map_err(catalog::spi_err)
        .or_raise();
    tables::mark_pending(t.id).or_raise();
}
