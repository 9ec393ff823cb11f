//! Connecting to a PostgreSQL server and discovering its cluster: where the data, WAL
//! and tablespaces live, who owns them, and the settings a copy depends on. What is
//! found is recorded with the set ([`ClusterLayout`]) so a copy can be verified and
//! restored while the server is down.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use postgres::{Client, NoTls};
use serde::{Deserialize, Serialize};

/// `[[sets.NAME.writers]] kind = "postgres"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresOptions {
    /// libpq URL, e.g. `postgresql:///postgres?host=/run/postgresql&port=5432`.
    pub url: String,
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
}

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A connection to `url` (libpq URL or key=value string).
pub fn connect(url: &str) -> Result<Client, ClusterError> {
    let mut config = postgres::Config::from_str(url).map_err(|source| ClusterError::BadUrl {
        url: url.to_string(),
        source,
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    if config.get_application_name().is_none() {
        config.application_name("shadowcopy");
    }
    config
        .connect(NoTls)
        .map_err(|source| ClusterError::Connect {
            url: url.to_string(),
            source,
        })
}

fn query(what: &'static str) -> impl Fn(postgres::Error) -> ClusterError {
    move |source| ClusterError::Query { what, source }
}

/// Reads the cluster's layout through `client` (connected to `url`).
pub fn discover(client: &mut Client, url: &str) -> Result<ClusterLayout, ClusterError> {
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
pub fn discover_url(url: &str) -> Result<ClusterLayout, ClusterError> {
    let mut client = connect(url)?;
    discover(&mut client, url)
}
