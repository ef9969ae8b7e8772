//! Integration tests for livesync: real PostgreSQL clusters (sources and
//! targets) started by the harness in `support`, from the binaries of the
//! installation `PG_CONFIG` names (default: the system's PostgreSQL 15; the
//! PostgreSQL 18 of `scripts/setup.sh --pg18` as well). The extension must be
//! installed there first: `bash scripts/setup.sh` (or run everything with
//! `bash scripts/test.sh`).
//!
//! Most scenarios share one source and one target cluster and isolate
//! themselves with a fresh database per test on both sides; the ones that stop
//! or restart a server get dedicated clusters.
//!
//! Environment: LIVESYNC_TEST_WITHOUT_TIMESCALEDB=1 skips the TimescaleDB tests as if it
//! were not installed, LIVESYNC_TEST_WITHOUT_CITUS=1 the Citus tests; LIVESYNC_KEEP_CLUSTERS=1
//! keeps clusters and databases for inspection; LIVESYNC_TEST_TIMEOUT_SECS bounds the whole run (default 1200).

mod support;

mod check_source;
mod citus;
mod copy_beside_stream;
mod copy_resume;
mod errors;
mod extension;
mod hostile;
mod hostile_source;
mod lifecycle;
mod monitoring;
mod privileges;
mod restarts;
mod robustness;
mod secrets;
mod sequences;
mod smoke;
mod source_settings;
mod source_versions;
mod sync_add_table;
mod sync_copy;
mod sync_crash;
mod sync_stream;
mod timescale;
mod tls;
mod verify;
