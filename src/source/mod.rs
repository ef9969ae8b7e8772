//! Everything livesync knows about a *source* server, in plain Rust with no pgrx in it.
//!
//! This tree must stay free of `pgrx` so it can be unit-tested with `cargo test --lib` without a
//! running PostgreSQL and reused by the worker and the SQL API alike:
//! - [`conninfo`] parses and describes connection strings without ever exposing the password;
//! - [`connect`] opens a connection and turns the many ways that can fail into a few kinds a user
//!   can act on (refused, unreachable, unresolvable, credentials rejected, database missing);
//! - [`checks`] turns facts read from the source into the prerequisite report shared by
//!   `livesync.check_source` and `livesync.add_connector`;
//! - [`names`] derives the names of the objects livesync owns on the source (publication, slot).

pub mod checks;
pub mod connect;
pub mod conninfo;
pub mod names;
pub mod pgoutput;
pub mod publication;
pub mod table;
pub mod timecol;

/// Quote an identifier for SQL sent to the source (always quoted: the source's keyword list is
/// not known here, and a quoted identifier is never wrong).
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// Quote a string literal for SQL sent to the source (`standard_conforming_strings` is on in every
/// supported version, so only the single quote needs doubling).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("sync"), "\"sync\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
