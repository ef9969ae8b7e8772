//! Errors raised to SQL callers, PostgreSQL style: lowercase message, quoted identifiers, a DETAIL
//! that says what was found and a HINT that says what to do, with a proper SQLSTATE.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

use crate::source::connect::ConnectError;

#[derive(Debug, Clone)]
pub struct LivesyncError {
    pub code: PgSqlErrorCode,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

/// `MAKE_SQLSTATE` for a five-character SQLSTATE such as `"08001"`.
fn sqlstate(code: &str) -> PgSqlErrorCode {
    let b = code.as_bytes();
    assert_eq!(b.len(), 5, "SQLSTATE must have 5 characters");
    let mut v: i32 = 0;
    for (i, c) in b.iter().enumerate() {
        v += (((*c as i32) - ('0' as i32)) & 0x3F) << (6 * i);
    }
    PgSqlErrorCode::from(v)
}

impl LivesyncError {
    pub fn new(code: PgSqlErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = Some(d.into());
        self
    }

    pub fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = Some(h.into());
        self
    }

    pub fn invalid_parameter(message: impl Into<String>) -> Self {
        Self::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, message)
    }

    pub fn connector_not_found(name: &str) -> Self {
        Self::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_OBJECT,
            format!("connector \"{name}\" does not exist"),
        )
        .hint("SELECT name FROM livesync.connectors lists the existing connectors.")
    }

    /// A column named by the caller (`time_column`, `distributed_by`) that the source table lacks.
    pub fn unknown_source_column(def: &crate::source::table::TableDef, column: &str) -> Self {
        Self::new(
            PgSqlErrorCode::ERRCODE_UNDEFINED_COLUMN,
            format!(
                "column \"{column}\" of source table {} does not exist",
                def.qualified()
            ),
        )
        .hint(format!(
            "Columns: {}.",
            def.columns
                .iter()
                .map(|c| format!("\"{}\"", c.name))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    }

    pub fn connector_exists(name: &str) -> Self {
        Self::new(
            PgSqlErrorCode::ERRCODE_DUPLICATE_OBJECT,
            format!("connector \"{name}\" already exists"),
        )
        .hint("Choose another name: livesync.add_connector(conninfo, name => '...').")
    }

    pub fn from_connect(e: &ConnectError) -> Self {
        let mut err = Self::new(sqlstate(e.sqlstate()), e.to_string()).hint(e.hint());
        err.detail = e.detail();
        err
    }

    /// An error talking to the source after the connection was established.
    pub fn source_query(endpoint: &str, e: &tokio_postgres::Error) -> Self {
        let msg = match e.as_db_error() {
            Some(db) => db.message().to_string(),
            None => e.to_string(),
        };
        let code = match e.as_db_error() {
            Some(db) => sqlstate(db.code().code()),
            None => PgSqlErrorCode::ERRCODE_CONNECTION_FAILURE,
        };
        Self::new(
            code,
            format!("error on the source at \"{endpoint}\": {msg}"),
        )
    }

    /// Raise as an ERROR. Never returns.
    pub fn raise(self) -> ! {
        self.report(PgLogLevel::ERROR);
        unreachable!("ERROR returned")
    }

    pub fn report(self, level: PgLogLevel) {
        let mut r = ErrorReport::new(self.code, self.message, "livesync");
        if let Some(d) = self.detail {
            r = r.set_detail(d);
        }
        if let Some(h) = self.hint {
            r = r.set_hint(h);
        }
        r.report(level);
    }
}

pub type Result<T> = std::result::Result<T, LivesyncError>;

/// Unwrap or raise.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T> {
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => e.raise(),
        }
    }
}

/// A PostgreSQL ERROR (or a Rust panic) caught by [`catch`], with what the user needs to act on
/// it: SQLSTATE, message, DETAIL and HINT. (PostgreSQL's CONTEXT is not carried by pgrx's error
/// capture; callers that know where they were — the change stream — add their own.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caught {
    /// Five characters, e.g. `55P03`.
    pub sqlstate: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for Caught {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<Caught> for String {
    fn from(c: Caught) -> String {
        c.message
    }
}

impl Caught {
    /// Whether retrying the same work later can succeed with nothing changed by the user: a lock
    /// or statement timeout, a deadlock or serialization failure, a cancel or shutdown, resources
    /// (disk, memory, connections), a lost connection, an I/O error.
    pub fn is_transient(&self) -> bool {
        is_transient_sqlstate(&self.sqlstate)
    }
}

/// See [`Caught::is_transient`]. Everything else — data exceptions (22), integrity constraint
/// violations (23), undefined or mismatched objects and types (42), internal errors — would fail
/// the same way again.
pub fn is_transient_sqlstate(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "40" | "53" | "57" | "58"))
        || code == "55P03"
        || code == "55006"
}

/// The five-character text of a SQLSTATE code.
pub fn sqlstate_text(code: PgSqlErrorCode) -> String {
    let v = code as i32;
    (0..5)
        .map(|i| ((((v >> (6 * i)) & 0x3F) as u8) + b'0') as char)
        .collect()
}

/// Run `f` in a subtransaction of the current transaction: on an ERROR inside, only what `f` did
/// is rolled back and the error is returned; the transaction goes on.
pub fn in_subtransaction<R>(f: impl FnOnce() -> R) -> std::result::Result<R, Caught> {
    subtransaction(f, true)
}

/// Run `f` in a subtransaction that is always rolled back, whatever `f` did: for trying a
/// statement out (does it build, what does it depend on) without keeping its effects.
pub fn probe_in_subtransaction<R>(f: impl FnOnce() -> R) -> std::result::Result<R, Caught> {
    subtransaction(f, false)
}

fn subtransaction<R>(f: impl FnOnce() -> R, keep: bool) -> std::result::Result<R, Caught> {
    use pgrx::pg_sys;
    // SAFETY: called from a backend inside a transaction (every caller is); the subtransaction is
    // begun and ended here on every path (`catch` returns instead of unwinding past us), and the
    // memory context and resource owner that ending it resets are restored to the caller's.
    unsafe {
        let context = pg_sys::CurrentMemoryContext;
        let owner = pg_sys::CurrentResourceOwner;
        pg_sys::BeginInternalSubTransaction(std::ptr::null());
        let r = catch(f);
        if r.is_ok() && keep {
            pg_sys::ReleaseCurrentSubTransaction();
        } else {
            pg_sys::RollbackAndReleaseCurrentSubTransaction();
        }
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
        r
    }
}

/// Run `f`, turning a PostgreSQL ERROR (or a Rust panic) raised inside into a [`Caught`]. The
/// caller decides what the failure means (abort the transaction, record it, retry, reconnect);
/// no state touched by `f` is looked at after a failure, which is what makes asserting unwind
/// safety sound.
pub fn catch<R>(f: impl FnOnce() -> R) -> std::result::Result<R, Caught> {
    let f = std::panic::AssertUnwindSafe(f);
    pgrx::PgTryBuilder::new(move || {
        let f = f;
        Ok((f.0)())
    })
    .catch_others(|e| {
        let r = match &e {
            pgrx::pg_sys::panic::CaughtError::PostgresError(r)
            | pgrx::pg_sys::panic::CaughtError::ErrorReport(r) => r,
            pgrx::pg_sys::panic::CaughtError::RustPanic { ereport, .. } => ereport,
        };
        Err(Caught {
            sqlstate: sqlstate_text(r.sql_error_code()),
            message: r.message().to_string(),
            detail: r.detail().map(str::to_string),
            hint: r.hint().map(str::to_string),
        })
    })
    .execute()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_round_trip_and_classify() {
        assert_eq!(
            sqlstate_text(PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE),
            "55P03"
        );
        assert_eq!(sqlstate_text(sqlstate("23505")), "23505");
        for transient in [
            "55P03", "40P01", "40001", "57014", "57P01", "53100", "53200", "08006", "58030",
        ] {
            assert!(is_transient_sqlstate(transient), "{transient}");
        }
        for data in [
            "23505", "23502", "22P02", "42703", "42804", "XX000", "55000",
        ] {
            assert!(!is_transient_sqlstate(data), "{data}");
        }
    }
}
