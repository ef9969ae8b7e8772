//! Issue 14, item 3: the real postgres_exporter (Debian's prometheus-postgres-exporter) runs
//! `monitoring/postgres_exporter.yaml` against a target with a streaming connector, and its
//! metrics carry the connector's and the table's values; promtool accepts
//! `monitoring/alerts.yml`. Both tools come from `scripts/monitoring-tools.sh` (run by the test
//! command); without them this test fails and says so.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

const EXPORTER: &str = "/usr/bin/prometheus-postgres-exporter";
const PROMTOOL: &str = "/usr/bin/promtool";

fn repo_file(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(rel)
        .to_string_lossy()
        .into_owned()
}

struct Exporter(Child);

impl Drop for Exporter {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn scrape(port: u16) -> Result<String, String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| e.to_string())?;
    Ok(body)
}

/// The value of the sample `series` — `name{label="v",…}` — ignoring labels it does not name
/// (the exporter adds `server`).
fn sample(body: &str, series: &str) -> Option<f64> {
    let (name, labels) = series
        .split_once('{')
        .map_or((series, ""), |(n, l)| (n, l.trim_end_matches('}')));
    let wanted: Vec<&str> = labels.split(',').filter(|l| !l.is_empty()).collect();
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (head, value) = l.rsplit_once(' ')?;
        let (n, ls) = head
            .split_once('{')
            .map_or((head, ""), |(n, l)| (n, l.trim_end_matches('}')));
        let have: Vec<&str> = ls.split(',').collect();
        (n == name && wanted.iter().all(|w| have.contains(w))).then(|| value.parse().ok())?
    })
}

#[test]
fn postgres_exporter_reports_connectors_and_tables() {
    assert!(
        Path::new(EXPORTER).exists() && Path::new(PROMTOOL).exists(),
        "{EXPORTER} and {PROMTOOL} are needed: run bash scripts/monitoring-tools.sh (bash scripts/test.sh does)"
    );
    let out = Command::new(PROMTOOL)
        .args(["check", "rules", &repo_file("monitoring/alerts.yml")])
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "promtool check rules: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let db = TestDb::new("monitoring");
    db.src("CREATE TABLE m (id int PRIMARY KEY, v text); INSERT INTO m SELECT g, 'v' FROM generate_series(1, 1000) g");
    db.add_su_connector("c");
    db.add_table_ok("m");
    db.wait_ready("public.m");
    db.src("UPDATE m SET v = 'x' WHERE id <= 10; DELETE FROM m WHERE id = 1000");
    db.wait_caught_up("c");
    wait_until(
        "the change counters written",
        Duration::from_secs(30),
        || {
            let r = db.progress("public.m");
            if r.int("changes_applied") >= 11 {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        },
    );

    let port = free_port();
    let child = Command::new(EXPORTER)
        .args([
            &format!("--web.listen-address=127.0.0.1:{port}"),
            &format!(
                "--extend.query-path={}",
                repo_file("monitoring/postgres_exporter.yaml")
            ),
            "--disable-default-metrics",
            "--disable-settings-metrics",
        ])
        .env(
            "DATA_SOURCE_NAME",
            format!(
                "host=127.0.0.1 port={} dbname={} user={} sslmode=disable",
                db.target.port(),
                db.name,
                os_superuser()
            ),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start postgres_exporter");
    let _exporter = Exporter(child);
    let body = wait_until(
        "postgres_exporter to serve livesync metrics",
        Duration::from_secs(30),
        || {
            let b = scrape(port)?;
            if b.contains("livesync_table_rows_copied{") {
                Ok(b)
            } else {
                Err(b
                    .lines()
                    .filter(|l| l.contains("livesync") || l.contains("error"))
                    .take(5)
                    .collect::<Vec<_>>()
                    .join("\n"))
            }
        },
    );

    let c = r#"{connector="c"}"#;
    let t = r#"{connector="c",table="public.m",target="public.m"}"#;
    assert_eq!(
        sample(&body, &format!("livesync_connector_up{c}")),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, &format!("livesync_connector_error{c}")),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &body,
            r#"livesync_connector_state_info{connector="c",state="running"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&body, &format!("livesync_connector_slot_healthy{c}")),
        Some(1.0)
    );
    assert!(
        sample(&body, &format!("livesync_connector_flushed_lsn_bytes{c}")).unwrap_or(0.0) > 0.0,
        "{body}"
    );
    assert!(
        sample(
            &body,
            &format!("livesync_connector_replicated_bytes_total{c}")
        )
        .unwrap_or(-1.0)
            >= 0.0,
        "{body}"
    );
    assert!(sample(&body, &format!("livesync_connector_lag_bytes{c}")).is_some());
    assert_eq!(
        sample(&body, &format!("livesync_table_rows_copied{t}")),
        Some(1000.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, &format!("livesync_table_copy_percent{t}")),
        Some(100.0)
    );
    assert_eq!(
        sample(&body, &format!("livesync_table_ready{t}")),
        Some(1.0)
    );
    assert_eq!(
        sample(&body, &format!("livesync_table_error{t}")),
        Some(0.0)
    );
    assert_eq!(
        sample(&body, &format!("livesync_table_changes_applied_total{t}")),
        Some(11.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, &format!("livesync_table_changes_missing_total{t}")),
        Some(0.0)
    );
    assert_eq!(
        sample(
            &body,
            r#"livesync_table_state_info{connector="c",state="ready",table="public.m"}"#
        ),
        Some(1.0),
        "{body}"
    );
    assert!(
        body.contains("# TYPE livesync_table_changes_applied_total counter"),
        "{body}"
    );
    assert!(
        !body.contains("livesync_pg_cdc_"),
        "metric names must not clash with Timescale's connector"
    );

    // A paused connector reads as such, and not up.
    db.call_ok("pause_connector", &["c"]);
    db.wait_state("c", "paused");
    let body = wait_until(
        "the paused state in the metrics",
        Duration::from_secs(30),
        || {
            let b = scrape(port)?;
            if sample(
                &b,
                r#"livesync_connector_state_info{connector="c",state="paused"}"#,
            ) == Some(1.0)
            {
                Ok(b)
            } else {
                Err("not yet".into())
            }
        },
    );
    assert_eq!(
        sample(&body, &format!("livesync_connector_up{c}")),
        Some(0.0)
    );
    // The counters survive: still 11 applied.
    assert_eq!(
        sample(&body, &format!("livesync_table_changes_applied_total{t}")),
        Some(11.0)
    );
    db.call_ok("drop_connector", &["c"]);
}
