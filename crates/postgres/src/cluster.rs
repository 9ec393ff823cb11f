//! Connecting to a PostgreSQL server and discovering its cluster: where the data, WAL
//! and tablespaces live, who owns them, and the settings a copy depends on. What is
//! found is recorded with the set ([`ClusterLayout`]) so a copy can be verified and
//! restored while the server is down.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use postgres::config::Host;
use postgres::{Client, NoTls};
use serde::{Deserialize, Serialize};
use shadowcopy_core::secret::{self, Secret, SecretUrl, UrlSyntax};

/// A libpq connection string with its password kept apart: shown and recorded without it.
pub type PgUrl = SecretUrl<LibpqUrl>;

/// libpq's two forms: `postgresql://user:password@host/db?password=...` and
/// `host=... password=...`.
pub struct LibpqUrl;

impl UrlSyntax for LibpqUrl {
    fn split(url: &str) -> (String, Option<String>) {
        if url.starts_with("postgresql://") || url.starts_with("postgres://") {
            secret::split_url(url, false)
        } else {
            split_key_values(url)
        }
    }
}

/// `key=value key2='quoted \' value'`: the `password` pair taken out.
fn split_key_values(s: &str) -> (String, Option<String>) {
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let mut kept = String::new();
    let mut password = None;
    let mut i = 0;
    while i < chars.len() {
        while i < chars.len() && chars[i].1.is_whitespace() {
            i += 1;
        }
        if i == chars.len() {
            break;
        }
        let start = chars[i].0;
        let mut key = String::new();
        while i < chars.len() && chars[i].1 != '=' && !chars[i].1.is_whitespace() {
            key.push(chars[i].1);
            i += 1;
        }
        while i < chars.len() && chars[i].1.is_whitespace() {
            i += 1;
        }
        let mut value = String::new();
        if i < chars.len() && chars[i].1 == '=' {
            i += 1;
            while i < chars.len() && chars[i].1.is_whitespace() {
                i += 1;
            }
            let quoted = i < chars.len() && chars[i].1 == '\'';
            if quoted {
                i += 1;
            }
            while i < chars.len() {
                let c = chars[i].1;
                if c == '\\' && i + 1 < chars.len() {
                    value.push(chars[i + 1].1);
                    i += 2;
                    continue;
                }
                if (quoted && c == '\'') || (!quoted && c.is_whitespace()) {
                    if quoted {
                        i += 1;
                    }
                    break;
                }
                value.push(c);
                i += 1;
            }
        }
        let end = chars.get(i).map_or(s.len(), |c| c.0);
        if key == "password" {
            password = Some(value);
        } else {
            if !kept.is_empty() {
                kept.push(' ');
            }
            kept.push_str(&s[start..end]);
        }
    }
    match password {
        Some(p) => (kept, Some(p)),
        None => (s.to_string(), None),
    }
}

/// `[[sets.NAME.writers]] kind = "postgres"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresOptions {
    /// libpq URL, e.g. `postgresql:///postgres?host=/run/postgresql&port=5432`. A
    /// password in it is used for this run and never recorded (see [`password`]).
    pub url: PgUrl,
    /// A file whose first line is the password (instead of one in the URL).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "shadowcopy_core::pathjson::option"
    )]
    pub password_file: Option<PathBuf>,
    /// The WAL archive this cluster's `archive_command` pushes to (`shadowcopy pg
    /// setup` prints the settings); roll-forward restores read it, and verified copies
    /// expire what no kept copy needs.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "shadowcopy_core::pathjson::option"
    )]
    pub archive: Option<PathBuf>,
    /// What discovery found when the set was resolved (filled in by shadowcopy, not
    /// written in the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<ClusterLayout>,
}

impl PostgresOptions {
    pub fn new(url: &str) -> PostgresOptions {
        PostgresOptions {
            url: PgUrl::new(url),
            password_file: None,
            archive: None,
            layout: None,
        }
    }
}

/// Where a cluster's files are and what a copy of it depends on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterLayout {
    pub data_dir: PathBuf,
    /// The WAL directory (`pg_wal`, or where the `pg_wal` symlink points).
    pub wal_dir: PathBuf,
    pub tablespaces: Vec<Tablespace>,
    /// Owner of the data directory: the user the server (and sandboxes) run as.
    pub owner_uid: u32,
    pub owner_gid: u32,
    /// The bootstrap superuser (role oid 10), used inside sandboxes.
    pub superuser: String,
    pub version_num: u32,
    pub version: String,
    pub data_checksums: bool,
    pub wal_segment_size: u64,
    pub system_identifier: String,
    pub archive_mode: String,
    pub archive_command: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tablespace {
    pub oid: u32,
    pub name: String,
    pub location: PathBuf,
}

impl ClusterLayout {
    /// Whether the WAL directory lives outside the data directory (`initdb --waldir`).
    pub fn separate_wal(&self) -> bool {
        !self.wal_dir.starts_with(&self.data_dir)
    }

    /// Every directory the cluster's files live in: data, WAL (when separate),
    /// tablespaces. The set's volumes are derived from these.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut all = vec![self.data_dir.clone()];
        if self.separate_wal() {
            all.push(self.wal_dir.clone());
        }
        all.extend(self.tablespaces.iter().map(|t| t.location.clone()));
        all
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{url:?} is not a PostgreSQL connection URL: {source}; write it in libpq form, e.g. postgresql:///postgres?host=/run/postgresql&port=5432")]
    BadUrl {
        url: String,
        #[source]
        source: postgres::Error,
    },
    #[error("cannot connect to PostgreSQL at {url}: {source}; is the server running, and does the URL name its socket directory and port?")]
    Connect {
        url: String,
        #[source]
        source: postgres::Error,
    },
    #[error("{what} failed: {source}")]
    Query {
        what: &'static str,
        #[source]
        source: postgres::Error,
    },
    #[error("the role connecting to {url} is not a superuser; shadowcopy needs one to read the data directory's location and run pg_backup_start (connect as the cluster owner, e.g. user=postgres)")]
    NotSuperuser { url: String },
    #[error("PostgreSQL {version} is older than 15; shadowcopy supports 15 and later (pg_backup_start/pg_backup_stop)")]
    TooOld { version: String },
    #[error("cannot read {} ({source}); shadowcopy must run on the database host, as root or the cluster's owner", .path.display())]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the password file {}; give a file readable by root whose first line is the password", .path.display())]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to `url` (libpq URL or key=value string; a password in it is used,
/// never shown).
pub fn connect(url: &str) -> Result<Client, ClusterError> {
    connect_with(&PostgresOptions::new(url))
}

/// A connection to the cluster `o` names, logged in with [`password`].
pub fn connect_with(o: &PostgresOptions) -> Result<Client, ClusterError> {
    let url = o.url.to_string();
    let mut config =
        postgres::Config::from_str(o.url.as_str()).map_err(|source| ClusterError::BadUrl {
            url: url.clone(),
            source,
        })?;
    if let Some(pw) = password(o, &config)? {
        config.password(pw.expose());
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("shadowcopy");
    }
    config
        .connect(NoTls)
        .map_err(|source| ClusterError::Connect { url, source })
}

/// The password to log in with, as libpq finds it: the URL's, else the first line of
/// `password_file`, else `PGPASSWORD`, else the first matching line of the password
/// file `PGPASSFILE` names or `~/.pgpass` (ignored, as libpq does, when group or
/// others can read it). None: log in without one (peer or trust authentication).
pub fn password(
    o: &PostgresOptions,
    config: &postgres::Config,
) -> Result<Option<Secret>, ClusterError> {
    if let Some(pw) = o.url.password() {
        return Ok(Some(pw.clone()));
    }
    if let Some(path) = &o.password_file {
        return Secret::read_file(path)
            .map(Some)
            .map_err(|source| ClusterError::PasswordFile {
                path: path.clone(),
                source,
            });
    }
    if let Some(pw) = std::env::var("PGPASSWORD").ok().filter(|p| !p.is_empty()) {
        return Ok(Some(Secret::new(pw)));
    }
    let file = match std::env::var_os("PGPASSFILE") {
        Some(f) => PathBuf::from(f),
        None => match std::env::var_os("HOME") {
            Some(home) => Path::new(&home).join(".pgpass"),
            None => return Ok(None),
        },
    };
    let Ok(meta) = std::fs::metadata(&file) else {
        return Ok(None);
    };
    use std::os::unix::fs::PermissionsExt;
    if !meta.is_file() || meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            "password file {} ignored: it must be a regular file only its owner can read (chmod 0600)",
            file.display()
        );
        return Ok(None);
    }
    let Ok(text) = std::fs::read_to_string(&file) else {
        return Ok(None);
    };
    let user = config
        .get_user()
        .map(str::to_string)
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "root".into());
    let host = match config.get_hosts().first() {
        None => "localhost".to_string(),
        Some(Host::Tcp(h)) => h.clone(),
        Some(Host::Unix(dir)) if is_default_socket_dir(dir) => "localhost".to_string(),
        Some(Host::Unix(dir)) => dir.to_string_lossy().into_owned(),
    };
    let port = config
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let db = config.get_dbname().unwrap_or(&user).to_string();
    Ok(pgpass_lookup(&text, [&host, &port, &db, &user]).map(Secret::new))
}

fn is_default_socket_dir(dir: &Path) -> bool {
    ["/var/run/postgresql", "/run/postgresql", "/tmp"]
        .iter()
        .any(|d| dir == Path::new(d))
}

/// The password of the first `host:port:database:user:password` line matching `wanted`
/// (`*` matches anything; `\:` and `\\` are a colon and a backslash).
fn pgpass_lookup(text: &str, wanted: [&str; 4]) -> Option<String> {
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => field.extend(chars.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut field)),
                c => field.push(c),
            }
        }
        fields.push(field);
        if fields.len() != 5 {
            continue;
        }
        if fields[..4]
            .iter()
            .zip(wanted)
            .all(|(f, w)| f == "*" || f == w)
        {
            return fields.pop();
        }
    }
    None
}

fn query(what: &'static str) -> impl Fn(postgres::Error) -> ClusterError {
    move |source| ClusterError::Query { what, source }
}

/// Reads the cluster's layout through `client` (connected to `url`).
pub fn discover(client: &mut Client, url: &str) -> Result<ClusterLayout, ClusterError> {
    tracing::debug!("discovering the layout of a PostgreSQL cluster");
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int,
                    current_setting('server_version'),
                    (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)",
            &[],
        )
        .map_err(query("reading the server version"))?;
    let version_num: i32 = row.get(0);
    let version: String = row.get(1);
    let superuser: bool = row.get(2);
    if version_num < 150000 {
        return Err(ClusterError::TooOld { version });
    }
    if !superuser {
        return Err(ClusterError::NotSuperuser {
            url: url.to_string(),
        });
    }
    let row = client
        .query_one(
            "SELECT current_setting('data_directory'),
                    current_setting('data_checksums') = 'on',
                    (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size')::bigint,
                    current_setting('archive_mode'),
                    current_setting('archive_command'),
                    (SELECT system_identifier::text FROM pg_control_system()),
                    (SELECT rolname::text FROM pg_roles WHERE oid = 10)",
            &[],
        )
        .map_err(query("reading the cluster's settings"))?;
    let configured = PathBuf::from(row.get::<_, String>(0));
    let data_dir = std::fs::canonicalize(&configured).map_err(|source| ClusterError::Local {
        path: configured.clone(),
        source,
    })?;
    let tablespaces = client
        .query(
            "SELECT oid::int8, spcname::text, pg_tablespace_location(oid)
               FROM pg_tablespace WHERE pg_tablespace_location(oid) <> '' ORDER BY oid",
            &[],
        )
        .map_err(query("listing tablespaces"))?
        .iter()
        .map(|r| Tablespace {
            oid: r.get::<_, i64>(0) as u32,
            name: r.get(1),
            location: PathBuf::from(r.get::<_, String>(2)),
        })
        .collect();
    let meta = std::fs::metadata(&data_dir).map_err(|source| ClusterError::Local {
        path: data_dir.clone(),
        source,
    })?;
    let wal_dir = wal_dir_of(&data_dir)?;
    use std::os::unix::fs::MetadataExt;
    Ok(ClusterLayout {
        wal_dir,
        tablespaces,
        owner_uid: meta.uid(),
        owner_gid: meta.gid(),
        superuser: row.get(6),
        version_num: version_num as u32,
        version,
        data_checksums: row.get(1),
        wal_segment_size: row.get::<_, i64>(2) as u64,
        archive_mode: row.get(3),
        archive_command: row.get(4),
        system_identifier: row.get(5),
        data_dir,
    })
}

/// The data directory's `pg_wal`, resolved when it is a symlink to a separate directory.
fn wal_dir_of(data_dir: &Path) -> Result<PathBuf, ClusterError> {
    let pg_wal = data_dir.join("pg_wal");
    std::fs::canonicalize(&pg_wal).map_err(|source| ClusterError::Local {
        path: pg_wal,
        source,
    })
}

/// Connects and discovers in one step (what `create --postgres URL` and `writers` do).
pub fn discover_cluster(o: &PostgresOptions) -> Result<ClusterLayout, ClusterError> {
    let mut client = connect_with(o)?;
    discover(&mut client, o.url.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_taken_out_of_both_libpq_forms() {
        let u = PgUrl::new("postgresql://adv:S3cretPg@/postgres?host=/tmp/s&port=5433");
        assert_eq!(
            u.as_str(),
            "postgresql://adv@/postgres?host=/tmp/s&port=5433"
        );
        assert_eq!(u.password().map(Secret::expose), Some("S3cretPg"));
        let u = PgUrl::new("host=/tmp/s port=5433 password = 'S3 \\'cret' user=adv");
        assert_eq!(u.as_str(), "host=/tmp/s port=5433 user=adv");
        assert_eq!(u.password().map(Secret::expose), Some("S3 'cret"));
        let u = PgUrl::new("host=/tmp/s user=adv");
        assert_eq!(u.as_str(), "host=/tmp/s user=adv");
        assert!(u.password().is_none());
        let o = PostgresOptions::new("postgresql:///postgres?password=S3cretPg&host=/x");
        let json = serde_json::to_string(&o).unwrap();
        assert!(
            !json.contains("S3cretPg") && json.contains("host=/x"),
            "{json}"
        );
        assert!(!format!("{o:?}").contains("S3cretPg"));
    }

    #[test]
    fn pgpass_lines_match_like_libpq() {
        let text = "# comment\nother:5432:*:adv:no\n/tmp/s:5433:*:adv:p\\:w\\\\d\n*:*:*:*:any\n";
        assert_eq!(
            pgpass_lookup(text, ["/tmp/s", "5433", "postgres", "adv"]).as_deref(),
            Some("p:w\\d")
        );
        assert_eq!(
            pgpass_lookup(text, ["h", "1", "d", "u"]).as_deref(),
            Some("any")
        );
        assert_eq!(pgpass_lookup("a:b:c:d\n", ["a", "b", "c", "d"]), None);
    }
}
