//! A set's specification: its writers, plain paths and options, resolved from the config
//! file or from zero-config flags, validated before any work starts, and recorded with every copy
//! (as JSON) so the copy can be verified and restored without the config file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shadowcopy_core::coordinator::DEFAULT_FREEZE_DEADLINE;
use shadowcopy_core::{Component, ComponentRole};
use shadowcopy_core::{Provider, Writer};
use shadowcopy_mariadb::MariaDbOptions;
use shadowcopy_postgres::PostgresOptions;
use shadowcopy_providers::exec::ExecProviderOptions;
use shadowcopy_providers::multi::{MultiVolumeProvider, Volume};
use shadowcopy_providers::ProviderOptions;
use shadowcopy_writers::exec::ExecOptions;
use shadowcopy_writers::fsfreeze::{mount_point, FsfreezeOptions};
use shadowcopy_writers::sqlite::SqliteOptions;
use shadowcopy_writers::{SetContext, WriterKind, WriterSpec};

use crate::config::{check_set_name, Config, HumanDuration, SetConfig};
use crate::error::UsageError;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetSpec {
    pub name: String,
    /// Application writers, frozen in this order.
    pub writers: Vec<WriterSpec>,
    /// Plain files and directories copied without an application writer.
    #[serde(default, with = "shadowcopy_core::pathjson::vec")]
    pub paths: Vec<PathBuf>,
    /// Freeze the file systems of all the set's data, after the application writers.
    #[serde(default)]
    pub fsfreeze: bool,
    /// `auto` or a provider kind.
    pub provider: String,
    pub freeze_deadline_ms: u64,
    #[serde(default, with = "shadowcopy_core::pathjson::option")]
    pub copies_dir: Option<PathBuf>,
    pub verify: bool,
    /// How often a verification reads everything (in between, only what changed since
    /// the set's newest verified copy); 0: always.
    #[serde(default = "default_full_verify_every_ms")]
    pub full_verify_every_ms: u64,
    /// This `create` verifies in full whatever the period says (`--full-verify`). Never
    /// recorded: it is about one run, not the set.
    #[serde(skip)]
    pub full_verify_now: bool,
    /// The exec provider this set uses (`provider = "exec:NAME"`), as configured when the
    /// copy was made, so the copy can be read and deleted without the config file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec_providers: Vec<ExecProviderOptions>,
    /// Per writer: its layout was discovered when this spec was resolved, in this
    /// process (so [`SetSpec::validate`] need not identify it again). Never recorded: a
    /// spec read from the catalog has none.
    #[serde(skip)]
    discovered: Vec<bool>,
}

/// What to copy and how: the command line's flags and an API request's JSON alike
/// (unknown fields are errors). Either `set` (configured) or the zero-config fields.
#[derive(clap::Args, Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CreateOptions {
    /// A set named in the config file
    #[arg(conflicts_with_all = ["sqlite", "postgres", "mariadb", "path", "fsfreeze", "name", "exec_writer"])]
    pub set: Option<String>,
    /// Zero-config: copy this SQLite database (WAL or rollback journal)
    #[arg(long, value_name = "PATH", help_heading = "Zero-config set")]
    pub sqlite: Option<PathBuf>,
    /// Zero-config: copy this PostgreSQL cluster, given by a libpq URL of a superuser
    /// connection (postgresql:///postgres?host=/run/postgresql&port=5432)
    #[arg(long, value_name = "URL", help_heading = "Zero-config set")]
    pub postgres: Option<String>,
    /// With --postgres: the cluster's WAL archive (for roll-forward restores; see `pg setup`)
    #[arg(
        long,
        value_name = "DIR",
        requires = "postgres",
        help_heading = "Zero-config set"
    )]
    pub pg_archive: Option<PathBuf>,
    /// With --postgres: a file whose first line is the password (instead of one in the
    /// URL; PGPASSWORD and ~/.pgpass or PGPASSFILE are read too). Passwords are never
    /// recorded or shown
    #[arg(
        long,
        value_name = "FILE",
        requires = "postgres",
        help_heading = "Zero-config set"
    )]
    pub pg_password_file: Option<PathBuf>,
    /// Zero-config: copy this MariaDB (or MySQL) server, given by a URL of a connection
    /// with the RELOAD privilege (mysql://root@localhost/?socket=/run/mysqld/mysqld.sock)
    /// or its unix socket's path
    #[arg(long, value_name = "URL", help_heading = "Zero-config set")]
    pub mariadb: Option<String>,
    /// With --mariadb: keep every binary log (by default a verified copy purges the ones
    /// no kept copy needs for a roll-forward)
    #[arg(long, requires = "mariadb", help_heading = "Zero-config set")]
    pub mariadb_keep_binlogs: bool,
    /// With --mariadb: a file whose first line is the password (instead of one in the
    /// URL; MYSQL_PWD and the [client] password of ~/.my.cnf are read too). Passwords are
    /// never recorded or shown
    #[arg(
        long,
        value_name = "FILE",
        requires = "mariadb",
        help_heading = "Zero-config set"
    )]
    pub mariadb_password_file: Option<PathBuf>,
    /// Zero-config: copy this file or directory as it is (repeat for more)
    #[arg(long = "path", value_name = "DIR", help_heading = "Zero-config set")]
    #[serde(rename = "paths")]
    pub path: Vec<PathBuf>,
    /// Zero-config: a hook script called with each event (freeze, thaw, …); repeat for more
    #[arg(
        long = "exec-writer",
        value_name = "SCRIPT",
        help_heading = "Zero-config set"
    )]
    #[serde(rename = "exec_writers")]
    pub exec_writer: Vec<PathBuf>,
    /// Freeze the file systems of the data (FIFREEZE) for a crash-consistent copy; a
    /// watchdog process thaws them if shadowcopy dies or hangs
    #[arg(long, help_heading = "Zero-config set")]
    pub fsfreeze: bool,
    /// Name of the zero-config set [default: the database's or first path's file name]
    #[arg(long, help_heading = "Zero-config set")]
    pub name: Option<String>,
    /// Storage provider: auto picks the fastest that can serve the data
    #[arg(long, value_name = "auto|btrfs|reflink|copy", help_heading = "Copy")]
    pub provider: Option<String>,
    /// Longest time from the first freeze to the end of the commit [default: 10s]
    #[arg(long, value_name = "DURATION", value_parser = crate::parse_duration, help_heading = "Copy")]
    pub freeze_deadline: Option<HumanDuration>,
    /// Where the copy provider keeps copies [default: beside the catalog]
    #[arg(long, value_name = "DIR", help_heading = "Copy")]
    pub copies_dir: Option<PathBuf>,
    /// Skip the integrity check after the copy (the copy is recorded as not verified)
    #[arg(long, help_heading = "Copy")]
    pub no_verify: bool,
    /// Verify the copy in full (every byte read, every page checked) even when the set's
    /// `full_verify_every` has not come round
    #[arg(long, conflicts_with = "no_verify", help_heading = "Copy")]
    pub full_verify: bool,
}

/// A full verification a week, incremental ones in between.
pub const DEFAULT_FULL_VERIFY_EVERY: Duration = Duration::from_secs(7 * 24 * 3600);

fn default_full_verify_every_ms() -> u64 {
    DEFAULT_FULL_VERIFY_EVERY.as_millis() as u64
}

impl SetSpec {
    /// The set `create` asks for: one named in the config file, else one made of the
    /// zero-config options.
    pub fn for_create(config: &Config, o: &CreateOptions) -> Result<SetSpec, UsageError> {
        match &o.set {
            Some(set) => SetSpec::from_config(config, set, o),
            None if o.sqlite.is_none()
                && o.postgres.is_none()
                && o.mariadb.is_none()
                && o.path.is_empty() =>
            {
                Err(UsageError::new(
                    "say what to copy: a set named in the config file (`create SET`), one SQLite database (`create --sqlite PATH`), a PostgreSQL cluster (`create --postgres URL`), a MariaDB server (`create --mariadb URL`), or files and directories (`create --path DIR`)",
                ))
            }
            None => SetSpec::zero_config(config, o),
        }
    }

    /// A set named in the config file, with what `o` overrides (provider, deadline,
    /// copies directory, verification).
    pub fn from_config(
        config: &Config,
        name: &str,
        o: &CreateOptions,
    ) -> Result<SetSpec, UsageError> {
        let set = config.set(name)?;
        let writers = set
            .writers
            .iter()
            .map(|w| {
                let mut w = w.clone();
                w.options_mut()
                    .normalize_paths(&|p, what| normalize(p, what).map_err(|e| e.to_string()))?;
                Ok(w)
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| UsageError::new(format!("set `{name}`: {e}")))?;
        SetSpec::resolve(
            name.to_string(),
            SetConfig {
                writers,
                paths: normalize_all(&set.paths, "path")
                    .map_err(|e| UsageError::new(format!("set `{name}`: {e}")))?,
                ..set.clone()
            },
            config,
            o,
        )
    }

    /// `create --sqlite PATH` and/or `create --path DIR...`: a set named after the
    /// database (or the first path) unless `--name` is given. The one place where the
    /// zero-config flags (each kind's [`shadowcopy_writers::KindInfo::ZERO_CONFIG_FLAG`])
    /// become writer specs.
    pub fn zero_config(config: &Config, z: &CreateOptions) -> Result<SetSpec, UsageError> {
        let sqlite = normalize_opt(z.sqlite.as_deref(), "--sqlite")?;
        let paths = normalize_all(&z.path, "--path")?;
        let postgres = match z.postgres.as_deref() {
            Some(url) => Some(PostgresOptions {
                archive: normalize_opt(z.pg_archive.as_deref(), "--pg-archive")?,
                password_file: normalize_opt(z.pg_password_file.as_deref(), "--pg-password-file")?,
                ..PostgresOptions::new(url)
            }),
            None => None,
        };
        let mariadb = match z.mariadb.as_deref() {
            Some(url) => Some(MariaDbOptions {
                purge_binlogs: !z.mariadb_keep_binlogs,
                password_file: normalize_opt(
                    z.mariadb_password_file.as_deref(),
                    "--mariadb-password-file",
                )?,
                ..MariaDbOptions::new(url)
            }),
            None => None,
        };
        if z.pg_archive.is_some() && postgres.is_none() {
            return Err(UsageError::new(
                "--pg-archive names the WAL archive of a --postgres cluster; give --postgres URL too",
            ));
        }
        // The set is named after what the user typed (`link.db`, not the file it points to).
        let first = z
            .sqlite
            .as_deref()
            .or(z.path.first().map(PathBuf::as_path))
            .map(lexical);
        if first.is_none() && postgres.is_none() && mariadb.is_none() {
            return Err(UsageError::new(
                "say what to copy: --sqlite PATH, --postgres URL, --mariadb URL, --path DIR, or a set from the config file",
            ));
        }
        let name = match (z.name.as_deref(), first) {
            (Some(n), _) => n.to_string(),
            (None, None) if postgres.is_none() => "mariadb".to_string(),
            (None, None) => "postgres".to_string(),
            (None, Some(first)) => first
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| {
                    UsageError::new(format!("{} names no file; pass --name", first.display()))
                })?,
        };
        if config.sets.contains_key(&name) {
            return Err(UsageError::new(format!(
                "`{name}` is a set in the config file; use `create {name}`, or pass --name for a separate zero-config set"
            )));
        }
        SetSpec::resolve(
            name,
            SetConfig {
                writers: sqlite
                    .map(|path| WriterSpec::Sqlite(SqliteOptions { path }))
                    .into_iter()
                    .chain(postgres.map(WriterSpec::Postgres))
                    .chain(mariadb.map(WriterSpec::Mariadb))
                    .chain(
                        normalize_all(&z.exec_writer, "--exec-writer")?
                            .into_iter()
                            .map(|script| {
                                WriterSpec::Exec(ExecOptions {
                                    script,
                                    timeout: None,
                                    events: None,
                                })
                            }),
                    )
                    .collect(),
                paths,
                fsfreeze: Some(z.fsfreeze),
                provider: None,
                freeze_deadline: None,
                copies_dir: None,
                verify: None,
                full_verify_every: None,
                archive: None,
                logs_push_every: None,
                archive_retention: None,
                retention: None,
                pre_restore_retention: None,
                schedule: None,
                verify_schedule: None,
            },
            config,
            z,
        )
    }

    /// The set `name` made of `source`, with the options `o` overrides, the config's
    /// defaults and the built-in ones filled in, each database server discovered (once).
    fn resolve(
        name: String,
        mut source: SetConfig,
        config: &Config,
        o: &CreateOptions,
    ) -> Result<SetSpec, UsageError> {
        check_set_name(&name)?;
        let d = &config.defaults;
        let deadline = o
            .freeze_deadline
            .map(|h| h.0)
            .or(source.freeze_deadline.map(|h| h.0))
            .or(d.freeze_deadline.map(|h| h.0))
            .unwrap_or(DEFAULT_FREEZE_DEADLINE);
        let freeze_deadline_ms = check_freeze_deadline(deadline)?;
        for w in &source.writers {
            w.options()
                .check()
                .map_err(|e| UsageError::new(format!("set `{name}`: {e}")))?;
        }
        let copies_dir = match o
            .copies_dir
            .clone()
            .or(source.copies_dir.take())
            .or(d.copies_dir.clone())
        {
            // Cleaned as written, never resolved here: the copies directory is where
            // root writes, and a symlink planted on its way (a user's `.copies` beside
            // their data) must be refused when the copy is made (the providers reach
            // it by handle), not followed now.
            Some(dir) if dir.as_os_str().is_empty() => {
                return Err(UsageError::new(format!(
                    "set `{}`: the copies directory is empty; give a directory",
                    name
                )))
            }
            Some(dir) => Some(lexical(&dir)),
            None => None,
        };
        // A database server's paths (PostgreSQL: data, WAL, tablespaces; MariaDB: data,
        // redo, undo, binlogs) come from the server: asked here, once per resolve.
        let discovered = source
            .writers
            .iter_mut()
            .map(|w| {
                w.options_mut().discover().map_err(|e| {
                    UsageError::new(format!(
                        "set `{}`: {}",
                        name,
                        shadowcopy_core::coordinator::chain(&*e)
                    ))
                })
            })
            .collect::<Result<Vec<bool>, UsageError>>()?;
        let provider = o
            .provider
            .clone()
            .or(source.provider)
            .or(d.provider.clone())
            .unwrap_or_else(|| "auto".into());
        let exec_providers = check_provider_name(&provider, config)?;
        let holds_data = source.writers.iter().any(WriterSpec::holds_data);
        if !holds_data && source.paths.is_empty() {
            return Err(UsageError::new(format!(
                "set `{}` names no data: give a database writer or paths (hooks alone copy nothing)",
                name
            )));
        }
        Ok(SetSpec {
            name,
            writers: source.writers,
            paths: source.paths,
            fsfreeze: source.fsfreeze.unwrap_or(false),
            provider,
            freeze_deadline_ms,
            copies_dir,
            verify: !o.no_verify && source.verify.or(d.verify).unwrap_or(true),
            full_verify_every_ms: source
                .full_verify_every
                .as_ref()
                .or(d.full_verify_every.as_ref())
                .map_or(DEFAULT_FULL_VERIFY_EVERY, |h| h.0)
                .as_millis() as u64,
            full_verify_now: o.full_verify,
            exec_providers,
            discovered,
        })
    }

    /// How often a verification reads everything (zero: every time).
    pub fn full_verify_every(&self) -> Duration {
        Duration::from_millis(self.full_verify_every_ms)
    }

    pub fn from_json(json: &str) -> Result<SetSpec, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// The spec as recorded with each copy. Paths that are not UTF-8 are kept as bytes
    /// ([`shadowcopy_core::pathjson`]); a name the server reported that JSON cannot hold
    /// is an error, which [`SetSpec::validate`] reports before anything is written.
    pub fn to_json(&self) -> Result<String, UsageError> {
        serde_json::to_string(self).map_err(|e| {
            UsageError::new(format!(
                "set `{}` cannot be recorded in the catalog ({e}); rename the files it names to UTF-8 names",
                self.name
            ))
        })
    }

    /// What makes two sets the same: their writers (without how they log in: a password
    /// file given one day and `PGPASSWORD` the next is the same server) and paths.
    pub fn identity(&self) -> (Vec<WriterSpec>, &[PathBuf]) {
        let writers = self
            .writers
            .iter()
            .map(|w| {
                let mut w = w.clone();
                w.options_mut().forget_credentials();
                w
            })
            .collect();
        (writers, &self.paths)
    }

    pub fn freeze_deadline(&self) -> Duration {
        Duration::from_millis(self.freeze_deadline_ms)
    }

    /// The set freezes file systems: `--fsfreeze`, or a configured `fsfreeze` writer.
    pub fn freezes_file_systems(&self) -> bool {
        self.fsfreeze || self.writers.iter().any(WriterSpec::freezes_file_systems)
    }

    /// Every data path of the set (what a provider must be able to serve).
    pub fn data_paths(&self) -> Vec<PathBuf> {
        let mut all: Vec<PathBuf> = Vec::new();
        for w in &self.writers {
            all.extend(w.options().data_paths());
        }
        all.extend(self.paths.iter().cloned());
        all.dedup();
        all
    }

    /// This set with its writers told that the provider snapshots every file at one
    /// instant (`atomic`: a btrfs snapshot of one volume), so they skip the checks that
    /// file-by-file copies need (MariaDB's of InnoDB's background writes). For this run
    /// only; never recorded.
    pub fn with_atomic_snapshot(&self, atomic: bool) -> SetSpec {
        let mut spec = self.clone();
        for w in spec.writers.iter_mut() {
            w.options_mut().set_atomic_snapshot(atomic);
        }
        spec
    }

    /// The application writers in order, then (with `fsfreeze`) the file-system freeze
    /// of all the data: applications flush first, file systems freeze last.
    pub fn build_writers(&self) -> Vec<Box<dyn Writer>> {
        let context = SetContext {
            set_name: self.name.clone(),
            data_paths: self.data_paths(),
        };
        let mut writers: Vec<Box<dyn Writer>> = self
            .writers
            .iter()
            .map(|w| shadowcopy_writers::build(w, &context))
            .collect();
        if self.fsfreeze {
            let fs = FsfreezeOptions {
                paths: self.data_paths(),
            };
            writers.push(fs.build(&context));
        }
        writers
    }

    /// The plain paths, as components without a writer.
    pub fn unmanaged_components(&self) -> Vec<Component> {
        self.paths
            .iter()
            .map(|p| Component {
                writer: "path".into(),
                name: p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "/".into()),
                role: ComponentRole::Data,
                path: p.clone(),
                required: true,
                pinned: false,
            })
            .collect()
    }

    /// Runs every writer's `identify` (reads only) and checks the plain paths: a missing
    /// file or a file of the wrong kind is reported here, before the catalog is touched.
    /// A writer whose server was discovered when this spec was resolved is not
    /// identified again (discovery connected and read its layout moments ago); the
    /// coordinator identifies every writer once more when the copy is made.
    pub fn validate(&self) -> Result<(), UsageError> {
        for p in &self.paths {
            let meta = p.metadata().map_err(|_| {
                UsageError::new(format!(
                    "set `{}`: {} does not exist",
                    self.name,
                    p.display()
                ))
            })?;
            check_kind(&self.name, p, &meta, "a regular file or a directory", |t| {
                t.is_file() || t.is_dir()
            })?;
        }
        for w in &self.writers {
            for p in w.options().regular_files() {
                // A missing file is the writer's to report (with its own advice).
                if let Ok(meta) = p.metadata() {
                    check_kind(&self.name, p, &meta, "a regular file", |t| t.is_file())?;
                }
            }
        }
        for (i, mut w) in self.build_writers().into_iter().enumerate() {
            if self.discovered.get(i).copied().unwrap_or(false) {
                continue;
            }
            w.identify()
                .map_err(|e| UsageError::new(format!("set `{}`: {e}", self.name)))?;
        }
        self.to_json()?;
        Ok(())
    }

    pub fn provider_options(&self, default_copies_dir: PathBuf) -> ProviderOptions {
        ProviderOptions {
            copies_dir: self.copies_dir.clone(),
            default_copies_dir,
            exec: self.exec_providers.clone(),
            parallelism: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .max(2),
        }
    }

    /// The provider this set asks for. Data on one file system gets one provider (`auto`:
    /// the fastest that can serve it); data on several gets the multi-volume provider,
    /// with one provider per volume chosen the same way.
    pub fn choose_provider(&self, opts: &ProviderOptions) -> Result<Arc<dyn Provider>, UsageError> {
        let volumes = self.volumes()?;
        if volumes.len() <= 1 {
            return self.choose_for(&self.data_paths(), None, opts);
        }
        let volumes = volumes
            .into_iter()
            .map(|(root, paths)| {
                Ok(Volume {
                    provider: self.choose_for(&paths, Some(&root), opts)?,
                    root,
                })
            })
            .collect::<Result<Vec<_>, UsageError>>()?;
        Ok(Arc::new(MultiVolumeProvider::new(volumes, opts)))
    }

    /// The set's data paths grouped by the file system (mount point) that holds them.
    pub fn volumes(&self) -> Result<Vec<(PathBuf, Vec<PathBuf>)>, UsageError> {
        let mut volumes: Vec<(PathBuf, Vec<PathBuf>)> = Vec::new();
        for p in self.data_paths() {
            let root = mount_point(&p)
                .map_err(|e| UsageError::new(format!("set `{}`: {e}", self.name)))?;
            match volumes.iter_mut().find(|(r, _)| *r == root) {
                Some((_, paths)) => paths.push(p),
                None => volumes.push((root, vec![p])),
            }
        }
        Ok(volumes)
    }

    /// One provider for `paths` (on `volume`, when the set spans several). A set that
    /// freezes its file systems needs a provider that writes elsewhere: a clone on a
    /// frozen file system would wait for the thaw.
    fn choose_for(
        &self,
        paths: &[PathBuf],
        volume: Option<&Path>,
        opts: &ProviderOptions,
    ) -> Result<Arc<dyn Provider>, UsageError> {
        let on = volume
            .map(|v| format!(" (volume {})", v.display()))
            .unwrap_or_default();
        let chosen = match self.provider.as_str() {
            "auto" if self.freezes_file_systems() => {
                shadowcopy_providers::choose_auto_off_the_data_file_system(opts, paths)
            }
            "auto" => shadowcopy_providers::choose_auto(opts, paths),
            kind => shadowcopy_providers::build(kind, opts),
        };
        let provider =
            chosen.map_err(|e| UsageError::new(format!("set `{}`{on}: {e}", self.name)))?;
        if let Err(why) = provider.check(paths) {
            return Err(UsageError::new(format!(
                "provider {} cannot serve set `{}`{on}: {why}",
                provider.kind(),
                self.name
            )));
        }
        if self.freezes_file_systems() && provider.capabilities().writes_to_the_data_file_system {
            return Err(UsageError::new(format!(
                "set `{}` freezes its file systems, and {} clones onto the frozen file system would wait for the thaw; use --provider copy with a copies directory elsewhere",
                self.name,
                provider.kind()
            )));
        }
        Ok(provider)
    }

    /// With `fsfreeze`, nothing shadowcopy writes during the freeze may live on a file
    /// system it freezes: not the catalog, not the copies.
    pub fn check_frozen_file_systems(
        &self,
        catalog_dir: &Path,
        opts: &ProviderOptions,
    ) -> Result<(), UsageError> {
        if !self.freezes_file_systems() {
            return Ok(());
        }
        let mut frozen = Vec::new();
        for p in self.data_paths() {
            let m = mount_point(&p)
                .map_err(|e| UsageError::new(format!("set `{}`: {e}", self.name)))?;
            if !frozen.contains(&m) {
                frozen.push(m);
            }
        }
        let copies = opts
            .copies_dir
            .clone()
            .unwrap_or_else(|| opts.default_copies_dir.clone());
        for (what, dir) in [
            ("catalog", catalog_dir.to_path_buf()),
            ("copies directory", copies),
        ] {
            let existing = dir
                .ancestors()
                .find(|a| a.exists())
                .unwrap_or(Path::new("/"))
                .to_path_buf();
            let m = mount_point(&existing).map_err(|e| UsageError::new(e.to_string()))?;
            if frozen.contains(&m) {
                return Err(UsageError::new(format!(
                    "the {what} {} is on {}, a file system this set freezes; put it elsewhere (--catalog, --copies-dir)",
                    dir.display(),
                    m.display()
                )));
            }
        }
        Ok(())
    }
}

/// Checks a provider name: `auto`, a built-in kind, or `exec:NAME` defined in the config
/// (whose options are returned, to be recorded with the set).
pub fn check_provider_name(
    name: &str,
    config: &Config,
) -> Result<Vec<ExecProviderOptions>, UsageError> {
    if name == "auto" || shadowcopy_providers::KINDS.contains(&name) {
        return Ok(Vec::new());
    }
    if let Some(exec) = name.strip_prefix(shadowcopy_providers::exec::PREFIX) {
        return config
            .exec_providers()
            .into_iter()
            .find(|p| p.name == exec)
            .map(|p| vec![p])
            .ok_or_else(|| {
                UsageError::new(format!(
                    "unknown provider `{name}`; define it in the config file as [providers.{exec}] with a `command`"
                ))
            });
    }
    Err(UsageError::new(format!(
        "unknown provider `{name}`; choose auto, one of: {}, or exec:NAME for a [providers.NAME] of the config file",
        shadowcopy_providers::KINDS.join(", ")
    )))
}

/// The shortest freeze deadline: a freeze shorter than a millisecond cannot hold a commit.
pub const MIN_FREEZE_DEADLINE: Duration = Duration::from_millis(1);
/// The longest: applications wait for the thaw (and the watchdog's timers) this long.
pub const MAX_FREEZE_DEADLINE: Duration = Duration::from_secs(3600);

/// The longest a hook (`exec` writer) may run for one event.
pub use shadowcopy_writers::exec::MAX_HOOK_TIMEOUT;

/// The deadline in whole milliseconds (rounded up, as the coordinator uses it), when it
/// lies between [`MIN_FREEZE_DEADLINE`] and [`MAX_FREEZE_DEADLINE`].
fn check_freeze_deadline(deadline: Duration) -> Result<u64, UsageError> {
    if !(MIN_FREEZE_DEADLINE..=MAX_FREEZE_DEADLINE).contains(&deadline) {
        return Err(UsageError::new(format!(
            "the freeze deadline {} is out of range: give between 1ms and 1h (--freeze-deadline, or freeze_deadline in the config file)",
            humantime::format_duration(deadline)
        )));
    }
    let ms = deadline.as_nanos().div_ceil(1_000_000);
    Ok(u64::try_from(ms).unwrap_or(u64::MAX))
}

fn check_kind(
    set: &str,
    p: &Path,
    meta: &std::fs::Metadata,
    wanted: &str,
    ok: impl Fn(&std::fs::FileType) -> bool,
) -> Result<(), UsageError> {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if ok(&t) {
        return Ok(());
    }
    let kind = if t.is_dir() {
        "a directory"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    };
    Err(UsageError::new(format!(
        "set `{set}`: {} is {kind}; shadowcopy copies {wanted}, so name the file or directory that holds the data",
        p.display()
    )))
}

/// `p` made absolute, with `.` and `..` resolved the way the kernel resolves them: the
/// part that exists is canonicalised (symlinks followed, so `link/..` is the parent of
/// the link's target, and a database reached through a symlink is recorded at its real
/// path, where SQLite keeps its `-wal`), the part that does not exist yet (a copies
/// directory to be made) is cleaned lexically. Done before anything is written, so a
/// set is recorded under one spelling of each path.
pub fn normalize(p: &Path, what: &str) -> Result<PathBuf, UsageError> {
    use std::path::Component;
    if p.as_os_str().is_empty() {
        return Err(UsageError::new(format!(
            "the {what} is empty; give a file or directory"
        )));
    }
    let abs = std::path::absolute(p).map_err(|e| {
        UsageError::new(format!(
            "cannot make the {what} {} absolute ({e}); give an absolute path",
            p.display()
        ))
    })?;
    let mut out = PathBuf::from("/");
    let mut exists = true;
    for c in abs.components() {
        match c {
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
            // `out` has no symlink in it (canonical, or below a missing directory), so
            // its parent is what `..` names.
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(name) => {
                out.push(name);
                if exists {
                    match std::fs::canonicalize(&out) {
                        Ok(real) => out = real,
                        Err(_) => exists = false,
                    }
                }
            }
        }
    }
    Ok(out)
}

fn normalize_opt(p: Option<&Path>, what: &str) -> Result<Option<PathBuf>, UsageError> {
    p.map(|p| normalize(p, what)).transpose()
}

fn normalize_all(paths: &[PathBuf], what: &str) -> Result<Vec<PathBuf>, UsageError> {
    paths.iter().map(|p| normalize(p, what)).collect()
}

/// `p` made absolute and cleaned of `.` and `..` without looking at the file system:
/// what the user named, for naming a set.
fn lexical(p: &Path) -> PathBuf {
    use std::path::Component;
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each kind's zero-config flag is a flag of `create` (the flags are fields of
    /// [`CreateOptions`], which clap's derive needs spelled out).
    #[test]
    fn every_zero_config_flag_is_a_create_flag() {
        use clap::Args;
        let create = CreateOptions::augment_args(clap::Command::new("create"));
        for k in shadowcopy_writers::KINDS {
            let Some(flag) = k.zero_config_flag else {
                continue;
            };
            let long = flag.strip_prefix("--").unwrap();
            assert!(
                create.get_arguments().any(|a| a.get_long() == Some(long)),
                "kind {} names {flag}, which `create` does not have",
                k.name
            );
        }
    }

    /// A writer discovered when the spec was resolved is not identified again by
    /// `validate`; one read back from the catalog is.
    #[test]
    fn validate_identifies_what_was_not_just_discovered() {
        let dir = tempfile::tempdir().unwrap();
        let json = serde_json::json!({
            "name": "s",
            "writers": [{"kind": "sqlite", "path": dir.path().join("missing.db")}],
            "paths": [dir.path()],
            "provider": "copy",
            "freeze_deadline_ms": 10000,
            "verify": true,
        })
        .to_string();
        let mut spec = SetSpec::from_json(&json).unwrap();
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        spec.discovered = vec![true];
        spec.validate().unwrap();
        assert!(!spec.to_json().unwrap().contains("discovered"));
    }
}
