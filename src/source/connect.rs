//! Opening a connection to a source, and telling the user *why* it failed.
//!
//! tokio-postgres reports every failure as one opaque error type; a user fixing a connector needs
//! to know which of a handful of things went wrong, each with its own remedy. [`ConnectError`]
//! is that classification; the SQL layer maps it to a message, a SQLSTATE of class 08
//! (connection exception) and a hint.

use std::io;

use openssl::ssl::{SslConnector, SslFiletype, SslMethod, SslVerifyMode};
use postgres_openssl::MakeTlsConnector;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::conninfo::{SourceConninfo, SslMode, TlsSettings};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// Nothing listens on host:port.
    Refused { endpoint: String },
    /// No answer within the connect timeout.
    TimedOut { endpoint: String, secs: u64 },
    /// No route to the host or network.
    Unreachable { endpoint: String, reason: String },
    /// The host name does not resolve.
    Unresolvable { host: String, reason: String },
    /// The server refused the role: bad password, no pg_hba.conf entry, role missing, ...
    Rejected {
        endpoint: String,
        user: String,
        server_message: String,
    },
    /// The database named in the conninfo does not exist on the source.
    NoDatabase { endpoint: String, dbname: String },
    /// TLS could not be set up or the server's certificate was not accepted.
    Tls { endpoint: String, reason: String },
    /// Anything else (server shutting down, too many connections, protocol error...).
    Other { endpoint: String, reason: String },
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused { endpoint } => {
                write!(
                    f,
                    "could not connect to the source at \"{endpoint}\": connection refused"
                )
            }
            ConnectError::TimedOut { endpoint, secs } => write!(
                f,
                "could not connect to the source at \"{endpoint}\": timed out after {secs} s"
            ),
            ConnectError::Unreachable { endpoint, reason } => {
                write!(
                    f,
                    "could not connect to the source at \"{endpoint}\": {reason}"
                )
            }
            ConnectError::Unresolvable { host, .. } => {
                write!(f, "could not resolve the source host \"{host}\"")
            }
            ConnectError::Rejected { user, .. } => {
                write!(f, "the source rejected the credentials of role \"{user}\"")
            }
            ConnectError::NoDatabase { endpoint, dbname } => {
                write!(
                    f,
                    "database \"{dbname}\" does not exist on the source at \"{endpoint}\""
                )
            }
            ConnectError::Tls { endpoint, reason } => {
                write!(f, "could not establish a TLS connection to the source at \"{endpoint}\": {reason}")
            }
            ConnectError::Other { endpoint, reason } => {
                write!(
                    f,
                    "could not connect to the source at \"{endpoint}\": {reason}"
                )
            }
        }
    }
}

impl ConnectError {
    /// SQLSTATE, class 08: the client could not establish the connection (08001) or the server
    /// refused it (08004).
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ConnectError::Rejected { .. } | ConnectError::NoDatabase { .. } => "08004",
            _ => "08001",
        }
    }

    pub fn detail(&self) -> Option<String> {
        match self {
            ConnectError::Rejected { server_message, .. } => {
                Some(format!("The source said: {server_message}."))
            }
            ConnectError::Unresolvable { reason, .. } => {
                Some(format!("The resolver said: {reason}."))
            }
            _ => None,
        }
    }

    pub fn hint(&self) -> String {
        match self {
            ConnectError::Refused { .. } => "Check that the source server is running and accepts TCP/IP connections on that host and port (listen_addresses, port, firewall).".into(),
            ConnectError::TimedOut { .. } | ConnectError::Unreachable { .. } => "Check the host address and that the target server can reach the source (routing, firewall, security groups); raise connect_timeout in the connection string if the network is slow.".into(),
            ConnectError::Unresolvable { .. } => "Check the host name, or use the source's IP address (hostaddr=).".into(),
            ConnectError::Rejected { .. } => "Check user and password in the connection string, and that the source's pg_hba.conf allows this role to connect from the target server.".into(),
            ConnectError::NoDatabase { dbname, .. } => format!("Create database \"{dbname}\" on the source, or fix dbname= in the connection string."),
            ConnectError::Tls { .. } => "Check sslmode and sslrootcert (the CA that signed the source's certificate; with verify-full the certificate must name the host you connect to), and that the source has ssl = on.".into(),
            ConnectError::Other { .. } => "Check the source server's log for the reason.".into(),
        }
    }

    /// Classify a tokio-postgres connection failure.
    pub fn classify(info: &SourceConninfo, err: &tokio_postgres::Error) -> ConnectError {
        let endpoint = info.endpoint();
        if let Some(db) = err.as_db_error() {
            let code = db.code();
            if *code == SqlState::INVALID_CATALOG_NAME {
                return ConnectError::NoDatabase {
                    endpoint,
                    dbname: info.dbname(),
                };
            }
            if *code == SqlState::INVALID_PASSWORD
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
            {
                return ConnectError::Rejected {
                    endpoint,
                    user: info.user(),
                    server_message: db.message().to_string(),
                };
            }
            return ConnectError::Other {
                endpoint,
                reason: db.message().to_string(),
            };
        }
        let text = err.to_string();
        let mut chain: Vec<String> = Vec::new();
        let mut src = std::error::Error::source(err);
        while let Some(s) = src {
            chain.push(s.to_string());
            src = s.source();
        }
        let all = chain.join(" ");
        if text.contains("TLS") || all.contains("certificate") || all.contains("SSL routines") {
            // OpenSSL's own lines ("error:0A000086:SSL routines:…") say little; keep the verdicts
            // ("self-signed certificate", "hostname mismatch", "certificate verify failed").
            let mut parts: Vec<String> = Vec::new();
            for line in std::iter::once(&text)
                .chain(chain.iter())
                .flat_map(|c| c.split(": "))
            {
                let line = line.trim().trim_end_matches(':');
                let verdict = if let Some(i) = line.find("SSL routines:") {
                    line[i..].split(':').nth(2).unwrap_or("").to_string()
                } else {
                    line.to_string()
                };
                if !verdict.is_empty()
                    && !verdict.starts_with("../")
                    && verdict != "error performing TLS handshake"
                    && !parts.contains(&verdict)
                {
                    parts.push(verdict);
                }
            }
            let reason = if parts.is_empty() {
                text
            } else {
                parts.join(": ")
            };
            return ConnectError::Tls { endpoint, reason };
        }
        let mut source = std::error::Error::source(err);
        while let Some(s) = source {
            if let Some(io) = s.downcast_ref::<io::Error>() {
                return Self::classify_io(info, io);
            }
            source = s.source();
        }
        ConnectError::Other {
            endpoint,
            reason: text,
        }
    }

    fn classify_io(info: &SourceConninfo, io: &io::Error) -> ConnectError {
        let endpoint = info.endpoint();
        let reason = io.to_string();
        match io.kind() {
            io::ErrorKind::ConnectionRefused => ConnectError::Refused { endpoint },
            io::ErrorKind::TimedOut => ConnectError::TimedOut {
                endpoint,
                secs: info.connect_timeout().as_secs(),
            },
            io::ErrorKind::HostUnreachable => ConnectError::Unreachable {
                endpoint,
                reason: "no route to host".into(),
            },
            io::ErrorKind::NetworkUnreachable => ConnectError::Unreachable {
                endpoint,
                reason: "network is unreachable".into(),
            },
            _ if reason.contains("lookup address") || reason.contains("name resolution") => {
                ConnectError::Unresolvable {
                    host: info.host(),
                    reason: reason
                        .trim_start_matches("failed to lookup address information: ")
                        .to_string(),
                }
            }
            _ => ConnectError::Other { endpoint, reason },
        }
    }
}

/// An OpenSSL connector configured as libpq would for `sslmode`: `require` (and `prefer`,
/// `allow`) encrypt without verifying, `verify-ca` checks the certificate chain against
/// `sslrootcert` (default: `~/.postgresql/root.crt` of the server's OS user, else the system's
/// CAs), `verify-full` also checks that the certificate names the host.
/// The last reason of an OpenSSL error stack ("no such file", "certificate verify failed").
fn openssl_reason(e: &openssl::error::ErrorStack) -> String {
    e.errors()
        .iter()
        .rev()
        .find_map(|x| x.reason().map(str::to_string))
        .unwrap_or_else(|| e.to_string())
}

pub fn tls_connector(tls: &TlsSettings) -> Result<MakeTlsConnector, String> {
    for (what, path) in [
        ("sslrootcert", &tls.root_cert),
        ("sslcert", &tls.cert),
        ("sslkey", &tls.key),
    ] {
        if let Some(p) = path.as_deref().filter(|p| *p != "system") {
            if !std::path::Path::new(p).exists() {
                return Err(format!(
                    "{what} file \"{p}\" does not exist (it is read on the target server, by the OS user running PostgreSQL)"
                ));
            }
        }
    }
    let mut b = SslConnector::builder(SslMethod::tls()).map_err(|e| e.to_string())?;
    let verify = matches!(tls.mode, SslMode::VerifyCa | SslMode::VerifyFull);
    if verify {
        b.set_verify(SslVerifyMode::PEER);
        let default_root = std::env::var("HOME")
            .ok()
            .map(|h| format!("{h}/.postgresql/root.crt"));
        match tls.root_cert.as_deref().or(default_root
            .as_deref()
            .filter(|p| std::path::Path::new(p).exists()))
        {
            Some("system") | None => b.set_default_verify_paths().map_err(|e| e.to_string())?,
            Some(path) => b.set_ca_file(path).map_err(|e| {
                format!(
                    "could not read sslrootcert \"{path}\": {}",
                    openssl_reason(&e)
                )
            })?,
        }
    } else {
        b.set_verify(SslVerifyMode::NONE);
    }
    if let Some(cert) = &tls.cert {
        b.set_certificate_chain_file(cert)
            .map_err(|e| format!("could not read sslcert \"{cert}\": {}", openssl_reason(&e)))?;
    }
    if let Some(key) = &tls.key {
        b.set_private_key_file(key, SslFiletype::PEM)
            .map_err(|e| format!("could not read sslkey \"{key}\": {}", openssl_reason(&e)))?;
    }
    let mut c = MakeTlsConnector::new(b.build());
    let full = tls.mode == SslMode::VerifyFull;
    c.set_callback(move |cfg, _| {
        cfg.set_verify_hostname(full);
        Ok(())
    });
    Ok(c)
}

/// The connector for `tls`, built once per process when it reads no file of its own.
///
/// Building one loads the system's CA store (`SslConnector::builder` does, whatever the mode),
/// which costs ~30 ms of CPU per connection here: a quarter of an `add_table` call, and the
/// start of every copy worker. Modes that do not verify the server (`disable` … `require`) and
/// name no certificate file share one connector per process; the others are built for each
/// connection, so a rotated certificate or `root.crt` is read at the next connection, as libpq does.
fn connector_for(tls: &TlsSettings) -> Result<MakeTlsConnector, String> {
    static SHARED: std::sync::OnceLock<MakeTlsConnector> = std::sync::OnceLock::new();
    let shareable = !matches!(tls.mode, SslMode::VerifyCa | SslMode::VerifyFull)
        && tls.root_cert.is_none()
        && tls.cert.is_none()
        && tls.key.is_none();
    if !shareable {
        return tls_connector(tls);
    }
    if let Some(c) = SHARED.get() {
        return Ok(c.clone());
    }
    // No file of the user's is read in these modes, so the connector is the same for each.
    let c = tls_connector(tls)?;
    Ok(SHARED.get_or_init(|| c).clone())
}

/// Connect to the source. The connection task is spawned on the current tokio runtime; it makes
/// progress whenever that runtime is driven.
pub async fn connect(
    info: &SourceConninfo,
    application_name: &str,
) -> Result<Client, ConnectError> {
    let config = info.config_for(application_name);
    let tls = connector_for(info.tls()).map_err(|reason| ConnectError::Tls {
        endpoint: info.endpoint(),
        reason,
    })?;
    // tokio-postgres applies connect_timeout to the TCP connect only; like libpq, bound the whole
    // login, so a server that accepts the connection but never answers cannot hang the caller.
    let secs = info.connect_timeout().as_secs();
    let attempt = tokio::time::timeout(info.connect_timeout(), config.connect(tls)).await;
    let Ok(attempt) = attempt else {
        return Err(ConnectError::TimedOut {
            endpoint: info.endpoint(),
            secs,
        });
    };
    match attempt {
        Ok((client, connection)) => {
            tokio::spawn(async move {
                // The error (if any) surfaces to the client as "connection closed".
                let _ = connection.await;
            });
            Ok(client)
        }
        Err(e) => Err(ConnectError::classify(info, &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(s: &str) -> SourceConninfo {
        SourceConninfo::parse(s).unwrap()
    }

    #[test]
    fn only_settings_without_files_share_a_connector() {
        assert!(connector_for(&TlsSettings::default()).is_ok());
        // Once a shared connector exists, settings naming a file must still be checked (and
        // read) for their own connection.
        for missing in [
            TlsSettings {
                root_cert: Some("/nonexistent/root.crt".into()),
                ..TlsSettings::default()
            },
            TlsSettings {
                mode: SslMode::Require,
                cert: Some("/nonexistent/client.crt".into()),
                ..TlsSettings::default()
            },
        ] {
            let e = connector_for(&missing)
                .err()
                .expect("a missing certificate file is an error");
            assert!(e.contains("does not exist"), "{e}");
        }
    }

    #[test]
    fn io_errors_are_classified() {
        let i = info("host=10.1.2.3 port=5999 user=u connect_timeout=2");
        let e = ConnectError::classify_io(&i, &io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(
            e,
            ConnectError::Refused {
                endpoint: "10.1.2.3:5999".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "could not connect to the source at \"10.1.2.3:5999\": connection refused"
        );
        let e = ConnectError::classify_io(&i, &io::Error::from(io::ErrorKind::TimedOut));
        assert_eq!(
            e.to_string(),
            "could not connect to the source at \"10.1.2.3:5999\": timed out after 2 s"
        );
        assert_eq!(e.sqlstate(), "08001");
        let i = info("host=nowhere.invalid user=u");
        let e = ConnectError::classify_io(
            &i,
            &io::Error::new(
                io::ErrorKind::Other,
                "failed to lookup address information: Name or service not known",
            ),
        );
        assert_eq!(
            e.to_string(),
            "could not resolve the source host \"nowhere.invalid\""
        );
    }

    #[test]
    fn rejected_is_08004_and_names_the_role() {
        let e = ConnectError::Rejected {
            endpoint: "h:1".into(),
            user: "sync".into(),
            server_message: "password authentication failed for user \"sync\"".into(),
        };
        assert_eq!(e.sqlstate(), "08004");
        assert_eq!(
            e.to_string(),
            "the source rejected the credentials of role \"sync\""
        );
    }
}
