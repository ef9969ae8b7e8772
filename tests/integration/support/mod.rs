//! Harness for the livesync integration tests: throwaway clusters, shared
//! source/target clusters, per-test databases, SQL and polling helpers.
#![allow(dead_code)]

mod cluster;
mod shared;
mod sync;

#[allow(unused_imports)]
pub use cluster::{
    base_dir, chown_to_postgres, citus_installed, free_port, keep_clusters, origin_limit_setting,
    os_superuser, pg_config_value_of, pg_major, running_as_root, server_has_libxml, server_has_ssl,
    target_dir, timescaledb_installed, Cluster, ClusterConfig,
};
#[allow(unused_imports)]
pub use shared::{
    dedicated_source, dedicated_target, prepare_source, shared_bad_source, shared_source,
    shared_target, source_config, timescale_source, timescale_target, Snapshot, TestDb,
    BAD_SOURCE_DB, BAD_SOURCE_USER, HOSTILE_PASSWORD, HOSTILE_PASSWORD_TOKEN, HOSTILE_USER,
    SCRAM_PASSWORD, SCRAM_PASSWORD_TOKEN, SCRAM_USER, SYNC_USER,
};
#[allow(unused_imports)]
pub use sync::*;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::mpsc;
use std::thread::sleep;
use std::time::{Duration, Instant};

use postgres::error::DbError;
use postgres::{Client, SimpleQueryMessage};

/// The default patience for anything asynchronous.
pub const TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// What a failed statement reported: SQLSTATE, message, detail, hint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqlError {
    /// Five-character SQLSTATE; empty when the failure was not a server error
    /// (connection lost...), `TIMEOUT` when the harness gave up waiting.
    pub code: String,
    pub severity: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl SqlError {
    pub fn from_db(e: &DbError) -> SqlError {
        SqlError {
            code: e.code().code().to_string(),
            severity: e.severity().to_string(),
            message: e.message().to_string(),
            detail: e.detail().map(str::to_string),
            hint: e.hint().map(str::to_string),
        }
    }

    /// Message, detail and hint together (for "contains"/"must not contain" checks).
    pub fn all_text(&self) -> String {
        format!(
            "{}\n{}\n{}",
            self.message,
            self.detail.as_deref().unwrap_or(""),
            self.hint.as_deref().unwrap_or("")
        )
    }

    pub fn detail(&self) -> &str {
        self.detail.as_deref().unwrap_or("")
    }

    pub fn hint(&self) -> &str {
        self.hint.as_deref().unwrap_or("")
    }
}

impl From<&postgres::Error> for SqlError {
    fn from(e: &postgres::Error) -> SqlError {
        match e.as_db_error() {
            Some(db) => SqlError::from_db(db),
            None => SqlError {
                code: String::new(),
                severity: String::new(),
                message: e.to_string(),
                detail: None,
                hint: None,
            },
        }
    }
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}]: {}", self.severity, self.code, self.message)?;
        if let Some(d) = &self.detail {
            write!(f, "\n  DETAIL: {}", d.replace('\n', "\n          "))?;
        }
        if let Some(h) = &self.hint {
            write!(f, "\n  HINT: {}", h.replace('\n', "\n        "))?;
        }
        Ok(())
    }
}

/// SQLSTATE, message, detail and hint of a failed statement.
pub fn db_error(e: &postgres::Error) -> SqlError {
    SqlError::from(e)
}

// ---------------------------------------------------------------------------
// Rows (everything as text, through the simple query protocol, like psql)
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row(pub BTreeMap<String, Option<String>>);

impl Row {
    /// The value of `col` (None for NULL); panics if there is no such column.
    pub fn get(&self, col: &str) -> Option<&str> {
        match self.0.get(col) {
            Some(v) => v.as_deref(),
            None => panic!("no column {col:?} in row {self:?}"),
        }
    }

    /// The value of `col`, which must not be NULL.
    pub fn text(&self, col: &str) -> &str {
        self.get(col)
            .unwrap_or_else(|| panic!("column {col:?} is NULL in row {self:?}"))
    }

    pub fn has(&self, col: &str) -> bool {
        self.0.contains_key(col)
    }

    pub fn is_null(&self, col: &str) -> bool {
        self.get(col).is_none()
    }

    /// `t`/`f` column as bool.
    pub fn bool(&self, col: &str) -> bool {
        match self.text(col) {
            "t" | "true" => true,
            "f" | "false" => false,
            other => panic!("column {col:?} is not a boolean: {other:?}"),
        }
    }

    pub fn int(&self, col: &str) -> i64 {
        self.text(col)
            .parse()
            .unwrap_or_else(|e| panic!("column {col:?} is not an integer ({e}): {self:?}"))
    }

    pub fn float(&self, col: &str) -> f64 {
        self.text(col)
            .parse()
            .unwrap_or_else(|e| panic!("column {col:?} is not a number ({e}): {self:?}"))
    }

    /// Any column containing `needle` (for "no password here" checks).
    pub fn any_contains(&self, needle: &str) -> Option<(&str, &str)> {
        self.0.iter().find_map(|(k, v)| match v {
            Some(v) if v.contains(needle) => Some((k.as_str(), v.as_str())),
            _ => None,
        })
    }
}

pub fn rows_of(msgs: Vec<SimpleQueryMessage>) -> Vec<Row> {
    let mut rows = Vec::new();
    for m in msgs {
        if let SimpleQueryMessage::Row(r) = m {
            let mut map = BTreeMap::new();
            for (i, col) in r.columns().iter().enumerate() {
                map.insert(col.name().to_string(), r.get(i).map(str::to_string));
            }
            rows.push(Row(map));
        }
    }
    rows
}

/// Runs `sql` with the simple query protocol; rows as text.
pub fn try_query(client: &mut Client, sql: &str) -> Result<Vec<Row>, SqlError> {
    client
        .simple_query(sql)
        .map(rows_of)
        .map_err(|e| SqlError::from(&e))
}

/// Runs `sql`, panicking with the server's error.
pub fn query(client: &mut Client, sql: &str) -> Vec<Row> {
    try_query(client, sql).unwrap_or_else(|e| panic!("query failed: {sql}\n{e}"))
}

/// First column of the first row.
pub fn query_value(client: &mut Client, sql: &str) -> Option<String> {
    let msgs = client
        .simple_query(sql)
        .unwrap_or_else(|e| panic!("query failed: {sql}\n{}", SqlError::from(&e)));
    for m in msgs {
        if let SimpleQueryMessage::Row(r) = m {
            return r.get(0).map(str::to_string);
        }
    }
    panic!("query returned no row: {sql}");
}

pub fn query_count(client: &mut Client, sql: &str) -> i64 {
    query_value(client, sql)
        .expect("count is NULL")
        .parse()
        .expect("count is not an integer")
}

/// Result of a statement run by [`run_sql`]: rows or error, plus the
/// NOTICE/WARNING messages the server sent.
#[derive(Debug)]
pub struct Outcome {
    pub result: Result<Vec<Row>, SqlError>,
    pub notices: Vec<SqlError>,
}

impl Outcome {
    pub fn ok(self, what: &str) -> Vec<Row> {
        match self.result {
            Ok(rows) => rows,
            Err(e) => panic!("{what} failed:\n{e}"),
        }
    }

    pub fn err(self, what: &str) -> SqlError {
        match self.result {
            Ok(rows) => panic!("{what} succeeded but should have failed; rows: {rows:?}"),
            Err(e) => e,
        }
    }

    pub fn warnings(&self) -> Vec<&SqlError> {
        self.notices
            .iter()
            .filter(|n| n.severity == "WARNING")
            .collect()
    }
}

/// Runs one statement on its own connection (as `user`) with a hard deadline,
/// so that a statement which hangs inside the extension fails the test instead
/// of hanging the run. Never panics (safe for cleanup code).
pub fn run_sql(cluster: &Cluster, db: &str, user: &str, sql: &str, deadline: Duration) -> Outcome {
    let (client, notices) = match cluster.try_connect_as(db, user) {
        Ok(x) => x,
        Err(e) => {
            return Outcome {
                result: Err(SqlError::from(&e)),
                notices: Vec::new(),
            }
        }
    };
    let cancel = client.cancel_token();
    let (tx, rx) = mpsc::channel();
    let sql_owned = sql.to_string();
    std::thread::spawn(move || {
        let mut client = client;
        let r = try_query(&mut client, &sql_owned);
        let _ = tx.send(r);
    });
    let result = match rx.recv_timeout(deadline) {
        Ok(r) => r,
        Err(_) => {
            let _ = cancel.cancel_query(postgres::NoTls);
            let waited = rx.recv_timeout(Duration::from_secs(5));
            Err(SqlError {
                code: "TIMEOUT".into(),
                severity: "HARNESS".into(),
                message: format!(
                    "statement did not finish within {deadline:?} (cancel sent; after cancel: {}): {sql}",
                    match waited {
                        Ok(Ok(_)) => "it then succeeded".to_string(),
                        Ok(Err(e)) => format!("it then failed: {e}"),
                        Err(_) => "still running".to_string(),
                    }
                ),
                detail: None,
                hint: None,
            })
        }
    };
    let notices = notices
        .lock()
        .unwrap()
        .iter()
        .map(SqlError::from_db)
        .collect();
    Outcome { result, notices }
}

// ---------------------------------------------------------------------------
// Quoting
// ---------------------------------------------------------------------------

/// SQL string literal (standard_conforming_strings = on).
pub fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// SQL identifier.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A libpq connection-string value, quoted when needed.
pub fn conninfo_value(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

// ---------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------

/// Polls `poll` every 100 ms until it returns `Ok`, or panics after `timeout`
/// with `what` and the last observed value (the `Err` string).
pub fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut poll: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    loop {
        let last = match poll() {
            Ok(v) => return v,
            Err(observed) => observed,
        };
        if start.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last observed: {last}");
        }
        sleep(Duration::from_millis(100));
    }
}

/// Polls `get` until `pred` holds for its value; returns that value.
pub fn wait_for<V: fmt::Debug>(
    what: &str,
    timeout: Duration,
    mut get: impl FnMut() -> V,
    pred: impl Fn(&V) -> bool,
) -> V {
    wait_until(what, timeout, || {
        let v = get();
        if pred(&v) {
            Ok(v)
        } else {
            Err(format!("{v:?}"))
        }
    })
}

// ---------------------------------------------------------------------------
// Assertions
// ---------------------------------------------------------------------------

#[track_caller]
pub fn assert_sqlstate(e: &SqlError, code: &str) {
    assert_eq!(e.code, code, "unexpected SQLSTATE; the error was:\n{e}");
}

#[track_caller]
pub fn assert_message_starts(e: &SqlError, prefix: &str) {
    assert!(
        e.message.starts_with(prefix),
        "message should start with {prefix:?}; the error was:\n{e}"
    );
}

#[track_caller]
pub fn assert_message_eq(e: &SqlError, msg: &str) {
    assert_eq!(e.message, msg, "unexpected message; the error was:\n{e}");
}

#[track_caller]
pub fn assert_contains(haystack: &str, needle: &str, what: &str) {
    assert!(
        haystack.contains(needle),
        "{what} should contain {needle:?}:\n{haystack}"
    );
}

#[track_caller]
pub fn assert_not_contains(haystack: &str, needle: &str, what: &str) {
    assert!(
        !haystack.contains(needle),
        "{what} must not contain {needle:?}:\n{haystack}"
    );
}

// ---------------------------------------------------------------------------
// Unanswering servers on loopback (this machine sends nothing off loopback)
// ---------------------------------------------------------------------------

/// A loopback port whose TCP handshakes never complete, like an address
/// behind a firewall that drops packets (the `host=192.0.2.1` case): a
/// listener with a backlog of 0 whose one accept-queue slot is already taken,
/// so the kernel drops every further SYN and connects time out.
pub struct SynBlackhole {
    pub port: u16,
    _listener: std::net::TcpListener,
    _filler: std::net::TcpStream,
}

pub fn syn_blackhole() -> SynBlackhole {
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    // SAFETY: re-listen on our own socket with a zero backlog.
    let r = unsafe { libc::listen(listener.as_raw_fd(), 0) };
    assert_eq!(r, 0, "listen(0): {}", std::io::Error::last_os_error());
    let port = listener.local_addr().unwrap().port();
    let filler = std::net::TcpStream::connect(("127.0.0.1", port)).expect("fill the accept queue");
    // Check that the next handshake really hangs.
    let probe = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    );
    assert!(probe.is_err(), "the blackhole accepted a second connection");
    SynBlackhole {
        port,
        _listener: listener,
        _filler: filler,
    }
}

/// A loopback port that completes TCP handshakes but never says a word (a
/// hung server): the connection attempt hangs in the startup handshake.
pub fn silent_server() -> std::net::TcpListener {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind")
}
