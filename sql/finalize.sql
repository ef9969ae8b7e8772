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
       c.auto_add_columns,
       a.pid AS worker_pid,
       c.source_host,
       c.source_port,
       c.source_dbname,
       c.source_user,
       c.publication_name,
       c.slot_name,
       c.slot_created_at,
       c.slot_created_lsn,
       c.created_at,
       c.last_connected_at,
       c.last_error,
       c.last_error_at,
       c.received_lsn,
       c.applied_lsn,
       c.flushed_lsn,
       c.source_wal_end,
       greatest(c.source_wal_end - coalesce(c.flushed_lsn, c.applied_lsn), 0)::int8 AS lag_bytes,
       c.last_commit_time,
       CASE WHEN c.source_wal_end > coalesce(c.flushed_lsn, c.applied_lsn)
            THEN greatest(now() - c.last_commit_time, interval '0')
            ELSE interval '0'
       END AS apply_lag,
       c.slot_wal_status,
       c.slot_retained_bytes,
       c.slot_safe_wal_size,
       -- 'at risk': the source will remove WAL the slot still needs at its next checkpoint
       -- (or has only 10% of max_slot_wal_keep_size left); 'lost': it did, re-add the tables.
       CASE
           WHEN c.slot_wal_status = 'lost' THEN 'lost'
           WHEN c.slot_wal_status = 'unreserved' THEN 'at risk'
           WHEN c.slot_safe_wal_size IS NOT NULL
                AND c.slot_safe_wal_size < c.slot_retained_bytes / 9 THEN 'at risk'
           WHEN c.slot_wal_status IS NOT NULL THEN 'ok'
       END AS slot_health,
       c.stats_at
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
EXCEPTION
    -- CREATE EXTENSION running in another database at the same moment created it first.
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

-- Sequences kept in step (see livesync.add_sequence and livesync.sync_sequences).
CREATE VIEW livesync.sequences AS
SELECT c.name AS connector,
       pg_catalog.format('%I.%I', q.source_schema, q.source_name) AS source_sequence,
       pg_catalog.format('%I.%I', q.target_schema, q.target_name) AS target_sequence,
       CASE WHEN t.id IS NOT NULL THEN pg_catalog.format('%I.%I', t.source_schema, t.source_name) END AS owned_by_table,
       q.source_next,
       q.target_next,
       q.synced_at,
       q.last_error,
       q.last_error_at
  FROM livesync.sync_sequence q
  JOIN livesync.connector c ON c.id = q.connector_id
  LEFT JOIN livesync.sync_table t ON t.id = q.table_id
 ORDER BY 1, 2;

-- Verifications (livesync.verify_table): the latest first; `duration` runs on while one runs.
CREATE VIEW livesync.verification AS
SELECT v.id,
       c.name AS connector,
       v.source_table,
       v.target_table,
       v.state,
       v.started_at,
       coalesce(v.finished_at, pg_catalog.clock_timestamp()) - v.started_at AS duration,
       v.cut_lsn,
       v.method,
       v.ranges,
       v.ranges_differing,
       v.rows_source,
       v.rows_target,
       v.differences,
       v.pause_ms,
       v.attempts,
       v.error,
       v.note
  FROM livesync.verification_run v
  JOIN livesync.connector c ON c.id = v.connector_id
 ORDER BY v.id DESC;

-- The rows each verification found different (they hold row data: admins only).
CREATE VIEW livesync.verification_differences AS
SELECT d.verification_id, v.source_table, d.n, d.kind, d.key, d.source_row, d.target_row
  FROM livesync.verification_difference d
  JOIN livesync.verification_run v ON v.id = d.verification_id
 ORDER BY d.verification_id DESC, d.n;

-- Rows of the load in progress, for the executor route that loads TimescaleDB hypertables
-- (src/copy/load.rs): INSERT INTO target SELECT * FROM livesync._copy_rows(NULL::target).
-- Internal to livesync's workers; an error anywhere else.
CREATE FUNCTION livesync._copy_rows(anyelement) RETURNS SETOF anyelement
    LANGUAGE c VOLATILE AS 'MODULE_PATHNAME', 'livesync_copy_rows';

GRANT USAGE ON SCHEMA livesync TO PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA livesync FROM PUBLIC;
GRANT SELECT ON livesync.connectors TO PUBLIC;
-- Read-only for livesync_admin: livesync's functions write the catalog as its owner (see
-- src/catalog/mod.rs, as_owner); a row edited by hand could point the workers, which run as the
-- bootstrap superuser, at any table.
GRANT SELECT ON livesync.connector, livesync.connector_secret TO livesync_admin;

-- Everything that changes state or opens connections from the target server is for admins only.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA livesync FROM PUBLIC;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA livesync TO livesync_admin;
REVOKE EXECUTE ON FUNCTION livesync._copy_rows(anyelement) FROM livesync_admin;

-- Start this database's manager once CREATE EXTENSION commits (after a restart the launcher does).
SELECT livesync._ensure_manager();

-- Live numbers come from pg_stat_progress_copy (one row per copy worker) while a table's COPY
-- runs, plus the ranges already committed.
CREATE VIEW livesync.table_progress AS
WITH live AS (
    SELECT t.id,
           coalesce((SELECT sum(r.rows) FROM livesync.copy_range r WHERE r.table_id = t.id AND r.done), 0)
             + coalesce((SELECT sum(CASE
                                    -- TimescaleDB's and Citus's own COPY (type FILE: the pipe of
                                    -- src/copy/pipe.rs) may count bytes only: rows estimated from
                                    -- them, at the rows per byte of the table's loaded ranges (none
                                    -- before its first range is in: a heap size says little of a
                                    -- COPY stream's).
                                    WHEN p.type = 'FILE' AND p.tuples_processed = 0 THEN
                                        coalesce((p.bytes_processed
                                                  * (SELECT sum(r.rows)::float8 / nullif(sum(r.bytes), 0)
                                                       FROM livesync.copy_range r WHERE r.table_id = t.id AND r.done))::int8, 0)
                                    ELSE p.tuples_processed
                                END)
                          FROM pg_catalog.pg_stat_progress_copy p
                          JOIN pg_catalog.pg_stat_activity a ON a.pid = p.pid AND a.backend_type = 'livesync copy'
                         WHERE p.relid = to_regclass(format('%I.%I', t.target_schema, t.target_name))), 0) AS rows,
           coalesce((SELECT sum(r.bytes) FROM livesync.copy_range r WHERE r.table_id = t.id AND r.done), 0)
             + coalesce((SELECT sum(p.bytes_processed) FROM pg_catalog.pg_stat_progress_copy p
                          JOIN pg_catalog.pg_stat_activity a ON a.pid = p.pid AND a.backend_type = 'livesync copy'
                         WHERE p.relid = to_regclass(format('%I.%I', t.target_schema, t.target_name))), 0) AS bytes,
           (SELECT count(*) FROM livesync.copy_range r WHERE r.table_id = t.id AND r.done) AS ranges_done,
           (SELECT count(*) FROM livesync.copy_range r WHERE r.table_id = t.id) AS ranges_total,
           (SELECT bool_or(r.binary_format) FROM livesync.copy_range r WHERE r.table_id = t.id) AS binary
      FROM livesync.sync_table t
)
SELECT c.name AS connector,
       format('%I.%I', t.source_schema, t.source_name) AS source_table,
       format('%I.%I', t.target_schema, t.target_name) AS target_table,
       CASE
           WHEN t.state = 'loaded' THEN 'catching up'
           WHEN t.state <> 'copied' THEN t.state
           WHEN t.retry_reason IS NOT NULL THEN 'retrying'
           WHEN c.flushed_lsn >= t.snapshot_lsn THEN 'ready'
           ELSE 'catching up'
       END AS state,
       CASE WHEN t.state = 'copying' THEN l.rows ELSE coalesce(t.rows_copied, 0) END AS rows_copied,
       CASE WHEN t.state = 'copying' THEN l.bytes ELSE coalesce(t.bytes_copied, 0) END AS bytes_copied,
       t.est_rows,
       t.est_bytes,
       CASE
           WHEN t.state = 'copied' THEN 100.0
           WHEN t.state = 'copying' AND t.est_rows > 0 THEN round(least(100.0, 100.0 * l.rows / t.est_rows), 1)
       END AS percent,
       CASE WHEN t.state = 'copying' AND now() > t.started_at
            THEN round(l.rows / extract(epoch FROM now() - t.started_at))
       END AS rows_per_second,
       CASE WHEN t.state = 'copying' AND l.rows > 0 AND t.est_rows > l.rows
            THEN (now() - t.started_at) * ((t.est_rows - l.rows)::float8 / l.rows)
       END AS eta,
       l.ranges_done,
       l.ranges_total,
       CASE WHEN l.binary THEN 'binary' WHEN l.binary IS NOT NULL THEN 'text' END AS copy_format,
       t.snapshot_lsn,
       t.append_only,
       t.changes_applied,
       t.changes_skipped,
       t.changes_missing,
       t.added_at,
       t.started_at,
       t.finished_at,
       t.last_error,
       t.last_error_hint,
       t.last_error_at,
       t.last_error_sqlstate,
       t.last_error_detail,
       t.last_error_context,
       t.retry_reason,
       t.retry_since
  FROM livesync.sync_table t
  JOIN livesync.connector c ON c.id = t.connector_id
  JOIN live l ON l.id = t.id
 ORDER BY 1, 2;

GRANT SELECT ON livesync.table_progress TO PUBLIC;
GRANT SELECT ON livesync.sequences TO PUBLIC;
GRANT SELECT ON livesync.verification TO PUBLIC;
GRANT SELECT ON livesync.verification_differences, livesync.verification_run, livesync.verification_difference TO livesync_admin;
GRANT SELECT ON livesync.sync_table, livesync.copy_range, livesync.unpublish, livesync.spooled_change, livesync.sync_sequence TO livesync_admin;
