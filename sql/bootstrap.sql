-- livesync catalog: created first, before any function.
-- Only src/catalog/ reads and writes these tables; the SQL API and the workers go through it.

-- One row per source database livesync syncs from.
CREATE TABLE livesync.connector (
    id                int4 GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Chosen by the user (default: the source's dbname); any text, never interpolated into SQL.
    name              text NOT NULL UNIQUE
                      CHECK (name <> '' AND octet_length(name) <= 63),
    -- Random, fixed at creation; source-side object names derive from it (see src/source/names.rs).
    token             text NOT NULL UNIQUE CHECK (token ~ '^[0-9a-f]{16}$'),
    publication_name  name NOT NULL,
    slot_name         name NOT NULL,
    -- Parsed from the conninfo for display; the conninfo itself lives in connector_secret.
    source_host       text NOT NULL,
    source_port       int4 NOT NULL,
    source_dbname     text NOT NULL,
    source_user       text NOT NULL,
    -- Desired state: false after pause_connector.
    enabled           bool NOT NULL DEFAULT true,
    -- Option: when the source adds a column, add it (nullable) to the target instead of
    -- stopping the table.
    auto_add_columns  bool NOT NULL DEFAULT false,
    -- Last state reported by the connector's worker. The view livesync.connectors combines it
    -- with `enabled` and with whether worker_pid is alive.
    state             text NOT NULL DEFAULT 'starting'
                      CHECK (state IN ('starting', 'running', 'error')),
    worker_pid        int4,
    created_at        timestamptz NOT NULL DEFAULT now(),
    last_connected_at timestamptz,
    last_error        text,
    last_error_at     timestamptz,
    -- Change stream progress, written by the worker about once a second (positions as pg_lsn).
    received_lsn      pg_lsn,
    applied_lsn       pg_lsn,
    flushed_lsn       pg_lsn,
    source_wal_end    pg_lsn,
    last_commit_time  timestamptz,
    last_applied_at   timestamptz,
    stats_at          timestamptz,
    -- The source slot's health, read every few seconds.
    slot_wal_status     text,
    slot_retained_bytes int8,
    slot_safe_wal_size  int8,
    slot_checked_at     timestamptz,
    -- When the connector's permanent slot was created, at which consistent point. Once set, a
    -- missing or invalidated slot is never replaced silently while a table depends on it.
    slot_created_at     timestamptz,
    slot_created_lsn    pg_lsn
);

-- The connection string may hold a password: readable by superusers and livesync_admin only.
CREATE TABLE livesync.connector_secret (
    connector_id int4 PRIMARY KEY REFERENCES livesync.connector (id) ON DELETE CASCADE,
    conninfo     text NOT NULL
);

-- pg_dump keeps the configuration of an installed extension.
SELECT pg_catalog.pg_extension_config_dump('livesync.connector', '');
SELECT pg_catalog.pg_extension_config_dump('livesync.connector_secret', '');

-- One row per source table synced by a connector. The life of a row (its `state`) is documented
-- in src/catalog/tables.rs.
CREATE TABLE livesync.sync_table (
    id               int4 GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    connector_id     int4 NOT NULL REFERENCES livesync.connector (id) ON DELETE CASCADE,
    source_schema    text NOT NULL,
    source_name      text NOT NULL,
    target_schema    text NOT NULL,
    target_name      text NOT NULL,
    state            text NOT NULL DEFAULT 'pending'
                     CHECK (state IN ('pending', 'copying', 'loaded', 'copied', 'error')),
    -- Copied while the connector's stream runs: the stream spools the table's changes that
    -- commit at or after snapshot_lsn (livesync.spooled_change) until it replays them, once the
    -- table is `loaded`, and marks it copied.
    spooled          bool NOT NULL DEFAULT false,
    -- The source key by which a copy interrupted between snapshots is put right (the primary key
    -- or replica identity index, found whole in every change's old tuple). NULL: none, such a
    -- table's copy starts over after a restart and keeps one snapshot to its end.
    resume_key       text[],
    -- Key to build on the target after the load (NULL: the target table existed already).
    build_key        text[],
    build_key_primary bool NOT NULL DEFAULT true,
    -- add_table(indexes => 'all'): the source's other indexes, built on the target after the key.
    build_indexes    text[],
    -- add_table(hypertable => true): the target is (re)created as a TimescaleDB hypertable
    -- partitioned by this column in chunks this wide (an interval, or an integer width).
    hypertable_time_column text,
    hypertable_chunk_interval text,
    hypertable_integer bool NOT NULL DEFAULT false,
    -- The source table is a TimescaleDB hypertable: its changes arrive as changes of its chunks,
    -- tables <source_chunk_prefix>_<n>_chunk in schema source_chunk_schema.
    source_chunk_schema text,
    source_chunk_prefix text,
    est_rows         int8,
    est_bytes        int8,
    rows_copied      int8,
    bytes_copied     int8,
    -- Position of the snapshot the table was copied from: its changes after this LSN belong to
    -- the change stream, those before it are in the copy.
    snapshot_lsn     pg_lsn,
    added_at         timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    attempts         int4 NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,
    last_error       text,
    last_error_hint  text,
    last_error_at    timestamptz,
    -- The SQLSTATE of last_error, PostgreSQL's DETAIL, and where the stream was.
    last_error_sqlstate text,
    last_error_detail text,
    last_error_context text,
    -- The stream hit a transient error (lock timeout, deadlock, …) on this table: it rolled back
    -- and retries after a back-off; the table stays synced. Cleared by the next commit.
    retry_reason     text,
    retry_since      timestamptz,
    -- Whether the connector's worker has put the source table into the connector's publication
    -- (or found it there). add_table never touches the source: the worker publishes what the
    -- committed catalog says, so a rolled-back add_table leaves the source as it was.
    published        bool NOT NULL DEFAULT false,
    -- add_table(append_only => true): only INSERT and TRUNCATE are replicated; the table is in
    -- the connector's second publication (publish = 'insert, truncate'), so the source keeps
    -- accepting its own UPDATEs and DELETEs of a table without replica identity.
    append_only      bool NOT NULL DEFAULT false,
    -- Change stream counters for this table.
    changes_applied  int8 NOT NULL DEFAULT 0,
    changes_skipped  int8 NOT NULL DEFAULT 0,
    -- UPDATEs and DELETEs that found no row on the target: it diverged from the source.
    changes_missing  int8 NOT NULL DEFAULT 0,
    UNIQUE (connector_id, source_schema, source_name),
    UNIQUE (target_schema, target_name)
);

SELECT pg_catalog.pg_extension_config_dump('livesync.sync_table', '');

-- Changes of a table being copied while the stream runs (sync_table.spooled), in stream order:
-- raw pgoutput messages, written in the stream's own transactions (so they commit with the
-- replication origin's progress), replayed and deleted in the transaction marking it copied.
CREATE TABLE livesync.spooled_change (
    table_id  int4 NOT NULL REFERENCES livesync.sync_table (id) ON DELETE CASCADE,
    seq       int8 GENERATED ALWAYS AS IDENTITY,
    -- Decoded as a message of a streamed transaction (protocol 2: with an xid prefix).
    streamed  bool NOT NULL,
    -- Commit LSN of the source transaction it belongs to: a copy resumed under a newer snapshot
    -- drops what that snapshot already contains, and re-reads the keys changed in between.
    lsn       pg_lsn NOT NULL,
    message   bytea NOT NULL,
    PRIMARY KEY (table_id, seq)
);

-- Sequences kept in step with the source (src/catalog/sequences.rs): those owned by a synced
-- table's columns (serial, identity; table_id set, dropped with the table) and those added with
-- add_sequence. The values last seen on each side, and when.
CREATE TABLE livesync.sync_sequence (
    id              int4 GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    connector_id    int4 NOT NULL REFERENCES livesync.connector (id) ON DELETE CASCADE,
    table_id        int4 REFERENCES livesync.sync_table (id) ON DELETE CASCADE,
    source_schema   text NOT NULL,
    source_name     text NOT NULL,
    target_schema   text NOT NULL,
    target_name     text NOT NULL,
    -- The next value nextval() would return, on the source and on the target, at the last sync.
    source_next     int8,
    target_next     int8,
    synced_at       timestamptz,
    last_error      text,
    last_error_at   timestamptz,
    added_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (connector_id, source_schema, source_name),
    UNIQUE (target_schema, target_name)
);

SELECT pg_catalog.pg_extension_config_dump('livesync.sync_sequence', '');

-- Tables remove_table took out of sync, still to be dropped from the connector's publication by
-- its worker (after this commit; a rolled-back remove_table leaves the source as it was).
CREATE TABLE livesync.unpublish (
    connector_id  int4 NOT NULL REFERENCES livesync.connector (id) ON DELETE CASCADE,
    source_schema text NOT NULL,
    source_name   text NOT NULL,
    PRIMARY KEY (connector_id, source_schema, source_name)
);

-- The units of a table's initial copy: page ranges (one for small tables), all to be read under
-- the same exported snapshot. A range is marked done in the transaction that loaded it.
CREATE TABLE livesync.copy_range (
    table_id    int4 NOT NULL REFERENCES livesync.sync_table (id) ON DELETE CASCADE,
    range_no    int4 NOT NULL,
    start_page  int8 NOT NULL,
    end_page    int8,              -- NULL: to the end of the table
    snapshot    text NOT NULL,     -- exported snapshot to import (SET TRANSACTION SNAPSHOT)
    snapshot_lsn pg_lsn NOT NULL,  -- its position in the change stream (its slot's consistent point)
    file_node   oid,               -- the source table's pg_relation_filenode() as the range was read
    binary_format bool NOT NULL,   -- COPY format, decided per table (else text)
    claimed_by  int4,              -- pid of the copy worker loading it
    done        bool NOT NULL DEFAULT false,
    rows        int8,
    bytes       int8,
    finished_at timestamptz,
    PRIMARY KEY (table_id, range_no)
);

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
