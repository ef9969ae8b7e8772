//! `livesync.verify_table`: is the target really equal to the source — checked while both run.
//!
//! A verification runs in a background worker of its own (`livesync verify`), started by the SQL
//! function, which waits for it: the worker needs transactions of its own — a REPEATABLE READ
//! one whose snapshot *is* the target side of the cut, and short ones that record progress and
//! results where other sessions see them (`livesync.verification`).
//!
//! 1. A temporary slot on the source exports a snapshot at its consistent point `L`; a source
//!    session reads under it.
//! 2. The connector's stream is asked to stop at `L` ([`cut`]): once it has committed exactly
//!    the source transactions before `L`, it waits while this worker takes its target snapshot,
//!    then goes on. If it had already gone past `L`, steps 1–2 are tried again.
//! 3. Each side hashes the table per bucket in its own database ([`sql`]); the two run at the
//!    same time. Buckets whose count or hash sum differ are read row by row (key and row hash)
//!    on both sides, and the rows that differ are named: missing on target, extra on target,
//!    different.
//!
//! Rows the stream skips (a table in `error`) or a copy not finished make a table unverifiable;
//! the worker says so instead of reporting differences that are not divergence.

pub mod cut;
pub mod sql;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use pgrx::bgworkers::{BackgroundWorker, DynamicBackgroundWorker};
use pgrx::prelude::*;

use crate::catalog::verification::{self, Difference, Summary};
use crate::catalog::{self, tables};
use crate::copy::snapshot::{self, ExportedSnapshot};
use crate::copy::target::qualified;
use crate::runtime::{block_on_until_shutdown, new_runtime};
use crate::source::conninfo::SourceConninfo;
use crate::worker::BACKEND_TYPE_VERIFY;
use sql::{Buckets, Shape};

/// At most this many differing rows are named (all are counted).
pub const MAX_NAMED: usize = 1000;
/// Tries at a cut the stream had already passed.
const CUT_ATTEMPTS: i32 = 10;
/// How long the stream may take to reach the cut (it may be catching up).
const CUT_WAIT: Duration = Duration::from_secs(120);

/// Start the verify worker for verification `id` of table `table_id`; the caller waits for it.
pub fn launch(id: i64, table_id: i32, by_text: bool) -> Option<DynamicBackgroundWorker> {
    crate::worker::launch_with(
        &format!("livesync verify {id}"),
        BACKEND_TYPE_VERIFY,
        "livesync_verify_main",
        table_id,
        &format!("{id}:{}", if by_text { "text" } else { "typed" }),
        None,
        true,
    )
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn livesync_verify_main(arg: pg_sys::Datum) {
    crate::worker::attach_signals();
    // SAFETY: `arg` is the bgw_main_arg `launch_with` built from an i32 with into_datum: a
    // by-value Datum, never NULL.
    let table_id = unsafe { i32::from_datum(arg, false) }.expect("verify worker needs a table id");
    let tail = crate::worker::worker_extra_tail();
    let (id, by_text) = match tail.split_once(':') {
        Some((id, flag)) => (
            id.parse::<i64>()
                .expect("verify worker needs a verification id"),
            flag == "text",
        ),
        None => (
            tail.parse::<i64>()
                .expect("verify worker needs a verification id"),
            false,
        ),
    };
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(crate::worker::worker_database()), None);
    crate::worker::set_worker_session_defaults();
    crate::worker::set_application_name(&format!("livesync verify {id}"));

    let setup = crate::worker::in_transaction(|| -> Result<_, String> {
        let t = tables::by_id(table_id)
            .map_err(|e| e.message)?
            .ok_or("the table is no longer synced")?;
        let connector_id = catalog::first_value::<i32>(
            "SELECT connector_id FROM livesync.sync_table WHERE id = $1",
            &[table_id.into()],
        )
        .map_err(|e| e.message)?
        .ok_or("the table is no longer synced")?;
        let c = catalog::connector_by_id(connector_id)
            .map_err(|e| e.message)?
            .ok_or("the connector is gone")?;
        let conninfo = catalog::conninfo(c.id)
            .map_err(|e| e.message)?
            .ok_or("the connector is gone")?;
        verification::start(
            id,
            c.id,
            t.id,
            &qualified(&t.source_schema, &t.source_name),
            &qualified(&t.target_schema, &t.target_name),
        )
        .map_err(|e| e.message)?;
        Ok((t, c, conninfo))
    });
    let (t, c, conninfo) = match setup {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => return pgrx::log!("livesync verify {id}: {e}"),
        Err(e) => return pgrx::log!("livesync verify {id}: {}", e.message),
    };
    let started = Instant::now();
    let mut summary = match run(id, &t, &c, &conninfo, by_text) {
        Ok(s) => s,
        Err(e) => Summary {
            state: "failed",
            error: Some(e),
            ..Default::default()
        },
    };
    if summary.state == "running" {
        summary.state = "failed";
    }
    let _ = crate::worker::in_transaction(|| {
        verification::insert_differences(id, &summary.named)?;
        verification::finish(id, &summary)
    });
    pgrx::log!(
        "livesync: verified {} in {:.1} s: {} ({} differences){}",
        qualified(&t.source_schema, &t.source_name),
        started.elapsed().as_secs_f64(),
        summary.state,
        summary.differences,
        summary
            .error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default()
    );
}

fn parse_lsn(s: &str) -> u64 {
    let (hi, lo) = s.split_once('/').unwrap_or(("0", "0"));
    (u64::from_str_radix(hi, 16).unwrap_or(0) << 32) | u64::from_str_radix(lo, 16).unwrap_or(0)
}

/// The source side of a cut: its snapshot (kept exported while its slot's connection lives) and
/// a session reading under it.
struct SourceCut {
    _exported: ExportedSnapshot,
    client: tokio_postgres::Client,
    lsn: u64,
}

fn run(
    id: i64,
    t: &tables::SyncTable,
    c: &catalog::Connector,
    conninfo: &str,
    by_text: bool,
) -> Result<Summary, String> {
    let info = SourceConninfo::parse(conninfo).map_err(|e| e.0)?;
    let rt = new_runtime();
    let app = format!("livesync verify {id}");
    let source_rel = qualified(&t.source_schema, &t.source_name);
    let target_rel = qualified(&t.target_schema, &t.target_name);

    // 1–2: a source snapshot at L, and the stream stopped at L while the target's is taken. The
    // cut is asked for the moment L is known — before anything else, as the stream must not have
    // begun a transaction past L by the time it looks — and the source session imports the
    // snapshot only afterwards (the exported snapshot stays valid while its slot's connection lives).
    let Some(pid) = crate::worker::in_transaction(|| catalog::live_worker_pid(c.id))
        .ok()
        .and_then(|r| r.ok())
        .flatten()
    else {
        return Err(format!("connector \"{}\" is not streaming (paused, or its worker is down); resume it and try again", c.name));
    };
    let mut attempts = 0;
    let (exported, pause) = loop {
        attempts += 1;
        let slot = format!("livesync_verify_{}_{}", id, attempts);
        let exported = ExportedSnapshot::create(conninfo, &app, &slot, true)
            .map_err(|e| format!("could not export a snapshot on the source: {e}"))?;
        match take_target_snapshot(c, pid, parse_lsn(&exported.lsn))? {
            Some(pause) => break (exported, pause),
            None if attempts < CUT_ATTEMPTS => continue,
            None => return Err(format!("the stream passed the cut {CUT_ATTEMPTS} times in a row; try again when the source is less busy")),
        }
    };
    let client = match block_on_until_shutdown(&rt, snapshot::import(&info, &app, &exported.name)) {
        Some(Ok(c)) => c,
        r => {
            // SAFETY: ends the transaction take_target_snapshot began (nothing was done in it).
            unsafe { pg_sys::AbortCurrentTransaction() };
            return Err(match r {
                Some(Err(e)) => format!("could not read under the source snapshot: {e}"),
                _ => "the server is shutting down".into(),
            });
        }
    };
    let lsn = parse_lsn(&exported.lsn);
    let src = SourceCut {
        _exported: exported,
        client,
        lsn,
    };

    // From here on this process is inside the REPEATABLE READ transaction of the cut.
    let r = crate::error::catch(|| compare(&rt, &src, t, &source_rel, &target_rel, by_text));
    // SAFETY: ends the transaction take_target_snapshot began (read-only work only).
    unsafe {
        pg_sys::AbortCurrentTransaction();
    }
    let mut s = match r {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(e),
        Err(e) => return Err(e.message),
    };
    s.attempts = attempts;
    s.cut_lsn = Some(crate::walrcv::format_lsn(src.lsn));
    s.pause_ms = Some(pause.as_secs_f64() * 1000.0);
    Ok(s)
}

/// Ask the stream for the cut at `lsn` and, once it holds there, begin this process's REPEATABLE
/// READ transaction (its snapshot is the target side). Some(pause) on success, None when the
/// stream had already passed `lsn` (try again), Err when it does not come.
fn take_target_snapshot(
    c: &catalog::Connector,
    pid: i32,
    lsn: u64,
) -> Result<Option<Duration>, String> {
    let req = cut::Request::new(c.id, lsn)
        .ok_or("too many verifications run at once; try again later")?;
    crate::worker::wake(pid);
    let start = Instant::now();
    loop {
        match req.state() {
            cut::State::AtCut => break,
            cut::State::Missed | cut::State::Abandoned => return Ok(None),
            _ => {}
        }
        if start.elapsed() >= CUT_WAIT {
            return Err(format!(
                "the stream of connector \"{}\" did not reach the cut {} within {} s (it may be far behind, or stopped)",
                c.name,
                crate::walrcv::format_lsn(lsn),
                CUT_WAIT.as_secs()
            ));
        }
        if crate::runtime::shutdown_requested() {
            return Err("the server is shutting down".into());
        }
        // SAFETY: a latch wait of this process with a timeout, then ResetLatch; the state is
        // read again after every wake-up.
        unsafe {
            pg_sys::WaitLatch(
                pg_sys::MyLatch,
                (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
                50,
                pg_sys::PG_WAIT_EXTENSION,
            );
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
    }
    // Crash-sensitive ordering does not matter here (nothing is written), but timing does: the
    // snapshot must be taken while the stream waits at the cut, and only then may it go on.
    // SAFETY: this worker has no transaction open here (every in_transaction ended); the one begun
    // is ended by run() (abort: it only read). The isolation level is set before the transaction's
    // first snapshot, as SET TRANSACTION ISOLATION LEVEL would.
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::XactIsoLevel = pg_sys::XACT_REPEATABLE_READ as i32;
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
    match req.taken() {
        Some(pause) => Ok(Some(pause)),
        None => {
            // The stream gave up waiting and may have applied more: this snapshot is no cut.
            // SAFETY: ends the transaction begun just above.
            unsafe { pg_sys::AbortCurrentTransaction() };
            Ok(None)
        }
    }
}

/// Run `source` (a query on the source) and `target` (SPI here) at the same time: the source's
/// query is sent first, the target's runs meanwhile, then the source's result is collected.
fn both<S, T>(
    rt: &tokio::runtime::Runtime,
    source: impl std::future::Future<Output = S>,
    target: impl FnOnce() -> T,
) -> Result<(S, T), String> {
    let mut fut = std::pin::pin!(source);
    let early = rt
        .block_on(async { tokio::time::timeout(Duration::from_millis(5), &mut fut).await })
        .ok();
    let t = target();
    let s = match early {
        Some(v) => v,
        None => block_on_until_shutdown(rt, fut).ok_or("the server is shutting down")?,
    };
    Ok((s, t))
}

type Bucket = (i64, String);

fn source_err(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("on the source: {}", d.message()),
        None => format!("on the source: {e}"),
    }
}

fn spi_rows(
    sql: &str,
    args: Vec<pgrx::datum::DatumWithOid>,
) -> Vec<(Option<i32>, Option<String>, Option<String>, Option<String>)> {
    Spi::connect(|c| {
        let t = c.select(sql, None, &args)?;
        t.map(|r| {
            Ok((
                r.get::<i32>(1).ok().flatten(),
                r.get::<String>(2).ok().flatten(),
                r.get::<String>(3).ok().flatten(),
                r.get::<String>(4).ok().flatten(),
            ))
        })
        .collect::<Result<Vec<_>, pgrx::spi::Error>>()
    })
    .unwrap_or_else(|e| pgrx::error!("{e}"))
}

fn compare(
    rt: &tokio::runtime::Runtime,
    src: &SourceCut,
    t: &tables::SyncTable,
    source_rel: &str,
    target_rel: &str,
    by_text: bool,
) -> Result<Summary, String> {
    let client = &src.client;
    // Inside the cut: the table must be fully copied before it, and its changes applied.
    let state = catalog::first_value::<String>(
        "SELECT state || ':' || coalesce(snapshot_lsn::text, '') || ':' || (retry_since IS NOT NULL)::text FROM livesync.sync_table WHERE id = $1",
        &[t.id.into()],
    )
    .map_err(|e| e.message)?
    .ok_or("the table is no longer synced")?;
    let mut parts = state.splitn(3, ':');
    let (st, snap, retrying) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    if st != "copied" || retrying == "true" {
        return Err(format!("the table is not in sync at the cut (state {st}{}); verify it once table_progress shows it ready", if retrying == "true" { ", retrying" } else { "" }));
    }
    if parse_lsn(snap) > src.lsn {
        return Err("the table's copy finished after the cut; verify it again".into());
    }

    // Pinned output settings on both sides.
    block_on_until_shutdown(rt, client.batch_execute(sql::PINNED_SETTINGS))
        .ok_or("shutting down")?
        .map_err(source_err)?;
    Spi::run(sql::PINNED_SETTINGS).map_err(|e| e.to_string())?;

    let def = block_on_until_shutdown(rt, crate::source::table::describe(client, source_rel))
        .ok_or("shutting down")?
        .map_err(source_err)?
        .ok_or("the table no longer exists on the source")?;
    let columns: Vec<String> = def.columns.iter().map(|c| c.name.clone()).collect();
    for col in &columns {
        let there = catalog::first_value::<bool>(
            "SELECT true FROM pg_catalog.pg_attribute WHERE attrelid = $1::regclass AND attname = $2 AND NOT attisdropped AND attnum > 0",
            &[target_rel.into(), col.as_str().into()],
        )
        .map_err(|e| e.message)?;
        if there.is_none() {
            return Err(format!(
                "column \"{col}\" of the source table is missing on the target"
            ));
        }
    }
    // Typed hashes where both sides can (PostgreSQL 14+, every column type hashable), unless
    // the caller asked for the rows' text.
    let mut typed = !by_text;
    if typed {
        let version: i32 = block_on_until_shutdown(
            rt,
            client.query_one("SELECT current_setting('server_version_num')::int4", &[]),
        )
        .ok_or("shutting down")?
        .map_err(source_err)?
        .get(0);
        let src_types: Vec<String> = def.columns.iter().map(|c| c.type_name.clone()).collect();
        typed = version >= 140000
            && block_on_until_shutdown(
                rt,
                client.batch_execute(&format!(
                    "SAVEPOINT probe; {}; RELEASE probe",
                    sql::typed_probe_sql(&src_types)
                )),
            )
            .ok_or("shutting down")?
            .is_ok();
        if !typed && version >= 140000 {
            let _ = block_on_until_shutdown(
                rt,
                client.batch_execute("ROLLBACK TO probe; RELEASE probe"),
            );
        }
        if typed {
            // On the target, ask the type cache (an ERROR here would end the cut's transaction).
            for col in &columns {
                let oid = catalog::first_value::<pg_sys::Oid>(
                    "SELECT atttypid FROM pg_catalog.pg_attribute WHERE attrelid = $1::regclass AND attname = $2",
                    &[target_rel.into(), col.as_str().into()],
                )
                .map_err(|e| e.message)?
                .unwrap_or(pg_sys::InvalidOid);
                // SAFETY: lookup_type_cache returns a pointer to a cache entry that lives as long as
                // the backend; an unknown type raises an ERROR (caught by compare's caller).
                let hashable = unsafe {
                    let e =
                        pg_sys::lookup_type_cache(oid, pg_sys::TYPECACHE_HASH_EXTENDED_PROC as i32);
                    !e.is_null() && (*e).hash_extended_proc != pg_sys::InvalidOid
                };
                typed &= hashable;
            }
        }
    }
    let shape = Shape {
        columns,
        key: def.key.clone(),
        typed,
    };

    // Buckets: ranges of the first key column when its type allows a binary search.
    let first = shape.key.first().cloned();
    let range_ok = match &first {
        Some(k) => {
            let oid = def
                .columns
                .iter()
                .find(|c| &c.name == k)
                .map(|c| c.type_oid as i64)
                .unwrap_or(0);
            block_on_until_shutdown(rt, client.query_opt(sql::RANGE_TYPE_SQL, &[&oid]))
                .ok_or("shutting down")?
                .map_err(source_err)?
                .and_then(|r| r.get::<_, Option<bool>>(0))
                .unwrap_or(false)
        }
        None => false,
    };
    let est = block_on_until_shutdown(rt, client.query_one(sql::ESTIMATE_SQL, &[&source_rel]))
        .ok_or("shutting down")?
        .map_err(source_err)?;
    let (mut rows_est, bytes): (f64, i64) = (est.get(0), est.get(1));
    if rows_est < 1.0 && bytes > 0 {
        // Never analyzed: guess from the size (100 bytes a row); only the bucket count depends on it.
        rows_est = bytes as f64 / 100.0;
    }
    let count = sql::bucket_count(rows_est);

    let mut summary = Summary {
        state: "running",
        ..Default::default()
    };
    let (src_b, tgt_b, thresholds) = if let (true, Some(k)) = (range_ok, first.clone()) {
        let src_type = def
            .columns
            .iter()
            .find(|c| c.name == k)
            .map(|c| c.type_name.clone())
            .unwrap_or_default();
        let src_type = strip_typmod(&src_type);
        let tgt_type = catalog::first_value::<String>(
            "SELECT pg_catalog.format_type(atttypid, NULL) FROM pg_catalog.pg_attribute WHERE attrelid = $1::regclass AND attname = $2",
            &[target_rel.into(), k.as_str().into()],
        )
        .map_err(|e| e.message)?
        .unwrap_or_default();
        let percent = if rows_est <= 0.0 {
            100.0
        } else {
            (100.0 * 20.0 * count as f64 / rows_est).clamp(0.0001, 100.0)
        };
        let sampled: Vec<String> = if count > 1 {
            block_on_until_shutdown(
                rt,
                client.query(&sql::sample_sql(source_rel, &k, percent), &[]),
            )
            .ok_or("shutting down")?
            .map_err(source_err)?
            .iter()
            .filter_map(|r| r.get::<_, Option<String>>(0))
            .collect()
        } else {
            Vec::new()
        };
        let th = sql::thresholds(&sampled, count);
        summary.method = format!("ranges of {}", crate::source::quote_ident(&k));
        (
            Buckets::Range {
                column: k.clone(),
                type_name: src_type,
            },
            Buckets::Range {
                column: k,
                type_name: tgt_type,
            },
            th,
        )
    } else {
        let n = count.next_power_of_two();
        summary.method = if shape.key.is_empty() {
            "row hash buckets (no key: rows are named by their text)".into()
        } else {
            "key hash buckets".into()
        };
        (
            Buckets::Hash { count: n },
            Buckets::Hash { count: n },
            Vec::new(),
        )
    };
    summary.method.push_str(if shape.typed {
        ", typed hashes"
    } else {
        ", row text hashes"
    });
    if shape.key.is_empty() {
        summary.note = Some("the table has no primary key or replica identity index: rows are compared and named by their whole text".into());
    }

    // Pass 1: per-bucket counts and hash sums, both sides at once.
    let src_sql = shape.buckets_sql(source_rel, &src_b);
    let tgt_sql = shape.buckets_sql(target_rel, &tgt_b);
    let is_range = matches!(src_b, Buckets::Range { .. });
    let th_param = thresholds.clone();
    let (s_rows, t_rows) = both(
        rt,
        async {
            if is_range {
                client.query(&src_sql, &[&th_param]).await
            } else {
                client.query(&src_sql, &[]).await
            }
        },
        || {
            let args: Vec<pgrx::datum::DatumWithOid> = if is_range {
                vec![thresholds.clone().into()]
            } else {
                vec![]
            };
            spi_rows(
                &format!("SELECT b, s, n::text, NULL::text FROM ({tgt_sql}) x"),
                args,
            )
        },
    )?;
    let s_rows = s_rows.map_err(source_err)?;
    let mut sb: BTreeMap<i32, Bucket> = BTreeMap::new();
    for r in &s_rows {
        sb.insert(
            r.get::<_, i32>(0),
            (r.get::<_, i64>(1), r.get::<_, String>(2)),
        );
    }
    let mut tb: BTreeMap<i32, Bucket> = BTreeMap::new();
    for (b, s, n, _) in t_rows {
        tb.insert(
            b.unwrap_or(0),
            (
                n.and_then(|n| n.parse().ok()).unwrap_or(0),
                s.unwrap_or_default(),
            ),
        );
    }
    summary.rows_source = sb.values().map(|v| v.0).sum();
    summary.rows_target = tb.values().map(|v| v.0).sum();
    summary.ranges = match &src_b {
        Buckets::Range { .. } => thresholds.len() as i32 + 1,
        Buckets::Hash { count } => *count as i32,
    };
    let differing: Vec<i32> = sb
        .keys()
        .chain(tb.keys())
        .copied()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|b| sb.get(b) != tb.get(b))
        .collect();
    summary.ranges_differing = differing.len() as i32;

    // Pass 2: the differing buckets, row by row.
    let mut found: Vec<Difference> = Vec::new();
    let mut total: i64 = 0;
    if let (
        Buckets::Range {
            column: k,
            type_name: src_type,
        },
        Buckets::Range {
            type_name: tgt_type,
            ..
        },
    ) = (&src_b, &tgt_b)
    {
        for &b in &differing {
            let (sn, tn) = (
                sb.get(&b).map(|v| v.0).unwrap_or(0),
                tb.get(&b).map(|v| v.0).unwrap_or(0),
            );
            if found.len() >= MAX_NAMED && (sn == 0 || tn == 0) {
                total += sn + tn;
                continue;
            }
            let (lo, hi) = sql::bucket_bounds(&thresholds, b);
            let params: Vec<String> = lo.into_iter().chain(hi).map(|s| s.to_string()).collect();
            let ssql = shape.range_rows_sql(source_rel, k, src_type, lo.is_some(), hi.is_some());
            let tsql = shape.range_rows_sql(target_rel, k, tgt_type, lo.is_some(), hi.is_some());
            let sparams: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                .iter()
                .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
                .collect();
            let (srows, trows) = both(rt, client.query(&ssql, &sparams), || {
                let args: Vec<pgrx::datum::DatumWithOid> =
                    params.iter().map(|p| p.as_str().into()).collect();
                spi_rows(&format!("SELECT NULL::int4, k, h, r FROM ({tsql}) x"), args)
            })?;
            total += diff_rows(&shape, srows.map_err(source_err)?, trows, &mut found);
        }
    } else if let (Buckets::Hash { count: n }, false) = (&src_b, differing.is_empty()) {
        let n = *n;
        let list: Vec<String> = differing.iter().map(|b| b.to_string()).collect();
        let ssql = shape.hash_rows_sql(source_rel, n);
        let tsql = shape.hash_rows_sql(target_rel, n);
        let (srows, trows) = both(rt, client.query(&ssql, &[&list]), || {
            spi_rows(
                &format!("SELECT NULL::int4, k, h, r FROM ({tsql}) x"),
                vec![list.clone().into()],
            )
        })?;
        total += diff_rows(&shape, srows.map_err(source_err)?, trows, &mut found);
    }
    summary.differences = total;
    summary.state = if total == 0 && differing.is_empty() {
        "equal"
    } else {
        "different"
    };
    if total == 0 && !differing.is_empty() {
        // Counts or sums differed but no row did: say so rather than claim equality.
        summary.note = Some(format!(
            "{} bucket(s) differed in count or hash sum but no differing row was found",
            differing.len()
        ));
    }
    summary.named = found;
    Ok(summary)
}

/// `timestamp(3) with time zone` → `timestamp with time zone` (array casts keep any typmod out).
fn strip_typmod(t: &str) -> String {
    match (t.find('('), t.find(')')) {
        (Some(a), Some(b)) if b > a => format!("{}{}", &t[..a], &t[b + 1..]).trim().to_string(),
        _ => t.to_string(),
    }
}

/// Compare the rows of one bucket; push up to [`MAX_NAMED`] named differences; return how many.
fn diff_rows(
    shape: &Shape,
    source: Vec<tokio_postgres::Row>,
    target: Vec<(Option<i32>, Option<String>, Option<String>, Option<String>)>,
    found: &mut Vec<Difference>,
) -> i64 {
    let mut n = 0;
    let mut push = |d: Difference, found: &mut Vec<Difference>| {
        n += 1;
        if found.len() < MAX_NAMED {
            found.push(d);
        }
    };
    let keyed = !shape.key.is_empty();
    // key → (hash, row text, how many times)
    let mut s: HashMap<String, (String, String, i64)> = HashMap::new();
    for r in source {
        let k: String = r.get(0);
        let e = s.entry(k).or_insert_with(|| (r.get(1), r.get(2), 0));
        e.2 += 1;
    }
    let mut t: HashMap<String, (String, String, i64)> = HashMap::new();
    for (_, k, h, r) in target {
        let e = t
            .entry(k.unwrap_or_default())
            .or_insert_with(|| (h.unwrap_or_default(), r.unwrap_or_default(), 0));
        e.2 += 1;
    }
    let mut keys: Vec<&String> = s.keys().chain(t.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let key = if keyed { Some(k.clone()) } else { None };
        match (s.get(k), t.get(k)) {
            (Some(a), None) => {
                for _ in 0..a.2 {
                    push(
                        Difference {
                            kind: "missing on target",
                            key: key.clone(),
                            source_row: Some(a.1.clone()),
                            target_row: None,
                        },
                        found,
                    );
                }
            }
            (None, Some(b)) => {
                for _ in 0..b.2 {
                    push(
                        Difference {
                            kind: "extra on target",
                            key: key.clone(),
                            source_row: None,
                            target_row: Some(b.1.clone()),
                        },
                        found,
                    );
                }
            }
            (Some(a), Some(b)) if keyed => {
                if a.0 != b.0 {
                    push(
                        Difference {
                            kind: "different",
                            key,
                            source_row: Some(a.1.clone()),
                            target_row: Some(b.1.clone()),
                        },
                        found,
                    );
                }
            }
            (Some(a), Some(b)) => {
                // No key: the same row text on both sides, maybe a different number of times.
                for _ in b.2..a.2 {
                    push(
                        Difference {
                            kind: "missing on target",
                            key: None,
                            source_row: Some(a.1.clone()),
                            target_row: None,
                        },
                        found,
                    );
                }
                for _ in a.2..b.2 {
                    push(
                        Difference {
                            kind: "extra on target",
                            key: None,
                            source_row: None,
                            target_row: Some(b.1.clone()),
                        },
                        found,
                    );
                }
            }
            (None, None) => {}
        }
    }
    n
}

#[cfg(test)]
mod tests {
    #[test]
    fn lsn_and_typmod() {
        assert_eq!(super::parse_lsn("1/2A"), (1u64 << 32) | 0x2a);
        assert_eq!(
            super::strip_typmod("timestamp(3) with time zone"),
            "timestamp with time zone"
        );
        assert_eq!(super::strip_typmod("numeric(10,2)"), "numeric");
        assert_eq!(super::strip_typmod("bigint"), "bigint");
    }
}
