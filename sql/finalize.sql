-- livesync: views, privileges and start-up, after every function exists.

CREATE VIEW livesync.connectors AS
SELECT c.name,
       CASE
           WHEN NOT c.enabled THEN 'paused'
           WHEN a.pid IS NULL AND c.state = 'error' THEN 'error'
           WHEN a.pid IS NULL THEN 'starting'
           ELSE c.state
       END AS state,
       c.enabled,
       a.pid AS worker_pid,
       c.source_host,
       c.source_port,
       c.source_dbname,
       c.source_user,
       c.publication_name,
       c.slot_name,
       c.created_at,
       c.last_connected_at,
       c.last_error,
       c.last_error_at
  FROM livesync.connector c
  LEFT JOIN pg_catalog.pg_stat_activity a
         ON a.pid = c.worker_pid
        AND a.backend_type = 'livesync connector'
 ORDER BY c.name;

COMMENT ON VIEW livesync.connectors IS
    'One row per connector: desired and actual state, worker, source, last error. Never shows the password.';

-- A dedicated role for operating livesync without being superuser. Roles are cluster-wide, so it
-- may exist already (livesync installed in another database).
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'livesync_admin') THEN
        CREATE ROLE livesync_admin NOLOGIN;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA livesync TO PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA livesync FROM PUBLIC;
GRANT SELECT ON livesync.connectors TO PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON livesync.connector, livesync.connector_secret TO livesync_admin;

-- Everything that changes state or opens connections from the target server is for admins only.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA livesync FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA livesync TO livesync_admin;

-- Start this database's manager once CREATE EXTENSION commits (after a restart the launcher does).
SELECT livesync._ensure_manager();
