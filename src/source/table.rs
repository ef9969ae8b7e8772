//! A source table's definition, as read from the source's catalogs, and the DDL that recreates it
//! on the target.
//!
//! What is recreated: columns in order with their types, NOT NULL, and defaults that depend on no
//! other object (a `nextval()` of a source sequence or a call to a user function would not
//! exist on the target). No foreign keys, no other constraints; the primary key (or replica
//! identity index) is built after the data is loaded, which is several times faster than
//! maintaining it row by row.

use super::quote_ident;

/// Reads one table's identity and shape. `$1` is the user's spelling of the table, resolved by the
/// source exactly as `regclass` would (so `"Weird ""Name"""` works).
pub const TABLE_QUERY: &str = "\
SELECT c.oid::int8, c.relkind::text, n.nspname::text, c.relname::text,
       greatest(c.reltuples, 0)::float8, pg_catalog.pg_relation_size(c.oid)::int8,
       c.relreplident::text, c.relispartition
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid = pg_catalog.to_regclass($1)";

/// Columns of table `$1` (an OID as int8), in order; generated columns are left out (logical
/// replication does not send them).
pub const COLUMNS_QUERY: &str = "\
SELECT a.attname::text,
       pg_catalog.format_type(a.atttypid, a.atttypmod),
       a.atttypid::int8,
       t.typelem::int8,
       a.attnotnull,
       t.typtype::text,
       (SELECT e.extname::text FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
         WHERE d.classid = 'pg_catalog.pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e' LIMIT 1),
       CASE WHEN ad.oid IS NOT NULL AND NOT EXISTS (
                SELECT 1 FROM pg_catalog.pg_depend d
                 WHERE d.classid = 'pg_catalog.pg_attrdef'::regclass AND d.objid = ad.oid
                   AND d.refobjid <> a.attrelid)
            THEN pg_catalog.pg_get_expr(ad.adbin, ad.adrelid) END
  FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
  LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
 WHERE a.attrelid = $1::int8::oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
 ORDER BY a.attnum";

/// The user-defined types (enums, domains, composites; not from extensions) that type `$1` is or
/// is built on — array elements, domain base types and composite attributes, recursively — each
/// with the statement creating it, the ones others depend on first.
pub const TYPE_DDL_QUERY: &str = "\
WITH RECURSIVE deps(oid, depth) AS (
    SELECT CASE WHEN t.typcategory = 'A' AND t.typelem <> 0 THEN t.typelem ELSE t.oid END, 0
      FROM pg_catalog.pg_type t WHERE t.oid = $1::int8::oid
    UNION ALL
    SELECT CASE WHEN dt.typcategory = 'A' AND dt.typelem <> 0 THEN dt.typelem ELSE dt.oid END, d.depth + 1
      FROM deps d
      JOIN pg_catalog.pg_type ut ON ut.oid = d.oid
      CROSS JOIN LATERAL (
            SELECT ut.typbasetype AS dep WHERE ut.typtype = 'd'
            UNION ALL
            SELECT ca.atttypid FROM pg_catalog.pg_attribute ca
             WHERE ut.typtype = 'c' AND ca.attrelid = ut.typrelid AND ca.attnum > 0 AND NOT ca.attisdropped) x
      JOIN pg_catalog.pg_type dt ON dt.oid = x.dep
     WHERE d.depth < 20
)
SELECT CASE ut.typtype
         WHEN 'e' THEN format('CREATE TYPE %I.%I AS ENUM (%s)', un.nspname, ut.typname,
                (SELECT string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder)
                   FROM pg_catalog.pg_enum e WHERE e.enumtypid = ut.oid))
         WHEN 'd' THEN format('CREATE DOMAIN %I.%I AS %s%s%s%s', un.nspname, ut.typname,
                pg_catalog.format_type(ut.typbasetype, ut.typtypmod),
                CASE WHEN ut.typdefault IS NOT NULL THEN ' DEFAULT ' || ut.typdefault ELSE '' END,
                CASE WHEN ut.typnotnull THEN ' NOT NULL' ELSE '' END,
                coalesce((SELECT string_agg(' CONSTRAINT ' || quote_ident(c.conname) || ' ' || pg_catalog.pg_get_constraintdef(c.oid), '')
                            FROM pg_catalog.pg_constraint c WHERE c.contypid = ut.oid), ''))
         WHEN 'c' THEN format('CREATE TYPE %I.%I AS (%s)', un.nspname, ut.typname,
                (SELECT string_agg(quote_ident(ca.attname) || ' ' || pg_catalog.format_type(ca.atttypid, ca.atttypmod), ', ' ORDER BY ca.attnum)
                   FROM pg_catalog.pg_attribute ca WHERE ca.attrelid = ut.typrelid AND ca.attnum > 0 AND NOT ca.attisdropped))
       END,
       un.nspname::text,
       format('%I.%I', un.nspname, ut.typname)
  FROM (SELECT oid, max(depth) AS depth FROM deps GROUP BY oid) d
  JOIN pg_catalog.pg_type ut ON ut.oid = d.oid
  JOIN pg_catalog.pg_namespace un ON un.oid = ut.typnamespace
 WHERE ut.typtype IN ('e', 'd', 'c') AND ut.oid >= 16384
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend dp WHERE dp.classid = 'pg_catalog.pg_type'::regclass
                                                      AND dp.objid = ut.oid AND dp.deptype = 'e')
 ORDER BY d.depth DESC, ut.oid";

/// A user-defined type to create on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeDdl {
    pub create: String,
    pub schema: String,
    /// `"schema"."name"`.
    pub qualified: String,
}

/// Key columns of table `$1`: the primary key, else the replica identity index.
pub const KEY_QUERY: &str = "\
SELECT i.indisprimary, array_agg(a.attname::text ORDER BY k.ord)
  FROM pg_catalog.pg_index i
  CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
 WHERE i.indrelid = $1::int8::oid AND (i.indisprimary OR i.indisreplident)
 GROUP BY i.indexrelid, i.indisprimary
 ORDER BY i.indisprimary DESC
 LIMIT 1";

/// The other indexes of table `$1` (its qualified name; neither the primary key nor the replica identity index,
/// valid ones only): name, whether unique, access method, and definition.
pub const OTHER_INDEXES_QUERY: &str = "\
SELECT c.relname::text, am.amname::text, pg_catalog.pg_get_indexdef(i.indexrelid)
  FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
  JOIN pg_catalog.pg_am am ON am.oid = c.relam
 WHERE i.indrelid = pg_catalog.to_regclass($1) AND NOT i.indisprimary AND NOT i.indisreplident AND i.indisvalid
 ORDER BY c.relname";

/// `CREATE INDEX IF NOT EXISTS "name" ON target USING am (…)` from a source index definition
/// (`pg_get_indexdef`), retargeted at `target_qualified`; None when the definition does not
/// have the expected shape.
pub fn retarget_index(def: &str, name: &str, am: &str, target_qualified: &str) -> Option<String> {
    let unique = def.starts_with("CREATE UNIQUE INDEX ");
    if !unique && !def.starts_with("CREATE INDEX ") {
        return None;
    }
    let marker = format!(" USING {am} ");
    let at = def.find(&marker)?;
    let rest = &def[at + marker.len()..];
    Some(format!(
        "CREATE {}INDEX IF NOT EXISTS {} ON {target_qualified} USING {am} {rest}",
        if unique { "UNIQUE " } else { "" },
        quote_ident(name)
    ))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: String,
    /// `format_type()` output, e.g. `timestamp with time zone`, `numeric(10,2)`, `public.mood`.
    pub type_name: String,
    pub not_null: bool,
    pub type_oid: u32,
    /// For arrays: the element type.
    pub elem_oid: u32,
    /// `pg_type.typtype`: b(ase), c(omposite), d(omain), e(num), r(ange), m(ultirange), p(seudo).
    pub type_kind: String,
    /// The extension owning the type, if any (e.g. `postgis` for `geometry`).
    pub type_extension: Option<String>,
    /// A default expression that depends on no other object, if any.
    pub default_expr: Option<String>,
    /// For a user-defined enum, domain or composite type (or an array of one): the statements
    /// creating it and the user-defined types it is built on, in creation order.
    pub type_ddl: Vec<TypeDdl>,
}

/// A source table that is a TimescaleDB hypertable on the source: its rows live in chunks,
/// tables named `<chunk_prefix>_<n>_chunk` in `chunk_schema`, which are what the change stream
/// reports changes on (see `publication` for how new chunks get published).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceHypertable {
    pub chunk_schema: String,
    pub chunk_prefix: String,
    /// Compression (columnstore) is enabled on it.
    pub compressed: bool,
}

impl SourceHypertable {
    /// Whether `schema.name` is one of this hypertable's chunks.
    pub fn is_chunk(&self, schema: &str, name: &str) -> bool {
        schema == self.chunk_schema
            && name
                .strip_prefix(self.chunk_prefix.as_str())
                .and_then(|rest| rest.strip_prefix('_'))
                .and_then(|rest| rest.strip_suffix("_chunk"))
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }
}

/// The hypertable facts of table `$1` (OID as int8) on a source with TimescaleDB: chunk schema
/// and prefix, size and rows summed over its chunks, compression enabled.
pub const SOURCE_HYPERTABLE_QUERY: &str = "\
SELECT h.associated_schema_name::text, h.associated_table_prefix::text,
       (SELECT coalesce(sum(pg_catalog.pg_relation_size(i.inhrelid)), 0)::int8
          FROM pg_catalog.pg_inherits i WHERE i.inhparent = c.oid),
       (SELECT coalesce(sum(greatest(k.reltuples, 0)), 0)::float8
          FROM pg_catalog.pg_inherits i JOIN pg_catalog.pg_class k ON k.oid = i.inhrelid WHERE i.inhparent = c.oid),
       h.compression_state = 1
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
  JOIN _timescaledb_catalog.hypertable h ON h.schema_name = n.nspname AND h.table_name = c.relname
 WHERE c.oid = $1::int8::oid";

#[derive(Debug, Clone, PartialEq)]
pub struct TableDef {
    pub schema: String,
    pub name: String,
    /// `r` (table) or `p` (partitioned table).
    pub kind: String,
    pub columns: Vec<ColumnDef>,
    /// Primary key columns, or the replica identity index's; empty if neither.
    pub key: Vec<String>,
    pub key_is_primary: bool,
    /// `pg_class.relreplident`: d(efault), n(othing), f(ull), i(ndex).
    pub replica_identity: String,
    pub est_rows: f64,
    pub size_bytes: i64,
    /// Set when the table is a TimescaleDB hypertable on the source.
    pub source_hypertable: Option<SourceHypertable>,
}

impl TableDef {
    /// `"schema"."name"`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// Whether the rows are in other relations (partitions, hypertable chunks): such a table is
    /// copied through a query and never split into ctid ranges.
    pub fn has_children(&self) -> bool {
        self.kind == "p" || self.source_hypertable.is_some()
    }

    /// Whether UPDATE and DELETE on this table can be replicated.
    pub fn has_replica_identity(&self) -> bool {
        self.replica_identity == "f" || !self.key.is_empty() && self.replica_identity != "n"
    }

    /// `(col, col, ...)` for COPY, all quoted.
    pub fn column_list(&self) -> String {
        let cols: Vec<String> = self.columns.iter().map(|c| quote_ident(&c.name)).collect();
        format!("({})", cols.join(", "))
    }

    /// Whether binary COPY can carry this table: only built-in types, whose binary form (arrays
    /// included, which embed their element type's OID) is the same on every server.
    pub fn binary_copy_ok(&self) -> bool {
        const FIRST_NORMAL_OBJECT_ID: u32 = 16384;
        self.columns.iter().all(|c| c.type_oid < FIRST_NORMAL_OBJECT_ID && c.elem_oid < FIRST_NORMAL_OBJECT_ID)
    }

    /// `COPY … TO STDOUT` for pages `[start, end)` (`end` None: to the end of the table), or the
    /// whole table. A partitioned table is read through a query (COPY cannot read one directly)
    /// and is never split: ctids are per partition. So is a source hypertable, whose rows are in
    /// its chunks (inheritance children, which only a query includes).
    pub fn copy_out_sql(&self, pages: Option<(i64, Option<i64>)>, binary: bool) -> String {
        let format = if binary { " (FORMAT binary)" } else { "" };
        let cols = self.column_list();
        let select_cols = &cols[1..cols.len() - 1];
        match pages {
            None if !self.has_children() => format!("COPY {} {cols} TO STDOUT{format}", self.qualified()),
            None => format!("COPY (SELECT {select_cols} FROM {}) TO STDOUT{format}", self.qualified()),
            Some((start, end)) => {
                let mut q = format!("COPY (SELECT {select_cols} FROM {} WHERE ctid >= '({start},0)'::tid", self.qualified());
                if let Some(end) = end {
                    q.push_str(&format!(" AND ctid < '({end},0)'::tid"));
                }
                q.push_str(&format!(") TO STDOUT{format}"));
                q
            }
        }
    }

    /// `CREATE TABLE` for the target, without any key (built after loading).
    pub fn create_table_sql(&self, target_qualified: &str) -> String {
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|c| {
                let mut s = format!("{} {}", quote_ident(&c.name), c.type_name);
                if let Some(d) = &c.default_expr {
                    s.push_str(&format!(" DEFAULT {d}"));
                }
                if c.not_null {
                    s.push_str(" NOT NULL");
                }
                s
            })
            .collect();
        format!("CREATE TABLE {target_qualified} (\n    {}\n)", cols.join(",\n    "))
    }
}

/// Read table `spelled` (the user's spelling, as for `regclass`) from the source; None if it does
/// not exist.
pub async fn describe(client: &tokio_postgres::Client, spelled: &str) -> Result<Option<TableDef>, tokio_postgres::Error> {
    let Some(r) = client.query_opt(TABLE_QUERY, &[&spelled]).await? else { return Ok(None) };
    let oid: i64 = r.get(0);
    let mut t = TableDef {
        kind: r.get(1),
        schema: r.get(2),
        name: r.get(3),
        est_rows: r.get(4),
        size_bytes: r.get(5),
        replica_identity: r.get(6),
        columns: Vec::new(),
        key: Vec::new(),
        key_is_primary: false,
        source_hypertable: None,
    };
    let has_timescale: bool = client
        .query_one("SELECT pg_catalog.to_regclass('_timescaledb_catalog.hypertable') IS NOT NULL", &[])
        .await?
        .get(0);
    if has_timescale {
        if let Some(h) = client.query_opt(SOURCE_HYPERTABLE_QUERY, &[&oid]).await? {
            t.size_bytes = h.get(2);
            t.est_rows = h.get(3);
            t.source_hypertable = Some(SourceHypertable {
                chunk_schema: h.get(0),
                chunk_prefix: h.get(1),
                compressed: h.get(4),
            });
        }
    }
    for c in client.query(COLUMNS_QUERY, &[&oid]).await? {
        t.columns.push(ColumnDef {
            name: c.get(0),
            type_name: c.get(1),
            type_oid: c.get::<_, i64>(2) as u32,
            elem_oid: c.get::<_, i64>(3) as u32,
            not_null: c.get(4),
            type_kind: c.get(5),
            type_extension: c.get(6),
            default_expr: c.get(7),
            type_ddl: Vec::new(),
        });
    }
    for c in t.columns.iter_mut().filter(|c| c.type_oid >= 16384 && c.type_extension.is_none()) {
        for r in client.query(TYPE_DDL_QUERY, &[&(c.type_oid as i64)]).await? {
            c.type_ddl.push(TypeDdl { create: r.get(0), schema: r.get(1), qualified: r.get(2) });
        }
    }
    if let Some(k) = client.query_opt(KEY_QUERY, &[&oid]).await? {
        t.key_is_primary = k.get(0);
        t.key = k.get(1);
    }
    Ok(Some(t))
}

/// `ALTER TABLE ... ADD PRIMARY KEY (...)`, or a unique index when the source key is a replica
/// identity index rather than a primary key.
pub fn create_key_sql(target_qualified: &str, key: &[String], primary: bool) -> String {
    let cols: Vec<String> = key.iter().map(|c| quote_ident(c)).collect();
    if primary {
        format!("ALTER TABLE {target_qualified} ADD PRIMARY KEY ({})", cols.join(", "))
    } else {
        format!("CREATE UNIQUE INDEX ON {target_qualified} ({})", cols.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str, nn: bool, d: Option<&str>) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            type_name: ty.into(),
            type_oid: 1184,
            elem_oid: 0,
            not_null: nn,
            type_kind: "b".into(),
            type_extension: None,
            default_expr: d.map(Into::into),
            type_ddl: Vec::new(),
        }
    }

    fn metrics() -> TableDef {
        TableDef {
            schema: "public".into(),
            name: "Weird \"Name\"".into(),
            kind: "r".into(),
            columns: vec![
                col("time", "timestamp with time zone", true, None),
                col("value", "double precision", false, Some("0")),
            ],
            key: vec!["time".into()],
            key_is_primary: true,
            replica_identity: "d".into(),
            est_rows: 10.0,
            size_bytes: 8192,
            source_hypertable: None,
        }
    }

    #[test]
    fn ddl_quotes_everything_and_keeps_order() {
        let t = metrics();
        assert_eq!(t.qualified(), "\"public\".\"Weird \"\"Name\"\"\"");
        assert_eq!(
            t.create_table_sql("\"s\".\"t\""),
            "CREATE TABLE \"s\".\"t\" (\n    \"time\" timestamp with time zone NOT NULL,\n    \"value\" double precision DEFAULT 0\n)"
        );
        assert_eq!(t.column_list(), "(\"time\", \"value\")");
        assert_eq!(create_key_sql("x", &t.key, true), "ALTER TABLE x ADD PRIMARY KEY (\"time\")");
        assert_eq!(create_key_sql("x", &t.key, false), "CREATE UNIQUE INDEX ON x (\"time\")");
    }

    #[test]
    fn source_hypertable_chunks_and_copy() {
        let h = SourceHypertable { chunk_schema: "_timescaledb_internal".into(), chunk_prefix: "_hyper_1".into(), compressed: false };
        assert!(h.is_chunk("_timescaledb_internal", "_hyper_1_17_chunk"));
        assert!(!h.is_chunk("_timescaledb_internal", "_hyper_12_17_chunk"));
        assert!(!h.is_chunk("_timescaledb_internal", "compress_hyper_2_3_chunk"));
        assert!(!h.is_chunk("_timescaledb_internal", "_hyper_1__chunk"));
        assert!(!h.is_chunk("public", "_hyper_1_17_chunk"));
        let mut t = metrics();
        t.source_hypertable = Some(h);
        assert!(t.copy_out_sql(None, true).starts_with("COPY (SELECT \"time\", \"value\" FROM"));
    }

    #[test]
    fn indexes_are_retargeted() {
        assert_eq!(
            retarget_index("CREATE INDEX m_v_idx ON public.m USING btree (v DESC) WHERE (v > 0)", "m_v_idx", "btree", "\"s\".\"t\"")
                .as_deref(),
            Some("CREATE INDEX IF NOT EXISTS \"m_v_idx\" ON \"s\".\"t\" USING btree (v DESC) WHERE (v > 0)")
        );
        assert_eq!(
            retarget_index("CREATE UNIQUE INDEX u ON public.m USING hash (lower(t))", "u", "hash", "t").as_deref(),
            Some("CREATE UNIQUE INDEX IF NOT EXISTS \"u\" ON t USING hash (lower(t))")
        );
        assert_eq!(retarget_index("nonsense", "u", "btree", "t"), None);
    }

    #[test]
    fn copy_statements() {
        let mut t = metrics();
        assert_eq!(
            t.copy_out_sql(None, false),
            "COPY \"public\".\"Weird \"\"Name\"\"\" (\"time\", \"value\") TO STDOUT"
        );
        assert_eq!(
            t.copy_out_sql(Some((0, Some(128))), true),
            "COPY (SELECT \"time\", \"value\" FROM \"public\".\"Weird \"\"Name\"\"\" WHERE ctid >= '(0,0)'::tid AND ctid < '(128,0)'::tid) TO STDOUT (FORMAT binary)"
        );
        assert!(t.copy_out_sql(Some((128, None)), false).ends_with("WHERE ctid >= '(128,0)'::tid) TO STDOUT"));
        t.kind = "p".into();
        assert!(t.copy_out_sql(None, false).starts_with("COPY (SELECT"));
        assert!(t.binary_copy_ok());
        t.columns[0].elem_oid = 20000; // array of a user-defined type
        assert!(!t.binary_copy_ok());
    }

    #[test]
    fn replica_identity() {
        let mut t = metrics();
        assert!(t.has_replica_identity());
        t.key.clear();
        assert!(!t.has_replica_identity());
        t.replica_identity = "f".into();
        assert!(t.has_replica_identity());
        t.key = vec!["time".into()];
        t.replica_identity = "n".into();
        assert!(!t.has_replica_identity());
    }
}
