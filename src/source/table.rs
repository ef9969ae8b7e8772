//! A source table's definition, as read from the source's catalogs, and the DDL that recreates it
//! on the target.
//!
//! What is recreated: columns in order with their types, NOT NULL, and defaults that depend on no
//! other object (a `nextval()` of a source sequence or a call to a user function would not
//! exist on the target). No foreign keys, no other constraints; the primary key (or replica
//! identity index) is built after the data is loaded, which is several times faster than
//! maintaining it row by row.

use super::{quote_ident, quote_literal};

/// Reads one table's identity and shape. `$1` is the user's spelling of the table, resolved by the
/// source exactly as `regclass` would (so `"Weird ""Name"""` works).
pub const TABLE_QUERY: &str = "\
SELECT c.oid::int8, c.relkind::text, n.nspname::text, c.relname::text,
       greatest(c.reltuples, 0)::float8, pg_catalog.pg_relation_size(c.oid)::int8,
       c.relreplident::text, c.relispartition
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid = pg_catalog.to_regclass($1)";

/// Columns of table `$1` (an OID as int8), in order, generated columns included (marked; logical
/// replication does not send them, the target computes them). Everything here is *data* to the
/// target: names, type names (schema + `pg_type.typname` + typmod, resolved again on the target),
/// and expression texts that only reach the target through `copy::guard`.
pub const COLUMNS_QUERY: &str = "\
SELECT a.attname::text,
       pg_catalog.format_type(a.atttypid, a.atttypmod),
       a.atttypid::int8,
       t.typelem::int8,
       a.attnotnull,
       t.typtype::text,
       (SELECT e.extname::text FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
         WHERE d.classid = 'pg_catalog.pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e' LIMIT 1),
       pg_catalog.pg_get_expr(ad.adbin, ad.adrelid),
       a.attgenerated <> '',
       tn.nspname::text,
       t.typname::text,
       a.atttypmod
  FROM pg_catalog.pg_attribute a
  JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
  JOIN pg_catalog.pg_namespace tn ON tn.oid = t.typnamespace
  LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid = a.attrelid AND ad.adnum = a.attnum
 WHERE a.attrelid = $1::int8::oid AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attnum";

/// The user-defined types (enums, domains, composites; not from extensions) that type `$1` is or
/// is built on — array elements, domain base types and composite attributes, recursively — the
/// ones others depend on first. Each comes as catalog fields (names, labels, type names and
/// typmods, constraint expressions as text); the target builds the statements itself
/// (`copy::target`), so nothing here is ever executed as it came.
pub const USER_TYPES_QUERY: &str = "\
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
SELECT ut.typtype::text, un.nspname::text, ut.typname::text,
       coalesce((SELECT array_agg(e.enumlabel::text ORDER BY e.enumsortorder)
                   FROM pg_catalog.pg_enum e WHERE e.enumtypid = ut.oid), '{}'),
       bn.nspname::text, bt.typname::text, ut.typtypmod, ut.typdefault, ut.typnotnull,
       coalesce((SELECT array_agg(c.conname::text ORDER BY c.conname)
                   FROM pg_catalog.pg_constraint c WHERE c.contypid = ut.oid AND c.contype = 'c'), '{}'),
       coalesce((SELECT array_agg(pg_catalog.pg_get_expr(c.conbin, 0) ORDER BY c.conname)
                   FROM pg_catalog.pg_constraint c WHERE c.contypid = ut.oid AND c.contype = 'c'), '{}'),
       coalesce((SELECT array_agg(ca.attname::text ORDER BY ca.attnum)
                   FROM pg_catalog.pg_attribute ca
                  WHERE ca.attrelid = ut.typrelid AND ca.attnum > 0 AND NOT ca.attisdropped), '{}'),
       coalesce((SELECT array_agg(an.nspname::text ORDER BY ca.attnum)
                   FROM pg_catalog.pg_attribute ca
                   JOIN pg_catalog.pg_type att ON att.oid = ca.atttypid
                   JOIN pg_catalog.pg_namespace an ON an.oid = att.typnamespace
                  WHERE ca.attrelid = ut.typrelid AND ca.attnum > 0 AND NOT ca.attisdropped), '{}'),
       coalesce((SELECT array_agg(att.typname::text ORDER BY ca.attnum)
                   FROM pg_catalog.pg_attribute ca
                   JOIN pg_catalog.pg_type att ON att.oid = ca.atttypid
                  WHERE ca.attrelid = ut.typrelid AND ca.attnum > 0 AND NOT ca.attisdropped), '{}'),
       coalesce((SELECT array_agg(ca.atttypmod ORDER BY ca.attnum)
                   FROM pg_catalog.pg_attribute ca
                  WHERE ca.attrelid = ut.typrelid AND ca.attnum > 0 AND NOT ca.attisdropped), '{}')
  FROM (SELECT oid, max(depth) AS depth FROM deps GROUP BY oid) d
  JOIN pg_catalog.pg_type ut ON ut.oid = d.oid
  JOIN pg_catalog.pg_namespace un ON un.oid = ut.typnamespace
  LEFT JOIN pg_catalog.pg_type bt ON bt.oid = ut.typbasetype
  LEFT JOIN pg_catalog.pg_namespace bn ON bn.oid = bt.typnamespace
 WHERE ut.typtype IN ('e', 'd', 'c') AND ut.oid >= 16384
   AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend dp WHERE dp.classid = 'pg_catalog.pg_type'::regclass
                                                      AND dp.objid = ut.oid AND dp.deptype = 'e')
 ORDER BY d.depth DESC, ut.oid";

/// A type named by catalog fields: schema, `pg_type.typname` (`_int4` for `int4[]`) and typmod.
/// The target looks it up by these, never by parsing a type name the source spelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeRef {
    pub schema: String,
    pub name: String,
    pub typmod: i32,
}

/// What a user-defined type is, field by field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserTypeKind {
    Enum {
        labels: Vec<String>,
    },
    Domain {
        base: TypeRef,
        /// Default expression text (guarded on the target).
        default: Option<String>,
        not_null: bool,
        /// CHECK constraints: name and expression text (guarded on the target).
        checks: Vec<(String, String)>,
    },
    Composite {
        attributes: Vec<(String, TypeRef)>,
    },
}

/// A user-defined type to create on the target when it is missing there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserType {
    pub schema: String,
    pub name: String,
    pub kind: UserTypeKind,
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

/// The replica identity index's columns of table `$1`.
pub const IDENTITY_KEY_QUERY: &str = "\
SELECT array_agg(a.attname::text ORDER BY k.ord)
  FROM pg_catalog.pg_index i
  CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
  JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
 WHERE i.indrelid = $1::int8::oid AND i.indisreplident
 GROUP BY i.indexrelid";

/// The other indexes of table `$1` (its qualified name; neither the primary key nor the replica
/// identity index, valid ones only), as catalog fields: name, unique, access method, NULLS NOT
/// DISTINCT, number of key columns, predicate text, and per column its name (empty for an
/// expression), expression text, non-default collation and operator class (schema and name,
/// empty when default) and `indoption` bits.
pub const OTHER_INDEXES_QUERY: &str = "\
SELECT c.relname::text, i.indisunique, am.amname::text,
       coalesce(pg_catalog.to_jsonb(i) ->> 'indnullsnotdistinct', 'false') = 'true',
       i.indnkeyatts::int4,
       pg_catalog.pg_get_expr(i.indpred, i.indrelid),
       k.names, k.exprs, k.coll_ns, k.coll, k.opc_ns, k.opc, k.opts
  FROM pg_catalog.pg_index i
  JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
  JOIN pg_catalog.pg_am am ON am.oid = c.relam
  CROSS JOIN LATERAL (
       SELECT array_agg(coalesce(a.attname::text, '') ORDER BY u.n) AS names,
              array_agg(CASE WHEN u.attnum = 0 THEN pg_catalog.pg_get_indexdef(i.indexrelid, u.n::int, true) ELSE '' END
                        ORDER BY u.n) AS exprs,
              array_agg(coalesce(cn.nspname::text, '') ORDER BY u.n) AS coll_ns,
              array_agg(coalesce(co.collname::text, '') ORDER BY u.n) AS coll,
              array_agg(coalesce(CASE WHEN NOT oc.opcdefault THEN ocn.nspname::text END, '') ORDER BY u.n) AS opc_ns,
              array_agg(coalesce(CASE WHEN NOT oc.opcdefault THEN oc.opcname::text END, '') ORDER BY u.n) AS opc,
              array_agg(coalesce(u.opt, 0)::int4 ORDER BY u.n) AS opts
         FROM unnest(i.indkey::int2[], i.indcollation::oid[], i.indclass::oid[], i.indoption::int2[])
              WITH ORDINALITY AS u(attnum, coll, opc, opt, n)
         LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = u.attnum AND u.attnum > 0
         LEFT JOIN pg_catalog.pg_collation co ON co.oid = u.coll
               AND co.oid <> coalesce(a.attcollation, 100) AND co.oid <> 100
         LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace
         LEFT JOIN pg_catalog.pg_opclass oc ON oc.oid = u.opc
         LEFT JOIN pg_catalog.pg_namespace ocn ON ocn.oid = oc.opcnamespace) k
 WHERE i.indrelid = pg_catalog.to_regclass($1) AND NOT i.indisprimary AND NOT i.indisreplident AND i.indisvalid
 ORDER BY c.relname";

/// One column of a source index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexColumn {
    /// A table column, or an expression (text, guarded on the target).
    pub column: Result<String, String>,
    /// Non-default collation (schema, name).
    pub collation: Option<(String, String)>,
    /// Non-default operator class (schema, name).
    pub opclass: Option<(String, String)>,
    pub descending: bool,
    pub nulls_first: bool,
}

/// A source index other than the key, field by field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexDef {
    pub name: String,
    pub unique: bool,
    pub access_method: String,
    pub nulls_not_distinct: bool,
    pub columns: Vec<IndexColumn>,
    /// INCLUDE columns (names).
    pub include: Vec<String>,
    /// Partial index predicate (text, guarded on the target).
    pub predicate: Option<String>,
}

impl IndexDef {
    pub fn from_row(r: &tokio_postgres::Row) -> IndexDef {
        let nkey = r.get::<_, i32>(4).max(0) as usize;
        let names: Vec<String> = r.get(6);
        let exprs: Vec<String> = r.get(7);
        let coll_ns: Vec<String> = r.get(8);
        let coll: Vec<String> = r.get(9);
        let opc_ns: Vec<String> = r.get(10);
        let opc: Vec<String> = r.get(11);
        let opts: Vec<i32> = r.get(12);
        let pair = |ns: &Vec<String>, n: &Vec<String>, i: usize| {
            let name = n.get(i).cloned().unwrap_or_default();
            (!name.is_empty()).then(|| (ns.get(i).cloned().unwrap_or_default(), name))
        };
        let mut columns = Vec::new();
        let mut include = Vec::new();
        for (i, name) in names.iter().enumerate() {
            if i >= nkey {
                include.push(name.clone());
                continue;
            }
            let opt = opts.get(i).copied().unwrap_or(0);
            columns.push(IndexColumn {
                column: if name.is_empty() {
                    Err(exprs.get(i).cloned().unwrap_or_default())
                } else {
                    Ok(name.clone())
                },
                collation: pair(&coll_ns, &coll, i),
                opclass: pair(&opc_ns, &opc, i),
                descending: opt & 1 != 0,
                nulls_first: opt & 2 != 0,
            });
        }
        IndexDef {
            name: r.get(0),
            unique: r.get(1),
            access_method: r.get(2),
            nulls_not_distinct: r.get(3),
            columns,
            include,
            predicate: r.get(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: String,
    /// Position among all the source's columns (generated ones included), from 0.
    pub position: usize,
    /// `format_type()` output on the source, e.g. `timestamp with time zone`, `numeric(10,2)`:
    /// for messages and for comparing with an existing target column, never executed.
    pub type_name: String,
    /// The type as catalog fields, looked up on the target.
    pub type_ref: TypeRef,
    pub not_null: bool,
    pub type_oid: u32,
    /// For arrays: the element type.
    pub elem_oid: u32,
    /// `pg_type.typtype`: b(ase), c(omposite), d(omain), e(num), r(ange), m(ultirange), p(seudo).
    pub type_kind: String,
    /// The extension owning the type, if any (e.g. `postgis` for `geometry`).
    pub type_extension: Option<String>,
    /// The default expression (text, as the source deparsed it), or for a generated column its
    /// generation expression. Only ever reaches the target through `copy::guard`.
    pub default_expr: Option<String>,
    /// For a user-defined enum, domain or composite type (or an array of one): the type and the
    /// user-defined types it is built on, in creation order.
    pub user_types: Vec<UserType>,
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
    /// `GENERATED ALWAYS AS (…) STORED` columns: not replicated (the target computes them), but
    /// created on the target in their place (`position`).
    pub generated: Vec<ColumnDef>,
    /// Primary key columns, or the replica identity index's; empty if neither.
    pub key: Vec<String>,
    pub key_is_primary: bool,
    /// The replica identity index's columns when it is not the primary key (`USING INDEX`).
    pub identity_key: Vec<String>,
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
        // A PostgreSQL 18 target's tsqueryrecv refuses the empty tsquery ('') that tsquerysend
        // writes ("malformed tsquery: operand not found"; 15 reads it back): such a table (a
        // tsquery column, or an array of them) goes by text COPY there.
        #[cfg(feature = "pg18")]
        const NOT_BINARY: &[u32] = &[3615]; // tsquery (a built-in OID, the same everywhere)
        #[cfg(not(feature = "pg18"))]
        const NOT_BINARY: &[u32] = &[];
        self.columns.iter().all(|c| {
            c.type_oid < FIRST_NORMAL_OBJECT_ID
                && c.elem_oid < FIRST_NORMAL_OBJECT_ID
                && !NOT_BINARY.contains(&c.type_oid)
                && !NOT_BINARY.contains(&c.elem_oid)
        })
    }

    /// `COPY … TO STDOUT` for pages `[start, end)` (`end` None: to the end of the table), or the
    /// whole table. A partitioned table is read through a query (COPY cannot read one directly)
    /// and is never split: ctids are per partition. So is a source hypertable, whose rows are in
    /// its chunks (inheritance children, which only a query includes).
    /// The key by which a copy read under several snapshots can be put right
    /// (`src/copy/resume.rs`): one that every change's old tuple carries whole — the primary key
    /// under the default or full replica identity, the replica identity index under `USING
    /// INDEX`. None for a table copied as one range anyway (partitioned, hypertable: a restart
    /// copies it again whole) or without such a key.
    pub fn resume_key(&self) -> Option<Vec<String>> {
        if self.key.is_empty() || self.has_children() {
            return None;
        }
        match self.replica_identity.as_str() {
            "d" | "f" if self.key_is_primary => Some(self.key.clone()),
            "i" if !self.key_is_primary => Some(self.key.clone()),
            // A primary key and another replica identity index: old tuples carry the latter.
            "i" if !self.identity_key.is_empty() => Some(self.identity_key.clone()),
            _ => None,
        }
    }

    /// `COPY (SELECT … WHERE key IN …) TO STDOUT`: the current rows of the given keys (each a
    /// list of key column values as text, in `key` order). The values are quoted literals of
    /// type unknown, so the source resolves them to the key columns' own types (and an index
    /// lookup): `k = ANY ('{…}')` for one column, `(a, b) IN (('…', '…'), …)` for several.
    pub fn copy_keys_sql(&self, key: &[String], keys: &[Vec<String>], binary: bool) -> String {
        let format = if binary { " (FORMAT binary)" } else { "" };
        let cols = self.column_list();
        let select_cols = &cols[1..cols.len() - 1];
        let cond = if key.len() == 1 {
            let elems: Vec<String> = keys
                .iter()
                .map(|k| format!("\"{}\"", k[0].replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            format!(
                "{} = ANY ({})",
                quote_ident(&key[0]),
                quote_literal(&format!("{{{}}}", elems.join(",")))
            )
        } else {
            let cols: Vec<String> = key.iter().map(|c| quote_ident(c)).collect();
            let rows: Vec<String> = keys
                .iter()
                .map(|k| {
                    format!(
                        "({})",
                        k.iter()
                            .map(|v| quote_literal(v))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })
                .collect();
            format!("({}) IN ({})", cols.join(", "), rows.join(", "))
        };
        format!(
            "COPY (SELECT {select_cols} FROM {} WHERE {cond}) TO STDOUT{format}",
            self.qualified()
        )
    }

    pub fn copy_out_sql(&self, pages: Option<(i64, Option<i64>)>, binary: bool) -> String {
        let format = if binary { " (FORMAT binary)" } else { "" };
        let cols = self.column_list();
        let select_cols = &cols[1..cols.len() - 1];
        match pages {
            // `COPY t () TO` is a syntax error: a table without columns is read through a query
            // (`SELECT FROM t`, one empty row per row).
            None if !self.has_children() && !self.columns.is_empty() => {
                format!("COPY {} {cols} TO STDOUT{format}", self.qualified())
            }
            None => format!(
                "COPY (SELECT {select_cols} FROM {}) TO STDOUT{format}",
                self.qualified()
            ),
            Some((start, end)) => {
                let mut q = format!(
                    "COPY (SELECT {select_cols} FROM {} WHERE ctid >= '({start},0)'::tid",
                    self.qualified()
                );
                if let Some(end) = end {
                    q.push_str(&format!(" AND ctid < '({end},0)'::tid"));
                }
                q.push_str(&format!(") TO STDOUT{format}"));
                q
            }
        }
    }
}

fn user_type_from_row(r: &tokio_postgres::Row) -> UserType {
    let kind: String = r.get(0);
    let kind = match kind.as_str() {
        "e" => UserTypeKind::Enum { labels: r.get(3) },
        "d" => {
            let names: Vec<String> = r.get(9);
            let exprs: Vec<String> = r.get(10);
            UserTypeKind::Domain {
                base: TypeRef {
                    schema: r.get::<_, Option<String>>(4).unwrap_or_default(),
                    name: r.get::<_, Option<String>>(5).unwrap_or_default(),
                    typmod: r.get(6),
                },
                default: r.get(7),
                not_null: r.get(8),
                checks: names.into_iter().zip(exprs).collect(),
            }
        }
        _ => {
            let names: Vec<String> = r.get(11);
            let schemas: Vec<String> = r.get(12);
            let types: Vec<String> = r.get(13);
            let mods: Vec<i32> = r.get(14);
            UserTypeKind::Composite {
                attributes: names
                    .into_iter()
                    .zip(schemas.into_iter().zip(types).zip(mods))
                    .map(|(n, ((schema, name), typmod))| {
                        (
                            n,
                            TypeRef {
                                schema,
                                name,
                                typmod,
                            },
                        )
                    })
                    .collect(),
            }
        }
    };
    UserType {
        schema: r.get(1),
        name: r.get(2),
        kind,
    }
}

/// Read table `spelled` (the user's spelling, as for `regclass`) from the source; None if it does
/// not exist.
pub async fn describe(
    client: &tokio_postgres::Client,
    spelled: &str,
) -> Result<Option<TableDef>, tokio_postgres::Error> {
    let Some(r) = client.query_opt(TABLE_QUERY, &[&spelled]).await? else {
        return Ok(None);
    };
    let oid: i64 = r.get(0);
    let mut t = TableDef {
        kind: r.get(1),
        schema: r.get(2),
        name: r.get(3),
        est_rows: r.get(4),
        size_bytes: r.get(5),
        replica_identity: r.get(6),
        columns: Vec::new(),
        generated: Vec::new(),
        key: Vec::new(),
        key_is_primary: false,
        identity_key: Vec::new(),
        source_hypertable: None,
    };
    let has_timescale: bool = client
        .query_one(
            "SELECT pg_catalog.to_regclass('_timescaledb_catalog.hypertable') IS NOT NULL",
            &[],
        )
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
    for (position, c) in client
        .query(COLUMNS_QUERY, &[&oid])
        .await?
        .iter()
        .enumerate()
    {
        let col = ColumnDef {
            name: c.get(0),
            position,
            type_name: c.get(1),
            type_oid: c.get::<_, i64>(2) as u32,
            elem_oid: c.get::<_, i64>(3) as u32,
            not_null: c.get(4),
            type_kind: c.get(5),
            type_extension: c.get(6),
            default_expr: c.get(7),
            type_ref: TypeRef {
                schema: c.get(9),
                name: c.get(10),
                typmod: c.get(11),
            },
            user_types: Vec::new(),
        };
        if c.get::<_, bool>(8) {
            t.generated.push(col);
        } else {
            t.columns.push(col);
        }
    }
    for c in t
        .columns
        .iter_mut()
        .chain(t.generated.iter_mut())
        .filter(|c| c.type_oid >= 16384 && c.type_extension.is_none())
    {
        for r in client
            .query(USER_TYPES_QUERY, &[&(c.type_oid as i64)])
            .await?
        {
            c.user_types.push(user_type_from_row(&r));
        }
    }
    if let Some(k) = client.query_opt(KEY_QUERY, &[&oid]).await? {
        t.key_is_primary = k.get(0);
        t.key = k.get(1);
    }
    if t.replica_identity == "i" && t.key_is_primary {
        if let Some(k) = client.query_opt(IDENTITY_KEY_QUERY, &[&oid]).await? {
            t.identity_key = k.get(0);
        }
    }
    Ok(Some(t))
}

/// `ALTER TABLE ... ADD PRIMARY KEY (...)`, or a unique index when the source key is a replica
/// identity index rather than a primary key.
pub fn create_key_sql(target_qualified: &str, key: &[String], primary: bool) -> String {
    let cols: Vec<String> = key.iter().map(|c| quote_ident(c)).collect();
    if primary {
        format!(
            "ALTER TABLE {target_qualified} ADD PRIMARY KEY ({})",
            cols.join(", ")
        )
    } else {
        format!(
            "CREATE UNIQUE INDEX ON {target_qualified} ({})",
            cols.join(", ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str, nn: bool, d: Option<&str>) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            position: 0,
            type_name: ty.into(),
            type_ref: TypeRef {
                schema: "pg_catalog".into(),
                name: "timestamptz".into(),
                typmod: -1,
            },
            type_oid: 1184,
            elem_oid: 0,
            not_null: nn,
            type_kind: "b".into(),
            type_extension: None,
            default_expr: d.map(Into::into),
            user_types: Vec::new(),
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
            generated: Vec::new(),
            key: vec!["time".into()],
            key_is_primary: true,
            identity_key: Vec::new(),
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
        assert_eq!(t.column_list(), "(\"time\", \"value\")");
        assert_eq!(
            create_key_sql("x", &t.key, true),
            "ALTER TABLE x ADD PRIMARY KEY (\"time\")"
        );
        assert_eq!(
            create_key_sql("x", &t.key, false),
            "CREATE UNIQUE INDEX ON x (\"time\")"
        );
    }

    #[test]
    fn source_hypertable_chunks_and_copy() {
        let h = SourceHypertable {
            chunk_schema: "_timescaledb_internal".into(),
            chunk_prefix: "_hyper_1".into(),
            compressed: false,
        };
        assert!(h.is_chunk("_timescaledb_internal", "_hyper_1_17_chunk"));
        assert!(!h.is_chunk("_timescaledb_internal", "_hyper_12_17_chunk"));
        assert!(!h.is_chunk("_timescaledb_internal", "compress_hyper_2_3_chunk"));
        assert!(!h.is_chunk("_timescaledb_internal", "_hyper_1__chunk"));
        assert!(!h.is_chunk("public", "_hyper_1_17_chunk"));
        let mut t = metrics();
        t.source_hypertable = Some(h);
        assert!(t
            .copy_out_sql(None, true)
            .starts_with("COPY (SELECT \"time\", \"value\" FROM"));
    }

    #[test]
    fn resume_keys_and_key_lookups() {
        let mut t = metrics();
        assert_eq!(t.resume_key(), Some(vec!["time".to_string()]));
        // A replica identity index other than the primary key: old tuples carry that index only.
        t.replica_identity = "i".into();
        assert_eq!(t.resume_key(), None, "identity index columns unknown");
        t.identity_key = vec!["value".into()];
        assert_eq!(
            t.resume_key(),
            Some(vec!["value".to_string()]),
            "by the identity index"
        );
        t.identity_key.clear();
        t.key_is_primary = false;
        assert_eq!(t.resume_key(), Some(vec!["time".to_string()]));
        t.replica_identity = "f".into();
        assert_eq!(t.resume_key(), None, "FULL without a primary key");
        t.kind = "p".into();
        t.key_is_primary = true;
        assert_eq!(t.resume_key(), None, "partitioned: one range");

        let t = metrics();
        let one = t.copy_keys_sql(
            &["time".into()],
            &[
                vec!["2026-01-01 00:00:00+00".into()],
                vec![r#"a"b\c'd"#.into()],
            ],
            true,
        );
        assert_eq!(
            one,
            r#"COPY (SELECT "time", "value" FROM "public"."Weird ""Name""" WHERE "time" = ANY ('{"2026-01-01 00:00:00+00","a\"b\\c''d"}')) TO STDOUT (FORMAT binary)"#
        );
        let two = t.copy_keys_sql(
            &["time".into(), "value".into()],
            &[
                vec!["t1".into(), "1".into()],
                vec!["t'2".into(), "2".into()],
            ],
            false,
        );
        assert_eq!(
            two,
            r#"COPY (SELECT "time", "value" FROM "public"."Weird ""Name""" WHERE ("time", "value") IN (('t1', '1'), ('t''2', '2'))) TO STDOUT"#
        );
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
        assert!(t
            .copy_out_sql(Some((128, None)), false)
            .ends_with("WHERE ctid >= '(128,0)'::tid) TO STDOUT"));
        t.kind = "p".into();
        assert!(t.copy_out_sql(None, false).starts_with("COPY (SELECT"));
        t.kind = "r".into();
        let mut empty = t.clone();
        empty.columns.clear();
        assert_eq!(
            empty.copy_out_sql(None, false),
            "COPY (SELECT  FROM \"public\".\"Weird \"\"Name\"\"\") TO STDOUT"
        );
        assert!(t.binary_copy_ok());
        t.columns[0].elem_oid = 3615; // tsquery[]: text COPY into PostgreSQL 18
        assert_eq!(t.binary_copy_ok(), cfg!(not(feature = "pg18")));
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
