//! Names of the objects livesync creates on a source.
//!
//! They are derived from a connector's *token* — 16 random hex digits generated once when the
//! connector is added — never from the user-chosen connector name: names stay valid identifiers
//! whatever the user typed, survive `rename_connector`, and two target clusters syncing from the
//! same source (whose connector ids would both start at 1) cannot collide.

/// Maximum length of a PostgreSQL identifier (NAMEDATALEN - 1).
pub const MAX_IDENTIFIER_LEN: usize = 63;

/// The connector's second publication, `publish = 'insert, truncate'`, for tables synced with
/// `append_only => true`: a table without a replica identity may be in it without the source
/// rejecting its own UPDATEs and DELETEs of that table.
pub fn append_publication_name(publication: &str) -> String {
    format!("{publication}_append")
}

/// The random part of a connector's source-side names: exactly 16 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorToken(String);

impl ConnectorToken {
    pub fn parse(token: &str) -> Result<Self, String> {
        if token.len() == 16
            && token
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(token.to_string()))
        } else {
            Err(format!("invalid connector token \"{token}\""))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The publication livesync owns for this connector.
    pub fn publication_name(&self) -> String {
        format!("livesync_{}", self.0)
    }

    /// The permanent logical replication slot of this connector.
    pub fn slot_name(&self) -> String {
        format!("livesync_{}", self.0)
    }

    /// Prefix shared by every slot this connector may create (its main slot and temporary copy
    /// slots); used to clean up on drop.
    pub fn slot_prefix(&self) -> String {
        format!("livesync_{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_valid_identifiers() {
        let t = ConnectorToken::parse("0123456789abcdef").unwrap();
        for n in [t.publication_name(), t.slot_name()] {
            assert!(n.len() <= MAX_IDENTIFIER_LEN);
            assert!(n
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        }
        assert_eq!(t.slot_name(), "livesync_0123456789abcdef");
        let a = append_publication_name(&t.publication_name());
        assert!(a.len() <= MAX_IDENTIFIER_LEN);
        assert_eq!(a, "livesync_0123456789abcdef_append");
    }

    #[test]
    fn rejects_bad_tokens() {
        assert!(ConnectorToken::parse("0123").is_err());
        assert!(ConnectorToken::parse("0123456789ABCDEF").is_err());
        assert!(ConnectorToken::parse("x'; drop table--").is_err());
    }
}
