//! The statements a verification runs on each side: pure text, no pgrx, unit-tested.
//!
//! Both sides compute, per row, a 64-bit hash of the row's text (`ROW(columns)::text` under the
//! settings of [`PINNED_SETTINGS`], so equal values print, and hash, equally on both sides) and
//! sum it per bucket; only the per-bucket counts and sums cross the network. A bucket is either
//! a range of the key's first column (`width_bucket` over thresholds sampled from the source,
//! which is a binary search when that column's type has a fixed width) or, for other keys and
//! tables without a key, a slice of the key's (or the whole row's) hash. Buckets that differ are
//! then read row by row — key and row hash — to name the rows that differ: a key range through
//! the key's index, hash slices with one more scan.

use crate::source::{quote_ident, quote_literal};

/// Output settings both sides use while hashing (`SET LOCAL`): dates, times, intervals, floats,
/// bytea and money print the same way whatever the sessions' defaults are.
pub const PINNED_SETTINGS: &str =
    "SET LOCAL DateStyle = 'ISO, YMD'; SET LOCAL IntervalStyle = 'postgres'; \
     SET LOCAL TimeZone = 'UTC'; SET LOCAL extra_float_digits = 1; SET LOCAL bytea_output = 'hex'; \
     SET LOCAL lc_monetary = 'C'";

/// What is compared, the same on both sides.
#[derive(Debug, Clone)]
pub struct Shape {
    /// Compared columns, in the source's order.
    pub columns: Vec<String>,
    /// Key columns (primary key or replica identity index); empty: rows are known by their text.
    pub key: Vec<String>,
    /// Hash each row with its columns' own hash functions (`hash_record_extended`: values equal
    /// by their type's `=` hash equally, `1.50` and `1.5` too) instead of hashing its text.
    pub typed: bool,
}

/// How rows fall into buckets.
#[derive(Debug, Clone, PartialEq)]
pub enum Buckets {
    /// Ranges of the first key column: its type on this side (for the casts) and the thresholds
    /// (as text, ascending). Bucket `b` holds `thresholds[b-1] <= k < thresholds[b]`.
    Range { column: String, type_name: String },
    /// `hash & (count - 1)`, `count` a power of two.
    Hash { count: u32 },
}

impl Shape {
    fn row_text(&self) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("t.{}", quote_ident(c)))
            .collect();
        format!("ROW({})::text", cols.join(", "))
    }

    fn row_hash(&self) -> String {
        if self.typed {
            let cols: Vec<String> = self
                .columns
                .iter()
                .map(|c| format!("t.{}", quote_ident(c)))
                .collect();
            return format!(
                "pg_catalog.hash_record_extended(ROW({}), 0)",
                cols.join(", ")
            );
        }
        format!("pg_catalog.hashtextextended({}, 0)", self.row_text())
    }

    /// The key as a jsonb object's text (`{"id": 5}`), or the row's text when there is no key.
    fn key_text(&self) -> String {
        if self.key.is_empty() {
            return self.row_text();
        }
        let pairs: Vec<String> = self
            .key
            .iter()
            .map(|c| format!("{}, t.{}", quote_literal(c), quote_ident(c)))
            .collect();
        format!("pg_catalog.jsonb_build_object({})::text", pairs.join(", "))
    }

    fn bucket_expr(&self, b: &Buckets) -> String {
        match b {
            Buckets::Range { column, type_name } => {
                format!(
                    "pg_catalog.width_bucket(t.{}, $1::text[]::{}[])",
                    quote_ident(column),
                    type_name
                )
            }
            Buckets::Hash { count } => {
                format!(
                    "(pg_catalog.hashtextextended({}, 0) & {})::int4",
                    self.key_text(),
                    count.saturating_sub(1)
                )
            }
        }
    }

    /// Per bucket: `b` int4, `n` int8 rows, `s` text (sum of row hashes). Range buckets take the
    /// thresholds as `$1` (text[]).
    pub fn buckets_sql(&self, relation: &str, b: &Buckets) -> String {
        format!(
            "SELECT {} AS b, count(*) AS n, coalesce(sum({}), 0)::text AS s FROM {relation} t GROUP BY 1",
            self.bucket_expr(b),
            self.row_hash()
        )
    }

    /// The rows of one key range: `k` (key text), `h` (row hash as text), `r` (row text).
    /// `$1` is the lower bound when `lower`, then the upper bound when `upper` (both text).
    pub fn range_rows_sql(
        &self,
        relation: &str,
        column: &str,
        type_name: &str,
        lower: bool,
        upper: bool,
    ) -> String {
        let col = format!("t.{}", quote_ident(column));
        let mut cond = Vec::new();
        let mut n = 0;
        if lower {
            n += 1;
            cond.push(format!("{col} >= ${n}::text::{type_name}"));
        }
        if upper {
            n += 1;
            cond.push(format!("{col} < ${n}::text::{type_name}"));
        }
        let filter = if cond.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", cond.join(" AND "))
        };
        format!(
            "SELECT {} AS k, {}::text AS h, {} AS r FROM {relation} t{filter}",
            self.key_text(),
            self.row_hash(),
            self.row_text()
        )
    }

    /// The rows of the hash buckets `$1` (int4[] as text[]), same columns as [`Self::range_rows_sql`].
    pub fn hash_rows_sql(&self, relation: &str, count: u32) -> String {
        format!(
            "SELECT k, h, r FROM (SELECT {} AS k, {}::text AS h, {} AS r, {} AS b FROM {relation} t) x WHERE b = ANY ($1::text[]::int4[])",
            self.key_text(),
            self.row_hash(),
            self.row_text(),
            self.bucket_expr(&Buckets::Hash { count })
        )
    }
}

/// Whether `hash_record_extended` (PostgreSQL 14+) can hash rows of these column types (it looks
/// every column type's extended hash function up, even for NULLs): run, it errors if not.
pub fn typed_probe_sql(type_names: &[String]) -> String {
    let nulls: Vec<String> = type_names.iter().map(|t| format!("NULL::{t}")).collect();
    format!(
        "SELECT pg_catalog.hash_record_extended(ROW({}), 0)",
        nulls.join(", ")
    )
}

/// The source's estimate of a table's rows (its partitions' or chunks' too): `$1` is the
/// table's qualified name. Returns `rows` float8 (0 when never analyzed) and `bytes` int8.
pub const ESTIMATE_SQL: &str = "WITH RECURSIVE tree(oid) AS (SELECT $1::text::regclass::oid \
     UNION ALL SELECT i.inhrelid FROM pg_catalog.pg_inherits i JOIN tree ON i.inhparent = tree.oid) \
     SELECT coalesce(sum(greatest(c.reltuples, 0)), 0)::float8 AS rows, coalesce(sum(pg_catalog.pg_relation_size(c.oid)), 0)::int8 AS bytes \
     FROM pg_catalog.pg_class c JOIN tree USING (oid)";

/// Whether a column type can bound ranges with a binary search: fixed width and a default btree
/// operator class. `$1` is the type's OID.
pub const RANGE_TYPE_SQL: &str = "SELECT t.typlen > 0 AND EXISTS (SELECT 1 FROM pg_catalog.pg_opclass o \
     JOIN pg_catalog.pg_am a ON a.oid = o.opcmethod WHERE a.amname = 'btree' AND o.opcdefault AND o.opcintype = t.oid) \
     FROM pg_catalog.pg_type t WHERE t.oid = $1::int8::oid";

/// A sample of the column's values, sorted (`TABLESAMPLE SYSTEM`, so only `percent` of the pages
/// are read).
pub fn sample_sql(relation: &str, column: &str, percent: f64) -> String {
    let col = quote_ident(column);
    format!("SELECT DISTINCT t.{col}::text AS v, t.{col} FROM {relation} t TABLESAMPLE SYSTEM ({percent:.6}) ORDER BY 2")
}

/// How many buckets for about `rows` rows: about 2,000 rows each, at most 4,096.
pub fn bucket_count(rows: f64) -> u32 {
    ((rows / 2000.0).ceil() as u32).clamp(1, 4096)
}

/// `count - 1` evenly spread values of `sorted` (distinct, ascending) as range thresholds.
pub fn thresholds(sorted: &[String], count: u32) -> Vec<String> {
    let want = (count as usize).saturating_sub(1);
    if sorted.len() <= want {
        return sorted.to_vec();
    }
    (1..=want)
        .map(|i| sorted[i * sorted.len() / (want + 1)].clone())
        .collect::<Vec<_>>()
        .into_iter()
        .fold(Vec::new(), |mut v, x| {
            if v.last() != Some(&x) {
                v.push(x);
            }
            v
        })
}

/// Which bounds bucket `b` of `thresholds` has: (lower, upper).
pub fn bucket_bounds(thresholds: &[String], b: i32) -> (Option<&str>, Option<&str>) {
    let b = b.max(0) as usize;
    let lower = if b == 0 {
        None
    } else {
        thresholds.get(b - 1).map(|s| s.as_str())
    };
    let upper = thresholds.get(b).map(|s| s.as_str());
    (lower, upper)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            columns: vec!["id".into(), "Note".into()],
            key: vec!["id".into()],
            typed: false,
        }
    }

    #[test]
    fn statements_quote_names_and_hash_row_text() {
        let s = shape();
        let r = Buckets::Range {
            column: "id".into(),
            type_name: "bigint".into(),
        };
        assert_eq!(
            s.buckets_sql("\"public\".\"m\"", &r),
            "SELECT pg_catalog.width_bucket(t.\"id\", $1::text[]::bigint[]) AS b, count(*) AS n, \
             coalesce(sum(pg_catalog.hashtextextended(ROW(t.\"id\", t.\"Note\")::text, 0)), 0)::text AS s FROM \"public\".\"m\" t GROUP BY 1"
        );
        assert!(s
            .range_rows_sql("m", "id", "bigint", true, false)
            .ends_with("FROM m t WHERE t.\"id\" >= $1::text::bigint"));
        assert!(s
            .range_rows_sql("m", "id", "bigint", true, true)
            .ends_with("t.\"id\" >= $1::text::bigint AND t.\"id\" < $2::text::bigint"));
        assert!(s
            .range_rows_sql("m", "id", "bigint", false, true)
            .ends_with("WHERE t.\"id\" < $1::text::bigint"));
        assert!(s
            .range_rows_sql("m", "id", "bigint", false, false)
            .ends_with("FROM m t"));
        assert!(s
            .range_rows_sql("m", "id", "bigint", false, false)
            .starts_with("SELECT pg_catalog.jsonb_build_object('id', t.\"id\")::text AS k"));
        let h = s.buckets_sql("m", &Buckets::Hash { count: 1024 });
        assert!(h.starts_with("SELECT (pg_catalog.hashtextextended(pg_catalog.jsonb_build_object('id', t.\"id\")::text, 0) & 1023)::int4 AS b"), "{h}");
        let keyless = Shape {
            columns: vec!["a".into()],
            key: vec![],
            typed: false,
        };
        assert!(keyless
            .hash_rows_sql("m", 8)
            .starts_with("SELECT k, h, r FROM (SELECT ROW(t.\"a\")::text AS k"));
        // A name with a quote stays a name.
        let odd = Shape {
            columns: vec!["x\"y".into()],
            key: vec!["it's".into()],
            typed: false,
        };
        assert!(odd
            .range_rows_sql("m", "it's", "int4", false, false)
            .contains("jsonb_build_object('it''s', t.\"it's\")"));
        assert!(odd
            .range_rows_sql("m", "it's", "int4", false, false)
            .contains("ROW(t.\"x\"\"y\")"));
        let typed = Shape {
            typed: true,
            ..shape()
        };
        assert!(typed
            .buckets_sql("m", &Buckets::Hash { count: 2 })
            .contains("sum(pg_catalog.hash_record_extended(ROW(t.\"id\", t.\"Note\"), 0))"));
        assert_eq!(
            typed_probe_sql(&["int4".into(), "numeric(12,3)".into()]),
            "SELECT pg_catalog.hash_record_extended(ROW(NULL::int4, NULL::numeric(12,3)), 0)"
        );
    }

    #[test]
    fn buckets_and_thresholds() {
        assert_eq!(bucket_count(0.0), 1);
        assert_eq!(bucket_count(10_000.0), 5);
        assert_eq!(bucket_count(1e9), 4096);
        let sorted: Vec<String> = (0..100).map(|i| format!("{i}")).collect();
        let t = thresholds(&sorted, 5);
        assert_eq!(t, vec!["20", "40", "60", "80"]);
        assert_eq!(thresholds(&sorted[..3], 10), vec!["0", "1", "2"]);
        assert_eq!(bucket_bounds(&t, 0), (None, Some("20")));
        assert_eq!(bucket_bounds(&t, 2), (Some("40"), Some("60")));
        assert_eq!(bucket_bounds(&t, 4), (Some("80"), None));
        assert_eq!(bucket_bounds(&[], 0), (None, None));
    }
}
