-- livesync 0.1.0 → 0.2.0 (ALTER EXTENSION livesync UPDATE TO '0.2.0').
-- 0.1.0 is the first release (git tag v0.1.0). Once 0.2.0 is released this file is never edited
-- again; later changes go to livesync--0.2.0--<next>.sql.
\echo Use "ALTER EXTENSION livesync UPDATE" to load this file. \quit

-- verify_table (issue 13): the verification catalog, its views and functions.
-- Verifications (livesync.verify_table, src/verify/): one row per table verified, written by its
-- verify worker — 'running' while it runs, then 'equal', 'different' or 'failed' — and the rows
-- it found different, named by key (at most 1,000 per verification; all are counted).
CREATE TABLE livesync.verification_run (
    id               int8 PRIMARY KEY,   -- from verification_run_id_seq, taken by verify_table
    connector_id     int4 NOT NULL REFERENCES livesync.connector (id) ON DELETE CASCADE,
    table_id         int4 REFERENCES livesync.sync_table (id) ON DELETE SET NULL,
    source_table     text NOT NULL,
    target_table     text NOT NULL,
    state            text NOT NULL CHECK (state IN ('running', 'equal', 'different', 'failed')),
    method           text,               -- how rows were bucketed (key ranges, hash buckets)
    cut_lsn          pg_lsn,             -- both sides were read as of this source position
    attempts         int4,               -- cuts tried (the stream may pass one before it is set)
    started_at       timestamptz NOT NULL,
    finished_at      timestamptz,
    ranges           int4,
    ranges_differing int4,
    rows_source      int8,
    rows_target      int8,
    differences      int8,
    pause_ms         float8,             -- how long the stream waited at the cut
    error            text,
    note             text
);
CREATE SEQUENCE livesync.verification_run_id_seq OWNED BY livesync.verification_run.id;

CREATE TABLE livesync.verification_difference (
    verification_id int8 NOT NULL REFERENCES livesync.verification_run (id) ON DELETE CASCADE,
    n               int4 NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('missing on target', 'extra on target', 'different')),
    key             jsonb,               -- NULL for a table without a key (the rows say which)
    source_row      text,
    target_row      text,
    PRIMARY KEY (verification_id, n)
);

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

CREATE FUNCTION livesync."verify_table"(
	"source_table" TEXT, /* & str */
	"connector" TEXT DEFAULT NULL, /* Option < & str > */
	"by_text" bool DEFAULT false /* bool */
) RETURNS TABLE (
	"verification_id" bigint,  /* i64 */
	"source_table" TEXT,  /* String */
	"state" TEXT,  /* String */
	"cut_lsn" TEXT,  /* Option < String > */
	"method" TEXT,  /* Option < String > */
	"ranges" INT,  /* Option < i32 > */
	"ranges_differing" INT,  /* Option < i32 > */
	"rows_source" bigint,  /* Option < i64 > */
	"rows_target" bigint,  /* Option < i64 > */
	"differences" bigint,  /* Option < i64 > */
	"duration_ms" double precision,  /* Option < f64 > */
	"pause_ms" double precision,  /* Option < f64 > */
	"error" TEXT,  /* Option < String > */
	"note" TEXT  /* Option < String > */
)
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'verify_table_wrapper';

CREATE FUNCTION livesync."verify_tables"(
	"connector" TEXT DEFAULT NULL, /* Option < & str > */
	"by_text" bool DEFAULT false /* bool */
) RETURNS TABLE (
	"verification_id" bigint,  /* i64 */
	"source_table" TEXT,  /* String */
	"state" TEXT,  /* String */
	"cut_lsn" TEXT,  /* Option < String > */
	"method" TEXT,  /* Option < String > */
	"ranges" INT,  /* Option < i32 > */
	"ranges_differing" INT,  /* Option < i32 > */
	"rows_source" bigint,  /* Option < i64 > */
	"rows_target" bigint,  /* Option < i64 > */
	"differences" bigint,  /* Option < i64 > */
	"duration_ms" double precision,  /* Option < f64 > */
	"pause_ms" double precision,  /* Option < f64 > */
	"error" TEXT,  /* Option < String > */
	"note" TEXT  /* Option < String > */
)
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'verify_tables_wrapper';

REVOKE ALL ON livesync.verification_run, livesync.verification_difference, livesync.verification,
    livesync.verification_differences FROM PUBLIC;
GRANT SELECT ON livesync.verification TO PUBLIC;
GRANT SELECT ON livesync.verification_differences, livesync.verification_run, livesync.verification_difference TO livesync_admin;
REVOKE ALL ON FUNCTION livesync.verify_table(text, text, bool), livesync.verify_tables(text, bool) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION livesync.verify_table(text, text, bool), livesync.verify_tables(text, bool) TO livesync_admin;

-- Citus targets (issue 15): add_table(distributed_by => column) creates the target as a Citus
-- distributed table; sync_table.distributed_by keeps the column for a target made again.
ALTER TABLE livesync.sync_table ADD COLUMN distributed_by text;

DROP FUNCTION livesync.add_table(text, text, text, bool, text, text, text, bool);
CREATE FUNCTION livesync."add_table"(
	"source_table" TEXT, /* & str */
	"target" TEXT DEFAULT NULL, /* Option < & str > */
	"connector" TEXT DEFAULT NULL, /* Option < & str > */
	"hypertable" bool DEFAULT NULL, /* Option < bool > */
	"time_column" TEXT DEFAULT NULL, /* Option < & str > */
	"chunk_interval" TEXT DEFAULT NULL, /* Option < & str > */
	"indexes" TEXT DEFAULT 'key', /* & str */
	"append_only" bool DEFAULT false, /* bool */
	"distributed_by" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS void
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'add_table_wrapper';
REVOKE ALL ON FUNCTION livesync.add_table(text, text, text, bool, text, text, text, bool, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION livesync.add_table(text, text, text, bool, text, text, text, bool, text) TO livesync_admin;

-- table_progress: rows of a running COPY that counts bytes only (TimescaleDB's and Citus's own
-- COPY, which livesync feeds from a pipe since 0.2.0) are estimated from its bytes.
CREATE OR REPLACE VIEW livesync.table_progress AS
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
