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
    tls: TlsSettings,
}

/// libpq's `sslmode` values. tokio-postgres knows only disable/prefer/require, so livesync reads
/// the TLS keywords itself and configures OpenSSL the way libpq would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// `passfile`: libpq's password file, when the conninfo names one.
    pub passfile: Option<String>,
    pub mode: SslMode,
    /// `sslrootcert`: CA certificates to verify the server with (verify-ca / verify-full).
    pub root_cert: Option<String>,
    /// `sslcert` / `sslkey`: client certificate authentication.
    pub cert: Option<String>,
    pub key: Option<String>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            mode: SslMode::Prefer,
            root_cert: None,
            cert: None,
            key: None,
            passfile: None,
        }
    }
}

/// libpq keywords livesync reads itself (tokio-postgres knows none of them).
const TLS_KEYWORDS: &[&str] = &["sslmode", "sslrootcert", "sslcert", "sslkey", "passfile"];

/// Output settings every SQL session on the source starts with, whatever the source database
/// or role sets (`ALTER DATABASE … SET DateStyle = 'SQL, DMY'`): the text values of the copy
/// must mean the same on the target, and round-trip exactly. The same settings PostgreSQL's own
/// walreceiver gives its logical replication connections (which carry the change stream).
pub const PINNED_OPTIONS: &str =
    "-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3";

/// Split libpq `key=value` conninfo into pairs (values may be single-quoted, with backslash
/// escapes).
fn split_pairs(raw: &str) -> Result<Vec<(String, String)>, ConninfoError> {
    let mut out = Vec::new();
    let mut it = raw.chars().peekable();
    loop {
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(&c) = it.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            it.next();
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        if it.next() != Some('=') {
            return Err(ConninfoError(format!(
                "missing \"=\" after \"{key}\" in connection info string"
            )));
        }
        while it.peek().is_some_and(|c| c.is_whitespace()) {
            it.next();
        }
        let mut value = String::new();
        if it.peek() == Some(&'\'') {
            it.next();
            loop {
                match it.next() {
                    None => {
                        return Err(ConninfoError(
                            "unterminated quoted string in connection info string".into(),
                        ))
                    }
                    Some('\\') => {
                        if let Some(c) = it.next() {
                            value.push(c);
                        }
                    }
                    Some('\'') => break,
                    Some(c) => value.push(c),
                }
            }
        } else {
            while let Some(&c) = it.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    it.next();
                    if let Some(n) = it.next() {
                        value.push(n);
                    }
                    continue;
                }
                value.push(c);
                it.next();
            }
        }
        out.push((key, value));
    }
}

/// The password for `host:port:dbname:user` in libpq password file `path`, as libpq finds it:
/// the first line whose four fields match (`*` matches anything; `\:` and `\\` escape), the
/// file ignored when missing, not a regular file, or readable by group or others.
pub fn password_from_file(
    path: &std::path::Path,
    host: &str,
    port: &str,
    dbname: &str,
    user: &str,
) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            return None;
        }
    }
    let text = std::fs::read_to_string(path).ok()?;
    password_from_text(&text, host, port, dbname, user)
}

fn password_from_text(
    text: &str,
    host: &str,
    port: &str,
    dbname: &str,
    user: &str,
) -> Option<String> {
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::new();
        let mut cur = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                }
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() != 5 {
            continue;
        }
        let matches = |pattern: &str, value: &str| pattern == "*" || pattern == value;
        if matches(&fields[0], host)
            && matches(&fields[1], port)
            && matches(&fields[2], dbname)
            && matches(&fields[3], user)
        {
            return Some(fields.swap_remove(4));
        }
    }
    None
}

fn quote_value(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn parse_sslmode(v: &str) -> Result<SslMode, ConninfoError> {
    Ok(match v {
        "disable" => SslMode::Disable,
        "allow" => SslMode::Allow,
        "prefer" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        _ => return Err(ConninfoError(format!("invalid sslmode value: \"{v}\""))),
    })
}

/// Take the TLS keywords out of a conninfo (key=value or URI form), returning the rest for
/// tokio-postgres.
fn extract_tls(raw: &str) -> Result<(String, TlsSettings), ConninfoError> {
    let mut tls = TlsSettings::default();
    let mut set = |k: &str, v: String| -> Result<(), ConninfoError> {
        match k {
            "sslmode" => tls.mode = parse_sslmode(&v)?,
            "sslrootcert" => tls.root_cert = Some(v),
            "sslcert" => tls.cert = Some(v),
            "sslkey" => tls.key = Some(v),
            "passfile" => tls.passfile = Some(v),
            _ => {}
        }
        Ok(())
    };
    let trimmed = raw.trim();
    if trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://") {
        let Some((base, query)) = trimmed.split_once('?') else {
            return Ok((trimmed.to_string(), tls));
        };
        let mut kept = Vec::new();
        for part in query.split('&') {
            let (k, v) = part.split_once('=').unwrap_or((part, ""));
            if TLS_KEYWORDS.contains(&k) {
                set(k, percent_decode(v))?;
            } else {
                kept.push(part);
            }
        }
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return Ok((rest, tls));
    }
    let mut kept = Vec::new();
    for (k, v) in split_pairs(raw)? {
        if TLS_KEYWORDS.contains(&k.as_str()) {
            set(&k, v)?;
        } else {
            kept.push(format!("{k}={}", quote_value(&v)));
        }
    }
    Ok((kept.join(" "), tls))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
        let (rest, tls) = extract_tls(raw)?;
        let mut config = tokio_postgres::Config::from_str(&rest).map_err(|e| {
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
        if config
            .get_hosts()
            .iter()
            .any(|h| !matches!(h, Host::Tcp(_)))
        {
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
        if config.get_password().is_none() {
            // libpq reads the password file for every connection without a password; the
            // replication connections (libpq) do, so must livesync's SQL connections.
            let file = tls
                .passfile
                .clone()
                .or_else(|| std::env::var("PGPASSFILE").ok())
                .or_else(|| std::env::var("HOME").ok().map(|h| format!("{h}/.pgpass")));
            if let Some(file) = file {
                let host = match config.get_hosts().first() {
                    Some(Host::Tcp(h)) => h.clone(),
                    _ => "localhost".into(),
                };
                let port = config
                    .get_ports()
                    .first()
                    .copied()
                    .unwrap_or(5432)
                    .to_string();
                let user = config.get_user().unwrap_or_default().to_string();
                let dbname = config
                    .get_dbname()
                    .map(str::to_string)
                    .unwrap_or_else(|| user.clone());
                if let Some(pw) =
                    password_from_file(std::path::Path::new(&file), &host, &port, &dbname, &user)
                {
                    config.password(pw);
                }
            }
        }
        config.ssl_mode(match tls.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Allow | SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        });
        Ok(Self { config, tls })
    }

    /// A copy of the connection settings with `application_name` set to `app` unless the user
    /// chose one, so the source's `pg_stat_activity` tells who is connected.
    pub fn config_for(&self, app: &str) -> tokio_postgres::Config {
        let mut c = self.config.clone();
        if c.get_application_name().is_none() {
            c.application_name(app);
        }
        // Ours last: a later -c of the same setting wins.
        let options = match c.get_options() {
            Some(user) if !user.trim().is_empty() => format!("{user} {PINNED_OPTIONS}"),
            _ => PINNED_OPTIONS.to_string(),
        };
        c.options(&options);
        c
    }

    pub fn tls(&self) -> &TlsSettings {
        &self.tls
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
        self.config
            .get_dbname()
            .map(str::to_string)
            .unwrap_or_else(|| self.user())
    }

    pub fn connect_timeout(&self) -> Duration {
        self.config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
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
        let c =
            SourceConninfo::parse("host=src port=6543 dbname=app user=sync password='s3;cr\\'et'")
                .unwrap();
        assert_eq!(c.endpoint(), "src:6543");
        assert_eq!(c.endpoint_with_db(), "src:6543/app");
        assert_eq!(c.user(), "sync");
        assert!(!format!("{c:?}").contains("s3;cr"));
        assert_eq!(c.connect_timeout(), DEFAULT_CONNECT_TIMEOUT);
    }

    #[test]
    fn parses_urls_and_defaults() {
        let c = SourceConninfo::parse("postgresql://sync:pw@10.0.0.1/metrics?connect_timeout=3")
            .unwrap();
        assert_eq!(c.endpoint_with_db(), "10.0.0.1:5432/metrics");
        assert_eq!(c.connect_timeout(), Duration::from_secs(3));
        let c = SourceConninfo::parse("host=h user=u").unwrap();
        assert_eq!(c.dbname(), "u");
    }

    #[test]
    fn application_name_is_ours_unless_given() {
        let c = SourceConninfo::parse("host=h user=u").unwrap();
        assert_eq!(
            c.config_for("livesync x").get_application_name(),
            Some("livesync x")
        );
        let c = SourceConninfo::parse("host=h user=u application_name=mine").unwrap();
        assert_eq!(
            c.config_for("livesync x").get_application_name(),
            Some("mine")
        );
    }

    #[test]
    fn tls_keywords_are_read_like_libpq() {
        let c = SourceConninfo::parse(
            "host=h user=u sslmode=verify-full sslrootcert='/etc/ca dir/root.crt' password='a b'",
        )
        .unwrap();
        assert_eq!(c.tls().mode, SslMode::VerifyFull);
        assert_eq!(c.tls().root_cert.as_deref(), Some("/etc/ca dir/root.crt"));
        assert_eq!(c.config_for("x").get_password(), Some(&b"a b"[..]));
        let c = SourceConninfo::parse(
            "postgresql://u@h/db?sslmode=verify-ca&sslrootcert=%2Ftmp%2Fca.pem&connect_timeout=2",
        )
        .unwrap();
        assert_eq!(c.tls().mode, SslMode::VerifyCa);
        assert_eq!(c.tls().root_cert.as_deref(), Some("/tmp/ca.pem"));
        assert_eq!(c.connect_timeout(), Duration::from_secs(2));
        assert_eq!(
            SourceConninfo::parse("host=h user=u").unwrap().tls().mode,
            SslMode::Prefer
        );
        assert!(SourceConninfo::parse("host=h user=u sslmode=bogus").is_err());
    }

    #[test]
    fn password_files_match_like_libpq() {
        let text =
            "# comment\nother:5432:*:sync:nope\nsrc:*:app:sync:s3\\:cr\\\\et\n*:*:*:*:fallback\n";
        assert_eq!(
            password_from_text(text, "src", "6543", "app", "sync").as_deref(),
            Some("s3:cr\\et")
        );
        assert_eq!(
            password_from_text(text, "other", "5432", "x", "sync").as_deref(),
            Some("nope")
        );
        assert_eq!(
            password_from_text(text, "h", "1", "d", "u").as_deref(),
            Some("fallback")
        );
        assert_eq!(password_from_text("a:b:c\n", "a", "b", "c", "d"), None);

        let dir = std::env::temp_dir().join(format!("livesync-pgpass-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pgpass");
        std::fs::write(&file, "h:5432:db:u:from-file\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = SourceConninfo::parse(&format!(
            "host=h dbname=db user=u passfile='{}'",
            file.display()
        ))
        .unwrap();
        assert_eq!(c.config_for("x").get_password(), Some(&b"from-file"[..]));
        // A password in the conninfo wins; a group-readable file is ignored, as libpq does.
        let c = SourceConninfo::parse(&format!(
            "host=h dbname=db user=u password=given passfile='{}'",
            file.display()
        ))
        .unwrap();
        assert_eq!(c.config_for("x").get_password(), Some(&b"given"[..]));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let c = SourceConninfo::parse(&format!(
            "host=h dbname=db user=u passfile='{}'",
            file.display()
        ))
        .unwrap();
        assert_eq!(c.config_for("x").get_password(), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn output_settings_are_pinned_after_the_users_options() {
        let c = SourceConninfo::parse("host=h user=u").unwrap();
        assert_eq!(c.config_for("x").get_options(), Some(PINNED_OPTIONS));
        let c = SourceConninfo::parse("host=h user=u options='-c work_mem=64MB'").unwrap();
        assert_eq!(
            c.config_for("x").get_options(),
            Some(format!("-c work_mem=64MB {PINNED_OPTIONS}").as_str())
        );
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
