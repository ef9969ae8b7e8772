//! Putting right a table whose ranges were read under different snapshots.
//!
//! A copy reads a table in ctid ranges under an exported snapshot. That snapshot goes when the
//! connector's worker ends (a crash, a restart, a lost connection) and is given up on purpose
//! once it is `livesync.max_snapshot_age` old (it pins the source's xmin horizon). The ranges
//! already loaded are kept; the others are read under a newer snapshot. The table on the target
//! is then a patchwork: range A as of LSN `L1`, range B as of `L2`, … Two facts make it exact
//! again at the newest position `Lf`, without reading it again:
//!
//! - a row that no transaction touched between the snapshots is the same tuple, at the same
//!   ctid, in all of them (only `VACUUM FULL`, `CLUSTER` and table rewrites move an untouched
//!   row: they change the relation's file node, which each range records — then the copy starts
//!   over), so it was read exactly once, in the right version;
//! - every row that was touched has its key in the table's spool: the stream spools the table's
//!   changes from the first snapshot on (`sync_table.snapshot_lsn`), with their commit LSN.
//!
//! So [`settle`] takes a fresh snapshot at `Lf`, waits until the stream has durably passed `Lf`
//! (every change before it is then in the spool), deletes on the target every key changed before
//! `Lf` (old and new keys of UPDATEs, DELETEs, INSERTs — whatever version or duplicate the
//! patchwork holds), reads those keys' rows again under the fresh snapshot, and records that the
//! table now reads as of `Lf`: its spooled changes before `Lf` go (they are in the copy), those
//! after are replayed by the stream as usual. All of the target's side commits in one
//! transaction. A TRUNCATE between the snapshots, a changed file node, or a change whose key is
//! not whole in the message (no key: `resume_key` is NULL) make the table start over instead.
//!
//! When every range was read under one snapshot newer than the spool's start (the table was
//! started over after a restart with nothing loaded, or all its ranges moved), nothing needs
//! reading: the spool before that snapshot simply goes.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use pgrx::prelude::*;

use crate::catalog::tables::{self, SyncTable};
use crate::catalog::{ranges, spi_err};
use crate::copy::{load, snapshot, target};
use crate::runtime::block_on_until_shutdown;
use crate::source::conninfo::SourceConninfo;
use crate::source::pgoutput::{ColumnValue, Decoder, LogicalMessage, TupleData};
use crate::source::{connect, quote_ident};
use crate::worker::in_transaction;

/// Keys read again per `COPY` from the source.
const KEYS_PER_QUERY: usize = 2000;

/// How the finisher reaches the source (a copy worker; the connector's worker does not put
/// tables right — it would wait on its own stream).
pub struct Source<'a> {
    pub conninfo: &'a str,
    pub info: &'a SourceConninfo,
    pub rt: &'a tokio::runtime::Runtime,
    pub app: &'a str,
    /// The connector's permanent slot: the stream has durably applied what it confirmed.
    pub slot: &'a str,
}

/// What [`settle`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled {
    /// The table reads as of one position: build its key and mark it loaded.
    Ready,
    /// Ranges were read under different snapshots and this process cannot put it right (no
    /// source at hand): leave the table to a copy worker.
    NeedsSource,
    /// The copy starts over (recorded).
    StartedOver,
    /// The worker must exit.
    Exit,
}

/// A change's keys could not be told: the table starts over.
#[derive(Debug, PartialEq, Eq)]
pub struct StartOver(pub String);

/// The keys (text of each key column, in the database's encoding) changed by the spooled
/// messages `msgs` (streamed flag, raw message) of a table keyed by `key`.
pub fn changed_keys(
    msgs: &[(bool, Vec<u8>)],
    key: &[String],
) -> Result<HashSet<Vec<Vec<u8>>>, StartOver> {
    let mut plain = Decoder::new();
    let mut streamed = Decoder::streamed();
    // Per relation OID: the positions of the key columns in its tuples.
    let mut positions: std::collections::HashMap<u32, Vec<usize>> =
        std::collections::HashMap::new();
    let mut keys = HashSet::new();
    let take = |positions: &Vec<usize>, t: &TupleData| -> Result<Vec<Vec<u8>>, StartOver> {
        positions
            .iter()
            .map(|&i| match t.get(i) {
                Some(ColumnValue::Text(v)) => Ok(v.clone()),
                other => Err(StartOver(format!(
                    "a change carries key column {} as {other:?}",
                    i + 1
                ))),
            })
            .collect()
    };
    for (is_streamed, raw) in msgs {
        let decoder = if *is_streamed {
            &mut streamed
        } else {
            &mut plain
        };
        let msg = decoder
            .decode(raw)
            .map_err(|e| StartOver(format!("a spooled change cannot be decoded: {e}")))?;
        let rel = |id: u32| {
            positions
                .get(&id)
                .ok_or_else(|| StartOver(format!("no RELATION message for relation {id}")))
        };
        match msg {
            LogicalMessage::Relation(r) => {
                let pos: Option<Vec<usize>> = key
                    .iter()
                    .map(|k| r.columns.iter().position(|c| &c.name == k))
                    .collect();
                let pos = pos.ok_or_else(|| {
                    StartOver(format!("relation \"{}\" lacks a key column", r.name))
                })?;
                positions.insert(r.rel_id, pos);
            }
            LogicalMessage::Insert(i) => {
                keys.insert(take(rel(i.rel_id)?, &i.new)?);
            }
            LogicalMessage::Update(u) => {
                let p = rel(u.rel_id)?;
                if let Some(old) = &u.old {
                    keys.insert(take(p, old.tuple())?);
                }
                keys.insert(take(p, &u.new)?);
            }
            LogicalMessage::Delete(d) => {
                keys.insert(take(rel(d.rel_id)?, d.old.tuple())?);
            }
            LogicalMessage::Truncate(_) => {
                return Err(StartOver(
                    "the source table was truncated during its copy".into(),
                ))
            }
            _ => {}
        }
    }
    Ok(keys)
}

/// Bring table `t`, whose ranges are all loaded, to one position before its key is built (see
/// the module's header). `source`: None in a process that must not wait on the stream.
pub fn settle(t: &SyncTable, source: Option<&Source>) -> Settled {
    let span = match in_transaction(|| ranges::snapshot_span(t.id)) {
        Ok(Ok(s)) => s,
        _ => return Settled::NeedsSource,
    };
    let Some((oldest, newest)) = span else {
        return Settled::Ready;
    };
    if oldest == newest {
        // One snapshot: only the spool before it goes (done with the key build's commit).
        return Settled::Ready;
    }
    let Some(src) = source else {
        return Settled::NeedsSource;
    };
    let restart = |why: &str| {
        let _ = in_transaction(|| tables::restart_copy(t.id, why));
        Settled::StartedOver
    };
    let Some(key) = t.resume_key.clone() else {
        return restart(
            "its ranges were read under different snapshots and it has no key to put them right by",
        );
    };
    match in_transaction(|| ranges::file_nodes(t.id)) {
        Ok(Ok(n)) if n > 1 => return restart(
            "the source table was rewritten (VACUUM FULL, CLUSTER, ALTER TABLE) during its copy",
        ),
        _ => {}
    }

    // A snapshot at least as new as every range's.
    // SAFETY: MyProcPid is set at process start and never changes; a plain read.
    let slot = format!("{}_fix_{}", src.slot, unsafe { pg_sys::MyProcPid });
    let snap = match snapshot::ExportedSnapshot::create(src.conninfo, src.app, &slot, true) {
        Ok(s) => s,
        Err(e) => {
            pgrx::log!(
                "livesync: could not export a snapshot to put table {} right: {e}",
                t.id
            );
            return Settled::NeedsSource;
        }
    };
    // Crash-sensitive: the keys to read again are those of every change before the snapshot;
    // the stream must have durably spooled all of them first.
    match wait_for_stream(src, &snap.lsn) {
        Some(true) => {}
        Some(false) => return Settled::NeedsSource,
        None => return Settled::Exit,
    }
    let keys = match in_transaction(|| tables::spooled_before(t.id, &snap.lsn)) {
        Ok(Ok(msgs)) => match changed_keys(&msgs, &key) {
            Ok(k) => k,
            Err(StartOver(why)) => return restart(&why),
        },
        _ => return Settled::NeedsSource,
    };

    // Read the changed keys' rows under the fresh snapshot, and swap them in on the target.
    let source_q = format!(
        "{}.{}",
        quote_ident(&t.source_schema),
        quote_ident(&t.source_name)
    );
    let opened = block_on_until_shutdown(src.rt, async {
        let client = snapshot::import(src.info, src.app, &snap.name).await?;
        let def = crate::source::table::describe(&client, &source_q)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((client, def))
    });
    let (client, def) = match opened {
        None => return Settled::Exit,
        Some(Ok((c, Some(d)))) => (c, d),
        Some(Ok((_, None))) => return restart("the source table no longer exists"),
        Some(Err(e)) => {
            pgrx::log!(
                "livesync: could not read the source to put table {} right: {e}",
                t.id
            );
            return Settled::NeedsSource;
        }
    };
    let keys: Vec<Vec<Vec<u8>>> = keys.into_iter().collect();
    let target_q = target::qualified(&t.target_schema, &t.target_name);
    let binary = def.binary_copy_ok();
    let columns: Vec<String> = def.columns.iter().map(|c| c.name.clone()).collect();
    let started = Instant::now();
    let done = in_transaction(|| -> Result<i64, String> {
        // One fixer per table: a second one skips it (the first one is putting it right, or
        // building its key).
        let state = crate::catalog::first_value_rw::<String>(
            "SELECT state FROM livesync.sync_table WHERE id = $1 FOR UPDATE SKIP LOCKED",
            &[t.id.into()],
        )
        .map_err(|e| e.message)?;
        let span = ranges::snapshot_span(t.id).map_err(|e| e.message)?;
        if state.as_deref() != Some("copying") || span.is_none_or(|(a, b)| a == b) {
            return Ok(-1);
        }
        let relid = load::begin(&target_q)?;
        let (mut read, mut deleted) = (0i64, 0i64);
        for chunk in keys.chunks(KEYS_PER_QUERY) {
            deleted += delete_keys(relid, &target_q, &key, chunk)?;
            let text: Vec<Vec<String>> = chunk
                .iter()
                .map(|k| k.iter().map(|v| to_utf8(v)).collect())
                .collect();
            let sql = def.copy_keys_sql(&key, &text, binary);
            let stream = match block_on_until_shutdown(src.rt, client.copy_out(sql.as_str())) {
                None => return Err("shutting down".into()),
                Some(r) => r.map_err(|e| {
                    e.as_db_error()
                        .map(|d| d.message().to_string())
                        .unwrap_or_else(|| e.to_string())
                })?,
            };
            let (rows, _) = load::load(
                src.rt,
                relid,
                load::route_for(relid),
                &columns,
                stream,
                binary,
            );
            read += rows;
        }
        // Crash-sensitive: the rows read again, the ranges' new position and the spool cut at it
        // commit together.
        ranges::settle_at(t.id, &snap.lsn, read - deleted).map_err(|e| e.message)?;
        tables::settle_spool(t.id, &snap.lsn).map_err(|e| e.message)?;
        Ok(read)
    });
    match done {
        Ok(Ok(-1)) => Settled::Ready,
        Ok(Ok(read)) => {
            pgrx::log!(
                "livesync: put {} right at {}: {} changed keys, {read} rows read again in {} ms",
                target_q,
                snap.lsn,
                keys.len(),
                started.elapsed().as_millis()
            );
            Settled::Ready
        }
        Ok(Err(e)) => {
            pgrx::log!("livesync: could not put {target_q} right: {e}");
            Settled::NeedsSource
        }
        Err(e) => {
            pgrx::log!(
                "livesync: could not put {target_q} right: {} (SQLSTATE {})",
                e.message,
                e.sqlstate
            );
            Settled::NeedsSource
        }
    }
}

/// Wait until the connector's slot has confirmed `lsn` (the stream applied, and durably
/// committed, everything before it). Some(false) after a long wait (the stream is not running),
/// None at shutdown.
fn wait_for_stream(src: &Source, lsn: &str) -> Option<bool> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let check = async {
        let client = connect::connect(src.info, src.app)
            .await
            .map_err(|e| e.to_string())?;
        loop {
            let r = client
                .query_opt(
                    "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
                    &[&src.slot, &lsn],
                )
                .await
                .map_err(|e| e.to_string())?;
            match r.and_then(|r| r.get::<_, Option<bool>>(0)) {
                Some(true) => return Ok(true),
                None => return Err("the connector's slot is gone".to_string()),
                Some(false) if Instant::now() >= deadline => return Ok(false),
                Some(false) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    };
    match block_on_until_shutdown(src.rt, check) {
        None => None,
        Some(Ok(b)) => Some(b),
        Some(Err(e)) => {
            pgrx::log!("livesync: waiting for the stream to pass {lsn}: {e}");
            Some(false)
        }
    }
}

/// Delete the rows of the given keys from the target (every version: the patchwork may hold
/// two), in one statement joining on the key columns' own types (the target has no key index
/// yet). The values travel as bytes in the database's encoding.
fn delete_keys(
    relid: pg_sys::Oid,
    target_q: &str,
    key: &[String],
    keys: &[Vec<Vec<u8>>],
) -> Result<i64, String> {
    let mut selects = Vec::new();
    let mut conds = Vec::new();
    let mut args: Vec<pgrx::datum::DatumWithOid> = Vec::new();
    for (i, k) in key.iter().enumerate() {
        let ty = Spi::get_one_with_args::<String>(
            "SELECT pg_catalog.format_type(atttypid, atttypmod) FROM pg_catalog.pg_attribute
              WHERE attrelid = $1 AND attname = $2 AND attnum > 0 AND NOT attisdropped",
            &[relid.into(), k.as_str().into()],
        )
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("key column {} is missing on the target", quote_ident(k)))?;
        // The type name comes from the target's own catalog (format_type quotes it).
        selects.push(format!(
            "pg_catalog.convert_from(u.c{i}, pg_catalog.getdatabaseencoding())::{ty}"
        ));
        conds.push(format!("t.{}", quote_ident(k)));
        let column: Vec<Option<Vec<u8>>> = keys.iter().map(|row| Some(row[i].clone())).collect();
        args.push(column.into());
    }
    let names: Vec<String> = (0..key.len()).map(|i| format!("c{i}")).collect();
    let unnest: Vec<String> = (1..=key.len()).map(|i| format!("${i}::bytea[]")).collect();
    let sql = format!(
        "DELETE FROM {target_q} t WHERE ({}) IN (SELECT {} FROM pg_catalog.unnest({}) AS u({}))",
        conds.join(", "),
        selects.join(", "),
        unnest.join(", "),
        names.join(", ")
    );
    Spi::connect_mut(|c| c.update(&sql, None, &args).map(|t| t.len() as i64))
        .map_err(|e| spi_err(e).message)
}

/// Text in the database's encoding as UTF8 (what the source connection speaks).
fn to_utf8(bytes: &[u8]) -> String {
    // SAFETY: GetDatabaseEncoding reads a backend-global set at connection; plain call.
    if unsafe { pg_sys::GetDatabaseEncoding() } == pg_sys::pg_enc::PG_UTF8 as i32 {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    let Ok(c) = std::ffi::CString::new(bytes) else {
        return String::from_utf8_lossy(bytes).into_owned();
    };
    // SAFETY: `c` is a NUL-terminated buffer of `bytes.len()` bytes that outlives the call; the
    // result is either `c`'s own pointer or a palloc'd NUL-terminated string, read at once.
    unsafe {
        let out = pg_sys::pg_server_to_any(
            c.as_ptr(),
            bytes.len() as i32,
            pg_sys::pg_enc::PG_UTF8 as i32,
        );
        std::ffi::CStr::from_ptr(out).to_string_lossy().into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relation(id: u32, cols: &[&str]) -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(b"public\0t\0");
        m.push(b'd');
        m.extend_from_slice(&(cols.len() as i16).to_be_bytes());
        for c in cols {
            m.push(0);
            m.extend_from_slice(c.as_bytes());
            m.push(0);
            m.extend_from_slice(&25u32.to_be_bytes());
            m.extend_from_slice(&(-1i32).to_be_bytes());
        }
        m
    }

    fn tuple(vals: &[Option<&str>]) -> Vec<u8> {
        let mut m = (vals.len() as i16).to_be_bytes().to_vec();
        for v in vals {
            match v {
                None => m.push(b'n'),
                Some("\u{0}u") => m.push(b'u'),
                Some(s) => {
                    m.push(b't');
                    m.extend_from_slice(&(s.len() as i32).to_be_bytes());
                    m.extend_from_slice(s.as_bytes());
                }
            }
        }
        m
    }

    fn change(kind: u8, id: u32, parts: &[(u8, &[Option<&str>])]) -> (bool, Vec<u8>) {
        let mut m = vec![kind];
        m.extend_from_slice(&id.to_be_bytes());
        for (tag, vals) in parts {
            m.push(*tag);
            m.extend_from_slice(&tuple(vals));
        }
        (false, m)
    }

    fn k(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn keys_of_inserts_updates_and_deletes() {
        let key = vec!["id".to_string()];
        let msgs = vec![
            (false, relation(7, &["id", "v"])),
            change(b'I', 7, &[(b'N', &[Some("1"), Some("a")])]),
            // key unchanged: new tuple only
            change(b'U', 7, &[(b'N', &[Some("2"), Some("\u{0}u")])]),
            // key changed 3 -> 4
            change(
                b'U',
                7,
                &[(b'K', &[Some("3"), None]), (b'N', &[Some("4"), Some("b")])],
            ),
            change(b'D', 7, &[(b'K', &[Some("5"), None])]),
        ];
        let got = changed_keys(&msgs, &key).unwrap();
        let want: HashSet<_> = ["1", "2", "3", "4", "5"].iter().map(|s| k(&[s])).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn composite_keys_follow_the_relation_column_order() {
        let key = vec!["b".to_string(), "a".to_string()];
        let msgs = vec![
            (false, relation(9, &["a", "x", "b"])),
            change(b'I', 9, &[(b'N', &[Some("1"), Some("x"), Some("2")])]),
        ];
        assert_eq!(
            changed_keys(&msgs, &key).unwrap(),
            [k(&["2", "1"])].into_iter().collect()
        );
    }

    #[test]
    fn truncate_or_a_missing_key_value_starts_over() {
        let key = vec!["id".to_string()];
        let mut trunc = vec![b'T'];
        trunc.extend_from_slice(&1u32.to_be_bytes());
        trunc.push(0);
        trunc.extend_from_slice(&7u32.to_be_bytes());
        let msgs = vec![(false, relation(7, &["id"])), (false, trunc)];
        assert!(changed_keys(&msgs, &key).is_err());
        let msgs = vec![
            (false, relation(7, &["id", "v"])),
            change(b'D', 7, &[(b'K', &[None, None])]),
        ];
        assert!(changed_keys(&msgs, &key).is_err());
        // A change of a relation never described cannot be attributed.
        assert!(changed_keys(&[change(b'I', 8, &[(b'N', &[Some("1")])])], &key).is_err());
    }
}
