//! The SQL-callable functions: thin wrappers that validate input, call into [`crate::catalog`],
//! [`crate::source`] and [`crate::worker`], and raise PostgreSQL-style errors.
//!
//! Privileges are set in `sql/finalize.sql`: every function here is revoked from PUBLIC and
//! granted to `livesync_admin` (superusers can always call them).

pub mod connectors;
pub mod sequences;
pub mod tables;
pub mod verify;
