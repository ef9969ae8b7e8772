//! Connection strings of sources.
//!
//! A conninfo is a secret: it may carry a password. It is parsed here once, and everything the
//! rest of livesync shows about a source (status views, log lines, error messages) comes from
//! [`SourceConninfo::endpoint`] and friends, which never include the password. The raw string is
//! only ever stored in `livesync.connector_secret`, which unprivileged roles cannot read.

use std::str::FromStr;
use std::time::Duration;

use tokio_postgres::config::Host;

/// Used when the conninfo sets no `connect_timeout`: an unreachable source must fail an
/// `add_connector` call in seconds, not after the kernel's TCP timeout of minutes.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct SourceConninfo {
    config: tokio_postgres::Config,
}

impl std::fmt::Debug for SourceConninfo {
    // Deliberately not derived: the config holds the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SourceConninfo({})", self.endpoint_with_db())
    }
}

/// A conninfo that could not be parsed. The message names the offending keyword but never
/// repeats its value (it might be the password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConninfoError(pub String);

impl SourceConninfo {
    pub fn parse(raw: &str) -> Result<Self, ConninfoError> {
        if raw.trim().is_empty() {
            return Err(ConninfoError("the connection string is empty".into()));
        }
        let mut config = tokio_postgres::Config::from_str(raw).map_err(|e| {
            // tokio-postgres reports "invalid value for option `port`" and the like (in the
            // error's source): keyword only, never the value.
            match std::error::Error::source(&e) {
                Some(cause) => ConninfoError(cause.to_string()),
                None => ConninfoError(e.to_string()),
            }
        })?;
        if config.get_hosts().is_empty() {
            return Err(ConninfoError(
                "no host given: livesync connects to sources over TCP, so host= (or hostaddr=) is required".into(),
            ));
        }
        if config.get_hosts().iter().any(|h| !matches!(h, Host::Tcp(_))) {
            return Err(ConninfoError(
                "Unix-domain socket hosts are not supported: use a TCP host name or address".into(),
            ));
        }
        if config.get_user().is_none() {
            return Err(ConninfoError(
                "no user given: add user=<role> (livesync does not guess the source role from the target's OS user)".into(),
            ));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        Ok(Self { config })
    }

    /// A copy of the connection settings with `application_name` set to `app` unless the user
    /// chose one, so the source's `pg_stat_activity` tells who is connected.
    pub fn config_for(&self, app: &str) -> tokio_postgres::Config {
        let mut c = self.config.clone();
        if c.get_application_name().is_none() {
            c.application_name(app);
        }
        c
    }

    pub fn host(&self) -> String {
        match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            _ => match self.config.get_hostaddrs().first() {
                Some(a) => a.to_string(),
                None => "localhost".into(),
            },
        }
    }

    pub fn port(&self) -> u16 {
        self.config.get_ports().first().copied().unwrap_or(5432)
    }

    pub fn user(&self) -> String {
        self.config.get_user().unwrap_or_default().to_string()
    }

    /// The database on the source; libpq's default is the user name.
    pub fn dbname(&self) -> String {
        self.config.get_dbname().map(str::to_string).unwrap_or_else(|| self.user())
    }

    pub fn connect_timeout(&self) -> Duration {
        self.config.get_connect_timeout().copied().unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    /// `host:port`, for messages.
    pub fn endpoint(&self) -> String {
        let host = self.host();
        if host.contains(':') {
            format!("[{}]:{}", host, self.port())
        } else {
            format!("{}:{}", host, self.port())
        }
    }

    /// `host:port/dbname`, for messages.
    pub fn endpoint_with_db(&self) -> String {
        format!("{}/{}", self.endpoint(), self.dbname())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_key_value_and_describes_without_password() {
        let c = SourceConninfo::parse("host=src port=6543 dbname=app user=sync password='s3;cr\\'et'").unwrap();
        assert_eq!(c.endpoint(), "src:6543");
        assert_eq!(c.endpoint_with_db(), "src:6543/app");
        assert_eq!(c.user(), "sync");
        assert!(!format!("{c:?}").contains("s3;cr"));
        assert_eq!(c.connect_timeout(), DEFAULT_CONNECT_TIMEOUT);
    }

    #[test]
    fn parses_urls_and_defaults() {
        let c = SourceConninfo::parse("postgresql://sync:pw@10.0.0.1/metrics?connect_timeout=3").unwrap();
        assert_eq!(c.endpoint_with_db(), "10.0.0.1:5432/metrics");
        assert_eq!(c.connect_timeout(), Duration::from_secs(3));
        let c = SourceConninfo::parse("host=h user=u").unwrap();
        assert_eq!(c.dbname(), "u");
    }

    #[test]
    fn application_name_is_ours_unless_given() {
        let c = SourceConninfo::parse("host=h user=u").unwrap();
        assert_eq!(c.config_for("livesync x").get_application_name(), Some("livesync x"));
        let c = SourceConninfo::parse("host=h user=u application_name=mine").unwrap();
        assert_eq!(c.config_for("livesync x").get_application_name(), Some("mine"));
    }

    #[test]
    fn rejects_bad_input_without_echoing_values() {
        let e = SourceConninfo::parse("host=h user=u port=notaport").unwrap_err();
        assert!(e.0.contains("port"), "{}", e.0);
        assert!(SourceConninfo::parse("").is_err());
        assert!(SourceConninfo::parse("dbname=x user=u").is_err());
        assert!(SourceConninfo::parse("host=h dbname=x").is_err());
        assert!(SourceConninfo::parse("host=/tmp user=u").is_err());
        let e = SourceConninfo::parse("host=h user=u password=hunter2 bogus=1").unwrap_err();
        assert!(!e.0.contains("hunter2"));
    }
}
