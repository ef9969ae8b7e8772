//! Upgrading livesync in place (issue 14, item 2).
//!
//! A target running the previous release syncs two tables while a load changes them on the
//! source; then the new package is installed over it, the server restarted (the new library),
//! and `ALTER EXTENSION livesync UPDATE` run. The sync must go on from where it was — no table
//! copied again, the same slot, the copy's records untouched — and end with the rows of source
//! and target equal. The upgraded extension must also be exactly what `CREATE EXTENSION livesync`
//! of the new version makes: every function, table, column, constraint, index, view, grant and
//! comment is compared, so an upgrade script that lacks something fails with the difference.
//!
//! The target runs on a private copy of the PostgreSQL installation, so the system's, which the
//! other tests use, is never touched. `scripts/upgrade-test.sh` prepares it and runs this test:
//! - `LIVESYNC_UPGRADE_PG_CONFIG`: the copy's `pg_config` (its bin, lib and share, no livesync);
//! - `LIVESYNC_UPGRADE_FROM`: `cargo pgrx package` output of the previous release;
//! - `LIVESYNC_UPGRADE_TO`: `cargo pgrx package` output of this tree.
//!
//! The source is a cluster of the system's PostgreSQL, started like the integration tests' ones.

#[path = "integration/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(60);

/// A PostgreSQL installation of the test's own, and where livesync's files go in it.
struct Install {
    bindir: PathBuf,
    pkglibdir: PathBuf,
    extdir: PathBuf,
}

impl Install {
    fn of(pg_config: &str) -> Install {
        Install {
            bindir: pg_config_value_of(pg_config, "--bindir"),
            pkglibdir: pg_config_value_of(pg_config, "--pkglibdir"),
            extdir: pg_config_value_of(pg_config, "--sharedir").join("extension"),
        }
    }

    /// Removes every livesync file (a rerun starts from the previous release again).
    fn remove_livesync(&self) {
        for dir in [&self.pkglibdir, &self.extdir] {
            for entry in fs::read_dir(dir)
                .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
                .flatten()
            {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name == "livesync.so"
                    || name == "livesync.control"
                    || name.starts_with("livesync--")
                {
                    fs::remove_file(entry.path())
                        .unwrap_or_else(|e| panic!("rm {}: {e}", entry.path().display()));
                }
            }
        }
    }

    /// Where a file of a `cargo pgrx package` tree belongs: the library in pkglibdir, the control
    /// file and SQL scripts in sharedir/extension.
    fn destination(&self, file: &Path) -> PathBuf {
        let name = file.file_name().unwrap();
        let in_extension_dir = file
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|d| d == "extension");
        if name.to_string_lossy().ends_with(".so") {
            self.pkglibdir.join(name)
        } else if in_extension_dir {
            self.extdir.join(name)
        } else {
            panic!("{}: a package file of unknown kind", file.display())
        }
    }

    /// Installs a package like a package manager: each file is written beside its destination and
    /// renamed over it (a running server's processes keep the library they have mapped), then
    /// the files of `replaces` that the new package lacks are removed. Returns the files' names.
    fn install_package(&self, package: &Path, replaces: Option<&Path>) -> Vec<String> {
        let mut names = Vec::new();
        for file in package_files(package) {
            let dest = self.destination(&file);
            let tmp = dest.with_extension("dpkg-new");
            fs::copy(&file, &tmp)
                .unwrap_or_else(|e| panic!("copy {} to {}: {e}", file.display(), tmp.display()));
            fs::rename(&tmp, &dest)
                .unwrap_or_else(|e| panic!("rename {} to {}: {e}", tmp.display(), dest.display()));
            names.push(dest.file_name().unwrap().to_string_lossy().into_owned());
        }
        if let Some(old) = replaces {
            for file in package_files(old) {
                let dest = self.destination(&file);
                let name = dest.file_name().unwrap().to_string_lossy().into_owned();
                if !names.contains(&name) {
                    fs::remove_file(&dest).unwrap_or_else(|e| panic!("rm {}: {e}", dest.display()));
                }
            }
        }
        names.sort();
        names
    }
}

/// Every file under `dir`.
fn package_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in fs::read_dir(&d)
            .unwrap_or_else(|e| panic!("read {}: {e}", d.display()))
            .flatten()
        {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else {
                out.push(path);
            }
        }
    }
    assert!(
        !out.is_empty(),
        "no files in the package tree {}",
        dir.display()
    );
    out.sort();
    out
}

/// `default_version` of the control file in a package tree.
fn package_version(package: &Path) -> String {
    let control = package_files(package)
        .into_iter()
        .find(|f| f.file_name().is_some_and(|n| n == "livesync.control"))
        .unwrap_or_else(|| panic!("no livesync.control in {}", package.display()));
    let text = fs::read_to_string(&control).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("default_version"))
        .map(|v| {
            v.trim()
                .trim_start_matches('=')
                .trim()
                .trim_matches('\'')
                .to_string()
        })
        .unwrap_or_else(|| panic!("no default_version in {}", control.display()))
}

fn env_path(name: &str) -> PathBuf {
    match std::env::var_os(name) {
        Some(v) => PathBuf::from(v),
        None => panic!(
            "{name} is not set: this test needs a private PostgreSQL installation and the packages of the \
             previous and the current release; run it with `bash scripts/upgrade-test.sh`"
        ),
    }
}

// ---------------------------------------------------------------------------
// The extension's objects, one line each
// ---------------------------------------------------------------------------

/// An ACL as text with its items sorted (their order depends on the order of the GRANTs), or
/// `default` for NULL (the owner's default privileges).
fn acl(expr: &str) -> String {
    format!(
        "CASE WHEN {expr} IS NULL THEN 'default' \
         ELSE (SELECT coalesce(string_agg(a::text, ' ' ORDER BY a::text), 'none') FROM unnest({expr}) a) END"
    )
}

/// One line per property of every object of the extension in database `db`: its members, and in
/// its schema the functions (arguments, result, volatility, strictness, security definer,
/// parallel safety, cost, settings, C symbol or body, owner, ACL), relations (kind, options, row
/// security, owner, ACL), columns (type, NOT NULL, default, identity, generation, collation, ACL;
/// and each relation's column order, in a line of its own), sequences, constraints, indexes, views (each line of the definition and a
/// digest of all of it), triggers, policies, types and enum labels; the extension's configuration
/// tables, its members' initial privileges (what pg_dump restores) and comments.
fn extension_objects(cluster: &Cluster, db: &str) -> Vec<String> {
    let parts = [
        "SELECT 'member ' || pg_describe_object(m.classid, m.objid, 0) FROM members m".to_string(),
        "SELECT format('extension: schema %s, relocatable %s, configuration tables [%s]', e.extnamespace::regnamespace,
                e.extrelocatable,
                (SELECT coalesce(string_agg(u.c::regclass::text || coalesce(' WHERE ' || nullif(u.cond, ''), ''), ', '
                                 ORDER BY u.c::regclass::text), '')
                   FROM unnest(e.extconfig, e.extcondition) AS u(c, cond)))
           FROM pg_extension e WHERE e.extname = 'livesync'"
            .to_string(),
        format!(
            "SELECT format('schema %s: owner %s, acl %s', n.nspname, n.nspowner::regrole, {})
               FROM pg_namespace n JOIN ext ON n.oid = ext.extnamespace",
            acl("n.nspacl")
        ),
        format!(
            "SELECT format('function %s.%s(%s) returns %s: %s, %s, %s, %s, %s, parallel %s, cost %s, rows %s, language %s, config %s, owner %s, acl %s, %s',
                    p.pronamespace::regnamespace, quote_ident(p.proname), pg_get_function_arguments(p.oid),
                    coalesce(pg_get_function_result(p.oid), '-'),
                    CASE p.prokind WHEN 'f' THEN 'function' WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' ELSE 'window' END,
                    CASE p.provolatile WHEN 'i' THEN 'immutable' WHEN 's' THEN 'stable' ELSE 'volatile' END,
                    CASE WHEN p.proisstrict THEN 'strict' ELSE 'called on null input' END,
                    CASE WHEN p.prosecdef THEN 'security definer' ELSE 'security invoker' END,
                    CASE WHEN p.proleakproof THEN 'leakproof' ELSE 'not leakproof' END,
                    p.proparallel, p.procost, p.prorows, l.lanname, coalesce(p.proconfig::text, '-'),
                    p.proowner::regrole, {},
                    CASE WHEN l.lanname IN ('c', 'internal') THEN format('symbol %s in %s', p.prosrc, coalesce(p.probin, '-'))
                         WHEN p.prokind = 'a' THEN 'aggregate'
                         ELSE 'definition md5 ' || md5(pg_get_functiondef(p.oid)) END)
               FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
              WHERE p.oid IN (SELECT oid FROM procs)",
            acl("p.proacl")
        ),
        format!(
            "SELECT format('relation %s: kind %s, persistence %s, options %s, row security %s/%s, replica identity %s, owner %s, acl %s',
                    c.oid::regclass, c.relkind, c.relpersistence, coalesce(c.reloptions::text, '-'), c.relrowsecurity,
                    c.relforcerowsecurity, c.relreplident, c.relowner::regrole, {})
               FROM pg_class c JOIN rels r ON r.oid = c.oid WHERE c.relkind NOT IN ('i', 'I')",
            acl("c.relacl")
        ),
        format!(
            "SELECT format('column %s.%s: %s%s%s%s%s, acl %s', a.attrelid::regclass, quote_ident(a.attname),
                    format_type(a.atttypid, a.atttypmod),
                    CASE WHEN a.attnotnull THEN ' NOT NULL' ELSE '' END,
                    CASE WHEN a.attgenerated = 's' THEN ' GENERATED ALWAYS AS (' || pg_get_expr(d.adbin, d.adrelid) || ') STORED'
                         WHEN d.adbin IS NOT NULL THEN ' DEFAULT ' || pg_get_expr(d.adbin, d.adrelid) ELSE '' END,
                    CASE a.attidentity WHEN 'a' THEN ' GENERATED ALWAYS AS IDENTITY'
                                       WHEN 'd' THEN ' GENERATED BY DEFAULT AS IDENTITY' ELSE '' END,
                    CASE WHEN a.attcollation <> t.typcollation THEN ' COLLATE ' || a.attcollation::regcollation ELSE '' END,
                    {})
               FROM pg_attribute a JOIN rels r ON r.oid = a.attrelid JOIN pg_type t ON t.oid = a.atttypid
               LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
              WHERE a.attnum > 0 AND NOT a.attisdropped AND r.relkind NOT IN ('i', 'I', 'S')",
            acl("a.attacl")
        ),
        "SELECT format('columns of %s in order: %s', a.attrelid::regclass, string_agg(quote_ident(a.attname), ', ' ORDER BY a.attnum))
           FROM pg_attribute a JOIN rels r ON r.oid = a.attrelid
          WHERE a.attnum > 0 AND NOT a.attisdropped AND r.relkind NOT IN ('i', 'I', 'S')
          GROUP BY a.attrelid"
            .to_string(),
        "SELECT format('sequence %s: %s, start %s, increment %s, min %s, max %s, cache %s, cycle %s, owned by %s',
                s.seqrelid::regclass, s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmin, s.seqmax, s.seqcache,
                s.seqcycle,
                coalesce((SELECT d.refobjid::regclass || '.' || quote_ident(a.attname)
                            FROM pg_depend d JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid
                           WHERE d.classid = 'pg_class'::regclass AND d.objid = s.seqrelid
                             AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')), '-'))
           FROM pg_sequence s JOIN rels r ON r.oid = s.seqrelid"
            .to_string(),
        "SELECT format('constraint %s on %s: %s', quote_ident(co.conname),
                coalesce(nullif(co.conrelid, 0)::regclass::text, co.contypid::regtype::text), pg_get_constraintdef(co.oid))
           FROM pg_constraint co JOIN ext ON co.connamespace = ext.extnamespace"
            .to_string(),
        "SELECT 'index ' || pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN rels r ON r.oid = i.indrelid".to_string(),
        "SELECT format('view %s: definition md5 %s', r.oid::regclass, md5(pg_get_viewdef(r.oid, true)))
           FROM rels r WHERE r.relkind IN ('v', 'm')"
            .to_string(),
        "SELECT format('view %s: %s', r.oid::regclass, btrim(l))
           FROM rels r, regexp_split_to_table(pg_get_viewdef(r.oid, true), E'\\n') AS l
          WHERE r.relkind IN ('v', 'm') AND btrim(l) <> ''"
            .to_string(),
        "SELECT 'trigger ' || pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN rels r ON r.oid = t.tgrelid WHERE NOT t.tgisinternal"
            .to_string(),
        "SELECT format('policy %s on %s: %s for %s to %s using %s check %s', quote_ident(p.polname), p.polrelid::regclass,
                CASE WHEN p.polpermissive THEN 'permissive' ELSE 'restrictive' END, p.polcmd, p.polroles::regrole[],
                coalesce(pg_get_expr(p.polqual, p.polrelid), '-'), coalesce(pg_get_expr(p.polwithcheck, p.polrelid), '-'))
           FROM pg_policy p JOIN rels r ON r.oid = p.polrelid"
            .to_string(),
        "SELECT format('type %s: %s, owner %s', t.oid::regtype, t.typtype, t.typowner::regrole)
           FROM pg_type t JOIN ext ON t.typnamespace = ext.extnamespace
          WHERE t.typrelid = 0 AND t.typcategory <> 'A'"
            .to_string(),
        "SELECT format('enum %s: %s', e.enumtypid::regtype, string_agg(quote_literal(e.enumlabel), ', ' ORDER BY e.enumsortorder))
           FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid JOIN ext ON t.typnamespace = ext.extnamespace
          GROUP BY e.enumtypid"
            .to_string(),
        format!(
            "SELECT format('initial privileges of %s: %s', pg_describe_object(ip.classoid, ip.objoid, ip.objsubid), {})
               FROM pg_init_privs ip JOIN members m ON m.classid = ip.classoid AND m.objid = ip.objoid",
            acl("ip.initprivs")
        ),
        "SELECT format('comment on %s: %s', pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description)
           FROM pg_description d JOIN members m ON m.classid = d.classoid AND m.objid = d.objoid"
            .to_string(),
    ];
    let sql = format!(
        "WITH ext AS (SELECT oid, extnamespace FROM pg_extension WHERE extname = 'livesync'),
              members AS (SELECT d.classid, d.objid FROM pg_depend d JOIN ext ON d.refobjid = ext.oid
                           WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e'),
              rels AS (SELECT c.oid, c.relkind FROM pg_class c JOIN ext ON c.relnamespace = ext.extnamespace),
              procs AS (SELECT p.oid FROM pg_proc p JOIN ext ON p.pronamespace = ext.extnamespace
                        UNION SELECT objid FROM members WHERE classid = 'pg_proc'::regclass)
         SELECT line FROM ({}) AS x(line) ORDER BY line COLLATE \"C\"",
        parts.join("\nUNION ALL\n")
    );
    let mut client = cluster.connect(db);
    query(&mut client, &sql)
        .into_iter()
        .map(|r| r.text("line").to_string())
        .collect()
}

/// Lines only in `fresh` and lines only in `upgraded` (counted: a view may repeat a line).
fn diff_objects(fresh: &[String], upgraded: &[String]) -> (Vec<String>, Vec<String>) {
    let mut counts: BTreeMap<&str, i64> = BTreeMap::new();
    for l in fresh {
        *counts.entry(l).or_default() += 1;
    }
    for l in upgraded {
        *counts.entry(l).or_default() -= 1;
    }
    let only = |sign: i64| -> Vec<String> {
        counts
            .iter()
            .filter(|(_, &n)| n * sign > 0)
            .flat_map(|(l, &n)| std::iter::repeat_n(l.to_string(), (n * sign) as usize))
            .collect()
    };
    (only(1), only(-1))
}

// ---------------------------------------------------------------------------
// What shows that nothing was copied again
// ---------------------------------------------------------------------------

/// The records of the initial copy, which a copy started again would reset or rewrite: each
/// table's copy state, times, counters and snapshot; each copy range; the target tables' files
/// (a copy starts by truncating the target, which gives it a new relfilenode); the connector's
/// slot (a new slot would mean a new copy).
fn copy_records(db: &TestDb) -> Vec<Vec<Row>> {
    vec![
        db.tgt(
            "SELECT id, source_schema, source_name, state, started_at, finished_at, rows_copied, bytes_copied,
                    snapshot_lsn, attempts, spooled
               FROM livesync.sync_table ORDER BY id",
        ),
        db.tgt(
            "SELECT table_id, range_no, start_page, end_page, done, rows, bytes, finished_at, snapshot_lsn
               FROM livesync.copy_range ORDER BY table_id, range_no",
        ),
        db.tgt(
            "SELECT relname, relfilenode FROM pg_class
              WHERE oid IN ('public.accounts'::regclass, 'public.events'::regclass) ORDER BY relname",
        ),
        db.tgt("SELECT name, slot_name, slot_created_at, slot_created_lsn FROM livesync.connector ORDER BY id"),
    ]
}

fn changes_applied(db: &TestDb, table: &str) -> Result<i64, String> {
    Ok(db.try_progress(table)?.int("changes_applied"))
}

fn extversion(db: &TestDb) -> String {
    db.tgt("SELECT extversion FROM pg_extension WHERE extname = 'livesync'")[0]
        .text("extversion")
        .to_string()
}

fn connector_processes(db: &TestDb) -> i64 {
    db.tgt(&format!(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE backend_type = 'livesync connector' AND datname = {}",
        lit(&db.name)
    ))[0]
        .int("n")
}

const TABLES: [&str; 2] = ["public.accounts", "public.events"];

#[test]
fn previous_release_upgrades_in_place_under_load_without_a_copy() {
    let install = Install::of(&env_path("LIVESYNC_UPGRADE_PG_CONFIG").to_string_lossy());
    let from_pkg = env_path("LIVESYNC_UPGRADE_FROM");
    let to_pkg = env_path("LIVESYNC_UPGRADE_TO");
    let from = package_version(&from_pkg);
    let to = package_version(&to_pkg);
    assert_eq!(
        to,
        env!("CARGO_PKG_VERSION"),
        "LIVESYNC_UPGRADE_TO is not a package of this tree"
    );
    assert_ne!(
        from, to,
        "the previous release and this tree have the same version"
    );
    eprintln!(
        "upgrade test: livesync {from} -> {to} in {}",
        install.bindir.display()
    );

    install.remove_livesync();
    install.install_package(&from_pkg, None);

    let source = dedicated_source("upg-source");
    let target = Cluster::start_new(
        "upg-target",
        ClusterConfig {
            bindir: Some(install.bindir.clone()),
            ..ClusterConfig::target()
        }
        // Several copy ranges for the bigger table.
        .with_conf("livesync.copy_range_mb = 1"),
    );
    let db = TestDb::on(&source, &target, "upgrade");
    assert_eq!(
        extversion(&db),
        from,
        "CREATE EXTENSION installed another version than the previous release's"
    );

    // Two tables on the source, one big enough for several copy ranges, and a load that inserts,
    // updates and deletes in both from before they are added until the end.
    db.src(&format!(
        "{}; {};
         INSERT INTO accounts SELECT g, g % 10, g, 'a' || g FROM generate_series(1, 2000) g;
         INSERT INTO events SELECT g, g % 10, g, repeat('e', 200) || g FROM generate_series(1, 20000) g;",
        load_table_ddl("accounts", &LoadKind::Mixed),
        load_table_ddl("events", &LoadKind::Mixed)
    ));
    let load = Load::start(
        &source,
        &db.name,
        &[
            ("public.accounts", LoadKind::Mixed),
            ("public.events", LoadKind::Mixed),
        ],
        2,
        Duration::from_millis(5),
    );
    load.wait_ops(100, WAIT);

    db.add_su_connector("app");
    for t in TABLES {
        db.add_table_ok(t);
    }
    for t in TABLES {
        db.wait_ready(t);
    }
    // The stream applies the load's changes under the previous release.
    let applied_before: Vec<i64> = TABLES
        .iter()
        .map(|t| {
            wait_until(
                &format!("changes applied to {t} under {from}"),
                WAIT,
                || match changes_applied(&db, t)? {
                    n if n > 0 => Ok(n),
                    n => Err(format!("changes_applied = {n}")),
                },
            )
        })
        .collect();
    let ranges = db.tgt("SELECT count(*) AS n FROM livesync.copy_range")[0].int("n");
    assert!(
        ranges > TABLES.len() as i64,
        "expected several copy ranges for the bigger table, got {ranges} in all"
    );
    let before = copy_records(&db);

    // --- the upgrade, as the README describes it -------------------------------------------
    // 1. The new package is installed while the server runs: its processes keep the library they
    //    loaded and go on syncing.
    let files = install.install_package(&to_pkg, Some(&from_pkg));
    eprintln!("upgrade test: installed {files:?}");
    assert!(
        files.contains(&format!("livesync--{from}--{to}.sql")),
        "no upgrade script {from} -> {to} in the package: {files:?}"
    );
    let lsn = db.source_lsn();
    db.wait_flushed("app", &lsn, WAIT);

    // 2. A restart loads the new library. Until the extension is updated, its connectors wait:
    //    the new library does not run on the previous release's catalog.
    target.restart();
    let mismatch =
        format!("livesync library version {to} does not match the extension's version {from}");
    wait_until(
        "the manager to report that the catalog awaits ALTER EXTENSION UPDATE",
        WAIT,
        || {
            if target.log_contents().contains(&mismatch) {
                Ok(())
            } else {
                Err(format!(
                    "no {mismatch:?} in the target's log; its end:\n{}",
                    target.log_tail(10)
                ))
            }
        },
    );
    assert_eq!(
        connector_processes(&db),
        0,
        "a connector runs the new library on the {from} catalog"
    );
    assert_ne!(db.connector("app").unwrap().get("state"), Some("running"));
    load.wait_ops(100, WAIT);

    // 3. ALTER EXTENSION livesync UPDATE.
    db.tgt("ALTER EXTENSION livesync UPDATE");
    assert_eq!(extversion(&db), to);

    // The upgraded extension is what a fresh install of the new version makes.
    target.create_database("upgrade_fresh");
    let mut fresh_client = target.connect("upgrade_fresh");
    query(&mut fresh_client, "CREATE EXTENSION livesync");
    drop(fresh_client);
    let fresh = extension_objects(&target, "upgrade_fresh");
    let upgraded = extension_objects(&target, &db.name);
    assert!(
        fresh.len() > 100,
        "suspiciously few objects in a fresh install: {fresh:#?}"
    );
    let (missing, extra) = diff_objects(&fresh, &upgraded);
    if !missing.is_empty() || !extra.is_empty() {
        panic!(
            "livesync {from} updated to {to} (sql/livesync--{from}--{to}.sql) differs from a fresh CREATE EXTENSION livesync of {to} \
             (sql/bootstrap.sql, the #[pg_extern] functions, sql/finalize.sql):\n\
             only in a fresh install (the upgrade script lacks them; {} lines):\n  {}\n\
             only after the upgrade (the upgrade script leaves or makes them, a fresh install does not; {} lines):\n  {}\n\
             (the order of a table's columns counts: a column an upgrade script adds goes at the end of its table in sql/bootstrap.sql)",
            missing.len(),
            missing.join("\n  "),
            extra.len(),
            extra.join("\n  ")
        );
    }
    query(
        &mut target.connect("postgres"),
        "DROP DATABASE upgrade_fresh WITH (FORCE)",
    );

    // --- the sync goes on ---------------------------------------------------------------------
    db.wait_running("app");
    load.wait_ops(200, WAIT);
    for (t, before) in TABLES.iter().zip(&applied_before) {
        wait_until(
            &format!("changes applied to {t} under {to}"),
            WAIT,
            || match changes_applied(&db, t)? {
                n if n > *before => Ok(n),
                n => Err(format!(
                    "changes_applied = {n}, {before} before the upgrade"
                )),
            },
        );
    }
    let stats = load.stop();
    assert_eq!(
        stats.errors, 0,
        "the load failed on the source: {:?}",
        stats.last_error
    );
    assert!(stats.commits > 0, "{stats:?}");
    db.wait_caught_up("app");
    db.wait_all_same(
        &[
            Compare::same("public.accounts", "t.id"),
            Compare::same("public.events", "t.id"),
        ],
        WAIT,
    );
    for t in TABLES {
        assert_eq!(db.progress(t).get("state"), Some("ready"), "{t}");
    }

    // Nothing was copied again.
    let after = copy_records(&db);
    let names = [
        "sync_table",
        "copy_range",
        "target tables' files",
        "connector slot",
    ];
    for ((name, b), a) in names.iter().zip(&before).zip(&after) {
        assert_eq!(
            a, b,
            "{name}: changed by the upgrade (a copy started again?)"
        );
    }
    eprintln!(
        "upgrade test: {} statements on the source, {ranges} copy ranges kept, changes applied before the upgrade {:?}",
        stats.statements, applied_before
    );
}
