//! Remote relations (from the stream's RELATION messages) mapped onto target tables, and the SQL
//! each change becomes. Columns are matched by name, so the target may order them differently or
//! have extra nullable columns; a source column the target lacks is reported precisely.

use crate::source::quote_ident;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteColumn {
    pub name: String,
    pub type_oid: u32,
    pub type_mod: i32,
    /// Part of the source's replica identity (key) — or every column under REPLICA IDENTITY FULL.
    pub key: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRelation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    /// `d`efault (primary key), `n`othing, `f`ull, `i`ndex.
    pub replica_identity: u8,
    pub columns: Vec<RemoteColumn>,
}

/// A target column: name and type (as `format_type` prints it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetColumn {
    pub name: String,
    pub type_name: String,
    /// Its type has an equality operator (the target's type cache says so, for arrays, domains
    /// and composites too): REPLICA IDENTITY FULL can match rows on it.
    pub comparable: bool,
}

/// A statement column: its position in the change's tuple, and how to write it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bound {
    /// Index into the remote tuple the value comes from.
    pub tuple_index: usize,
    pub sql: String,
}

#[derive(Clone)]
pub struct Mapping {
    /// For each remote column (in remote order): the target column's type, if the target has it.
    pub target_types: Vec<Option<String>>,
    /// For each remote column: whether rows can be matched on it (see [`TargetColumn`]).
    pub comparable: Vec<bool>,
    /// Under REPLICA IDENTITY FULL, change one row of those matching (picked by `ctid`), so
    /// that of two equal rows only one is updated or deleted. Off for Citus tables, where no
    /// statement can pick a row by `ctid`: livesync syncs into them only tables with a key, so a
    /// row matching every column is the only one.
    pub pick_by_ctid: bool,
}

impl Mapping {
    pub fn new(remote: &RemoteRelation, target: &[TargetColumn]) -> Self {
        let target_types = remote
            .columns
            .iter()
            .map(|c| {
                target
                    .iter()
                    .find(|t| t.name == c.name)
                    .map(|t| t.type_name.clone())
            })
            .collect();
        let comparable = remote
            .columns
            .iter()
            .map(|c| {
                target
                    .iter()
                    .find(|t| t.name == c.name)
                    .is_some_and(|t| t.comparable)
            })
            .collect();
        Mapping {
            target_types,
            comparable,
            pick_by_ctid: true,
        }
    }

    /// The first remote column missing on the target, if any.
    pub fn missing_column<'r>(&self, remote: &'r RemoteRelation) -> Option<&'r str> {
        self.missing_columns(remote)
            .first()
            .map(|c| c.name.as_str())
    }

    pub fn missing_columns<'r>(&self, remote: &'r RemoteRelation) -> Vec<&'r RemoteColumn> {
        remote
            .columns
            .iter()
            .zip(&self.target_types)
            .filter(|(_, t)| t.is_none())
            .map(|(c, _)| c)
            .collect()
    }
}

fn cast(n: usize, ty: &str) -> String {
    format!("${n}::{ty}")
}

/// `INSERT INTO target (cols…) VALUES ($1::type, …)` over the columns marked present.
pub fn insert_sql(
    target: &str,
    remote: &RemoteRelation,
    m: &Mapping,
    present: &[bool],
) -> (String, Vec<usize>) {
    let mut cols = Vec::new();
    let mut vals = Vec::new();
    let mut idx = Vec::new();
    for (i, c) in remote.columns.iter().enumerate() {
        if !present[i] {
            continue;
        }
        let ty = m.target_types[i].as_deref().unwrap_or("text");
        idx.push(i);
        cols.push(quote_ident(&c.name));
        vals.push(cast(idx.len(), ty));
    }
    (
        format!(
            "INSERT INTO {target} ({}) VALUES ({})",
            cols.join(", "),
            vals.join(", ")
        ),
        idx,
    )
}

/// The WHERE clause identifying a row: key columns (`=`) or, under REPLICA IDENTITY FULL, every
/// comparable column (`IS NOT DISTINCT FROM`). Parameters start at `$first`. Returns the clause
/// and the tuple indexes of its parameters, or None when the relation has no usable identity.
pub fn where_sql(
    remote: &RemoteRelation,
    m: &Mapping,
    old_present: &[bool],
    first: usize,
) -> Option<(String, Vec<usize>)> {
    let full = remote.replica_identity == b'f';
    let mut parts = Vec::new();
    let mut idx = Vec::new();
    for (i, c) in remote.columns.iter().enumerate() {
        if !(c.key || full) || !old_present[i] {
            continue;
        }
        let ty = m.target_types[i].as_deref().unwrap_or("text");
        if full && !m.comparable[i] {
            continue;
        }
        idx.push(i);
        let p = cast(first + idx.len() - 1, ty);
        if full {
            parts.push(format!("{} IS NOT DISTINCT FROM {p}", quote_ident(&c.name)));
        } else {
            parts.push(format!("{} = {p}", quote_ident(&c.name)));
        }
    }
    (!parts.is_empty()).then(|| (parts.join(" AND "), idx))
}

/// `UPDATE target SET a = $1, … WHERE …`: only the columns present in the new tuple (unchanged
/// TOASTed values are not sent and stay as they are).
pub fn update_sql(
    target: &str,
    remote: &RemoteRelation,
    m: &Mapping,
    new_present: &[bool],
    old_present: &[bool],
) -> Option<(String, Vec<usize>, Vec<usize>)> {
    let mut sets = Vec::new();
    let mut set_idx = Vec::new();
    for (i, c) in remote.columns.iter().enumerate() {
        if !new_present[i] {
            continue;
        }
        let ty = m.target_types[i].as_deref().unwrap_or("text");
        set_idx.push(i);
        sets.push(format!(
            "{} = {}",
            quote_ident(&c.name),
            cast(set_idx.len(), ty)
        ));
    }
    let (wh, where_idx) = where_sql(remote, m, old_present, set_idx.len() + 1)?;
    if sets.is_empty() {
        return None;
    }
    let sql = if remote.replica_identity == b'f' && m.pick_by_ctid {
        format!(
            "{} UPDATE {target} AS _ls_t SET {} FROM _ls_r {ONE_ROW_JOIN}",
            one_row(target, &wh),
            sets.join(", ")
        )
    } else {
        format!("UPDATE {target} SET {} WHERE {wh}", sets.join(", "))
    };
    Some((sql, set_idx, where_idx))
}

/// The two statements of an UPDATE of a table whose rows live where `time_column` says: a
/// hypertable partitioned by it, which TimescaleDB cannot update in place when the row's time
/// changes (the row would move to another chunk), or a Citus table distributed by it, which
/// refuses to change a row's distribution column (`modifying the partition value of rows is not
/// allowed`: the row would move to another shard):
///
/// - `stay`: the UPDATE restricted to the row keeping its time (`AND time = $new`), setting
///   neither the time column (equal by that condition) nor, when the key did not change, the key
///   columns (equal by the WHERE clause). Besides saving work this avoids a TimescaleDB 2.28
///   failure ("unexpected tuple operation result") when a statement on a compressed chunk sets
///   columns of a unique key that includes a `segmentby` column. When nothing is left to set, a
///   `SELECT` of the row tells whether it stayed. None when the key changed (`key_changed`: the
///   change carried the old key, or REPLICA IDENTITY FULL): the row is moved directly.
/// - `moved`, run when `stay` touched nothing: `DELETE … RETURNING` the old row and INSERT the
///   new one, taking unchanged (unsent TOAST) columns from the deleted row.
///
/// Both take the same parameters as [`update_sql`] (some of them unused by `stay`).
pub fn moving_update_sql(
    target: &str,
    remote: &RemoteRelation,
    m: &Mapping,
    new_present: &[bool],
    old_present: &[bool],
    time_column: &str,
    key_changed: bool,
) -> Option<(Option<String>, String, Vec<usize>, Vec<usize>)> {
    let (_, set_idx, where_idx) = update_sql(target, remote, m, new_present, old_present)?;
    let full = remote.replica_identity == b'f';
    let (wh, _) = where_sql(remote, m, old_present, set_idx.len() + 1)?;
    let ty = |i: usize| m.target_types[i].as_deref().unwrap_or("text");
    let stay = match set_idx
        .iter()
        .position(|&i| remote.columns[i].name == time_column)
    {
        Some(time_pos) if !(key_changed || full) => {
            let same_time = format!(
                "{} = {}",
                quote_ident(time_column),
                cast(time_pos + 1, ty(set_idx[time_pos]))
            );
            let sets: Vec<String> = set_idx
                .iter()
                .enumerate()
                .filter(|(_, &i)| remote.columns[i].name != time_column && !remote.columns[i].key)
                .map(|(n, &i)| {
                    format!(
                        "{} = {}",
                        quote_ident(&remote.columns[i].name),
                        cast(n + 1, ty(i))
                    )
                })
                .collect();
            Some(if sets.is_empty() {
                format!("SELECT 1 FROM {target} WHERE {wh} AND {same_time}")
            } else {
                format!(
                    "UPDATE {target} SET {} WHERE {wh} AND {same_time}",
                    sets.join(", ")
                )
            })
        }
        _ => None,
    };
    let delete = if full && m.pick_by_ctid {
        format!("{}, _ls_d AS (DELETE FROM {target} AS _ls_t USING _ls_r {ONE_ROW_JOIN} RETURNING _ls_t.*)", one_row(target, &wh))
    } else {
        format!("WITH _ls_d AS (DELETE FROM {target} WHERE {wh} RETURNING *)")
    };
    let mut cols = Vec::new();
    let mut vals = Vec::new();
    for (i, c) in remote.columns.iter().enumerate() {
        let Some(t) = m.target_types[i].as_deref() else {
            continue;
        };
        cols.push(quote_ident(&c.name));
        match set_idx.iter().position(|&s| s == i) {
            Some(n) => vals.push(cast(n + 1, t)),
            None => vals.push(format!("_ls_d.{}", quote_ident(&c.name))),
        }
    }
    let moved = format!(
        "{delete} INSERT INTO {target} ({}) SELECT {} FROM _ls_d",
        cols.join(", "),
        vals.join(", ")
    );
    Some((stay, moved, set_idx, where_idx))
}

/// The columns of a batched UPDATE of rows whose key did not change: the key columns (to find
/// the rows) and the other columns present in the new tuple (to set), as tuple indexes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchShape {
    pub key_idx: Vec<usize>,
    pub set_idx: Vec<usize>,
}

impl BatchShape {
    /// None when the relation has no key (REPLICA IDENTITY FULL or NOTHING): such changes are
    /// applied one by one.
    pub fn for_update(
        remote: &RemoteRelation,
        m: &Mapping,
        new_present: &[bool],
    ) -> Option<BatchShape> {
        if remote.replica_identity == b'f' {
            return None;
        }
        let key_idx: Vec<usize> = (0..remote.columns.len())
            .filter(|&i| remote.columns[i].key)
            .collect();
        if key_idx.is_empty()
            || key_idx
                .iter()
                .any(|&i| !new_present[i] || m.target_types[i].is_none())
        {
            return None;
        }
        let set_idx = (0..remote.columns.len())
            .filter(|&i| !remote.columns[i].key && new_present[i] && m.target_types[i].is_some())
            .collect();
        Some(BatchShape { key_idx, set_idx })
    }

    pub fn for_delete(
        remote: &RemoteRelation,
        m: &Mapping,
        old_present: &[bool],
    ) -> Option<BatchShape> {
        let mut shape = Self::for_update(remote, m, old_present)?;
        shape.set_idx.clear();
        Some(shape)
    }

    fn values_list(&self, m: &Mapping, rows: usize) -> String {
        let cols: Vec<usize> = self.key_idx.iter().chain(&self.set_idx).copied().collect();
        let mut list = Vec::with_capacity(rows);
        for r in 0..rows {
            let row: Vec<String> = cols
                .iter()
                .enumerate()
                .map(|(n, &i)| {
                    cast(
                        r * cols.len() + n + 1,
                        m.target_types[i].as_deref().unwrap_or("text"),
                    )
                })
                .collect();
            list.push(format!("({})", row.join(", ")));
        }
        let names: Vec<String> = (1..=self.key_idx.len())
            .map(|n| format!("k{n}"))
            .chain((1..=self.set_idx.len()).map(|n| format!("c{n}")))
            .collect();
        format!(
            "(VALUES {}) AS _ls_v({})",
            list.join(", "),
            names.join(", ")
        )
    }

    fn key_join(&self, remote: &RemoteRelation) -> String {
        self.key_idx
            .iter()
            .enumerate()
            .map(|(n, &i)| {
                format!(
                    "_ls_t.{} = _ls_v.k{}",
                    quote_ident(&remote.columns[i].name),
                    n + 1
                )
            })
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// `UPDATE target AS _ls_t SET c = _ls_v.c1, … FROM (VALUES …) AS _ls_v(k1, …, c1, …) WHERE
    /// _ls_t.key = _ls_v.k1 …` for `rows` rows; parameters are per row the key values then the
    /// set values. None when there is nothing to set (every column is part of the key).
    pub fn update_sql(
        &self,
        target: &str,
        remote: &RemoteRelation,
        m: &Mapping,
        rows: usize,
    ) -> Option<String> {
        if self.set_idx.is_empty() {
            return None;
        }
        let sets: Vec<String> = self
            .set_idx
            .iter()
            .enumerate()
            .map(|(n, &i)| {
                format!(
                    "{} = _ls_v.c{}",
                    quote_ident(&remote.columns[i].name),
                    n + 1
                )
            })
            .collect();
        Some(format!(
            "UPDATE {target} AS _ls_t SET {} FROM {} WHERE {}",
            sets.join(", "),
            self.values_list(m, rows),
            self.key_join(remote)
        ))
    }

    /// `DELETE FROM target AS _ls_t USING (VALUES …) AS _ls_v(k1, …) WHERE _ls_t.key = _ls_v.k1 …`.
    pub fn delete_sql(
        &self,
        target: &str,
        remote: &RemoteRelation,
        m: &Mapping,
        rows: usize,
    ) -> String {
        format!(
            "DELETE FROM {target} AS _ls_t USING {} WHERE {}",
            self.values_list(m, rows),
            self.key_join(remote)
        )
    }
}

/// Under REPLICA IDENTITY FULL identical rows are possible, and a change on the source touched
/// exactly one of them: pick one row (by partition and ctid), as PostgreSQL's subscriber does.
fn one_row(target: &str, wh: &str) -> String {
    format!("WITH _ls_r AS (SELECT tableoid AS toid, ctid AS tid FROM {target} WHERE {wh} LIMIT 1)")
}

const ONE_ROW_JOIN: &str = "WHERE _ls_t.tableoid = _ls_r.toid AND _ls_t.ctid = _ls_r.tid";

pub fn delete_sql(
    target: &str,
    remote: &RemoteRelation,
    m: &Mapping,
    old_present: &[bool],
) -> Option<(String, Vec<usize>)> {
    let (wh, idx) = where_sql(remote, m, old_present, 1)?;
    if remote.replica_identity == b'f' && m.pick_by_ctid {
        return Some((
            format!(
                "{} DELETE FROM {target} AS _ls_t USING _ls_r {ONE_ROW_JOIN}",
                one_row(target, &wh)
            ),
            idx,
        ));
    }
    Some((format!("DELETE FROM {target} WHERE {wh}"), idx))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(ident: u8) -> RemoteRelation {
        RemoteRelation {
            oid: 1,
            schema: "public".into(),
            name: "t".into(),
            replica_identity: ident,
            columns: vec![
                RemoteColumn {
                    name: "id".into(),
                    type_oid: 23,
                    type_mod: -1,
                    key: ident != b'f',
                },
                RemoteColumn {
                    name: "doc".into(),
                    type_oid: 114,
                    type_mod: -1,
                    key: false,
                },
                RemoteColumn {
                    name: "v".into(),
                    type_oid: 25,
                    type_mod: -1,
                    key: false,
                },
            ],
        }
    }

    fn target() -> Vec<TargetColumn> {
        vec![
            TargetColumn {
                name: "v".into(),
                type_name: "text".into(),
                comparable: true,
            },
            TargetColumn {
                name: "id".into(),
                type_name: "integer".into(),
                comparable: true,
            },
            TargetColumn {
                name: "doc".into(),
                type_name: "json".into(),
                comparable: false,
            },
        ]
    }

    #[test]
    fn insert_matches_columns_by_name() {
        let r = rel(b'd');
        let m = Mapping::new(&r, &target());
        let (sql, idx) = insert_sql("\"public\".\"t\"", &r, &m, &[true, true, true]);
        assert_eq!(sql, "INSERT INTO \"public\".\"t\" (\"id\", \"doc\", \"v\") VALUES ($1::integer, $2::json, $3::text)");
        assert_eq!(idx, vec![0, 1, 2]);
    }

    #[test]
    fn update_sets_only_present_columns_and_keys_on_identity() {
        let r = rel(b'd');
        let m = Mapping::new(&r, &target());
        let (sql, set, wh) =
            update_sql("t", &r, &m, &[true, false, true], &[true, false, false]).unwrap();
        assert_eq!(
            sql,
            "UPDATE t SET \"id\" = $1::integer, \"v\" = $2::text WHERE \"id\" = $3::integer"
        );
        assert_eq!((set, wh), (vec![0, 2], vec![0]));
    }

    #[test]
    fn full_identity_compares_all_comparable_columns() {
        let r = rel(b'f');
        let m = Mapping::new(&r, &target());
        let (sql, idx) = delete_sql("t", &r, &m, &[true, true, true]).unwrap();
        assert_eq!(
            sql,
            "WITH _ls_r AS (SELECT tableoid AS toid, ctid AS tid FROM t WHERE \"id\" IS NOT DISTINCT FROM $1::integer AND \"v\" IS NOT DISTINCT FROM $2::text LIMIT 1) DELETE FROM t AS _ls_t USING _ls_r WHERE _ls_t.tableoid = _ls_r.toid AND _ls_t.ctid = _ls_r.tid"
        );
        assert_eq!(idx, vec![0, 2]);
        let (sql, set, wh) =
            update_sql("t", &r, &m, &[true, true, true], &[true, true, true]).unwrap();
        assert!(sql.starts_with("WITH _ls_r AS (SELECT tableoid AS toid, ctid AS tid FROM t WHERE \"id\" IS NOT DISTINCT FROM $4::integer"), "{sql}");
        assert!(sql.ends_with("UPDATE t AS _ls_t SET \"id\" = $1::integer, \"doc\" = $2::json, \"v\" = $3::text FROM _ls_r WHERE _ls_t.tableoid = _ls_r.toid AND _ls_t.ctid = _ls_r.tid"), "{sql}");
        assert_eq!((set, wh), (vec![0, 1, 2], vec![0, 2]));
    }

    #[test]
    fn full_identity_without_ctid_matches_every_equal_row() {
        // A Citus table: no row can be picked by ctid (livesync syncs only keyed tables into one).
        let r = rel(b'f');
        let mut m = Mapping::new(&r, &target());
        m.pick_by_ctid = false;
        let (sql, _) = delete_sql("t", &r, &m, &[true, true, true]).unwrap();
        assert_eq!(sql, "DELETE FROM t WHERE \"id\" IS NOT DISTINCT FROM $1::integer AND \"v\" IS NOT DISTINCT FROM $2::text");
        let (sql, ..) = update_sql("t", &r, &m, &[true, false, true], &[true, true, true]).unwrap();
        assert_eq!(
            sql,
            "UPDATE t SET \"id\" = $1::integer, \"v\" = $2::text WHERE \"id\" IS NOT DISTINCT FROM $3::integer AND \"v\" IS NOT DISTINCT FROM $4::text"
        );
        let (stay, moved, ..) = moving_update_sql(
            "t",
            &r,
            &m,
            &[true, true, true],
            &[true, true, true],
            "id",
            false,
        )
        .unwrap();
        assert_eq!(stay, None);
        assert!(
            moved.starts_with(
                "WITH _ls_d AS (DELETE FROM t WHERE \"id\" IS NOT DISTINCT FROM $4::integer"
            ),
            "{moved}"
        );
    }

    #[test]
    fn hypertable_updates_stay_in_the_chunk_or_move() {
        let mut r = rel(b'd');
        r.columns[2].name = "time".into();
        r.columns[2].key = true;
        let target = vec![
            TargetColumn {
                name: "id".into(),
                type_name: "integer".into(),
                comparable: true,
            },
            TargetColumn {
                name: "doc".into(),
                type_name: "json".into(),
                comparable: false,
            },
            TargetColumn {
                name: "time".into(),
                type_name: "timestamp with time zone".into(),
                comparable: true,
            },
        ];
        let m = Mapping::new(&r, &target);
        // Key unchanged and "doc" an unchanged TOASTed value: nothing to set, only whether the
        // row kept its time; moving keeps "doc" from the old row.
        let (stay, moved, set, wh) = moving_update_sql(
            "t",
            &r,
            &m,
            &[true, false, true],
            &[true, false, true],
            "time",
            false,
        )
        .unwrap();
        assert_eq!(
            stay.as_deref(),
            Some("SELECT 1 FROM t WHERE \"id\" = $3::integer AND \"time\" = $4::timestamp with time zone AND \"time\" = $2::timestamp with time zone")
        );
        assert_eq!(
            moved,
            "WITH _ls_d AS (DELETE FROM t WHERE \"id\" = $3::integer AND \"time\" = $4::timestamp with time zone RETURNING *) INSERT INTO t (\"id\", \"doc\", \"time\") SELECT $1::integer, _ls_d.\"doc\", $2::timestamp with time zone FROM _ls_d"
        );
        assert_eq!((set, wh), (vec![0, 2], vec![0, 2]));
        // A changed non-key column is set; a changed key goes straight to the move.
        let (stay, ..) = moving_update_sql(
            "t",
            &r,
            &m,
            &[true, true, true],
            &[true, false, true],
            "time",
            false,
        )
        .unwrap();
        assert!(stay
            .unwrap()
            .starts_with("UPDATE t SET \"doc\" = $2::json WHERE"));
        let (stay, ..) = moving_update_sql(
            "t",
            &r,
            &m,
            &[true, true, true],
            &[true, false, true],
            "time",
            true,
        )
        .unwrap();
        assert_eq!(stay, None);
    }

    #[test]
    fn batched_updates_and_deletes_by_key() {
        let r = rel(b'd');
        let m = Mapping::new(&r, &target());
        // "doc" unchanged (TOAST): only "v" is set; the key finds the rows.
        let shape = BatchShape::for_update(&r, &m, &[true, false, true]).unwrap();
        assert_eq!(
            shape,
            BatchShape {
                key_idx: vec![0],
                set_idx: vec![2]
            }
        );
        assert_eq!(
            shape.update_sql("t", &r, &m, 2).unwrap(),
            "UPDATE t AS _ls_t SET \"v\" = _ls_v.c1 FROM (VALUES ($1::integer, $2::text), ($3::integer, $4::text)) AS _ls_v(k1, c1) WHERE _ls_t.\"id\" = _ls_v.k1"
        );
        let del = BatchShape::for_delete(&r, &m, &[true, false, false]).unwrap();
        assert_eq!(
            del.delete_sql("t", &r, &m, 2),
            "DELETE FROM t AS _ls_t USING (VALUES ($1::integer), ($2::integer)) AS _ls_v(k1) WHERE _ls_t.\"id\" = _ls_v.k1"
        );
        // No key, or every column in the key: nothing to batch / nothing to set.
        assert_eq!(
            BatchShape::for_update(&rel(b'f'), &m, &[true, true, true]),
            None
        );
        let mut all_key = rel(b'd');
        for c in &mut all_key.columns {
            c.key = true;
        }
        let shape = BatchShape::for_update(&all_key, &m, &[true, true, true]).unwrap();
        assert_eq!(shape.update_sql("t", &all_key, &m, 1), None);
    }

    #[test]
    fn no_identity_no_statement_and_missing_columns_are_named() {
        let mut r = rel(b'n');
        for c in &mut r.columns {
            c.key = false;
        }
        let m = Mapping::new(&r, &target());
        assert!(delete_sql("t", &r, &m, &[true, true, true]).is_none());
        r.columns.push(RemoteColumn {
            name: "added".into(),
            type_oid: 23,
            type_mod: -1,
            key: false,
        });
        let m = Mapping::new(&r, &target());
        assert_eq!(m.missing_column(&r), Some("added"));
    }
}
