//! Helpers for the data-sync scenarios (add_table, copy, change stream):
//! table progress, catching up, row-by-row comparison of source and target,
//! and a client load generator for the source.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::{sleep, JoinHandle};
use std::time::{Duration, Instant};

use postgres::{Client, NoTls};

use super::{lit, os_superuser, run_sql, wait_until, Cluster, Outcome, Row, TestDb};

/// Session settings both sides use when rows are rendered as text for a
/// comparison, so the text does not depend on per-database defaults.
pub const COMPARE_SETTINGS: &str = "SET TimeZone = 'UTC'; SET DateStyle = 'ISO, YMD'; \
     SET IntervalStyle = 'postgres'; SET extra_float_digits = 1; SET bytea_output = 'hex'; \
     SET lc_monetary = 'C'; SET statement_timeout = 0; ";

/// Tables with more rows than this are compared by digest only (no diff of rows).
const DIFF_ROW_LIMIT: i64 = 300_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Source,
    Target,
}

/// Which source/target relations to compare and how to order their rows.
#[derive(Clone, Debug)]
pub struct Compare {
    pub source: String,
    pub target: String,
    /// ORDER BY expression over alias `t`.
    pub order_by: String,
}

impl Compare {
    /// Same (already quoted) relation name on both sides, ordered by `order_by`.
    pub fn same(rel: &str, order_by: &str) -> Compare {
        Compare {
            source: rel.to_string(),
            target: rel.to_string(),
            order_by: order_by.to_string(),
        }
    }

    /// Ordered by the whole row's text (tables without a key).
    pub fn by_row(rel: &str) -> Compare {
        Compare::same(rel, "t::text COLLATE \"C\"")
    }
}

/// Lines of the target's server log worth showing in a failure report.
pub fn log_excerpt(cluster: &Cluster, max_lines: usize) -> String {
    let log = cluster.log_contents();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("livesync")
                || l.contains("ERROR")
                || l.contains("FATAL")
                || l.contains("PANIC")
                || l.contains("WARNING")
                || l.contains("terminated by signal")
                || l.contains("server process")
        })
        .collect();
    lines[lines.len().saturating_sub(max_lines)..].join("\n")
}

impl TestDb<'_> {
    // --- setup ------------------------------------------------------------------------

    /// Conninfo of this test's source database for the bootstrap superuser
    /// (owns the test tables, so it may add them to the connector's publication).
    pub fn su_conninfo(&self) -> String {
        self.source_conninfo(os_superuser())
    }

    /// A connector as the source's superuser; waits until it runs.
    pub fn add_su_connector(&self, name: &str) -> Row {
        self.add_ok(&self.su_conninfo(), Some(name));
        self.wait_running(name)
    }

    /// Statements on the source (as superuser) that must succeed.
    #[track_caller]
    pub fn src(&self, sql: &str) -> Vec<Row> {
        match self.source_sql(sql).result {
            Ok(r) => r,
            Err(e) => panic!("on the source: {sql}\nfailed: {e}"),
        }
    }

    /// Statements on the target (as superuser) that must succeed.
    #[track_caller]
    pub fn tgt(&self, sql: &str) -> Vec<Row> {
        match self.target_sql(sql).result {
            Ok(r) => r,
            Err(e) => panic!("on the target: {sql}\nfailed: {e}"),
        }
    }

    /// `livesync.add_table(source_table, target => …, connector => …)`.
    pub fn add_table(&self, table: &str, target: Option<&str>, connector: Option<&str>) -> Outcome {
        let mut args = vec![lit(table)];
        if let Some(t) = target {
            args.push(format!("target => {}", lit(t)));
        }
        if let Some(c) = connector {
            args.push(format!("connector => {}", lit(c)));
        }
        self.target_sql(&format!("SELECT livesync.add_table({})", args.join(", ")))
    }

    /// add_table that must succeed; returns its notices.
    #[track_caller]
    pub fn add_table_ok(&self, table: &str) -> Outcome {
        let out = self.add_table(table, None, None);
        if let Err(e) = &out.result {
            panic!("livesync.add_table({table:?}) failed:\n{e}");
        }
        out
    }

    // --- observing ------------------------------------------------------------------

    /// The livesync.table_progress row of `source_table` (as the view spells it,
    /// e.g. `public.t`).
    pub fn try_progress(&self, source_table: &str) -> Result<Row, String> {
        let out = run_sql(
            self.target,
            &self.name,
            os_superuser(),
            &format!(
                "SELECT * FROM livesync.table_progress WHERE source_table = {}",
                lit(source_table)
            ),
            Duration::from_secs(30),
        );
        let rows = out
            .result
            .map_err(|e| format!("table_progress query failed: {e}"))?;
        match rows.len() {
            1 => Ok(rows.into_iter().next().unwrap()),
            0 => Err(format!("no table_progress row for {source_table}")),
            n => Err(format!(
                "{n} table_progress rows for {source_table}: {rows:?}"
            )),
        }
    }

    #[track_caller]
    pub fn progress(&self, source_table: &str) -> Row {
        self.try_progress(source_table)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The table_progress row of `source_table` once `ok` holds for it: the change counters
    /// (`changes_applied`, `changes_skipped`) are written about once a second, after the
    /// changes themselves. Returns the last row seen after 15 s.
    #[track_caller]
    pub fn progress_when(&self, source_table: &str, ok: impl Fn(&Row) -> bool) -> Row {
        let start = Instant::now();
        loop {
            let row = self.progress(source_table);
            if ok(&row) || start.elapsed() > Duration::from_secs(15) {
                return row;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until `source_table` shows state `state` in table_progress. An
    /// unexpected `error` ends the wait at once (with the table's last_error and
    /// the target log).
    #[track_caller]
    pub fn wait_table_state(&self, source_table: &str, state: &str, timeout: Duration) -> Row {
        let start = Instant::now();
        loop {
            let last = match self.try_progress(source_table) {
                Ok(r) if r.get("state") == Some(state) => return r,
                Ok(r) if r.get("state") == Some("error") && state != "error" => panic!(
                    "table {source_table} went to `error` while waiting for {state:?}:\n  last_error: {:?}\n  hint: {:?}\n  row: {r:?}\n--- target log ---\n{}",
                    r.get("last_error"),
                    r.get("last_error_hint"),
                    log_excerpt(self.target, 40)
                ),
                Ok(r) => format!("{r:?}"),
                Err(e) => e,
            };
            if start.elapsed() >= timeout {
                panic!(
                    "timed out after {timeout:?} waiting for table {source_table} to be {state:?}; last observed: {last}\nconnectors: {:?}\n--- target log ---\n{}",
                    self.try_connectors(),
                    log_excerpt(self.target, 40)
                );
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the table is `ready` (copied and the stream is past its snapshot).
    #[track_caller]
    pub fn wait_ready(&self, source_table: &str) -> Row {
        self.wait_table_state(source_table, "ready", Duration::from_secs(90))
    }

    /// The source's WAL insert position: past every commit made so far. (Not
    /// `pg_current_wal_lsn()`, the *write* position: test clusters run with
    /// `synchronous_commit = off`, so it can still be short of a commit just made, and a
    /// wait for it would return before that commit reached the target.)
    pub fn source_lsn(&self) -> String {
        self.src("SELECT pg_current_wal_insert_lsn()::text AS lsn")[0]
            .text("lsn")
            .to_string()
    }

    /// Waits until the connector reports `flushed_lsn` (and `applied_lsn`) at
    /// or past `lsn`; returns its row.
    #[track_caller]
    pub fn wait_flushed(&self, connector: &str, lsn: &str, timeout: Duration) -> Row {
        let start = Instant::now();
        loop {
            let out = run_sql(
                self.target,
                &self.name,
                os_superuser(),
                &format!(
                    "SELECT *, coalesce(flushed_lsn >= {l}::pg_lsn, false) AS flushed_past,
                            coalesce(applied_lsn >= {l}::pg_lsn, false) AS applied_past
                       FROM livesync.connectors WHERE name = {}",
                    lit(connector),
                    l = lit(lsn)
                ),
                Duration::from_secs(30),
            );
            let last = match out.result {
                Ok(rows) if rows.len() == 1 && rows[0].bool("flushed_past") => {
                    return rows.into_iter().next().unwrap()
                }
                Ok(rows) => format!("{rows:?}"),
                Err(e) => e.to_string(),
            };
            if start.elapsed() >= timeout {
                panic!(
                    "timed out after {timeout:?} waiting for connector {connector:?} to flush up to the source's {lsn}; last observed: {last}\n--- target log ---\n{}",
                    log_excerpt(self.target, 40)
                );
            }
            sleep(Duration::from_millis(200));
        }
    }

    /// After the source stopped changing: waits until the connector flushed up
    /// to the source's current WAL position.
    #[track_caller]
    pub fn wait_caught_up(&self, connector: &str) -> Row {
        let lsn = self.source_lsn();
        self.wait_flushed(connector, &lsn, Duration::from_secs(90))
    }

    // --- comparing ------------------------------------------------------------------

    fn side_sql(&self, side: Side, sql: &str) -> Result<Vec<Row>, String> {
        let cluster = match side {
            Side::Source => self.source,
            Side::Target => self.target,
        };
        run_sql(
            cluster,
            &self.name,
            os_superuser(),
            &format!("{COMPARE_SETTINGS}{sql}"),
            Duration::from_secs(180),
        )
        .result
        .map_err(|e| format!("on the {side:?}: {sql}: {e}"))
    }

    /// Row count and md5 of all rows' text in order.
    pub fn digest(&self, side: Side, rel: &str, order_by: &str) -> Result<(i64, String), String> {
        let rows = self.side_sql(
            side,
            &format!(
                "SELECT count(*) AS n, coalesce(md5(string_agg(t::text, E'\\n' ORDER BY {order_by})), '-') AS h FROM {rel} t"
            ),
        )?;
        Ok((rows[0].int("n"), rows[0].text("h").to_string()))
    }

    /// Every row's text, ordered.
    pub fn rows_text(&self, side: Side, rel: &str, order_by: &str) -> Result<Vec<String>, String> {
        let rows = self.side_sql(
            side,
            &format!("SELECT t::text AS r FROM {rel} t ORDER BY {order_by}"),
        )?;
        Ok(rows
            .into_iter()
            .map(|r| r.get("r").unwrap_or("<NULL>").to_string())
            .collect())
    }

    /// Ok(row count) when both sides hold exactly the same rows; otherwise a
    /// report of the differences.
    pub fn compare(&self, c: &Compare) -> Result<i64, String> {
        let (sn, sh) = self.digest(Side::Source, &c.source, &c.order_by)?;
        let (tn, th) = self.digest(Side::Target, &c.target, &c.order_by)?;
        if sn == tn && sh == th {
            return Ok(sn);
        }
        let mut report = format!(
            "{} (source, {sn} rows, md5 {sh}) and {} (target, {tn} rows, md5 {th}) differ",
            c.source, c.target
        );
        if sn.max(tn) <= DIFF_ROW_LIMIT {
            let s = self.rows_text(Side::Source, &c.source, &c.order_by)?;
            let t = self.rows_text(Side::Target, &c.target, &c.order_by)?;
            report.push_str(&diff_multisets(&s, &t));
        }
        Err(report)
    }

    /// Asserts that source and target hold the same rows; returns the count.
    #[track_caller]
    pub fn assert_same(&self, c: &Compare) -> i64 {
        match self.compare(c) {
            Ok(n) => n,
            Err(report) => panic!(
                "{report}\nprogress: {:?}\nconnectors: {:?}\n--- target log ---\n{}",
                self.table_progress_all(),
                self.try_connectors(),
                log_excerpt(self.target, 40)
            ),
        }
    }

    /// Polls until source and target hold the same rows (the source must not
    /// change meanwhile).
    #[track_caller]
    pub fn wait_same(&self, c: &Compare, timeout: Duration) -> i64 {
        let start = Instant::now();
        loop {
            match self.compare(c) {
                Ok(n) => return n,
                Err(report) if start.elapsed() >= timeout => panic!(
                    "still different after {timeout:?}: {report}\nprogress: {:?}\nconnectors: {:?}\n--- target log ---\n{}",
                    self.table_progress_all(),
                    self.try_connectors(),
                    log_excerpt(self.target, 40)
                ),
                Err(_) => sleep(Duration::from_millis(250)),
            }
        }
    }

    /// Like [`wait_same`](Self::wait_same), but returns the report instead of
    /// panicking (to check several tables before failing).
    pub fn try_wait_same(&self, c: &Compare, timeout: Duration) -> Result<i64, String> {
        let start = Instant::now();
        loop {
            match self.compare(c) {
                Ok(n) => return Ok(n),
                Err(report) if start.elapsed() >= timeout => {
                    return Err(format!("still different after {timeout:?}: {report}"))
                }
                Err(_) => sleep(Duration::from_millis(250)),
            }
        }
    }

    /// Waits until every comparison in `cmps` holds (each up to `timeout`), then fails with the
    /// report of every one that did not.
    #[track_caller]
    pub fn wait_all_same(&self, cmps: &[Compare], timeout: Duration) {
        let failures: Vec<String> = cmps
            .iter()
            .filter_map(|c| self.try_wait_same(c, timeout).err())
            .collect();
        self.fail_if_any(&failures);
    }

    /// Fails with the report of every comparison in `cmps` that does not hold now.
    #[track_caller]
    pub fn assert_all_same(&self, cmps: &[Compare]) {
        let failures: Vec<String> = cmps.iter().filter_map(|c| self.compare(c).err()).collect();
        self.fail_if_any(&failures);
    }

    /// Panics with every report in `failures` (and the context) if there is any.
    #[track_caller]
    pub fn fail_if_any(&self, failures: &[String]) {
        if !failures.is_empty() {
            panic!(
                "{} failure(s):\n{}\nprogress: {:?}\nconnectors: {:?}\n--- target log ---\n{}",
                failures.len(),
                failures.join("\n\n"),
                self.table_progress_all(),
                self.try_connectors(),
                log_excerpt(self.target, 40)
            );
        }
    }

    /// All table_progress rows (for failure reports).
    pub fn table_progress_all(&self) -> Result<Vec<Row>, String> {
        run_sql(
            self.target,
            &self.name,
            os_superuser(),
            "SELECT connector, source_table, state, rows_copied, snapshot_lsn, changes_applied, changes_skipped, last_error FROM livesync.table_progress",
            Duration::from_secs(30),
        )
        .result
        .map_err(|e| e.to_string())
    }

    /// The tables in a publication on the source, as `schema.table`.
    pub fn publication_tables(&self, publication: &str) -> Vec<String> {
        self.src(&format!(
            "SELECT schemaname || '.' || tablename AS t FROM pg_publication_tables
              WHERE pubname = {} ORDER BY 1",
            lit(publication)
        ))
        .iter()
        .map(|r| r.text("t").to_string())
        .collect()
    }

    /// Tables named in the connector's publication (pg_publication_rel: the
    /// tables added, partitioned roots included).
    pub fn publication_rels(&self, publication: &str) -> Vec<String> {
        self.src(&format!(
            "SELECT pr.prrelid::regclass::text AS t FROM pg_publication_rel pr
               JOIN pg_publication p ON p.oid = pr.prpubid
              WHERE p.pubname = {} ORDER BY 1",
            lit(publication)
        ))
        .iter()
        .map(|r| r.text("t").to_string())
        .collect()
    }
}

/// Rows only on one side (with multiplicity), at most 10 of each.
pub fn diff_multisets(source: &[String], target: &[String]) -> String {
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for r in source {
        *counts.entry(r).or_default() += 1;
    }
    for r in target {
        *counts.entry(r).or_default() -= 1;
    }
    let shorten = |s: &str| {
        if s.len() > 300 {
            let mut end = 300;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}… ({} bytes)", &s[..end], s.len())
        } else {
            s.to_string()
        }
    };
    let missing: Vec<String> = counts
        .iter()
        .filter(|(_, &n)| n > 0)
        .map(|(r, n)| format!("  {}x {}", n, shorten(r)))
        .collect();
    let extra: Vec<String> = counts
        .iter()
        .filter(|(_, &n)| n < 0)
        .map(|(r, n)| format!("  {}x {}", -n, shorten(r)))
        .collect();
    let mut s = String::new();
    s.push_str(&format!(
        "\nrows on the source but not (or fewer times) on the target: {}\n",
        missing.len()
    ));
    for l in missing.iter().take(10) {
        s.push_str(l);
        s.push('\n');
    }
    s.push_str(&format!(
        "rows on the target but not (or more times than) on the source: {}\n",
        extra.len()
    ));
    for l in extra.iter().take(10) {
        s.push_str(l);
        s.push('\n');
    }
    if missing.is_empty() && extra.is_empty() {
        s.push_str("(same rows, different order)\n");
    }
    s
}

// ---------------------------------------------------------------------------
// Load generator
// ---------------------------------------------------------------------------

/// What a load thread does to a table.
#[derive(Clone, Debug)]
pub enum LoadKind {
    /// Inserts, updates, deletes, multi-statement and rolled-back transactions
    /// on a table `(id bigint PRIMARY KEY, grp int, v bigint, note text)`.
    Mixed,
    /// Only inserts into a table `(id bigint, v bigint, note text)` (e.g.
    /// without a key).
    InsertOnly,
}

/// Creates a table of the shape `kind` expects (on the source).
pub fn load_table_ddl(table: &str, kind: &LoadKind) -> String {
    match kind {
        LoadKind::Mixed => format!(
            "CREATE TABLE {table} (id bigint PRIMARY KEY, grp int NOT NULL, v bigint NOT NULL, note text)"
        ),
        LoadKind::InsertOnly => format!("CREATE TABLE {table} (id bigint, v bigint, note text)"),
    }
}

#[derive(Debug, Default, Clone)]
pub struct LoadStats {
    pub statements: u64,
    pub commits: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// Client threads changing tables on a source until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    ops: Arc<AtomicU64>,
    handles: Vec<JoinHandle<LoadStats>>,
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

fn load_connect(port: u16, db: &str) -> Result<Client, postgres::Error> {
    let mut cfg = postgres::Config::new();
    cfg.host("127.0.0.1")
        .port(port)
        .dbname(db)
        .user(os_superuser())
        .application_name("livesync-test-load")
        .connect_timeout(Duration::from_secs(5));
    cfg.connect(NoTls)
}

impl Load {
    /// Starts `threads` client threads on `source`/`db`, each working on every
    /// table of `tables` (thread k owns the ids ≡ k mod threads, so threads
    /// never wait for each other), pausing `pause` between transactions.
    /// Connection losses (source restarts) are survived by reconnecting.
    pub fn start(
        source: &Cluster,
        db: &str,
        tables: &[(&str, LoadKind)],
        threads: usize,
        pause: Duration,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let port = source.port();
        let mut handles = Vec::new();
        for k in 0..threads {
            let stop = stop.clone();
            let ops = ops.clone();
            let db = db.to_string();
            let tables: Vec<(String, LoadKind)> = tables
                .iter()
                .map(|(t, kind)| (t.to_string(), kind.clone()))
                .collect();
            handles.push(
                std::thread::Builder::new()
                    .name(format!("load-{k}"))
                    .spawn(move || {
                        load_thread(
                            k as u64,
                            threads as u64,
                            port,
                            &db,
                            &tables,
                            pause,
                            &stop,
                            &ops,
                        )
                    })
                    .expect("spawn load thread"),
            );
        }
        Load { stop, ops, handles }
    }

    /// Statements run so far (all threads).
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    /// Waits until the threads ran at least `n` more statements.
    pub fn wait_ops(&self, n: u64, timeout: Duration) {
        let target = self.ops() + n;
        wait_until(
            &format!("the load to run {n} more statements"),
            timeout,
            || {
                let now = self.ops();
                if now >= target {
                    Ok(())
                } else {
                    Err(format!("{now} of {target}"))
                }
            },
        );
    }

    /// Stops the threads and returns what they did.
    pub fn stop(self) -> LoadStats {
        self.stop.store(true, Ordering::SeqCst);
        let mut total = LoadStats::default();
        for h in self.handles {
            let s = h.join().expect("load thread panicked");
            total.statements += s.statements;
            total.commits += s.commits;
            total.errors += s.errors;
            if s.last_error.is_some() {
                total.last_error = s.last_error;
            }
        }
        total
    }
}

#[allow(clippy::too_many_arguments)]
fn load_thread(
    k: u64,
    n: u64,
    port: u16,
    db: &str,
    tables: &[(String, LoadKind)],
    pause: Duration,
    stop: &AtomicBool,
    ops: &AtomicU64,
) -> LoadStats {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (k + 1).wrapping_mul(0x1234_5678_9ABC_DEF1));
    let mut stats = LoadStats::default();
    // Next id per table for this thread (ids k, k+n, k+2n, ...), offset so
    // rows inserted by the test itself (small ids) never collide.
    let mut next: Vec<u64> = vec![0; tables.len()];
    let mut client: Option<Client> = None;
    while !stop.load(Ordering::SeqCst) {
        let c = match client.as_mut() {
            Some(c) if !c.is_closed() => c,
            _ => match load_connect(port, db) {
                Ok(c) => {
                    client = Some(c);
                    client.as_mut().unwrap()
                }
                Err(e) => {
                    stats.errors += 1;
                    stats.last_error = Some(e.to_string());
                    sleep(Duration::from_millis(200));
                    continue;
                }
            },
        };
        let ti = rng.below(tables.len() as u64) as usize;
        let (table, kind) = &tables[ti];
        let id_of = |i: u64| 1_000_000 + i * n + k;
        let mut stmts: Vec<String> = Vec::new();
        let roll = rng.below(100);
        let steps = if roll < 10 { 2 + rng.below(5) } else { 1 };
        for _ in 0..steps {
            let op = match kind {
                LoadKind::InsertOnly => 0,
                LoadKind::Mixed => rng.below(100),
            };
            let note = format!("n{}-{}\t\\ '\"é", k, rng.below(1_000_000));
            if op < 50 || next[ti] == 0 {
                let id = id_of(next[ti]);
                next[ti] += 1;
                match kind {
                    LoadKind::Mixed => stmts.push(format!(
                        "INSERT INTO {table} (id, grp, v, note) VALUES ({id}, {}, {}, {})",
                        rng.below(10),
                        rng.below(1_000_000),
                        lit(&note)
                    )),
                    LoadKind::InsertOnly => stmts.push(format!(
                        "INSERT INTO {table} (id, v, note) VALUES ({id}, {}, {})",
                        rng.below(1_000_000),
                        lit(&note)
                    )),
                }
            } else if op < 80 {
                let id = id_of(rng.below(next[ti]));
                stmts.push(format!(
                    "UPDATE {table} SET v = v + 1, grp = {}, note = {} WHERE id = {id}",
                    rng.below(10),
                    lit(&note)
                ));
            } else if op < 95 {
                let id = id_of(rng.below(next[ti]));
                stmts.push(format!("DELETE FROM {table} WHERE id = {id}"));
            } else {
                let id = id_of(rng.below(next[ti]));
                stmts.push(format!("UPDATE {table} SET note = NULL WHERE id = {id}"));
            }
        }
        let rollback = roll >= 10 && roll < 13 && steps == 1;
        let sql = if rollback {
            format!("BEGIN; {}; ROLLBACK", stmts.join("; "))
        } else if steps > 1 {
            format!("BEGIN; {}; COMMIT", stmts.join("; "))
        } else {
            stmts[0].clone()
        };
        match c.batch_execute(&sql) {
            Ok(()) => {
                stats.statements += stmts.len() as u64;
                if !rollback {
                    stats.commits += 1;
                }
                ops.fetch_add(stmts.len() as u64, Ordering::Relaxed);
            }
            Err(e) => {
                stats.errors += 1;
                stats.last_error = Some(e.to_string());
                if c.is_closed() {
                    client = None;
                } else {
                    let _ = c.batch_execute("ROLLBACK");
                }
                sleep(Duration::from_millis(50));
            }
        }
        if !pause.is_zero() {
            sleep(pause);
        }
    }
    stats
}

/// Sends SIGKILL to a process of the target (the tests run as root or as the
/// clusters' owner).
pub fn kill9(pid: &str) {
    let pid: i32 = pid.parse().unwrap_or_else(|e| panic!("pid {pid:?}: {e}"));
    // SAFETY: plain kill(2).
    let r = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(r, 0, "kill -9 {pid}: {}", std::io::Error::last_os_error());
}
