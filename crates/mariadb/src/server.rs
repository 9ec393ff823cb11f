//! Connecting to a MariaDB or MySQL server and discovering it: its flavour and version,
//! where the data directory, the InnoDB redo log, the undo tablespaces and the binary
//! logs are, who owns them, and which storage engines its tables use. What is found is
//! recorded with the set ([`ServerLayout`]) so that a copy can be verified and restored
//! while the server is down.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mysql::prelude::Queryable;
use mysql::{Conn, Opts, OptsBuilder};
use serde::{Deserialize, Serialize};
use shadowcopy_core::secret::{self, Secret, SecretUrl, UrlSyntax};

/// A server's URL with its password kept apart: shown and recorded without it.
pub type ServerUrl = SecretUrl<MysqlUrl>;

/// `mysql://user:password@host/?password=...`, or a socket path (no password).
pub struct MysqlUrl;

impl UrlSyntax for MysqlUrl {
    fn split(url: &str) -> (String, Option<String>) {
        if url.starts_with('/') {
            return (url.to_string(), None);
        }
        secret::split_url(url, true)
    }
}

/// `[[sets.NAME.writers]] kind = "mariadb"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MariaDbOptions {
    /// `mysql://root@localhost/?socket=/run/mysqld/mysqld.sock` (the user defaults to
    /// root), or just the path of the server's unix socket. A password in it is used
    /// for this run and never recorded (see [`password`]).
    pub url: ServerUrl,
    /// A file whose first line is the password (instead of one in the URL).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "shadowcopy_core::pathjson::option"
    )]
    pub password_file: Option<PathBuf>,
    /// After a verified copy, purge the binary logs that no kept copy of the set needs
    /// for a roll-forward (`PURGE BINARY LOGS TO`). Default true.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub purge_binlogs: bool,
    /// What discovery found when the set was resolved (filled in by shadowcopy, not
    /// written in the config file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<ServerLayout>,
    /// Set for one run by the command line when the provider snapshots every file of the
    /// set at one instant (a btrfs snapshot of one volume): the InnoDB background-write
    /// check of per-file copies is then not needed. Never recorded.
    #[serde(skip)]
    pub atomic_snapshot: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl MariaDbOptions {
    pub fn new(url: impl Into<String>) -> MariaDbOptions {
        MariaDbOptions {
            url: ServerUrl::new(&url.into()),
            password_file: None,
            purge_binlogs: true,
            layout: None,
            atomic_snapshot: false,
        }
    }
}

/// MariaDB or MySQL: they freeze differently.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavour {
    MariaDb,
    MySql,
}

impl Flavour {
    pub fn as_str(self) -> &'static str {
        match self {
            Flavour::MariaDb => "MariaDB",
            Flavour::MySql => "MySQL",
        }
    }

    /// From `SELECT VERSION()`: `10.11.6-MariaDB-0+deb12u1-log` or `8.0.36`.
    pub fn of_version(version: &str) -> Flavour {
        if version.to_ascii_lowercase().contains("mariadb") {
            Flavour::MariaDb
        } else {
            Flavour::MySql
        }
    }
}

/// Where a server's binary logs are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinlogLayout {
    pub dir: PathBuf,
    /// The files' base name: `mariadb-bin` for `mariadb-bin.000001`.
    pub basename: String,
    /// The index file (`log_bin_index`).
    pub index: PathBuf,
    /// ROW, MIXED or STATEMENT.
    pub format: String,
}

impl BinlogLayout {
    /// Whether `name` is one of the numbered binary logs (`basename.000042`).
    pub fn is_log_name(&self, name: &str) -> bool {
        crate::position::binlog_number(name).is_some_and(|(base, _)| base == self.basename)
    }
}

/// How many tables of one storage engine there are (system schemas left out).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineUse {
    pub engine: String,
    pub tables: u64,
    pub transactional: bool,
}

/// Where a server's files are and what a copy of it depends on. Two layouts are equal
/// when they describe the same files (a set's identity): the version, settings and the
/// tables may change between copies of one server.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerLayout {
    pub flavour: Flavour,
    /// `SELECT VERSION()`.
    pub version: String,
    pub datadir: PathBuf,
    /// Where the redo log (`ib_logfile0`) is.
    pub innodb_log_dir: PathBuf,
    /// Where the undo tablespaces are.
    pub undo_dir: PathBuf,
    /// Where the system tablespace (`ibdata1`) is.
    pub innodb_data_home_dir: PathBuf,
    pub innodb_data_file_path: String,
    pub innodb_undo_tablespaces: u32,
    pub innodb_page_size: u32,
    pub innodb_log_file_size: u64,
    pub lower_case_table_names: u32,
    /// `None`: the binary log is off (no roll-forward, nothing to purge).
    pub binlog: Option<BinlogLayout>,
    /// Owner of the data directory: the user the server (and sandboxes) run as.
    pub owner_uid: u32,
    pub owner_gid: u32,
    pub pid_file: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub log_error: Option<PathBuf>,
    pub server_id: u32,
    /// The storage engines of the users' tables.
    pub engines: Vec<EngineUse>,
    /// Up to 20 tables of non-transactional engines (`db.table (MyISAM)`).
    pub non_transactional: Vec<String>,
}

impl PartialEq for ServerLayout {
    fn eq(&self, other: &Self) -> bool {
        let files = |l: &ServerLayout| {
            (
                l.flavour,
                l.datadir.clone(),
                l.innodb_log_dir.clone(),
                l.undo_dir.clone(),
                l.innodb_data_home_dir.clone(),
                l.binlog
                    .as_ref()
                    .map(|b| (b.dir.clone(), b.basename.clone(), b.index.clone())),
            )
        };
        files(self) == files(other)
    }
}

impl Eq for ServerLayout {}

impl ServerLayout {
    /// The directories holding the server's files that live outside the data directory
    /// (redo log, undo tablespaces, system tablespace, binary logs), with their roles.
    pub fn separate_dirs(&self) -> Vec<(&'static str, &Path)> {
        let mut out: Vec<(&'static str, &Path)> = Vec::new();
        for (name, p) in [
            ("redo", self.innodb_log_dir.as_path()),
            ("undo", self.undo_dir.as_path()),
            ("system tablespace", self.innodb_data_home_dir.as_path()),
        ]
        .into_iter()
        .chain(self.binlog.as_ref().map(|b| ("binlog", b.dir.as_path())))
        {
            if !p.starts_with(&self.datadir) && !out.iter().any(|(_, q)| *q == p) {
                out.push((name, p));
            }
        }
        out
    }

    /// Every directory the server's files live in (the set's volumes come from these).
    pub fn paths(&self) -> Vec<PathBuf> {
        std::iter::once(self.datadir.clone())
            .chain(
                self.separate_dirs()
                    .into_iter()
                    .map(|(_, p)| p.to_path_buf()),
            )
            .collect()
    }

    /// The directories of InnoDB and table files (all of them but the binlog's own).
    pub fn data_roots(&self) -> Vec<PathBuf> {
        let binlog = self.binlog.as_ref().map(|b| b.dir.as_path());
        std::iter::once(self.datadir.clone())
            .chain(
                self.separate_dirs()
                    .into_iter()
                    .filter(|(_, p)| Some(*p) != binlog)
                    .map(|(_, p)| p.to_path_buf()),
            )
            .collect()
    }

    /// One line on non-transactional tables, when there are any.
    pub fn non_transactional_warning(&self) -> Option<String> {
        let n: u64 = self
            .engines
            .iter()
            .filter(|e| !e.transactional)
            .map(|e| e.tables)
            .sum();
        if n == 0 {
            return None;
        }
        let how = match self.flavour {
            Flavour::MariaDb => "BACKUP STAGE BLOCK_COMMIT",
            Flavour::MySql => "FLUSH TABLES WITH READ LOCK",
        };
        Some(format!(
            "{n} table{} use{} a non-transactional engine ({}{}): {how} holds every write to them (not only commits) for the whole freeze window, and MEMORY tables are empty in every copy; convert them to InnoDB for shorter freezes",
            if n == 1 { "" } else { "s" },
            if n == 1 { "s" } else { "" },
            self.non_transactional.join(", "),
            if n as usize > self.non_transactional.len() { ", …" } else { "" }
        ))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{url:?} is neither a MySQL URL (mysql://root@localhost/?socket=/run/mysqld/mysqld.sock) nor the path of a unix socket: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot connect to the server at {url}: {source}; is it running, and does the URL name its socket (?socket=PATH) or host and port?")]
    Connect {
        url: String,
        #[source]
        source: mysql::Error,
    },
    #[error("{what} failed: {source}")]
    Query {
        what: &'static str,
        #[source]
        source: mysql::Error,
    },
    #[error("{flavour} {version} is too old: shadowcopy needs MariaDB 10.4.1 or later (BACKUP STAGE) or MySQL 8.0 or later (LOCK INSTANCE FOR BACKUP)")]
    TooOld {
        flavour: &'static str,
        version: String,
    },
    #[error("the server did not report `{0}`; is this a MariaDB or MySQL server?")]
    Missing(&'static str),
    #[error("cannot read {} ({source}); shadowcopy must run on the database host, as root or the server's user", .path.display())]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("table files outside the server's directories are not supported yet ({0}); move those tables into the data directory (ALTER TABLE … ENGINE=InnoDB without DATA DIRECTORY)")]
    DataDirectoryTables(String),
    #[error("{what} = {value} is not supported yet; keep it in the data directory")]
    Unsupported { what: &'static str, value: String },
    #[error("cannot read the password file {}; give a file readable by root whose first line is the password", .path.display())]
    PasswordFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection options for `url` (a `mysql://` URL or a socket path); the user defaults
/// to root (as which shadowcopy runs: unix_socket authentication lets it in).
pub fn opts(url: &str) -> Result<Opts, ServerError> {
    let base = if url.starts_with('/') {
        OptsBuilder::new().socket(Some(url))
    } else {
        let parsed = Opts::from_url(url).map_err(|e| ServerError::BadUrl {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        OptsBuilder::from_opts(parsed)
    };
    let has_user = Opts::from(base.clone()).get_user().is_some();
    let mut b = base.tcp_connect_timeout(Some(CONNECT_TIMEOUT));
    if !has_user {
        b = b.user(Some("root"));
    }
    Ok(b.into())
}

/// A connection to `url` (a password in it is used, never shown).
pub fn connect(url: &str) -> Result<Conn, ServerError> {
    connect_with(&MariaDbOptions::new(url))
}

/// A connection to the server `o` names, logged in with [`password`].
pub fn connect_with(o: &MariaDbOptions) -> Result<Conn, ServerError> {
    let mut b = OptsBuilder::from_opts(opts(o.url.as_str())?);
    if let Some(pw) = password(o)? {
        b = b.pass(Some(pw.expose()));
    }
    Conn::new(b).map_err(|source| ServerError::Connect {
        url: o.url.to_string(),
        source,
    })
}

/// The password to log in with: the URL's, else the first line of `password_file`,
/// else `MYSQL_PWD`, else `password` in the `[client]`, `[client-server]` or
/// `[client-mariadb]` group of `~/.my.cnf`. None: log in without one (root over the
/// socket: unix_socket authentication).
pub fn password(o: &MariaDbOptions) -> Result<Option<Secret>, ServerError> {
    if let Some(pw) = o.url.password() {
        return Ok(Some(pw.clone()));
    }
    if let Some(path) = &o.password_file {
        return Secret::read_file(path)
            .map(Some)
            .map_err(|source| ServerError::PasswordFile {
                path: path.clone(),
                source,
            });
    }
    if let Some(pw) = std::env::var("MYSQL_PWD").ok().filter(|p| !p.is_empty()) {
        return Ok(Some(Secret::new(pw)));
    }
    let Some(home) = std::env::var_os("HOME") else {
        return Ok(None);
    };
    let Ok(text) = std::fs::read_to_string(Path::new(&home).join(".my.cnf")) else {
        return Ok(None);
    };
    Ok(option_file_password(&text).map(Secret::new))
}

/// `password` of the client groups of a MySQL option file.
fn option_file_password(text: &str) -> Option<String> {
    let mut in_client = false;
    let mut found = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            let group = line.trim_matches(|c| c == '[' || c == ']').trim();
            in_client = matches!(group, "client" | "client-server" | "client-mariadb");
            continue;
        }
        if !in_client || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            if key.trim() == "password" {
                let v = value.trim();
                let unquoted = v
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                    .unwrap_or(v);
                found = Some(unquoted.to_string());
            }
        }
    }
    found
}

pub(crate) fn query(what: &'static str) -> impl Fn(mysql::Error) -> ServerError {
    move |source| ServerError::Query { what, source }
}

const VARIABLES: &[&str] = &[
    "datadir",
    "innodb_log_group_home_dir",
    "innodb_undo_directory",
    "innodb_data_home_dir",
    "innodb_data_file_path",
    "innodb_undo_tablespaces",
    "innodb_page_size",
    "innodb_log_file_size",
    "lower_case_table_names",
    "log_bin",
    "log_bin_basename",
    "log_bin_index",
    "binlog_format",
    "pid_file",
    "socket",
    "log_error",
    "server_id",
    "aria_log_dir_path",
];

/// Engines whose tables commit and recover with their log.
const TRANSACTIONAL: &[&str] = &["InnoDB", "ROCKSDB", "TokuDB", "ndbcluster"];

/// Reads the server's layout through `conn`.
pub fn discover(conn: &mut Conn) -> Result<ServerLayout, ServerError> {
    tracing::debug!("discovering the layout of a MariaDB server");
    let version: String = conn
        .query_first("SELECT VERSION()")
        .map_err(query("reading the server version"))?
        .ok_or(ServerError::Missing("version"))?;
    let flavour = Flavour::of_version(&version);
    check_version(flavour, &version)?;
    let list = VARIABLES
        .iter()
        .map(|v| format!("'{v}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let vars: BTreeMap<String, String> = conn
        .query::<(String, Option<String>), _>(format!(
            "SHOW GLOBAL VARIABLES WHERE Variable_name IN ({list})"
        ))
        .map_err(query("reading the server's settings"))?
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.unwrap_or_default()))
        .collect();
    let get = |k: &'static str| vars.get(k).map(String::as_str);
    let configured = PathBuf::from(get("datadir").ok_or(ServerError::Missing("datadir"))?);
    let datadir = canonical(&configured)?;
    let resolve = |k: &'static str| -> Result<PathBuf, ServerError> {
        match get(k) {
            None | Some("") | Some("./") | Some(".") => Ok(datadir.clone()),
            Some(v) => canonical(&datadir.join(v)),
        }
    };
    let innodb_log_dir = resolve("innodb_log_group_home_dir")?;
    let undo_dir = resolve("innodb_undo_directory")?;
    let innodb_data_home_dir = resolve("innodb_data_home_dir")?;
    let innodb_data_file_path = get("innodb_data_file_path").unwrap_or("").to_string();
    if innodb_data_file_path.contains('/') {
        return Err(ServerError::Unsupported {
            what: "innodb_data_file_path with directories",
            value: innodb_data_file_path,
        });
    }
    if let Some(aria) = get("aria_log_dir_path") {
        if !aria.is_empty() && resolve("aria_log_dir_path")? != datadir {
            return Err(ServerError::Unsupported {
                what: "aria_log_dir_path",
                value: aria.to_string(),
            });
        }
    }
    let number = |k: &'static str| get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let binlog = if matches!(get("log_bin"), Some("ON") | Some("1")) {
        let basename =
            PathBuf::from(get("log_bin_basename").ok_or(ServerError::Missing("log_bin_basename"))?);
        let basename = if basename.is_absolute() {
            basename
        } else {
            datadir.join(basename)
        };
        let dir = canonical(basename.parent().unwrap_or(&datadir))?;
        let index = match get("log_bin_index") {
            Some(i) if !i.is_empty() => {
                let i = PathBuf::from(i);
                if i.is_absolute() {
                    i
                } else {
                    datadir.join(i)
                }
            }
            _ => basename.with_extension("index"),
        };
        let index = match (index.parent(), index.file_name()) {
            (Some(p), Some(n)) => canonical(p)?.join(n),
            _ => index,
        };
        Some(BinlogLayout {
            dir,
            basename: basename
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            index,
            format: get("binlog_format").unwrap_or("").to_string(),
        })
    } else {
        None
    };
    let path_of = |k: &'static str| -> Option<PathBuf> {
        match get(k) {
            None | Some("") | Some("stderr") => None,
            Some(v) => Some(datadir.join(v)),
        }
    };
    let meta = std::fs::metadata(&datadir).map_err(|source| ServerError::Local {
        path: datadir.clone(),
        source,
    })?;
    let (engines, non_transactional) = engines(conn)?;
    outside_tables(conn, &datadir, &undo_dir, &innodb_data_home_dir)?;
    Ok(ServerLayout {
        flavour,
        version,
        innodb_log_dir,
        undo_dir,
        innodb_data_home_dir,
        innodb_data_file_path,
        innodb_undo_tablespaces: number("innodb_undo_tablespaces") as u32,
        innodb_page_size: number("innodb_page_size") as u32,
        innodb_log_file_size: number("innodb_log_file_size"),
        lower_case_table_names: number("lower_case_table_names") as u32,
        binlog,
        owner_uid: meta.uid(),
        owner_gid: meta.gid(),
        pid_file: path_of("pid_file"),
        socket: path_of("socket"),
        log_error: path_of("log_error"),
        server_id: number("server_id") as u32,
        engines,
        non_transactional,
        datadir,
    })
}

fn check_version(flavour: Flavour, version: &str) -> Result<(), ServerError> {
    let nums: Vec<u32> = version
        .split(|c: char| !c.is_ascii_digit())
        .take(3)
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    let v = (
        nums.first().copied().unwrap_or(0),
        nums.get(1).copied().unwrap_or(0),
        nums.get(2).copied().unwrap_or(0),
    );
    let ok = match flavour {
        Flavour::MariaDb => v >= (10, 4, 1),
        Flavour::MySql => v >= (8, 0, 0),
    };
    if ok {
        Ok(())
    } else {
        Err(ServerError::TooOld {
            flavour: flavour.as_str(),
            version: version.to_string(),
        })
    }
}

type Engines = (Vec<EngineUse>, Vec<String>);

fn engines(conn: &mut Conn) -> Result<Engines, ServerError> {
    let rows: Vec<(String, String, Option<String>)> = conn
        .query(
            "SELECT TABLE_SCHEMA, TABLE_NAME, ENGINE FROM information_schema.TABLES \
              WHERE TABLE_TYPE = 'BASE TABLE' AND TABLE_SCHEMA NOT IN \
              ('mysql', 'information_schema', 'performance_schema', 'sys') \
              ORDER BY TABLE_SCHEMA, TABLE_NAME",
        )
        .map_err(query("listing the tables' storage engines"))?;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut named = Vec::new();
    for (schema, table, engine) in rows {
        let engine = engine.unwrap_or_else(|| "unknown".into());
        if !TRANSACTIONAL
            .iter()
            .any(|t| t.eq_ignore_ascii_case(&engine))
            && named.len() < 20
        {
            named.push(format!("{schema}.{table} ({engine})"));
        }
        *counts.entry(engine).or_default() += 1;
    }
    let engines = counts
        .into_iter()
        .map(|(engine, tables)| EngineUse {
            transactional: TRANSACTIONAL
                .iter()
                .any(|t| t.eq_ignore_ascii_case(&engine)),
            engine,
            tables,
        })
        .collect();
    Ok((engines, named))
}

/// Refuses InnoDB tablespaces outside the server's directories (`DATA DIRECTORY`).
fn outside_tables(
    conn: &mut Conn,
    datadir: &Path,
    undo: &Path,
    system: &Path,
) -> Result<(), ServerError> {
    // MariaDB 10.6+; older servers and MySQL name it differently (then nothing is checked
    // here, and the sandbox refuses copies holding .isl links).
    let Ok(files) =
        conn.query::<String, _>("SELECT FILENAME FROM information_schema.INNODB_SYS_TABLESPACES")
    else {
        return Ok(());
    };
    let outside: Vec<String> = files
        .into_iter()
        .filter(|f| {
            let p = Path::new(f);
            p.is_absolute() && ![datadir, undo, system].iter().any(|d| p.starts_with(d))
        })
        .take(5)
        .collect();
    if outside.is_empty() {
        Ok(())
    } else {
        Err(ServerError::DataDirectoryTables(outside.join(", ")))
    }
}

fn canonical(p: &Path) -> Result<PathBuf, ServerError> {
    std::fs::canonicalize(p).map_err(|source| ServerError::Local {
        path: p.to_path_buf(),
        source,
    })
}

/// Connects and discovers in one step (what `create --mariadb URL` and `writers` do).
pub fn discover_server(o: &MariaDbOptions) -> Result<ServerLayout, ServerError> {
    let mut conn = connect_with(o)?;
    discover(&mut conn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavour_and_version_are_told_apart() {
        assert_eq!(
            Flavour::of_version("10.11.6-MariaDB-0+deb12u1-log"),
            Flavour::MariaDb
        );
        assert_eq!(Flavour::of_version("8.0.36"), Flavour::MySql);
        assert!(check_version(Flavour::MariaDb, "10.11.6-MariaDB").is_ok());
        assert!(check_version(Flavour::MariaDb, "10.3.39-MariaDB").is_err());
        assert!(check_version(Flavour::MySql, "8.0.36").is_ok());
        assert!(check_version(Flavour::MySql, "5.7.44-log").is_err());
    }

    #[test]
    fn urls_and_socket_paths_default_to_root() {
        let o = opts("mysql://localhost/?socket=/run/mysqld/mysqld.sock").unwrap();
        assert_eq!(o.get_user(), Some("root"));
        assert_eq!(o.get_socket(), Some("/run/mysqld/mysqld.sock"));
        let o = opts("/tmp/x.sock").unwrap();
        assert_eq!(o.get_user(), Some("root"));
        assert_eq!(o.get_socket(), Some("/tmp/x.sock"));
        let o = opts("mysql://backup:secret@db:3307/").unwrap();
        assert_eq!(o.get_user(), Some("backup"));
        assert_eq!(o.get_tcp_port(), 3307);
        assert!(opts("postgresql:///x").is_err());
    }

    #[test]
    fn passwords_come_from_the_url_or_a_file_and_are_never_shown() {
        let o = MariaDbOptions::new("mysql://adv:S3cretPw@127.0.0.1:33999/?socket=/x.sock");
        assert_eq!(
            o.url.as_str(),
            "mysql://adv@127.0.0.1:33999/?socket=/x.sock"
        );
        assert_eq!(password(&o).unwrap().unwrap().expose(), "S3cretPw");
        let json = serde_json::to_string(&o).unwrap();
        assert!(!json.contains("S3cretPw"), "{json}");
        assert!(!format!("{o:?}").contains("S3cretPw"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "FromFile\n").unwrap();
        let o = MariaDbOptions {
            password_file: Some(file),
            ..MariaDbOptions::new("mysql://adv@h/")
        };
        assert_eq!(password(&o).unwrap().unwrap().expose(), "FromFile");
        let missing = MariaDbOptions {
            password_file: Some(dir.path().join("nope")),
            ..MariaDbOptions::new("mysql://adv@h/")
        };
        assert!(matches!(
            password(&missing),
            Err(ServerError::PasswordFile { .. })
        ));
        assert_eq!(
            option_file_password("[mysqld]\npassword=no\n[client]\nuser=x\npassword = \"a b\"\n"),
            Some("a b".to_string())
        );
    }
}
