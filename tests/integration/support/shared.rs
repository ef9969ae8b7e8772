//! Shared clusters (one source, one target, one "bad" source per test
//! process) and per-test databases on them.

use std::sync::OnceLock;
use std::time::Duration;

use super::{
    ident, lit, os_superuser, query, run_sql, wait_until, Cluster, ClusterConfig, Outcome, Row,
    SqlError, TIMEOUT,
};

/// Role on the sources with LOGIN REPLICATION, authenticated by trust.
pub const SYNC_USER: &str = "sync";
/// Role on the sources that must log in with a scram-sha-256 password.
pub const SCRAM_USER: &str = "sync_pw";
/// Its password; `SCRAM_PASSWORD_TOKEN` is a distinctive part of it to look
/// for in logs (in case it shows up escaped).
pub const SCRAM_PASSWORD: &str = "Ls-pw-9f3a1c-Secret";
pub const SCRAM_PASSWORD_TOKEN: &str = "9f3a1c";
/// Role whose password contains quotes, semicolons, backslashes and spaces.
pub const HOSTILE_USER: &str = "sync_q";
pub const HOSTILE_PASSWORD: &str = r#"h0st'il;e\pw"5b8e7d x=y"#;
pub const HOSTILE_PASSWORD_TOKEN: &str = "5b8e7d";

/// Database and role on the bad source.
pub const BAD_SOURCE_DB: &str = "app";
pub const BAD_SOURCE_USER: &str = "plain";

pub fn source_config() -> ClusterConfig {
    ClusterConfig {
        scram_users: vec![SCRAM_USER.into(), HOSTILE_USER.into()],
        ..ClusterConfig::source()
    }
}

/// Creates the roles every source needs (shared or dedicated source clusters).
pub fn prepare_source(source: &Cluster) {
    let mut c = source.connect("postgres");
    query(
        &mut c,
        &format!(
            "CREATE ROLE {SYNC_USER} LOGIN REPLICATION;
             CREATE ROLE {SCRAM_USER} LOGIN REPLICATION PASSWORD {};
             CREATE ROLE {HOSTILE_USER} LOGIN REPLICATION PASSWORD {};",
            lit(SCRAM_PASSWORD),
            lit(HOSTILE_PASSWORD)
        ),
    );
}

/// A fresh source cluster (dedicated to one test) with the usual roles.
pub fn dedicated_source(name: &str) -> Cluster {
    let c = Cluster::start_new(name, source_config());
    prepare_source(&c);
    c
}

/// A fresh target cluster (dedicated to one test).
pub fn dedicated_target(name: &str) -> Cluster {
    Cluster::start_new(name, ClusterConfig::target())
}

static SOURCE: OnceLock<Cluster> = OnceLock::new();
static TARGET: OnceLock<Cluster> = OnceLock::new();
static BAD_SOURCE: OnceLock<Cluster> = OnceLock::new();

/// The source cluster most tests share (wal_level = logical).
pub fn shared_source() -> &'static Cluster {
    SOURCE.get_or_init(|| dedicated_source("source"))
}

/// The target cluster most tests share (shared_preload_libraries = 'livesync').
pub fn shared_target() -> &'static Cluster {
    TARGET.get_or_init(|| dedicated_target("target"))
}

static TS_SOURCE: OnceLock<Cluster> = OnceLock::new();
static TS_TARGET: OnceLock<Cluster> = OnceLock::new();

/// A source with TimescaleDB preloaded (for source hypertables). Only when
/// `timescaledb_installed()`.
pub fn timescale_source() -> &'static Cluster {
    TS_SOURCE.get_or_init(|| {
        let c = Cluster::start_new(
            "ts_source",
            source_config()
                .with_conf("shared_preload_libraries = 'timescaledb'")
                .with_conf("timescaledb.telemetry_level = off"),
        );
        prepare_source(&c);
        c
    })
}

/// A target with livesync and TimescaleDB preloaded; copy ranges of 1 MB so
/// that modest tables are copied as several ranges in parallel.
pub fn timescale_target() -> &'static Cluster {
    TS_TARGET.get_or_init(|| {
        Cluster::start_new(
            "ts_target",
            ClusterConfig::target()
                .with_conf("shared_preload_libraries = 'livesync,timescaledb'")
                .with_conf("timescaledb.telemetry_level = off")
                .with_conf("livesync.copy_range_mb = 1"),
        )
    })
}

/// A source that meets none of livesync's prerequisites: wal_level = replica,
/// no WAL senders, no replication slots, and a role `plain` without
/// REPLICATION and without CREATE on database `app`.
pub fn shared_bad_source() -> &'static Cluster {
    BAD_SOURCE.get_or_init(|| {
        let c = Cluster::start_new(
            "badsource",
            ClusterConfig {
                wal_level: "replica".into(),
                ..ClusterConfig::source()
            }
            .with_conf("max_wal_senders = 0")
            .with_conf("max_replication_slots = 0"),
        );
        let mut client = c.connect("postgres");
        query(&mut client, &format!("CREATE ROLE {BAD_SOURCE_USER} LOGIN"));
        query(&mut client, &format!("CREATE DATABASE {BAD_SOURCE_DB}"));
        c
    })
}

/// A database of the same name on a source and a target (`t_<test>`), with
/// the extension created on the target. Dropped (connectors, then both
/// databases) when it goes out of scope.
pub struct TestDb<'a> {
    pub name: String,
    pub source: &'a Cluster,
    pub target: &'a Cluster,
}

static CREATE_EXTENSION_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

const SQL_DEADLINE: Duration = Duration::from_secs(60);

impl TestDb<'static> {
    /// On the shared source and target.
    pub fn new(test: &str) -> TestDb<'static> {
        TestDb::on(shared_source(), shared_target(), test)
    }
}

impl<'a> TestDb<'a> {
    pub fn on(source: &'a Cluster, target: &'a Cluster, test: &str) -> TestDb<'a> {
        TestDb::on_with(source, target, test, |_| {}, "CREATE EXTENSION livesync")
    }

    /// Like [`on`](Self::on), with `setup` run in the new target database before the extension
    /// is created there by `create_extension` (e.g. a Citus coordinator's nodes are added first).
    pub fn on_with(
        source: &'a Cluster,
        target: &'a Cluster,
        test: &str,
        setup: impl FnOnce(&mut postgres::Client),
        create_extension: &str,
    ) -> TestDb<'a> {
        let name = format!("t_{test}");
        assert!(name.len() <= 63, "database name too long: {name}");
        let db = TestDb {
            name,
            source,
            target,
        };

        let n = ident(&db.name);
        let mut s = source.connect("postgres");
        // (DROP/CREATE DATABASE can't share a multi-statement query string.)
        query(&mut s, &format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)"));
        query(&mut s, &format!("CREATE DATABASE {n}"));
        query(
            &mut s,
            &format!("GRANT CREATE ON DATABASE {n} TO {SYNC_USER}, {SCRAM_USER}, {HOSTILE_USER}"),
        );
        let mut t = target.connect("postgres");
        query(&mut t, &format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)"));
        query(&mut t, &format!("CREATE DATABASE {n}"));
        let mut t = target.connect(&db.name);
        setup(&mut t);
        // Serialized: concurrent CREATE EXTENSION in several databases is a
        // scenario of its own (extension::concurrent_create_extension), not
        // something every test should trip over.
        let _guard = CREATE_EXTENSION_LOCK
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Err(e) = t.batch_execute(create_extension) {
            panic!(
                "CREATE EXTENSION livesync in {} on the target failed:\n{}",
                db.name,
                SqlError::from(&e)
            );
        }
        db
    }

    // --- connection strings -------------------------------------------------

    /// Conninfo of this test's source database for `user`.
    pub fn source_conninfo(&self, user: &str) -> String {
        self.source.conninfo(&self.name, user)
    }

    /// Conninfo of this test's source database for role `sync` (trust).
    pub fn sync_conninfo(&self) -> String {
        self.source_conninfo(super::SYNC_USER)
    }

    // --- running SQL on the target -----------------------------------------------

    /// One statement on the target test database, as the superuser, on its own
    /// connection, with a hard deadline; NOTICE/WARNINGs are collected.
    pub fn target_sql(&self, sql: &str) -> Outcome {
        run_sql(self.target, &self.name, os_superuser(), sql, SQL_DEADLINE)
    }

    /// Like [`target_sql`](Self::target_sql) with another deadline.
    pub fn target_sql_within(&self, sql: &str, deadline: Duration) -> Outcome {
        run_sql(self.target, &self.name, os_superuser(), sql, deadline)
    }

    pub fn target_sql_as(&self, user: &str, sql: &str) -> Outcome {
        run_sql(self.target, &self.name, user, sql, SQL_DEADLINE)
    }

    pub fn source_sql(&self, sql: &str) -> Outcome {
        run_sql(self.source, &self.name, os_superuser(), sql, SQL_DEADLINE)
    }

    fn try_target_rows(&self, sql: &str) -> Result<Vec<Row>, String> {
        run_sql(self.target, &self.name, os_superuser(), sql, TIMEOUT)
            .result
            .map_err(|e| format!("query failed: {e}"))
    }

    fn try_source_rows(&self, sql: &str) -> Result<Vec<Row>, String> {
        run_sql(self.source, &self.name, os_superuser(), sql, TIMEOUT)
            .result
            .map_err(|e| format!("query on the source failed: {e}"))
    }

    pub fn target_rows(&self, sql: &str) -> Vec<Row> {
        self.try_target_rows(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    pub fn source_rows(&self, sql: &str) -> Vec<Row> {
        self.try_source_rows(sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    // --- the livesync API ---------------------------------------------------------

    pub fn add_connector(&self, conninfo: &str, name: Option<&str>) -> Outcome {
        let sql = match name {
            Some(n) => format!(
                "SELECT livesync.add_connector({}, {}) AS name",
                lit(conninfo),
                lit(n)
            ),
            None => format!("SELECT livesync.add_connector({}) AS name", lit(conninfo)),
        };
        self.target_sql(&sql)
    }

    /// add_connector that must succeed; returns the connector name it returned.
    pub fn add_ok(&self, conninfo: &str, name: Option<&str>) -> String {
        let rows = self
            .add_connector(conninfo, name)
            .ok("livesync.add_connector");
        assert_eq!(rows.len(), 1, "add_connector returned {rows:?}");
        rows[0].text("name").to_string()
    }

    /// add_connector that must fail; returns the error.
    pub fn add_err(&self, conninfo: &str, name: Option<&str>) -> SqlError {
        self.add_connector(conninfo, name)
            .err("livesync.add_connector")
    }

    /// `SELECT livesync.<func>(args...)`.
    pub fn call(&self, func: &str, args: &[&str]) -> Outcome {
        let args: Vec<String> = args.iter().map(|a| lit(a)).collect();
        self.target_sql(&format!("SELECT livesync.{func}({})", args.join(", ")))
    }

    pub fn call_ok(&self, func: &str, args: &[&str]) -> Outcome {
        let out = self.call(func, args);
        if let Err(e) = &out.result {
            panic!("livesync.{func}({args:?}) failed:\n{e}");
        }
        out
    }

    pub fn call_err(&self, func: &str, args: &[&str]) -> SqlError {
        self.call(func, args)
            .err(&format!("livesync.{func}({args:?})"))
    }

    // --- observing ------------------------------------------------------------------

    pub fn try_connectors(&self) -> Result<Vec<Row>, String> {
        self.try_target_rows("SELECT * FROM livesync.connectors ORDER BY name")
    }

    pub fn connectors(&self) -> Vec<Row> {
        self.try_connectors().unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn connector_names(&self) -> Vec<String> {
        self.connectors()
            .iter()
            .map(|r| r.text("name").to_string())
            .collect()
    }

    pub fn try_connector(&self, name: &str) -> Result<Option<Row>, String> {
        Ok(self
            .try_connectors()?
            .into_iter()
            .find(|r| r.get("name") == Some(name)))
    }

    pub fn connector(&self, name: &str) -> Option<Row> {
        self.try_connector(name).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Is `pid` a live `livesync connector` background worker of this database
    /// on the target?
    pub fn try_is_connector_worker(&self, pid: &str) -> Result<bool, String> {
        let rows = self.try_target_rows(&format!(
            "SELECT count(*) AS n FROM pg_stat_activity
              WHERE pid = {} AND backend_type = 'livesync connector' AND datname = {}",
            pid.parse::<i64>()
                .map_err(|e| format!("worker_pid {pid:?}: {e}"))?,
            lit(&self.name)
        ))?;
        Ok(rows[0].int("n") == 1)
    }

    pub fn is_pid_alive_on_target(&self, pid: &str) -> bool {
        let rows = self.target_rows(&format!(
            "SELECT count(*) AS n FROM pg_stat_activity WHERE pid = {}",
            pid.parse::<i64>().unwrap()
        ));
        rows[0].int("n") > 0
    }

    /// Waits until the connector shows `state`; returns its row.
    pub fn wait_state(&self, name: &str, state: &str) -> Row {
        self.wait_state_for(name, state, TIMEOUT)
    }

    pub fn wait_state_for(&self, name: &str, state: &str, timeout: Duration) -> Row {
        wait_until(
            &format!("connector {name:?} to be {state:?}"),
            timeout,
            || match self.try_connector(name)? {
                Some(r) if r.get("state") == Some(state) => Ok(r),
                Some(r) => Err(format!("{r:?}")),
                None => Err("no such row in livesync.connectors".into()),
            },
        )
    }

    /// Waits until the connector is `running` with a live `livesync connector`
    /// worker whose pid the view shows (and that pid is not `not_pid`).
    pub fn wait_running_except(&self, name: &str, not_pid: Option<&str>, timeout: Duration) -> Row {
        wait_until(
            &format!("connector {name:?} to be running with a live worker"),
            timeout,
            || {
                let r = match self.try_connector(name)? {
                    Some(r) => r,
                    None => return Err("no such row in livesync.connectors".into()),
                };
                if r.get("state") != Some("running") {
                    return Err(format!("{r:?}"));
                }
                let Some(pid) = r.get("worker_pid") else {
                    return Err(format!("worker_pid is NULL: {r:?}"));
                };
                if Some(pid) == not_pid {
                    return Err(format!("worker_pid is still the old {pid}: {r:?}"));
                }
                if !self.try_is_connector_worker(pid)? {
                    return Err(format!(
                        "worker_pid {pid} is not a live 'livesync connector' backend of {} in the target's pg_stat_activity; row: {r:?}",
                        self.name
                    ));
                }
                Ok(r)
            },
        )
    }

    pub fn wait_running(&self, name: &str) -> Row {
        self.wait_running_except(name, None, TIMEOUT)
    }

    /// The source sessions of this database whose application_name starts with
    /// `livesync`.
    pub fn try_source_livesync_sessions(&self) -> Result<Vec<Row>, String> {
        self.try_source_rows(&format!(
            "SELECT pid, application_name, usename, backend_type, state
               FROM pg_stat_activity
              WHERE datname = {} AND application_name LIKE 'livesync%'
                AND pid <> pg_backend_pid()
                -- each connector also streams from its slot (a walsender): SQL sessions only
                AND backend_type <> 'walsender'
              ORDER BY pid",
            lit(&self.name)
        ))
    }

    pub fn source_livesync_sessions(&self) -> Vec<Row> {
        self.try_source_livesync_sessions()
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// SQL sessions (not walsenders) on this source database logged in as `user`.
    pub fn source_sessions_of(&self, user: &str) -> Vec<Row> {
        self.source_rows(&format!(
            "SELECT pid, application_name, usename, backend_type
               FROM pg_stat_activity
              WHERE datname = {} AND usename = {} AND pid <> pg_backend_pid()
                AND backend_type <> 'walsender'
              ORDER BY pid",
            lit(&self.name),
            lit(user)
        ))
    }

    /// Waits until exactly `n` livesync sessions are connected to this source db.
    pub fn wait_source_sessions(&self, n: usize) -> Vec<Row> {
        wait_until(
            &format!(
                "{n} livesync session(s) on the source database {}",
                self.name
            ),
            TIMEOUT,
            || {
                let s = self.try_source_livesync_sessions()?;
                if s.len() == n {
                    Ok(s)
                } else {
                    Err(format!("{} sessions: {s:?}", s.len()))
                }
            },
        )
    }

    /// livesync publications in this source database.
    pub fn source_publications(&self) -> Vec<String> {
        self.source_rows(
            "SELECT pubname FROM pg_publication WHERE pubname LIKE 'livesync%' ORDER BY 1",
        )
        .iter()
        .map(|r| r.text("pubname").to_string())
        .collect()
    }

    /// livesync replication slots of this source database.
    pub fn source_slots(&self) -> Vec<String> {
        self.source_rows(&format!(
            "SELECT slot_name FROM pg_replication_slots
              WHERE slot_name LIKE 'livesync%' AND (database = {} OR database IS NULL) ORDER BY 1",
            lit(&self.name)
        ))
        .iter()
        .map(|r| r.text("slot_name").to_string())
        .collect()
    }

    /// What add_connector & co. may leave behind: connectors, publications, slots.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            connectors: self.connector_names(),
            publications: self.source_publications(),
            slots: self.source_slots(),
        }
    }

    /// Asserts nothing was (half-)created since `before`.
    #[track_caller]
    pub fn assert_unchanged(&self, before: &Snapshot, after_what: &str) {
        let now = self.snapshot();
        assert_eq!(&now, before, "something was left behind after {after_what}");
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub connectors: Vec<String>,
    pub publications: Vec<String>,
    pub slots: Vec<String>,
}

impl Drop for TestDb<'_> {
    fn drop(&mut self) {
        if super::keep_clusters() {
            eprintln!("keeping database {} (LIVESYNC_KEEP_CLUSTERS)", self.name);
            return;
        }
        let quick = Duration::from_secs(30);
        let su = os_superuser();
        if self.target.is_running() {
            let _ = run_sql(
                self.target,
                &self.name,
                su,
                "SELECT livesync.drop_connector(name) FROM livesync.connectors",
                quick,
            );
            let out = run_sql(
                self.target,
                "postgres",
                su,
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(&self.name)),
                quick,
            );
            if let Err(e) = out.result {
                eprintln!("cleanup: dropping {} on the target failed: {e}", self.name);
            }
        }
        if self.source.is_running() {
            let n = lit(&self.name);
            let _ = run_sql(
                self.source,
                "postgres",
                su,
                &format!(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                      WHERE database = {n} AND active_pid IS NOT NULL"
                ),
                quick,
            );
            let _ = run_sql(
                self.source,
                "postgres",
                su,
                &format!(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                      WHERE database = {n} AND NOT active"
                ),
                quick,
            );
            let out = run_sql(
                self.source,
                "postgres",
                su,
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(&self.name)),
                quick,
            );
            if let Err(e) = out.result {
                eprintln!("cleanup: dropping {} on the source failed: {e}", self.name);
            }
        }
    }
}
