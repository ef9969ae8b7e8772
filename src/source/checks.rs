//! The prerequisites a source must meet, evaluated all at once.
//!
//! `livesync.check_source` shows every check as a row and `livesync.add_connector` refuses with
//! one error listing every unmet check, so a user fixes everything in a single pass instead of
//! discovering problems one restart at a time. Facts are read with one query
//! ([`FACTS_QUERY`]) and judged by the pure [`evaluate`], which is unit-tested here.

use super::quote_ident;

/// Oldest supported source: PostgreSQL 13 (pgoutput protocol v1, `pg_replication_slots.wal_status`).
pub const MIN_SERVER_VERSION_NUM: i32 = 130000;

/// Roles managed services grant instead of the REPLICATION attribute.
pub const MANAGED_REPLICATION_ROLES: &[&str] = &["rds_replication"];

/// Reads everything [`evaluate`] needs in one round trip. Only catalog views readable by any role.
pub const FACTS_QUERY: &str = "\
SELECT current_setting('server_version_num')::int4,
       current_setting('server_version'),
       current_setting('wal_level'),
       current_setting('max_replication_slots')::int4,
       (SELECT count(*) FROM pg_catalog.pg_replication_slots)::int4,
       current_setting('max_wal_senders')::int4,
       (SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE backend_type = 'walsender')::int4,
       current_user::text,
       current_database()::text,
       r.rolsuper,
       r.rolreplication,
       EXISTS (SELECT 1 FROM pg_catalog.pg_roles g
                WHERE g.rolname = ANY ($1::text[])
                  AND pg_catalog.pg_has_role(current_user, g.oid, 'MEMBER')),
       pg_catalog.has_database_privilege(current_database(), 'CREATE'),
       current_setting('server_encoding')
  FROM pg_catalog.pg_roles r
 WHERE r.rolname = current_user";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFacts {
    pub server_version_num: i32,
    pub server_version: String,
    pub wal_level: String,
    pub max_replication_slots: i32,
    pub used_replication_slots: i32,
    pub max_wal_senders: i32,
    pub used_wal_senders: i32,
    pub user: String,
    pub database: String,
    pub is_superuser: bool,
    pub has_replication_attr: bool,
    pub in_managed_replication_role: bool,
    pub can_create_in_database: bool,
    /// The source database's encoding (`server_encoding`).
    pub encoding: String,
}

impl SourceFacts {
    pub async fn read(client: &tokio_postgres::Client) -> Result<Self, tokio_postgres::Error> {
        let roles: Vec<&str> = MANAGED_REPLICATION_ROLES.to_vec();
        let r = client.query_one(FACTS_QUERY, &[&roles]).await?;
        Ok(SourceFacts {
            server_version_num: r.get(0),
            server_version: r.get(1),
            wal_level: r.get(2),
            max_replication_slots: r.get(3),
            used_replication_slots: r.get(4),
            max_wal_senders: r.get(5),
            used_wal_senders: r.get(6),
            user: r.get(7),
            database: r.get(8),
            is_superuser: r.get(9),
            has_replication_attr: r.get(10),
            in_managed_replication_role: r.get(11),
            can_create_in_database: r.get(12),
            encoding: r.get(13),
        })
    }
}

/// One prerequisite and its verdict. `detail` says what was found, `hint` what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
    pub hint: Option<String>,
}

/// Name of the pseudo-check reported when the source cannot be reached at all.
pub const CONNECTION_CHECK: &str = "connection";

/// Judge the source's facts; `target_encoding` is the target database's encoding.
pub fn evaluate(f: &SourceFacts, target_encoding: &str) -> Vec<Check> {
    let mut out = Vec::new();
    let role = quote_ident(&f.user);

    let ok = f.server_version_num >= MIN_SERVER_VERSION_NUM;
    out.push(Check {
        name: "server_version",
        ok,
        detail: if ok {
            format!("server version is {}", f.server_version)
        } else {
            format!(
                "server version is {}; livesync needs PostgreSQL 13 or later",
                f.server_version
            )
        },
        hint: (!ok).then(|| "Upgrade the source to PostgreSQL 13 or later.".to_string()),
    });

    let ok = f.wal_level == "logical";
    out.push(Check {
        name: "wal_level",
        ok,
        detail: format!("wal_level is \"{}\"{}", f.wal_level, if ok { "" } else { "; logical replication needs \"logical\"" }),
        hint: (!ok).then(|| {
            "On the source run ALTER SYSTEM SET wal_level = logical; then restart the source server.".to_string()
        }),
    });

    let free = f.max_replication_slots - f.used_replication_slots;
    let ok = free >= 1;
    out.push(Check {
        name: "replication_slots",
        ok,
        detail: format!(
            "{} of {} replication slots in use (max_replication_slots = {})",
            f.used_replication_slots, f.max_replication_slots, f.max_replication_slots
        ),
        hint: (!ok).then(|| {
            format!(
                "On the source run ALTER SYSTEM SET max_replication_slots = {}; then restart the source server (livesync needs one slot per connector, plus one while a table added to a running connector is being copied).",
                f.used_replication_slots + 4
            )
        }),
    });

    let free = f.max_wal_senders - f.used_wal_senders;
    let ok = free >= 1;
    out.push(Check {
        name: "wal_senders",
        ok,
        detail: format!(
            "{} of {} WAL senders in use (max_wal_senders = {})",
            f.used_wal_senders, f.max_wal_senders, f.max_wal_senders
        ),
        hint: (!ok).then(|| {
            format!(
                "On the source run ALTER SYSTEM SET max_wal_senders = {}; then restart the source server.",
                f.used_wal_senders + 4
            )
        }),
    });

    let ok = f.is_superuser || f.has_replication_attr || f.in_managed_replication_role;
    out.push(Check {
        name: "replication_privilege",
        ok,
        detail: if f.is_superuser {
            format!("role {role} is a superuser")
        } else if f.has_replication_attr {
            format!("role {role} has the REPLICATION attribute")
        } else if f.in_managed_replication_role {
            format!("role {role} is a member of a managed-service replication role")
        } else {
            format!("role {role} has neither the REPLICATION attribute nor membership in rds_replication")
        },
        hint: (!ok).then(|| {
            format!("On the source run ALTER ROLE {role} REPLICATION; (on Amazon RDS: GRANT rds_replication TO {role};).")
        }),
    });

    let ok = f.is_superuser || f.can_create_in_database;
    let db = quote_ident(&f.database);
    out.push(Check {
        name: "create_publication",
        ok,
        detail: if ok {
            format!("role {role} may create publications in database {db}")
        } else {
            format!("role {role} may not create publications in database {db}: it lacks the CREATE privilege on it")
        },
        hint: (!ok).then(|| format!("On the source run GRANT CREATE ON DATABASE {db} TO {role};")),
    });

    // Values travel as UTF8 (livesync's SQL connections) or in the target's encoding (the
    // stream): the source converts them, which it cannot do from SQL_ASCII, whose bytes have no
    // known encoding. A character the target's encoding lacks stops its table with an error.
    let ok = f.encoding != "SQL_ASCII" || target_encoding == "SQL_ASCII";
    out.push(Check {
        name: "encoding",
        ok,
        detail: if ok {
            format!("source database encoding {}, target database encoding {target_encoding}", f.encoding)
        } else {
            format!("source database {db} uses SQL_ASCII, whose bytes cannot be converted to the target's {target_encoding}")
        },
        hint: (!ok).then(|| {
            "Sync into a target database created with ENCODING 'SQL_ASCII', or convert the source database to a real encoding (dump and restore).".to_string()
        }),
    });

    out
}

/// The unmet checks folded into one error's message parts: (detail, hint).
pub fn summarize_failures(checks: &[Check]) -> Option<(String, String)> {
    let failed: Vec<&Check> = checks.iter().filter(|c| !c.ok).collect();
    if failed.is_empty() {
        return None;
    }
    let detail = failed
        .iter()
        .map(|c| format!("{}: {}.", c.name, c.detail))
        .collect::<Vec<_>>()
        .join("\n");
    let hint = failed
        .iter()
        .filter_map(|c| c.hint.clone())
        .collect::<Vec<_>>()
        .join("\n");
    Some((detail, hint))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> SourceFacts {
        SourceFacts {
            server_version_num: 150004,
            server_version: "15.4".into(),
            wal_level: "logical".into(),
            max_replication_slots: 10,
            used_replication_slots: 2,
            max_wal_senders: 10,
            used_wal_senders: 1,
            user: "sync".into(),
            database: "app".into(),
            is_superuser: false,
            has_replication_attr: true,
            in_managed_replication_role: false,
            can_create_in_database: true,
            encoding: "UTF8".into(),
        }
    }

    #[test]
    fn a_good_source_passes_everything() {
        let checks = evaluate(&good(), "UTF8");
        assert!(checks.iter().all(|c| c.ok), "{checks:?}");
        assert_eq!(summarize_failures(&checks), None);
    }

    #[test]
    fn every_unmet_prerequisite_is_reported_together() {
        let f = SourceFacts {
            server_version_num: 120010,
            server_version: "12.10".into(),
            wal_level: "replica".into(),
            max_replication_slots: 0,
            used_replication_slots: 0,
            max_wal_senders: 2,
            used_wal_senders: 2,
            has_replication_attr: false,
            can_create_in_database: false,
            encoding: "SQL_ASCII".into(),
            ..good()
        };
        let checks = evaluate(&f, "UTF8");
        assert!(checks.iter().all(|c| !c.ok), "{checks:?}");
        let (detail, hint) = summarize_failures(&checks).unwrap();
        assert_eq!(detail.lines().count(), 7, "{detail}");
        assert!(hint.contains("ALTER SYSTEM SET wal_level = logical"));
        assert!(hint.contains("ALTER ROLE \"sync\" REPLICATION"));
        assert!(hint.contains("GRANT CREATE ON DATABASE \"app\" TO \"sync\""));
        assert!(hint.contains("max_wal_senders = 6"));
    }

    #[test]
    fn sql_ascii_sources_only_into_sql_ascii_targets() {
        let f = SourceFacts {
            encoding: "SQL_ASCII".into(),
            ..good()
        };
        let c = evaluate(&f, "UTF8");
        assert!(c.iter().any(|c| c.name == "encoding" && !c.ok), "{c:?}");
        assert!(evaluate(&f, "SQL_ASCII").iter().all(|c| c.ok));
        assert!(evaluate(&good(), "LATIN1").iter().all(|c| c.ok));
    }

    #[test]
    fn managed_role_or_superuser_counts_as_replication_privilege() {
        let f = SourceFacts {
            has_replication_attr: false,
            in_managed_replication_role: true,
            ..good()
        };
        assert!(evaluate(&f, "UTF8").iter().all(|c| c.ok));
        let f = SourceFacts {
            has_replication_attr: false,
            can_create_in_database: false,
            is_superuser: true,
            ..good()
        };
        assert!(evaluate(&f, "UTF8").iter().all(|c| c.ok));
    }
}
