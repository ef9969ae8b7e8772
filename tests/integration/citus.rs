//! Citus targets: a coordinator and two worker nodes on loopback. Tables copied into distributed
//! tables (created by `add_table(distributed_by => …)` or by the user) and a reference table, the
//! stream's INSERTs, UPDATEs (key and distribution-column changes among them), DELETEs and
//! TRUNCATEs, with a trigger and a foreign key on the shards that must stay quiet; add_table's
//! errors; SIGKILL of a copy worker and of the connector worker. Every check reads the rows
//! through the distributed table, sums them on the shards, and checks that the coordinator's
//! shell tables hold nothing.
//!
//! Citus is in no package registry here: these tests need it installed in the PostgreSQL under
//! test (PG_CONFIG) and print a SKIPPED banner (and pass) when it is not. Tested with 13.2.2.
//! The worker nodes' test databases are left to the end of the run (the clusters go then).

use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::support::*;

const WAIT: Duration = Duration::from_secs(90);

/// Settings every Citus node gets: prepared transactions, for the coordinator's two-phase
/// commits across worker nodes.
fn node_config(preload: &str, base: ClusterConfig) -> ClusterConfig {
    base.with_conf(&format!("shared_preload_libraries = '{preload}'"))
        .with_conf("max_prepared_transactions = 50")
}

/// A coordinator: livesync after citus, small copy ranges (tables of a few MB are copied as
/// several ranges) and prepared transactions of a crashed coordinator recovered within a second.
fn coordinator_config() -> ClusterConfig {
    node_config("citus,livesync", ClusterConfig::target())
        .with_conf("livesync.copy_range_mb = 1")
        .with_conf("citus.recover_2pc_interval = '1s'")
}

/// The two worker nodes every coordinator of these tests uses (Citus keeps its metadata per
/// database, so coordinators with databases of different names share them).
fn workers() -> &'static [Cluster; 2] {
    static WORKERS: OnceLock<[Cluster; 2]> = OnceLock::new();
    WORKERS.get_or_init(|| {
        [1, 2].map(|n| {
            Cluster::start_new(
                &format!("citus-w{n}"),
                node_config("citus", ClusterConfig::source()),
            )
        })
    })
}

fn shared_coordinator() -> &'static Cluster {
    static COORDINATOR: OnceLock<Cluster> = OnceLock::new();
    COORDINATOR.get_or_init(|| Cluster::start_new("citus-coord", coordinator_config()))
}

/// Whether Citus is installed; a loud banner when it is not.
fn citus_or_skip(test: &str) -> bool {
    if citus_installed() {
        return true;
    }
    // Straight to stderr: the test harness captures eprintln! of passing tests.
    let _ = writeln!(
        std::io::stderr(),
        "\n**********************************************************************\n\
         SKIPPED citus::{test}: Citus is not installed in this PostgreSQL\n\
         (no citus.so in pg_config --pkglibdir). Install Citus 13.2 for\n\
         PostgreSQL 15 to run the Citus target tests.\n\
         **********************************************************************\n"
    );
    false
}

/// A test database on `coordinator` and both worker nodes, with citus in each, the worker nodes
/// added, and livesync created on the coordinator only (as the README says: Citus would
/// propagate CREATE EXTENSION to the worker nodes).
fn citus_db<'a>(coordinator: &'a Cluster, test: &str) -> TestDb<'a> {
    let name = format!("t_{test}");
    worker_databases(&name);
    TestDb::on_with(
        shared_source(),
        coordinator,
        test,
        |c| add_nodes(c, coordinator),
        "SET citus.enable_ddl_propagation = off; CREATE EXTENSION livesync; RESET citus.enable_ddl_propagation;",
    )
}

/// Database `name` (new) with citus on both worker nodes.
fn worker_databases(name: &str) {
    for w in workers() {
        let mut c = w.connect("postgres");
        query(
            &mut c,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", ident(name)),
        );
        query(&mut c, &format!("CREATE DATABASE {}", ident(name)));
        query(&mut w.connect(name), "CREATE EXTENSION citus");
    }
}

/// citus in the coordinator's database `c` is connected to, with the worker nodes added.
fn add_nodes(c: &mut postgres::Client, coordinator: &Cluster) {
    query(c, "CREATE EXTENSION citus");
    query(
        c,
        &format!(
            "SELECT citus_set_coordinator_host('127.0.0.1', {})",
            coordinator.port()
        ),
    );
    for w in workers() {
        query(
            c,
            &format!("SELECT citus_add_node('127.0.0.1', {})", w.port()),
        );
    }
}

fn count(db: &TestDb, sql: &str) -> i64 {
    db.tgt(sql)[0].int("n")
}

/// The rows of `rel` are on its shards, none in the coordinator's shell; returns how many.
#[track_caller]
fn assert_on_shards(db: &TestDb, rel: &str) -> i64 {
    let shell = count(db, &format!("SELECT pg_relation_size('{rel}') AS n"));
    assert_eq!(shell, 0, "the coordinator's shell table {rel} holds {shell} bytes: rows landed there, not on the shards");
    let through = count(db, &format!("SELECT count(*) AS n FROM {rel}"));
    let on_shards = count(
        db,
        &format!("SELECT sum(result::int8)::int8 AS n FROM run_command_on_shards('{rel}', $$SELECT count(*) FROM %s$$)"),
    );
    // A reference table's one shard is on every node: run_command_on_shards reads one placement.
    assert_eq!(
        on_shards, through,
        "{rel}: rows on the shards and through the distributed table differ"
    );
    through
}

/// Every table equal to the source, read through Citus, and on the shards.
#[track_caller]
fn assert_synced(db: &TestDb, tables: &[(&str, &str)]) {
    let cmps: Vec<Compare> = tables
        .iter()
        .map(|(t, key)| Compare::same(t, key))
        .collect();
    db.wait_all_same(&cmps, WAIT);
    for (t, _) in tables {
        assert_on_shards(db, t);
    }
}

#[test]
fn copy_and_stream_reach_the_shards() {
    if !citus_or_skip("copy_and_stream_reach_the_shards") {
        return;
    }
    let db = citus_db(shared_coordinator(), "citus_sync");
    db.src(
        "CREATE TABLE orders (id bigint PRIMARY KEY, customer int NOT NULL, note text, placed timestamptz);
         INSERT INTO orders SELECT g, g % 500, repeat('o', 30) || g, timestamptz '2026-01-01' + g * interval '1 minute'
           FROM generate_series(1, 60000) g;
         CREATE TABLE items (order_id bigint NOT NULL, n int NOT NULL, sku text, qty int, PRIMARY KEY (order_id, n));
         INSERT INTO items SELECT g / 2 + 1, g % 2, 'sku' || (g % 97), g % 7 FROM generate_series(0, 79999) g;
         CREATE TABLE countries (code text PRIMARY KEY, name text);
         INSERT INTO countries SELECT 'c' || g, 'country ' || g FROM generate_series(1, 200) g;
         ANALYZE;",
    );
    // items and countries exist on the target as Citus made them; orders is made by add_table.
    db.tgt(
        "CREATE TABLE items (order_id bigint NOT NULL, n int NOT NULL, sku text, qty int, PRIMARY KEY (order_id, n));
         SELECT create_distributed_table('items', 'order_id');
         CREATE TABLE countries (code text PRIMARY KEY, name text);
         SELECT create_reference_table('countries');",
    );
    db.tgt(
        "CREATE FUNCTION refuse_copied() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'trigger fired on % during the copy', TG_TABLE_NAME; END $$",
    );
    // The copy is Citus's own COPY, which writes the shards from sessions of its own: a trigger
    // on items' shards must stay quiet (session_replication_role = replica reaches them).
    db.tgt(
        "DO $$ BEGIN
           SET LOCAL citus.enable_unsafe_triggers = on;
           CREATE TRIGGER refuse_copied BEFORE INSERT ON items FOR EACH ROW EXECUTE FUNCTION refuse_copied();
         END $$",
    );
    db.add_su_connector("c");
    let started = Instant::now();
    let out = db.target_sql("SELECT livesync.add_table('orders', distributed_by => 'id')");
    let notices: Vec<String> = out.notices.iter().map(|n| n.message.clone()).collect();
    out.ok("add_table(orders, distributed_by => 'id')");
    assert!(
        notices
            .iter()
            .any(|n| n.contains("created public.orders as a Citus table distributed by \"id\"")),
        "{notices:?}"
    );
    db.add_table_ok("items");
    db.add_table_ok("countries");
    let p = db.wait_ready("public.orders");
    assert!(
        p.int("ranges_total") > 1,
        "orders should be copied as several ranges: {p:?}"
    );
    db.wait_ready("public.items");
    db.wait_ready("public.countries");
    eprintln!(
        "citus: 3 tables (140,200 rows) copied in {:?}",
        started.elapsed()
    );
    let tables = [
        ("orders", "id"),
        ("items", "order_id, n"),
        ("countries", "code"),
    ];
    assert_synced(&db, &tables);
    db.tgt("DO $$ BEGIN SET LOCAL citus.enable_unsafe_triggers = on; DROP TRIGGER refuse_copied ON items; END $$");
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM citus_shards WHERE table_name = 'orders'::regclass"
        ),
        32
    );
    let key = db.tgt(
        "SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint WHERE conrelid = 'orders'::regclass AND contype = 'p'",
    );
    assert_eq!(
        key[0].text("def"),
        "PRIMARY KEY (id)",
        "the key is built after the copy, on the shards too"
    );

    // On the shards: a trigger that refuses every row change, and a foreign key that the source
    // does not have (items first, then their order, in one source transaction). The stream's
    // session_replication_role = replica must reach the shards' sessions too.
    // (One statement per call: Citus sends a CREATE TRIGGER's whole query string to the shards.)
    db.tgt(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'trigger fired on %', TG_TABLE_NAME; END $$",
    );
    db.tgt(
        "DO $$ BEGIN
           SET LOCAL citus.enable_unsafe_triggers = on;
           CREATE TRIGGER refuse BEFORE INSERT OR UPDATE OR DELETE ON orders FOR EACH ROW EXECUTE FUNCTION refuse();
         END $$",
    );
    db.tgt("ALTER TABLE items ADD FOREIGN KEY (order_id) REFERENCES orders (id)");
    let e = db
        .target_sql("INSERT INTO orders VALUES (-1, 0, 'direct', now())")
        .err("a direct INSERT fires the trigger");
    assert!(e.message.contains("trigger fired on orders_"), "{e}");

    db.src(
        "BEGIN;
           INSERT INTO items VALUES (70001, 0, 'new', 1), (70001, 1, 'new', 2);
           INSERT INTO orders VALUES (70001, 1, 'after its items', now());
         COMMIT;
         INSERT INTO orders SELECT g, g % 500, 'streamed', now() FROM generate_series(60001, 63000) g;
         UPDATE orders SET note = 'updated' WHERE id % 50 = 0;
         UPDATE orders SET id = id + 1000000 WHERE id % 997 = 0;             -- the distribution column moves
         DELETE FROM orders WHERE id % 101 = 0;
         UPDATE items SET qty = qty + 100 WHERE order_id % 40 = 0;
         UPDATE items SET order_id = order_id + 500000 WHERE order_id % 333 = 0;  -- moves to other shards
         UPDATE items SET n = n + 10 WHERE order_id % 777 = 1;                    -- key change, same shard
         DELETE FROM items WHERE order_id % 91 = 0;
         BEGIN;
           UPDATE countries SET name = upper(name) WHERE code < 'c3';
           UPDATE countries SET code = code || 'x' WHERE code LIKE 'c5%';
           DELETE FROM countries WHERE code LIKE 'c7%';
           INSERT INTO countries VALUES ('zz', 'new');
           UPDATE orders SET customer = -1 WHERE id BETWEEN 100 AND 200;
         COMMIT;",
    );
    assert_synced(&db, &tables);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM orders WHERE note = 'after its items'"
        ),
        1,
        "the order inserted after its items is there"
    );

    // TRUNCATE (both tables of the foreign key together), then rows again.
    db.src(
        "BEGIN;
           INSERT INTO orders VALUES (-5, 0, 'before the truncate', now());
           TRUNCATE orders, items;
           INSERT INTO orders SELECT g, g, 'after the truncate', now() FROM generate_series(1, 500) g;
           INSERT INTO items SELECT g, 0, 'after', 1 FROM generate_series(1, 500) g;
         COMMIT;
         TRUNCATE countries;
         INSERT INTO countries VALUES ('a', 'after');",
    );
    assert_synced(&db, &tables);
    assert_eq!(count(&db, "SELECT count(*) AS n FROM orders"), 500);
    for t in ["public.orders", "public.items", "public.countries"] {
        let p = db.progress(t);
        assert_eq!(p.text("state"), "ready", "{p:?}");
        assert_eq!(p.int("changes_missing"), 0, "{p:?}");
    }
}

#[test]
fn add_table_errors_and_conversions() {
    if !citus_or_skip("add_table_errors_and_conversions") {
        return;
    }
    let db = citus_db(shared_coordinator(), "citus_errors");
    db.src(
        "CREATE TABLE m (id int PRIMARY KEY, tenant int NOT NULL, v text);
         INSERT INTO m SELECT g, g % 7, 'v' || g FROM generate_series(1, 3000) g;
         CREATE TABLE keyless (a int, b text);
         ALTER TABLE keyless REPLICA IDENTITY FULL;
         INSERT INTO keyless SELECT g, 'b' FROM generate_series(1, 10) g;
         CREATE TABLE plain (id int PRIMARY KEY, v text);
         INSERT INTO plain SELECT g, 'p' || g FROM generate_series(1, 1000) g;
         ANALYZE;",
    );
    db.add_su_connector("c");

    // CREATE EXTENSION livesync as such: Citus propagates it to the worker nodes, which say
    // what to do instead.
    let other = "t_citus_ext";
    worker_databases(other);
    let coordinator = shared_coordinator();
    query(
        &mut coordinator.connect("postgres"),
        &format!("DROP DATABASE IF EXISTS {other} WITH (FORCE)"),
    );
    coordinator.create_database(other);
    let mut c = coordinator.connect(other);
    add_nodes(&mut c, coordinator);
    let e = db_error(
        &c.batch_execute("CREATE EXTENSION livesync")
            .expect_err("CREATE EXTENSION propagated to the workers"),
    );
    assert_sqlstate(&e, "55000");
    assert_message_eq(
        &e,
        "livesync runs on the Citus coordinator only, not on worker nodes",
    );
    assert!(
        e.hint()
            .contains("SET citus.enable_ddl_propagation = off; CREATE EXTENSION livesync;"),
        "{e}"
    );
    drop(c);
    query(
        &mut coordinator.connect("postgres"),
        &format!("DROP DATABASE {other} WITH (FORCE)"),
    );

    let e = db
        .target_sql("SELECT livesync.add_table('m', distributed_by => 'nope')")
        .err("unknown column");
    assert_sqlstate(&e, "42703");
    assert_message_eq(
        &e,
        "column \"nope\" of source table \"public\".\"m\" does not exist",
    );
    let e = db
        .target_sql("SELECT livesync.add_table('m', distributed_by => 'id', hypertable => true)")
        .err("hypertable and distributed");
    assert_sqlstate(&e, "22023");
    // A source without a key cannot have one of its equal rows changed on a Citus table.
    let e = db
        .target_sql("SELECT livesync.add_table('keyless', distributed_by => 'a')")
        .err("keyless source");
    assert_sqlstate(&e, "55000");
    assert_message_eq(
        &e,
        "source table \"public\".\"keyless\" has no primary key or replica identity index, which a Citus target needs",
    );
    assert!(e.hint().contains("append_only => true"), "{e}");
    // An existing table distributed by a column the source lacks, or by another column.
    db.tgt(
        "CREATE TABLE other (id int, tenant int, v text, shard_key int);
         SELECT create_distributed_table('other', 'shard_key');
         CREATE TABLE by_tenant (id int, tenant int NOT NULL, v text);
         SELECT create_distributed_table('by_tenant', 'tenant');",
    );
    let e = db
        .target_sql("SELECT livesync.add_table('m', target => 'other')")
        .err("distribution column not in the source");
    assert_sqlstate(&e, "42703");
    assert_message_eq(
        &e,
        "distribution column \"shard_key\" of target table public.other is not a column of source table \"public\".\"m\"",
    );
    let e = db
        .target_sql("SELECT livesync.add_table('m', target => 'by_tenant', distributed_by => 'id')")
        .err("distributed by another column");
    assert_sqlstate(&e, "55000");
    assert_message_eq(
        &e,
        "target table public.by_tenant is already a Citus distributed table distributed by \"tenant\", not distributed by \"id\"",
    );
    assert_eq!(
        count(&db, "SELECT count(*) AS n FROM livesync.table_progress"),
        0,
        "nothing stayed behind"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) AS n FROM pg_class WHERE relname IN ('m', 'keyless')"
        ),
        0
    );

    // Distributed by a column outside the source key: the target's key gains it (NOTICE).
    let out = db.target_sql("SELECT livesync.add_table('m', distributed_by => 'tenant')");
    let notices: Vec<String> = out.notices.iter().map(|n| n.message.clone()).collect();
    assert!(
        out.warnings().is_empty(),
        "tenant is NOT NULL: {:?}",
        out.warnings()
    );
    out.ok("add_table(m, distributed_by => 'tenant')");
    assert!(
        notices.iter().any(|n| n.contains(
            "the key of public.m will be (id, tenant): Citus requires the distribution column"
        )),
        "{notices:?}"
    );
    // An existing empty plain table is distributed; an append-only keyless table is accepted.
    db.tgt("CREATE TABLE plain (id int, v text)");
    db.target_sql("SELECT livesync.add_table('plain', distributed_by => 'id')")
        .ok("convert plain");
    // A distribution column the source lets be NULL: said at once (Citus refuses such a row).
    let out = db.target_sql(
        "SELECT livesync.add_table('keyless', distributed_by => 'a', append_only => true)",
    );
    let warnings: Vec<String> = out.warnings().iter().map(|w| w.message.clone()).collect();
    out.ok("append-only keyless");
    assert_eq!(
        warnings,
        ["distribution column \"a\" of public.keyless can be NULL on the source"]
    );
    for t in ["public.m", "public.plain", "public.keyless"] {
        db.wait_ready(t);
    }
    let key = db.tgt("SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint WHERE conrelid = 'm'::regclass AND contype = 'p'");
    assert_eq!(key[0].text("def"), "PRIMARY KEY (id, tenant)");
    assert_eq!(
        db.tgt("SELECT column_to_column_name(logicalrelid, partkey) AS c FROM pg_dist_partition WHERE logicalrelid = 'plain'::regclass")[0]
            .text("c"),
        "id"
    );
    // The tenant moves: a row changes shard without its key changing on the source.
    db.src(
        "UPDATE m SET tenant = tenant + 100 WHERE id % 10 = 0;
         UPDATE m SET v = 'same shard' WHERE id % 10 = 1;
         DELETE FROM m WHERE id % 10 = 2;
         INSERT INTO keyless SELECT g, 'more' FROM generate_series(11, 20) g;
         UPDATE plain SET v = 'changed' WHERE id < 100;",
    );
    assert_synced(&db, &[("m", "id"), ("plain", "id")]);
    db.wait_same(&Compare::by_row("keyless"), WAIT);
    assert_on_shards(&db, "keyless");
}

/// SIGKILL of a copy worker mid-copy, then of the connector worker while it applies a large
/// transaction: PostgreSQL restarts the whole coordinator, Citus recovers its prepared
/// transactions on the worker nodes, and every row is there exactly once.
#[test]
fn crash_exact_after_kills_during_copy_and_apply() {
    if !citus_or_skip("crash_exact_after_kills_during_copy_and_apply") {
        return;
    }
    const ROWS: i64 = 1_500_000;
    let coordinator = Cluster::start_new(
        "citus-crash",
        coordinator_config()
            .with_conf("livesync.copy_range_mb = 2")
            .with_conf("livesync.max_copy_workers = 2"),
    );
    let db = citus_db(&coordinator, "citus_crash");
    db.src(&format!(
        "CREATE TABLE big (id bigint NOT NULL, v int NOT NULL, pad text);
         INSERT INTO big SELECT g, g % 1000, repeat('x', 40) FROM generate_series(1, {ROWS}) g;
         ALTER TABLE big ADD PRIMARY KEY (id);
         ANALYZE big;"
    ));
    let connector_pid = db.add_su_connector("c").text("worker_pid").to_string();
    db.target_sql("SELECT livesync.add_table('big', distributed_by => 'id')")
        .ok("add_table(big)");
    let (copying, copy_pid) = wait_until(
        "big to be copying, some ranges done and others not, a copy worker running",
        WAIT,
        || {
            let r = db.try_progress("public.big")?;
            let num = |c: &str| r.get(c).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0);
            if r.get("state") != Some("copying")
                || num("ranges_done") < 1
                || num("ranges_done") + 2 >= num("ranges_total")
            {
                return Err(format!("{r:?}"));
            }
            // (A background worker's state in pg_stat_activity stays empty: any copy worker.)
            let p = db
                .target_sql(
                    "SELECT pid FROM pg_stat_activity WHERE backend_type = 'livesync copy' LIMIT 1",
                )
                .result
                .map_err(|e| e.to_string())?;
            match p.first() {
                Some(c) => Ok((r.clone(), c.text("pid").to_string())),
                None => Err(format!("no active copy worker; {r:?}")),
            }
        },
    );
    kill9(&copy_pid);
    eprintln!("citus crash: killed copy worker {copy_pid} at {copying:?}");
    db.src(
        "INSERT INTO big SELECT g, -1, 'added' FROM generate_series(5000001, 5001000) g;
         UPDATE big SET v = -2 WHERE id % 10000 = 0;
         UPDATE big SET id = id + 10000000 WHERE id % 30001 = 0;
         DELETE FROM big WHERE id BETWEEN 1000 AND 1999;",
    );
    let connector_pid = db
        .wait_running_except("c", Some(&connector_pid), WAIT)
        .text("worker_pid")
        .to_string();
    let row = db.wait_table_state("public.big", "ready", Duration::from_secs(180));
    assert_eq!(row.int("rows_copied"), ROWS, "{row:?}");
    db.wait_same(&Compare::same("big", "id"), WAIT);
    assert_on_shards(&db, "big");

    // The connector worker killed while it applies a 60,000-row transaction (and smaller ones):
    // once the coordinator's transaction has written to a worker node's shards.
    db.src("INSERT INTO big SELECT g, 1, 'bulk' FROM generate_series(6000001, 6060000) g");
    let w1 = &workers()[0];
    wait_until(
        "the stream's transaction to write to the shards of worker node 1",
        WAIT,
        || {
            let mut c = w1.connect("postgres");
            let n = query_count(
            &mut c,
            &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = {} AND backend_xid IS NOT NULL", lit(&db.name)),
        );
            if n > 0 {
                Ok(())
            } else {
                Err("no writing transaction on worker node 1".into())
            }
        },
    );
    kill9(&connector_pid);
    db.src(
        "UPDATE big SET v = v + 1 WHERE id BETWEEN 6000001 AND 6000100;
         DELETE FROM big WHERE id BETWEEN 6000200 AND 6000300;
         UPDATE big SET id = -id WHERE id BETWEEN 6000400 AND 6000410;",
    );
    db.wait_running_except("c", Some(&connector_pid), WAIT);
    db.wait_caught_up("c");
    let n = db.wait_same(&Compare::same("big", "id"), WAIT);
    assert_eq!(n, ROWS + 1000 - 1000 + 60000 - 101);
    assert_eq!(assert_on_shards(&db, "big"), n);
    assert_contains(
        &coordinator.log_contents(),
        "terminated by signal 9",
        "the coordinator's log (SIGKILLs)",
    );
    let p = db.progress("public.big");
    assert_eq!(p.text("state"), "ready", "{p:?}");
}
