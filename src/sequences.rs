//! Keeping sequences in step with the source.
//!
//! Logical replication carries rows, not sequences: after a cutover, an application inserting on
//! the target would draw `nextval` values the source already used, and collide. livesync keeps
//! the sequences owned by synced tables' columns (serial, identity) and those added with
//! `livesync.add_sequence()` in step: each target sequence is created from the source's catalog
//! fields (type, increment, bounds, start, cycle — never source text), set when its table
//! finishes its copy, refreshed every `livesync.sequence_sync_interval` while the connector
//! streams, and on demand by `livesync.sync_sequences()`. A target sequence only ever moves
//! forward: one that is ahead (used on the target, or set by hand) is left alone.
//!
//! Compared is *the next value `nextval` would return* on each side (from `last_value`,
//! `is_called` and the increment), so a sequence never called and one called once compare right.

use pgrx::prelude::*;

use crate::catalog::sequences::SyncSequence;
use crate::catalog::{self, spi_err};
use crate::error::{LivesyncError, Result};
use crate::source::{quote_ident, quote_literal};

/// A source sequence's definition, from `pg_sequence`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceSequence {
    pub schema: String,
    pub name: String,
    /// `int2`, `int4` or `int8` (by OID).
    pub type_oid: u32,
    pub increment: i64,
    pub min: i64,
    pub max: i64,
    pub start: i64,
    pub cycle: bool,
    /// The column owning it, and whether as an identity column.
    pub owner_column: Option<(String, bool)>,
}

const FIELDS: &str = "sn.nspname::text, s.relname::text, q.seqtypid::int8, q.seqincrement, q.seqmin, q.seqmax, q.seqstart, q.seqcycle";

/// Sequences owned by the columns of table `$1` (a qualified name): serial (`deptype` a) and
/// identity (`i`) ones.
pub const OWNED_QUERY: &str = "\
SELECT sn.nspname::text, s.relname::text, q.seqtypid::int8, q.seqincrement, q.seqmin, q.seqmax, q.seqstart, q.seqcycle,
       a.attname::text, a.attidentity <> ''
  FROM pg_catalog.pg_depend d
  JOIN pg_catalog.pg_class s ON s.oid = d.objid AND s.relkind = 'S'
  JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace
  JOIN pg_catalog.pg_sequence q ON q.seqrelid = s.oid
  JOIN pg_catalog.pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
 WHERE d.classid = 'pg_catalog.pg_class'::regclass AND d.refclassid = 'pg_catalog.pg_class'::regclass
   AND d.refobjid = $1::text::regclass AND d.deptype IN ('a', 'i')
 ORDER BY a.attnum";

fn from_row(r: &tokio_postgres::Row, owned: bool) -> SourceSequence {
    SourceSequence {
        schema: r.get(0),
        name: r.get(1),
        type_oid: r.get::<_, i64>(2) as u32,
        increment: r.get(3),
        min: r.get(4),
        max: r.get(5),
        start: r.get(6),
        cycle: r.get(7),
        owner_column: owned.then(|| (r.get::<_, String>(8), r.get::<_, bool>(9))),
    }
}

pub async fn owned_by(
    client: &tokio_postgres::Client,
    table_q: &str,
) -> std::result::Result<Vec<SourceSequence>, tokio_postgres::Error> {
    Ok(client
        .query(OWNED_QUERY, &[&table_q])
        .await?
        .iter()
        .map(|r| from_row(r, true))
        .collect())
}

/// The source sequence spelled `spelled` (resolved by the source), or None when there is none.
pub async fn describe(
    client: &tokio_postgres::Client,
    spelled: &str,
) -> std::result::Result<Option<SourceSequence>, tokio_postgres::Error> {
    let q = format!(
        "SELECT {FIELDS}
           FROM pg_catalog.pg_class s
           JOIN pg_catalog.pg_namespace sn ON sn.oid = s.relnamespace
           JOIN pg_catalog.pg_sequence q ON q.seqrelid = s.oid
          WHERE s.oid = pg_catalog.to_regclass($1)"
    );
    Ok(client
        .query_opt(&q, &[&spelled])
        .await?
        .map(|r| from_row(&r, false)))
}

/// The value `nextval` returns next, given a sequence's state.
pub fn next_value(last_value: i64, is_called: bool, increment: i64) -> i64 {
    if is_called {
        last_value.saturating_add(increment)
    } else {
        last_value
    }
}

/// Whether next value `a` is further along than `b` for a sequence counting by `increment`.
pub fn ahead(increment: i64, a: i64, b: i64) -> bool {
    if increment >= 0 {
        a > b
    } else {
        a < b
    }
}

/// The next values of the given source sequences (one query each: each is its own relation).
pub async fn read_source(
    client: &tokio_postgres::Client,
    list: &[SyncSequence],
) -> Vec<std::result::Result<i64, String>> {
    let mut out = Vec::with_capacity(list.len());
    for s in list {
        let q = format!(
            "SELECT s.last_value, s.is_called, q.seqincrement FROM {}.{} s, pg_catalog.pg_sequence q
              WHERE q.seqrelid = pg_catalog.to_regclass({})",
            quote_ident(&s.source_schema),
            quote_ident(&s.source_name),
            quote_literal(&format!("{}.{}", quote_ident(&s.source_schema), quote_ident(&s.source_name)))
        );
        out.push(match client.query_opt(&q, &[]).await {
            Ok(Some(r)) => Ok(next_value(r.get(0), r.get(1), r.get(2))),
            Ok(None) => Err("the source sequence no longer exists".to_string()),
            Err(e) => Err(e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string())),
        });
    }
    out
}

fn type_name(oid: u32) -> &'static str {
    match oid {
        21 => "smallint",
        23 => "integer",
        _ => "bigint",
    }
}

/// Create the target sequence `schema.name` like `src` unless it exists. Returns whether it was
/// created.
pub fn create_on_target(src: &SourceSequence, schema: &str, name: &str) -> Result<bool> {
    let target_q = format!("{}.{}", quote_ident(schema), quote_ident(name));
    let exists = catalog::first_value_rw::<bool>(
        "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
        &[target_q.as_str().into()],
    )?;
    if exists == Some(true) {
        return Ok(false);
    }
    // Built from the catalog fields only (numbers and a type chosen by OID).
    Spi::run(&format!(
        "CREATE SEQUENCE {target_q} AS {} INCREMENT BY {} MINVALUE {} MAXVALUE {} START WITH {} {}",
        type_name(src.type_oid),
        src.increment,
        src.min,
        src.max,
        src.start,
        if src.cycle { "CYCLE" } else { "NO CYCLE" }
    ))
    .map_err(|e| {
        LivesyncError::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "could not create sequence {target_q}: {}",
                spi_err(e).message
            ),
        )
    })?;
    Ok(true)
}

/// Bring target sequence `s` to `source_next` unless it is as far or further. Returns the
/// target's next value after, and whether it moved.
pub fn advance_target(
    s: &SyncSequence,
    source_next: i64,
) -> std::result::Result<(i64, bool), String> {
    let target_q = format!(
        "{}.{}",
        quote_ident(&s.target_schema),
        quote_ident(&s.target_name)
    );
    let row = Spi::connect(|c| {
        let mut t = c.select(
            &format!(
                "SELECT s.last_value, s.is_called, q.seqincrement, q.seqmin, q.seqmax FROM {target_q} s, pg_catalog.pg_sequence q
                  WHERE q.seqrelid = $1::regclass"
            ),
            None,
            &[target_q.as_str().into()],
        )?;
        let r = t.next().ok_or(pgrx::spi::SpiError::InvalidPosition)?;
        Ok::<_, pgrx::spi::SpiError>((
            r.get::<i64>(1)?.unwrap_or(0),
            r.get::<bool>(2)?.unwrap_or(false),
            r.get::<i64>(3)?.unwrap_or(1),
            r.get::<i64>(4)?.unwrap_or(i64::MIN),
            r.get::<i64>(5)?.unwrap_or(i64::MAX),
        ))
    })
    .map_err(|e| format!("could not read target sequence {target_q}: {}", spi_err(e).message))?;
    let (last, called, increment, min, max) = row;
    let target_next = next_value(last, called, increment);
    if !ahead(increment, source_next, target_next) {
        return Ok((target_next, false));
    }
    // setval(v, false): the next nextval returns v. Past the bounds (the source is exhausted):
    // the bound itself, called.
    let (value, is_called) = if source_next > max {
        (max, true)
    } else if source_next < min {
        (min, true)
    } else {
        (source_next, false)
    };
    Spi::run_with_args(
        "SELECT pg_catalog.setval($1::regclass, $2, $3)",
        &[target_q.as_str().into(), value.into(), is_called.into()],
    )
    .map_err(|e| {
        format!(
            "could not set target sequence {target_q}: {}",
            spi_err(e).message
        )
    })?;
    Ok((next_value(value, is_called, increment), true))
}

/// One sequence's sync.
#[derive(Debug, Clone)]
pub struct Synced {
    pub sequence: SyncSequence,
    pub source_next: Option<i64>,
    pub target_next: Option<i64>,
    pub moved: bool,
    pub error: Option<String>,
}

/// Bring the target sequences `list` up to `values` (read from the source), recording each
/// outcome in the catalog. Runs in the caller's transaction.
pub fn apply(list: &[SyncSequence], values: Vec<std::result::Result<i64, String>>) -> Vec<Synced> {
    let mut out = Vec::with_capacity(list.len());
    for (s, v) in list.iter().zip(values) {
        let r = v.and_then(|source_next| {
            advance_target(s, source_next).map(|(t, moved)| (source_next, t, moved))
        });
        let _ = catalog::sequences::record(
            s.id,
            &r.as_ref().map(|(a, b, _)| (*a, *b)).map_err(|e| e.clone()),
        );
        out.push(match r {
            Ok((a, b, moved)) => Synced {
                sequence: s.clone(),
                source_next: Some(a),
                target_next: Some(b),
                moved,
                error: None,
            },
            Err(e) => Synced {
                sequence: s.clone(),
                source_next: None,
                target_next: None,
                moved: false,
                error: Some(e),
            },
        });
    }
    out
}

/// The connector's worker: bring the connector's due sequences up to the source (read through
/// `client`), in a transaction of its own.
pub fn sync_connector(
    connector_id: i32,
    client: &tokio_postgres::Client,
    rt: &tokio::runtime::Runtime,
) {
    let Ok(Ok(list)) = crate::worker::in_transaction(|| catalog::sequences::due(connector_id))
    else {
        return;
    };
    if list.is_empty() {
        return;
    }
    let Some(values) = crate::runtime::block_on_until_shutdown(rt, read_source(client, &list))
    else {
        return;
    };
    let _ = crate::worker::in_transaction(|| apply(&list, values));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_values_and_direction() {
        assert_eq!(next_value(1, false, 1), 1, "never called: start");
        assert_eq!(next_value(41, true, 1), 42);
        assert_eq!(next_value(-5, true, -5), -10);
        assert_eq!(next_value(i64::MAX, true, 1), i64::MAX, "saturates");
        assert!(ahead(1, 42, 41));
        assert!(!ahead(1, 41, 41));
        assert!(!ahead(1, 40, 41), "never backwards");
        assert!(ahead(-1, -10, -9), "descending");
        assert!(!ahead(-1, -8, -9));
    }
}
