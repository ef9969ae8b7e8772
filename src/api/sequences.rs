//! `livesync.add_sequence`, `livesync.remove_sequence` and `livesync.sync_sequences` (see
//! `src/sequences.rs`). Sequences owned by synced tables' columns are added by `add_table`.

use pgrx::prelude::*;

use super::tables::{parse_qualified, resolve_connector, with_source};
use crate::catalog::{self, sequences};
use crate::copy::target::qualified;
use crate::error::{LivesyncError, OrRaise};

#[pg_extern]
fn add_sequence(
    source_sequence: &str,
    target: default!(Option<&str>, "NULL"),
    connector: default!(Option<&str>, "NULL"),
) {
    let c = resolve_connector(connector).or_raise();
    let seq = with_source(&c, async |client, info| {
        crate::sequences::describe(client, source_sequence)
            .await
            .map_err(|e| LivesyncError::source_query(&info.endpoint(), &e))?
            .ok_or_else(|| {
                LivesyncError::new(
                    PgSqlErrorCode::ERRCODE_UNDEFINED_TABLE,
                    format!("sequence \"{source_sequence}\" does not exist on the source at \"{}\"", info.endpoint_with_db()),
                )
                .hint("Check the name and the schema: SELECT sequencename FROM pg_sequences; on the source.")
            })
    })
    .or_raise();
    if let Some(s) = sequences::find(c.id, &seq.schema, &seq.name).or_raise() {
        pgrx::notice!(
            "sequence {} is already kept in step by connector \"{}\" (into {}), skipping",
            qualified(&seq.schema, &seq.name),
            c.name,
            qualified(&s.target_schema, &s.target_name)
        );
        return;
    }
    let (tschema, tname) = match target {
        Some(t) => parse_qualified(t, &seq.schema).or_raise(),
        None => (seq.schema.clone(), seq.name.clone()),
    };
    if let Some(other) = sequences::find_by_target(&tschema, &tname).or_raise() {
        LivesyncError::new(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!(
                "target sequence {} already follows source sequence {}",
                qualified(&tschema, &tname),
                qualified(&other.source_schema, &other.source_name)
            ),
        )
        .hint("Pass another target => 'schema.sequence'.")
        .raise();
    }
    let target_q = qualified(&tschema, &tname);
    match catalog::first_value_rw::<String>(
        "SELECT relkind::text FROM pg_catalog.pg_class WHERE oid = pg_catalog.to_regclass($1)",
        &[target_q.as_str().into()],
    )
    .or_raise()
    {
        Some(k) if k != "S" => LivesyncError::new(
            PgSqlErrorCode::ERRCODE_WRONG_OBJECT_TYPE,
            format!("{target_q} is not a sequence on the target"),
        )
        .hint("Pass another target => 'schema.sequence'.")
        .raise(),
        _ => {}
    }
    if crate::sequences::create_on_target(&seq, &tschema, &tname).or_raise() {
        pgrx::notice!("created sequence {target_q} on the target");
    }
    sequences::insert(c.id, None, (&seq.schema, &seq.name), (&tschema, &tname)).or_raise();
}

#[pg_extern]
fn remove_sequence(source_sequence: &str, connector: default!(Option<&str>, "NULL")) {
    let c = resolve_connector(connector).or_raise();
    let (schema, name) = parse_qualified(source_sequence, "public").or_raise();
    match sequences::find(c.id, &schema, &name).or_raise() {
        Some(s) if s.table_id.is_none() => sequences::delete(s.id).or_raise(),
        Some(_) => LivesyncError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "sequence {} is owned by a synced table's column",
                qualified(&schema, &name)
            ),
        )
        .hint("It is kept in step as long as its table is synced; remove_table stops both.")
        .raise(),
        None => LivesyncError::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!(
                "sequence {} is not kept in step by connector \"{}\"",
                qualified(&schema, &name),
                c.name
            ),
        )
        .hint("SELECT source_sequence FROM livesync.sequences lists them.")
        .raise(),
    }
}

/// Bring every target sequence of the connector up to the source's current value now (never
/// backwards), and say what each one did.
#[pg_extern]
fn sync_sequences(
    connector: default!(Option<&str>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(source_sequence, String),
        name!(target_sequence, String),
        name!(source_next, Option<i64>),
        name!(target_next, Option<i64>),
        name!(moved, bool),
        name!(error, Option<String>),
    ),
> {
    let c = resolve_connector(connector).or_raise();
    let list = sequences::due(c.id).or_raise();
    let values = if list.is_empty() {
        Vec::new()
    } else {
        let l = list.clone();
        with_source(&c, async move |client, _info| {
            Ok(crate::sequences::read_source(client, &l).await)
        })
        .or_raise()
    };
    let rows: Vec<_> = crate::sequences::apply(&list, values)
        .into_iter()
        .map(|s| {
            (
                // Spelled as in livesync.sequences (quoted only where needed).
                format!(
                    "{}.{}",
                    spi::quote_identifier(&s.sequence.source_schema),
                    spi::quote_identifier(&s.sequence.source_name)
                ),
                format!(
                    "{}.{}",
                    spi::quote_identifier(&s.sequence.target_schema),
                    spi::quote_identifier(&s.sequence.target_name)
                ),
                s.source_next,
                s.target_next,
                s.moved,
                s.error,
            )
        })
        .collect();
    TableIterator::new(rows)
}
