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
use crate::source::table::{self, TableDef};
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

fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", spi::quote_identifier(schema), spi::quote_identifier(name))
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

/// A target column: name and `format_type` of its type.
fn target_columns(target: &str) -> Result<Vec<(String, String)>> {
    Spi::connect(|c| {
        let t = c.select(
            "SELECT attname::text, pg_catalog.format_type(atttypid, atttypmod)
               FROM pg_catalog.pg_attribute
              WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped
              ORDER BY attnum",
            None,
            &[target.into()],
        )?;
        t.map(|r| Ok((r.get::<String>(1)?.unwrap_or_default(), r.get::<String>(2)?.unwrap_or_default())))
            .collect::<pgrx::spi::SpiResult<Vec<_>>>()
    })
    .map_err(catalog::spi_err)
}

/// An existing target must have every source column, with the same type, and be empty.
fn check_existing_target(def: &TableDef, target: &str) -> Result<()> {
    let cols = target_columns(target)?;
    for sc in &def.columns {
        match cols.iter().find(|(n, _)| n == &sc.name) {
            None => {
                return Err(LivesyncError::new(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
                    format!("column \"{}\" of source table {} does not exist in target table {target}", sc.name, def.qualified()),
                )
                .hint(format!("ALTER TABLE {target} ADD COLUMN {} {};", spi::quote_identifier(&sc.name), sc.type_name)))
            }
            Some((_, ty)) if ty != &sc.type_name => {
                return Err(LivesyncError::new(
                    PgSqlErrorCode::ERRCODE_DATATYPE_MISMATCH,
                    format!(
                        "column \"{}\" has type {} on the source but {ty} in target table {target}",
                        sc.name, sc.type_name
                    ),
                )
                .hint(format!(
                    "ALTER TABLE {target} ALTER COLUMN {} TYPE {};",
                    spi::quote_identifier(&sc.name),
                    sc.type_name
                )))
            }
            Some(_) => {}
        }
    }
    let has_rows = Spi::get_one::<bool>(&format!("SELECT EXISTS (SELECT 1 FROM {target})"))
        .map_err(catalog::spi_err)?
        .unwrap_or(false);
    if has_rows {
        return Err(LivesyncError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("target table {target} is not empty"),
        )
        .detail("The initial copy loads every row of the source table; rows already there would be duplicated or conflict.")
        .hint(format!("TRUNCATE {target}; or pass another target => 'schema.table'.")));
    }
    Ok(())
}

/// Every column type must exist on the target before the table can be created there.
fn check_types_exist(def: &TableDef) -> Result<()> {
    for c in &def.columns {
        let exists = Spi::get_one_with_args::<bool>("SELECT pg_catalog.to_regtype($1) IS NOT NULL", &[c.type_name.as_str().into()])
            .map_err(catalog::spi_err)?
            .unwrap_or(false);
        if exists {
            continue;
        }
        let base = c.type_name.trim_end_matches("[]");
        let hint = match (&c.type_extension, c.type_kind.as_str()) {
            (Some(ext), _) => format!("CREATE EXTENSION {} on the target first.", spi::quote_identifier(ext)),
            (None, "e") => format!("Create the enum type on the target first (its definition: SELECT pg_catalog.enum_range(NULL::{base}) on the source)."),
            (None, "d") => "Create the domain on the target first (copy its definition from the source with pg_dump --schema-only).".to_string(),
            (None, "c") => "Create the composite type on the target first (copy its definition from the source with pg_dump --schema-only).".to_string(),
            _ => "Create the type on the target first.".to_string(),
        };
        return Err(LivesyncError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("type \"{base}\" of column \"{}\" does not exist on the target", c.name),
        )
        .hint(hint));
    }
    Ok(())
}

#[pg_extern]
fn add_table(
    source_table: &str,
    target: default!(Option<&str>, "NULL"),
    connector: default!(Option<&str>, "NULL"),
) {
    let c = resolve_connector(connector).or_raise();

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

    let exists = Spi::get_one_with_args::<bool>("SELECT pg_catalog.to_regclass($1) IS NOT NULL", &[target_q.as_str().into()])
        .map_err(catalog::spi_err)
        .or_raise()
        .unwrap_or(false);
    let build_key = if exists {
        check_existing_target(&def, &target_q).or_raise();
        None
    } else {
        check_types_exist(&def).or_raise();
        let schema_exists = Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1)",
            &[tschema.as_str().into()],
        )
        .map_err(catalog::spi_err)
        .or_raise()
        .unwrap_or(false);
        if !schema_exists {
            Spi::run(&format!("CREATE SCHEMA {}", spi::quote_identifier(&tschema))).map_err(catalog::spi_err).or_raise();
            pgrx::notice!("created schema {} on the target", spi::quote_identifier(&tschema));
        }
        Spi::run(&def.create_table_sql(&target_q)).map_err(catalog::spi_err).or_raise();
        (!def.key.is_empty()).then(|| def.key.clone())
    };

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
        publication::add_table(client, &publication, &def.schema, &def.name)
            .await
            .map_err(|e| LivesyncError::source_query(&info.endpoint(), &e))
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
