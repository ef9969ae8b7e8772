//! Issue 11, items 2 and 3: a copy survives a restart — the ranges already loaded are kept and
//! at most the ranges in flight are read again — and no source snapshot outlives
//! `livesync.max_snapshot_age`, while the slot keeps advancing. Both under concurrent DML on the
//! table being copied that moves rows between ctid ranges (updates, key changes, deletes,
//! inserts, unchanged TOAST values): the table is put right by key at the end
//! (`src/copy/resume.rs`) and must end equal to the source, row by row.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(240);

/// `big`: ~1.2M rows, every 500th with a TOASTed `doc` (stored out of line).
fn create_big(db: &TestDb, rows: i64) {
    db.src(&format!(
        "CREATE TABLE big (id int PRIMARY KEY, k int NOT NULL, v text, doc text);
         ALTER TABLE big ALTER COLUMN doc SET STORAGE EXTERNAL;
         INSERT INTO big SELECT g, g % 97, md5(g::text) || md5((g * 7)::text),
                                CASE WHEN g % 500 = 0 THEN repeat(md5(g::text), 80) END
           FROM generate_series(1, {rows}) g;
         ANALYZE big;"
    ));
}

/// A client changing `big` on the source until stopped: updates spread over the whole table
/// (each moves its row to a free spot, usually the table's end: another ctid range), key
/// changes, deletes, inserts, and updates leaving a TOASTed value unchanged.
struct Churn {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    handle: Option<JoinHandle<u64>>,
}

impl Churn {
    fn start(source: &Cluster, db: &str, rows: i64) -> Churn {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let connstr = source.connstr(db);
        let mut client = source.connect(db);
        let (s, o) = (stop.clone(), ops.clone());
        let handle = std::thread::spawn(move || {
            let mut errors = 0;
            let mut i: i64 = 0;
            while !s.load(Ordering::SeqCst) {
                i += 1;
                // A spread of ids over the whole table, different each round.
                let a = (i * 7919) % rows + 1;
                let sql = match i % 6 {
                    0 => format!("UPDATE big SET v = 'u{i}' WHERE id IN ({a}, {}, {})", (a * 3) % rows + 1, (a * 11) % rows + 1),
                    1 => format!("UPDATE big SET id = id + 10000000 WHERE id = {a}"),
                    2 => format!("DELETE FROM big WHERE id = {a}"),
                    3 => format!("INSERT INTO big VALUES ({}, 1, 'new', NULL)", 20_000_000 + i),
                    4 => format!("UPDATE big SET k = -k WHERE id = {}", (a / 500).max(1) * 500),
                    _ => format!(
                        "BEGIN; UPDATE big SET v = 'tx' WHERE id = {a}; DELETE FROM big WHERE id = {}; COMMIT",
                        (a * 5) % rows + 1
                    ),
                };
                match client.batch_execute(&sql) {
                    Ok(()) => {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {
                        errors += 1;
                        if client.is_closed() {
                            // The source restarted: reconnect once it is back.
                            match postgres::Client::connect(&connstr, postgres::NoTls) {
                                Ok(c) => client = c,
                                Err(_) => std::thread::sleep(Duration::from_millis(200)),
                            }
                        } else {
                            let _ = client.batch_execute("ROLLBACK");
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(3));
            }
            errors
        });
        Churn {
            stop,
            ops,
            handle: Some(handle),
        }
    }

    fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().expect("churn thread")
    }
}

fn ranges(db: &TestDb) -> Vec<Row> {
    db.tgt(
        "SELECT r.range_no, r.done, r.finished_at::text AS finished_at, r.bytes, r.snapshot_lsn::text AS lsn
           FROM livesync.copy_range r JOIN livesync.sync_table t ON t.id = r.table_id
          WHERE t.source_name = 'big' ORDER BY r.range_no",
    )
}

/// A fast restart of the target halfway through a copy under concurrent DML: the ranges loaded
/// before it are kept (not one of them is loaded again), the others are read under a new
/// snapshot, the table is put right by key, and it ends equal to the source.
#[test]
fn a_copy_resumes_after_a_target_restart_keeping_its_loaded_ranges() {
    const ROWS: i64 = 1_200_000;
    let source = dedicated_source("resume-src");
    let target = Cluster::start_new(
        "resume-tgt",
        ClusterConfig::target()
            .with_conf("livesync.copy_range_mb = 4")
            .with_conf("livesync.max_copy_workers = 2"),
    );
    let db = TestDb::on(&source, &target, "resume");
    create_big(&db, ROWS);
    db.add_su_connector("c");
    let churn = Churn::start(&source, &db.name, ROWS);
    db.add_table_ok("big");
    wait_until("some of big's ranges loaded, most not", WAIT, || {
        let r = db.try_progress("public.big")?;
        let done = r
            .get("ranges_done")
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0);
        let total = r
            .get("ranges_total")
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0);
        if r.get("state") == Some("copying") && done >= 2 && done + 4 < total {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    target.restart();
    // What survived the restart (ranges committed before it are durable).
    let kept: HashMap<String, String> = ranges(&db)
        .into_iter()
        .filter(|r| r.bool("done"))
        .map(|r| {
            (
                r.text("range_no").to_string(),
                r.text("finished_at").to_string(),
            )
        })
        .collect();
    let total = ranges(&db).len();
    assert!(
        kept.len() >= 2,
        "ranges loaded before the restart: {kept:?}"
    );
    eprintln!(
        "copy_resume: {} of {total} ranges were loaded before the restart",
        kept.len()
    );

    let before = churn.ops();
    let row = db.wait_table_state("public.big", "ready", WAIT);
    let churned = churn.ops() - before;
    let errors = churn.stop();
    assert_eq!(errors, 0, "the source's own statements failed");
    assert!(
        churned > 50,
        "the source changed big during the resumed copy ({churned} statements)"
    );
    db.wait_caught_up("c");
    db.assert_same(&Compare::same("big", "id"));

    // Not one range loaded before the restart was loaded again.
    let after = ranges(&db);
    for r in &after {
        if let Some(at) = kept.get(r.text("range_no")) {
            assert_eq!(
                r.text("finished_at"),
                at,
                "range {} was loaded again: {r:?}",
                r.text("range_no")
            );
        }
    }
    let log = target.log_contents();
    assert_contains(&log, "goes on under a new snapshot", "the target log");
    assert_contains(
        &log,
        "right at",
        "the target log (the table put right by key)",
    );
    eprintln!("copy_resume: ready {row:?}");
    // Later changes apply directly.
    db.src("UPDATE big SET v = 'later' WHERE id % 10000 = 7; DELETE FROM big WHERE id % 10000 = 8");
    db.wait_same(&Compare::same("big", "id"), WAIT);
}

/// `livesync.max_snapshot_age` of 1 s on a copy of many small ranges under concurrent DML: the
/// copy moves to fresh snapshots as it goes, no source snapshot of livesync lives much longer
/// than that, the connector's slot keeps confirming new positions meanwhile, and the table ends
/// equal to the source.
#[test]
fn no_copy_snapshot_outlives_max_snapshot_age() {
    const ROWS: i64 = 1_200_000;
    let source = dedicated_source("rotate-src");
    let target = Cluster::start_new(
        "rotate-tgt",
        ClusterConfig::target()
            .with_conf("livesync.copy_range_mb = 2")
            .with_conf("livesync.max_copy_workers = 1")
            .with_conf("livesync.max_snapshot_age = 1"),
    );
    let db = TestDb::on(&source, &target, "rotate");
    create_big(&db, ROWS);
    db.src("CREATE TABLE small (id int PRIMARY KEY, v int)");
    db.add_su_connector("c");
    db.add_table_ok("small");
    db.wait_ready("public.small");
    let churn = Churn::start(&source, &db.name, ROWS);
    let confirmed = |db: &TestDb| -> String {
        db.src("SELECT confirmed_flush_lsn::text AS l FROM pg_replication_slots WHERE slot_name LIKE 'livesync%' AND NOT temporary")[0]
            .text("l")
            .to_string()
    };
    let started = Instant::now();
    db.add_table_ok("big");
    let first_confirmed = confirmed(&db);

    // Sample the source's xmin holders of livesync (exporting walsenders, copy sessions): how
    // long each (process, xmin) pair lives.
    let mut seen: HashMap<(String, String), (Instant, Instant)> = HashMap::new();
    let mut n = 0;
    let ready = loop {
        let holders = db.src(
            "SELECT pid::text AS pid, backend_xmin::text AS xmin FROM pg_stat_activity
              WHERE backend_xmin IS NOT NULL AND application_name LIKE 'livesync%'",
        );
        let now = Instant::now();
        for h in holders {
            let e = seen
                .entry((h.text("pid").to_string(), h.text("xmin").to_string()))
                .or_insert((now, now));
            e.1 = now;
        }
        n += 1;
        if n % 10 == 0 {
            db.src(&format!("INSERT INTO small VALUES ({n}, {n})"));
        }
        let r = db.progress("public.big");
        if r.text("state") == "ready" {
            break r;
        }
        assert!(
            started.elapsed() < WAIT,
            "big not ready after {WAIT:?}: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let copy_took = started.elapsed();
    let last_confirmed = confirmed(&db);
    let errors = churn.stop();
    assert_eq!(errors, 0);
    let oldest = seen
        .values()
        .map(|(a, b)| b.duration_since(*a))
        .max()
        .unwrap_or_default();
    eprintln!(
        "copy_resume: copy took {copy_took:?}; oldest livesync snapshot on the source lived {oldest:?} ({} seen); slot confirmed {first_confirmed} -> {last_confirmed}",
        seen.len()
    );
    // Three snapshot lifetimes at least: long enough for the copy to have moved to fresh ones
    // (the copy takes 5 s on a quiet machine, 8 s under the suite's load).
    assert!(
        copy_took > Duration::from_secs(3),
        "the copy was too quick ({copy_took:?}) to show anything"
    );
    // A snapshot goes at the first look after it turned 1 s old (looks come every second),
    // or once the range read under it is loaded.
    assert!(
        oldest < Duration::from_secs(4),
        "a snapshot lived {oldest:?} with max_snapshot_age = 1 s"
    );
    assert!(seen.len() >= 3, "snapshots seen: {seen:?}");
    let lsn_num = |l: &str| {
        let (hi, lo) = l.split_once('/').unwrap();
        (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
    };
    assert!(
        lsn_num(&last_confirmed) > lsn_num(&first_confirmed),
        "the slot did not advance during the copy"
    );
    assert_contains(
        &target.log_contents(),
        "move to a fresh snapshot",
        "the target log",
    );
    db.wait_caught_up("c");
    db.assert_all_same(&[Compare::same("big", "id"), Compare::same("small", "id")]);
    assert_eq!(ready.text("state"), "ready");
}

/// A table without a key cannot be put right by key: `add_table` says what a restart costs, and
/// a restart during its copy starts it over (and it still ends equal).
#[test]
fn a_table_without_key_starts_over_and_says_so() {
    let source = dedicated_source("nokey-src");
    let target = Cluster::start_new(
        "nokey-tgt",
        ClusterConfig::target()
            .with_conf("livesync.copy_range_mb = 4")
            .with_conf("livesync.max_copy_workers = 1"),
    );
    let db = TestDb::on(&source, &target, "nokey");
    db.src(
        "CREATE TABLE nk (id int, v text); ALTER TABLE nk REPLICA IDENTITY FULL;
         INSERT INTO nk SELECT g, md5(g::text) || md5((g * 7)::text) FROM generate_series(1, 1000000) g; ANALYZE nk;",
    );
    db.add_su_connector("c");
    let out = db.add_table("nk", None, None);
    let notices = out
        .notices
        .iter()
        .map(|w| w.message.clone())
        .collect::<Vec<_>>()
        .join("\n");
    assert_contains(
        &notices,
        "a restart during its copy starts it over",
        "add_table's notices",
    );
    out.ok("add nk");
    // A primary key and another replica identity index: resumable by the latter, no notice.
    db.src("CREATE TABLE pi (id int PRIMARY KEY, u int NOT NULL UNIQUE); ALTER TABLE pi REPLICA IDENTITY USING INDEX pi_u_key");
    let out = db.add_table("pi", None, None);
    assert!(
        !out.notices
            .iter()
            .any(|n| n.message.contains("starts it over")),
        "{:?}",
        out.notices
    );
    out.ok("add pi");
    wait_until("some of nk's ranges loaded", WAIT, || {
        let r = db.try_progress("public.nk")?;
        let done = r
            .get("ranges_done")
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0);
        if r.get("state") == Some("copying") && done >= 1 {
            Ok(())
        } else {
            Err(format!("{r:?}"))
        }
    });
    target.restart();
    db.src("UPDATE nk SET v = 'during' WHERE id % 1000 = 1; DELETE FROM nk WHERE id % 1000 = 2");
    db.wait_table_state("public.nk", "ready", WAIT);
    db.wait_caught_up("c");
    db.assert_same(&Compare::by_row("nk"));
}

/// `pause_connector`/`resume_connector` and then a source restart, both halfway through a copy
/// under concurrent DML: each time the loaded ranges are kept, and the table ends equal.
#[test]
fn a_copy_survives_a_pause_and_a_source_restart() {
    const ROWS: i64 = 1_200_000;
    let source = dedicated_source("resume-pause-src");
    let target = Cluster::start_new(
        "resume-pause-tgt",
        ClusterConfig::target()
            .with_conf("livesync.copy_range_mb = 4")
            .with_conf("livesync.max_copy_workers = 1"),
    );
    let db = TestDb::on(&source, &target, "resume_pause");
    create_big(&db, ROWS);
    db.add_su_connector("c");
    let churn = Churn::start(&source, &db.name, ROWS);
    db.add_table_ok("big");
    let done_ranges = |db: &TestDb| -> HashMap<String, String> {
        ranges(db)
            .into_iter()
            .filter(|r| r.bool("done"))
            .map(|r| {
                (
                    r.text("range_no").to_string(),
                    r.text("finished_at").to_string(),
                )
            })
            .collect()
    };
    let wait_done = |db: &TestDb, n: usize| {
        wait_until(&format!("{n} of big's ranges loaded"), WAIT, || {
            let d = done_ranges(db).len();
            let total = ranges(db).len();
            if d >= n && d + 3 < total {
                Ok(())
            } else {
                Err(format!("{d} of {total}"))
            }
        })
    };
    wait_done(&db, 2);
    db.call_ok("pause_connector", &["c"]);
    db.wait_state("c", "paused");
    let kept_pause = done_ranges(&db);
    db.call_ok("resume_connector", &["c"]);
    wait_done(&db, kept_pause.len() + 2);
    source.restart();
    let kept = done_ranges(&db);
    db.wait_table_state("public.big", "ready", WAIT);
    let errors = churn.stop();
    eprintln!("copy_resume: the churn saw {errors} errors across the source restart");
    db.wait_caught_up("c");
    db.assert_same(&Compare::same("big", "id"));
    let after = done_ranges(&db);
    for (no, at) in kept_pause.iter().chain(kept.iter()) {
        assert_eq!(after.get(no), Some(at), "range {no} was loaded again");
    }
    assert!(kept.len() > kept_pause.len(), "{kept:?} / {kept_pause:?}");
}
