//! Which column a table should be partitioned by when it becomes a TimescaleDB hypertable, and
//! how wide its chunks should be — read from the source's catalogs and statistics.
//!
//! The suggestion is deliberately conservative: a hypertable's time column must never be NULL,
//! so only NOT NULL columns qualify; timestamp types win over integers (an integer qualifies
//! only when its name says it is a time, since an integer key such as `id` also correlates with
//! insertion order); within a kind, a column of the primary key and then a strong correlation
//! with the physical order (`pg_stats.correlation`, i.e. rows arrive roughly in time order) win.
//! A source table that is itself a hypertable keeps its own time dimension.

use super::table::TableDef;

/// Per-column facts the suggestion uses: `pg_stats.correlation` (NULL before ANALYZE) and the
/// span between the histogram's first and last bound, in seconds for timestamp types and in
/// the column's units for integers. `$1` schema, `$2` table.
pub const STATS_QUERY: &str = "\
SELECT s.attname::text, s.correlation::float8
  FROM pg_catalog.pg_stats s
 WHERE s.schemaname = $1 AND s.tablename = $2";

/// The time dimension of a source hypertable (TimescaleDB on the source), if the table is one.
pub const SOURCE_DIMENSION_QUERY: &str = "\
SELECT d.column_name::text
  FROM timescaledb_information.dimensions d
 WHERE d.hypertable_schema = $1 AND d.hypertable_name = $2 AND d.dimension_type = 'Time'
 ORDER BY d.dimension_number
 LIMIT 1";

const TIMESTAMPTZ: u32 = 1184;
const TIMESTAMP: u32 = 1114;
const DATE: u32 = 1082;
const INT2: u32 = 21;
const INT4: u32 = 23;
const INT8: u32 = 20;

/// Whether a column of this type can partition a hypertable, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeKind {
    /// timestamptz, timestamp, date: intervals.
    Timestamp,
    /// smallint, integer, bigint: chunk widths in the column's own units.
    Integer,
}

pub fn time_kind(type_oid: u32) -> Option<TimeKind> {
    match type_oid {
        TIMESTAMPTZ | TIMESTAMP | DATE => Some(TimeKind::Timestamp),
        INT2 | INT4 | INT8 => Some(TimeKind::Integer),
        _ => None,
    }
}

fn looks_like_time(name: &str) -> bool {
    let n = name.to_lowercase();
    [
        "time", "ts", "epoch", "date", "day", "created", "updated", "at",
    ]
    .iter()
    .any(|w| {
        n == *w
            || n.ends_with(&format!("_{w}"))
            || n.starts_with(&format!("{w}_"))
            || n.contains("time")
    })
}

#[derive(Debug, Clone, PartialEq)]
pub struct Suggestion {
    /// The column, or None when no column qualifies.
    pub column: Option<String>,
    pub kind: Option<TimeKind>,
    /// Why this column (or why none), for the user.
    pub reason: String,
}

/// Pick the time column of `def`. `correlations`: (column, pg_stats.correlation) pairs;
/// `source_dimension`: the source hypertable's own time column, if it is one.
pub fn suggest(
    def: &TableDef,
    correlations: &[(String, Option<f64>)],
    source_dimension: Option<&str>,
) -> Suggestion {
    if let Some(d) = source_dimension {
        if let Some(c) = def.columns.iter().find(|c| c.name == d) {
            return Suggestion {
                column: Some(d.to_string()),
                kind: time_kind(c.type_oid),
                reason: format!("\"{d}\" is the time dimension of the source hypertable"),
            };
        }
    }
    let corr = |name: &str| {
        correlations
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, c)| *c)
    };
    let mut best: Option<(i32, &super::table::ColumnDef, Vec<String>)> = None;
    let mut nullable = Vec::new();
    for c in &def.columns {
        let Some(kind) = time_kind(c.type_oid) else {
            continue;
        };
        if kind == TimeKind::Integer && !looks_like_time(&c.name) {
            continue;
        }
        if !c.not_null {
            nullable.push(c.name.clone());
            continue;
        }
        let mut why = vec![format!("{}, NOT NULL", c.type_name)];
        let mut score = if kind == TimeKind::Timestamp { 100 } else { 0 };
        if c.type_oid == TIMESTAMPTZ {
            score += 5;
        }
        if def.key.contains(&c.name) {
            score += 20;
            why.push(
                if def.key_is_primary {
                    "in the primary key"
                } else {
                    "in the replica identity key"
                }
                .to_string(),
            );
        }
        match corr(&c.name) {
            Some(r) if r.abs() >= 0.9 => {
                score += 10;
                why.push(format!("correlation {r:.2} with the physical row order"));
            }
            Some(r) => why.push(format!(
                "weak correlation {r:.2} with the physical row order"
            )),
            None => {}
        }
        if best.as_ref().is_none_or(|(s, _, _)| score > *s) {
            best = Some((score, c, why));
        }
    }
    match best {
        Some((_, c, why)) => Suggestion {
            column: Some(c.name.clone()),
            kind: time_kind(c.type_oid),
            reason: format!("\"{}\": {}", c.name, why.join(", ")),
        },
        None if !nullable.is_empty() => Suggestion {
            column: None,
            kind: None,
            reason: format!(
                "no NOT NULL time column: {} can be NULL on the source, and a hypertable's time column cannot",
                nullable.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ")
            ),
        },
        None => Suggestion {
            column: None,
            kind: None,
            reason: "no column of type timestamptz, timestamp or date (nor an integer time column)".to_string(),
        },
    }
}

/// The span of `column`'s values on the source, from the statistics' histogram when there is one
/// (cheap), else from `min`/`max` (may read the table). Seconds for timestamp kinds, column
/// units for integers. `column` and `table` are quoted already.
pub fn span_query(kind: TimeKind, table_qualified: &str, column_quoted: &str) -> String {
    match kind {
        TimeKind::Timestamp => format!(
            "SELECT extract(epoch FROM max({column_quoted})::timestamp - min({column_quoted})::timestamp)::float8 FROM {table_qualified}"
        ),
        TimeKind::Integer => {
            format!("SELECT (max({column_quoted}) - min({column_quoted}))::float8 FROM {table_qualified}")
        }
    }
}

/// Chunk width for a hypertable receiving `table_bytes` of data spread over `span` (seconds or
/// integer units): chunks of about `chunk_bytes` each (TimescaleDB advises that the chunks being
/// written fit in a quarter of memory, which `shared_buffers` usually is).
///
/// Timestamp kinds give an interval literal rounded to whole hours (under a day) or days, between
/// one hour and 90 days, and `7 days` (TimescaleDB's own default) when size or span is unknown.
/// Integer kinds give a positive integer, `None` when unknown (TimescaleDB then requires one).
pub fn chunk_interval(
    kind: TimeKind,
    span: Option<f64>,
    table_bytes: i64,
    chunk_bytes: i64,
) -> Option<String> {
    let known = span
        .filter(|s| s.is_finite() && *s > 0.0)
        .filter(|_| table_bytes > 0 && chunk_bytes > 0);
    match kind {
        TimeKind::Timestamp => {
            let Some(span) = known else {
                return Some("7 days".into());
            };
            let secs =
                (span * chunk_bytes as f64 / table_bytes as f64).clamp(3600.0, 90.0 * 86400.0);
            let (n, unit) = if secs < 86400.0 {
                ((secs / 3600.0).round().max(1.0) as i64, "hour")
            } else {
                ((secs / 86400.0).round().max(1.0) as i64, "day")
            };
            Some(format!("{n} {unit}{}", if n == 1 { "" } else { "s" }))
        }
        TimeKind::Integer => {
            let span = known?;
            Some(
                ((span * chunk_bytes as f64 / table_bytes as f64).round() as i64)
                    .max(1)
                    .to_string(),
            )
        }
    }
}

/// Read what [`suggest`] needs about `def` from the source: column correlations and, when the
/// source has TimescaleDB and the table is a hypertable there, its time dimension.
pub async fn suggest_from_source(
    client: &tokio_postgres::Client,
    def: &TableDef,
) -> Result<Suggestion, tokio_postgres::Error> {
    let correlations: Vec<(String, Option<f64>)> = client
        .query(STATS_QUERY, &[&def.schema, &def.name])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let has_timescale: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('timescaledb_information.dimensions') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    let dimension = if has_timescale {
        client
            .query_opt(SOURCE_DIMENSION_QUERY, &[&def.schema, &def.name])
            .await?
            .map(|r| r.get::<_, String>(0))
    } else {
        None
    };
    Ok(suggest(def, &correlations, dimension.as_deref()))
}

/// The span of `column`'s values on the source (see [`span_query`]); None when the table is
/// empty or the query takes longer than a few seconds (a huge table without an index on it).
pub async fn span_on_source(
    client: &tokio_postgres::Client,
    def: &TableDef,
    column: &str,
    kind: TimeKind,
) -> Option<f64> {
    client
        .batch_execute("SET statement_timeout = '5s'")
        .await
        .ok()?;
    let q = span_query(kind, &def.qualified(), &super::quote_ident(column));
    let span = client
        .query_one(q.as_str(), &[])
        .await
        .ok()
        .and_then(|r| r.get::<_, Option<f64>>(0));
    let _ = client.batch_execute("RESET statement_timeout").await;
    span
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::table::ColumnDef;

    fn col(name: &str, oid: u32, nn: bool) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            type_name: match oid {
                TIMESTAMPTZ => "timestamp with time zone",
                TIMESTAMP => "timestamp without time zone",
                INT8 => "bigint",
                _ => "integer",
            }
            .into(),
            position: 0,
            type_ref: crate::source::table::TypeRef {
                schema: "pg_catalog".into(),
                name: "int4".into(),
                typmod: -1,
            },
            not_null: nn,
            type_oid: oid,
            elem_oid: 0,
            type_kind: "b".into(),
            type_extension: None,
            default_expr: None,
            user_types: vec![],
        }
    }

    fn table(cols: Vec<ColumnDef>, key: &[&str]) -> TableDef {
        TableDef {
            schema: "public".into(),
            name: "m".into(),
            kind: "r".into(),
            columns: cols,
            generated: Vec::new(),
            key: key.iter().map(|s| s.to_string()).collect(),
            key_is_primary: true,
            identity_key: Vec::new(),
            replica_identity: "d".into(),
            est_rows: 0.0,
            size_bytes: 0,
            source_hypertable: None,
        }
    }

    #[test]
    fn prefers_not_null_timestamp_in_key_with_correlation() {
        let t = table(
            vec![
                col("id", INT8, true),
                col("created", TIMESTAMP, true),
                col("time", TIMESTAMPTZ, true),
            ],
            &["id", "time"],
        );
        let s = suggest(
            &t,
            &[("time".into(), Some(0.99)), ("created".into(), Some(0.2))],
            None,
        );
        assert_eq!(s.column.as_deref(), Some("time"));
        assert_eq!(s.kind, Some(TimeKind::Timestamp));
        assert!(
            s.reason.contains("in the primary key") && s.reason.contains("correlation 0.99"),
            "{}",
            s.reason
        );
    }

    #[test]
    fn integer_ids_are_not_time_but_named_integers_are() {
        let t = table(vec![col("id", INT8, true), col("v", INT4, true)], &["id"]);
        assert_eq!(suggest(&t, &[], None).column, None);
        let t = table(
            vec![col("id", INT8, true), col("epoch_ms", INT8, true)],
            &["id"],
        );
        let s = suggest(&t, &[], None);
        assert_eq!(
            (s.column.as_deref(), s.kind),
            (Some("epoch_ms"), Some(TimeKind::Integer))
        );
    }

    #[test]
    fn nullable_time_columns_are_named_in_the_reason() {
        let t = table(
            vec![col("id", INT8, true), col("seen", TIMESTAMPTZ, false)],
            &["id"],
        );
        let s = suggest(&t, &[], None);
        assert_eq!(s.column, None);
        assert!(s.reason.contains("\"seen\" can be NULL"), "{}", s.reason);
    }

    #[test]
    fn a_source_hypertable_keeps_its_dimension() {
        let t = table(
            vec![
                col("time", TIMESTAMPTZ, true),
                col("recorded", TIMESTAMPTZ, true),
            ],
            &["time"],
        );
        let s = suggest(&t, &[("time".into(), Some(1.0))], Some("recorded"));
        assert_eq!(s.column.as_deref(), Some("recorded"));
        assert!(s.reason.contains("source hypertable"));
    }

    #[test]
    fn chunk_intervals() {
        const GB: i64 = 1 << 30;
        // 10 GB over 100 days, 1 GB chunks: 10 days.
        assert_eq!(
            chunk_interval(TimeKind::Timestamp, Some(100.0 * 86400.0), 10 * GB, GB).as_deref(),
            Some("10 days")
        );
        // 100 GB over a day: clamped to one hour.
        assert_eq!(
            chunk_interval(TimeKind::Timestamp, Some(86400.0), 100 * GB, GB).as_deref(),
            Some("1 hour")
        );
        // 12 GB over a day: two hours.
        assert_eq!(
            chunk_interval(TimeKind::Timestamp, Some(86400.0), 12 * GB, GB).as_deref(),
            Some("2 hours")
        );
        // Tiny tables: at most 90 days; unknown: TimescaleDB's default.
        assert_eq!(
            chunk_interval(TimeKind::Timestamp, Some(3e9), 1 << 20, GB).as_deref(),
            Some("90 days")
        );
        assert_eq!(
            chunk_interval(TimeKind::Timestamp, None, GB, GB).as_deref(),
            Some("7 days")
        );
        assert_eq!(
            chunk_interval(TimeKind::Integer, Some(1000.0), 4 * GB, GB).as_deref(),
            Some("250")
        );
        assert_eq!(chunk_interval(TimeKind::Integer, None, GB, GB), None);
    }
}
