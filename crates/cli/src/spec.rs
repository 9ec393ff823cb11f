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
use shadowcopy_writers::{SetContext, WriterSpec};

use crate::config::Config;
use crate::errors::UsageError;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetSpec {
    pub name: String,
    /// Application writers, frozen in this order.
    pub writers: Vec<WriterSpec>,
    /// Plain files and directories copied without an application writer.
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    /// Freeze the file systems of all the set's data, after the application writers.
    #[serde(default)]
    pub fsfreeze: bool,
    /// `auto` or a provider kind.
    pub provider: String,
    pub freeze_deadline_ms: u64,
    pub copies_dir: Option<PathBuf>,
    pub verify: bool,
    /// The exec provider this set uses (`provider = "exec:NAME"`), as configured when the
    /// copy was made, so the copy can be read and deleted without the config file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exec_providers: Vec<ExecProviderOptions>,
}

/// Flags of `create` that override what the config says.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub provider: Option<String>,
    pub freeze_deadline: Option<Duration>,
    pub copies_dir: Option<PathBuf>,
    pub no_verify: bool,
}

/// What a set is made of, before defaults and overrides are applied.
struct SetSource {
    name: String,
    writers: Vec<WriterSpec>,
    paths: Vec<PathBuf>,
    fsfreeze: bool,
    provider: Option<String>,
    deadline: Option<Duration>,
    copies_dir: Option<PathBuf>,
    verify: Option<bool>,
}

/// What `create` names without a config file.
pub struct ZeroConfig<'a> {
    pub sqlite: Option<&'a Path>,
    /// `--postgres URL`, with `--pg-archive DIR`.
    pub postgres: Option<&'a str>,
    pub pg_archive: Option<&'a Path>,
    /// `--mariadb URL`, with `--mariadb-keep-binlogs`.
    pub mariadb: Option<&'a str>,
    pub mariadb_keep_binlogs: bool,
    /// Hook scripts (`exec` writers), after the database's writer.
    pub exec_writers: &'a [PathBuf],
    pub paths: &'a [PathBuf],
    pub fsfreeze: bool,
    pub name: Option<&'a str>,
}

impl SetSpec {
    /// A set named in the config file.
    pub fn from_config(config: &Config, name: &str, o: &Overrides) -> Result<SetSpec, UsageError> {
        let set = config.set(name)?;
        let writers = set
            .writers
            .iter()
            .map(|w| match w {
                WriterSpec::Sqlite(s) => WriterSpec::Sqlite(SqliteOptions {
                    path: absolute(&s.path),
                }),
                WriterSpec::Fsfreeze(f) => WriterSpec::Fsfreeze(FsfreezeOptions {
                    paths: f.paths.iter().map(|p| absolute(p)).collect(),
                }),
                WriterSpec::Exec(e) => WriterSpec::Exec(ExecOptions {
                    script: absolute(&e.script),
                    ..e.clone()
                }),
                WriterSpec::Postgres(p) => WriterSpec::Postgres(PostgresOptions {
                    archive: p.archive.as_deref().map(absolute),
                    ..p.clone()
                }),
                WriterSpec::Mariadb(m) => WriterSpec::Mariadb(m.clone()),
            })
            .collect();
        SetSpec::resolve(
            SetSource {
                name: name.to_string(),
                writers,
                paths: set.paths.iter().map(|p| absolute(p)).collect(),
                fsfreeze: set.fsfreeze.unwrap_or(false),
                provider: set.provider.clone(),
                deadline: set.freeze_deadline.map(|h| h.0),
                copies_dir: set.copies_dir.clone(),
                verify: set.verify,
            },
            config,
            o,
        )
    }

    /// `create --sqlite PATH` and/or `create --path DIR...`: a set named after the
    /// database (or the first path) unless `--name` is given.
    pub fn zero_config(
        config: &Config,
        z: &ZeroConfig<'_>,
        o: &Overrides,
    ) -> Result<SetSpec, UsageError> {
        let sqlite = z.sqlite.map(absolute);
        let paths: Vec<PathBuf> = z.paths.iter().map(|p| absolute(p)).collect();
        let postgres = z.postgres.map(|url| PostgresOptions {
            url: url.to_string(),
            archive: z.pg_archive.map(absolute),
            layout: None,
        });
        let mariadb = z.mariadb.map(|url| MariaDbOptions {
            purge_binlogs: !z.mariadb_keep_binlogs,
            ..MariaDbOptions::new(url)
        });
        if z.pg_archive.is_some() && postgres.is_none() {
            return Err(UsageError::new(
                "--pg-archive names the WAL archive of a --postgres cluster; give --postgres URL too",
            ));
        }
        let first = sqlite.as_ref().or(paths.first());
        if first.is_none() && postgres.is_none() && mariadb.is_none() {
            return Err(UsageError::new(
                "say what to copy: --sqlite PATH, --postgres URL, --mariadb URL, --path DIR, or a set from the config file",
            ));
        }
        let name = match (z.name, first) {
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
            SetSource {
                name,
                writers: sqlite
                    .map(|path| WriterSpec::Sqlite(SqliteOptions { path }))
                    .into_iter()
                    .chain(postgres.map(WriterSpec::Postgres))
                    .chain(mariadb.map(WriterSpec::Mariadb))
                    .chain(z.exec_writers.iter().map(|script| {
                        WriterSpec::Exec(ExecOptions {
                            script: absolute(script),
                            timeout: None,
                            events: None,
                        })
                    }))
                    .collect(),
                paths,
                fsfreeze: z.fsfreeze,
                provider: None,
                deadline: None,
                copies_dir: None,
                verify: None,
            },
            config,
            o,
        )
    }

    fn resolve(
        mut source: SetSource,
        config: &Config,
        o: &Overrides,
    ) -> Result<SetSpec, UsageError> {
        // A PostgreSQL cluster's paths (data, WAL, tablespaces) come from the server.
        for w in source.writers.iter_mut() {
            if let WriterSpec::Postgres(p) = w {
                let layout = shadowcopy_postgres::cluster::discover_url(&p.url).map_err(|e| {
                    UsageError::new(format!(
                        "set `{}`: {}",
                        source.name,
                        shadowcopy_core::coordinator::chain(&e)
                    ))
                })?;
                p.layout = Some(layout);
            }
            // A MariaDB server's paths (data, redo, undo, binlogs) come from the server too.
            if let WriterSpec::Mariadb(m) = w {
                let layout = shadowcopy_mariadb::server::discover_url(&m.url).map_err(|e| {
                    UsageError::new(format!(
                        "set `{}`: {}",
                        source.name,
                        shadowcopy_core::coordinator::chain(&e)
                    ))
                })?;
                m.layout = Some(layout);
            }
        }
        let d = &config.defaults;
        let provider = o
            .provider
            .clone()
            .or(source.provider)
            .or(d.provider.clone())
            .unwrap_or_else(|| "auto".into());
        let exec_providers = check_provider_name(&provider, config)?;
        let deadline = o
            .freeze_deadline
            .or(source.deadline)
            .or(d.freeze_deadline.map(|h| h.0))
            .unwrap_or(DEFAULT_FREEZE_DEADLINE);
        if deadline.is_zero() {
            return Err(UsageError::new(
                "the freeze deadline must be longer than zero",
            ));
        }
        let holds_data = source
            .writers
            .iter()
            .any(|w| !matches!(w, WriterSpec::Exec(_)));
        if !holds_data && source.paths.is_empty() {
            return Err(UsageError::new(format!(
                "set `{}` names no data: give a database writer or paths (hooks alone copy nothing)",
                source.name
            )));
        }
        Ok(SetSpec {
            name: source.name,
            writers: source.writers,
            paths: source.paths,
            fsfreeze: source.fsfreeze,
            provider,
            freeze_deadline_ms: deadline.as_millis() as u64,
            copies_dir: o
                .copies_dir
                .clone()
                .or(source.copies_dir)
                .or(d.copies_dir.clone())
                .map(|p| absolute(&p)),
            verify: !o.no_verify && source.verify.or(d.verify).unwrap_or(true),
            exec_providers,
        })
    }

    pub fn from_json(json: &str) -> Result<SetSpec, serde_json::Error> {
        serde_json::from_str(json)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a set spec always serializes")
    }

    pub fn freeze_deadline(&self) -> Duration {
        Duration::from_millis(self.freeze_deadline_ms)
    }

    /// The set freezes file systems: `--fsfreeze`, or a configured `fsfreeze` writer.
    pub fn freezes_file_systems(&self) -> bool {
        self.fsfreeze
            || self
                .writers
                .iter()
                .any(|w| matches!(w, WriterSpec::Fsfreeze(_)))
    }

    /// Every data path of the set (what a provider must be able to serve).
    pub fn data_paths(&self) -> Vec<PathBuf> {
        let mut all: Vec<PathBuf> = Vec::new();
        for w in &self.writers {
            match w {
                WriterSpec::Sqlite(s) => all.push(s.path.clone()),
                WriterSpec::Fsfreeze(f) => all.extend(f.paths.iter().cloned()),
                WriterSpec::Exec(_) => {}
                WriterSpec::Postgres(p) => {
                    all.extend(p.layout.iter().flat_map(|l| l.paths()));
                }
                WriterSpec::Mariadb(m) => {
                    all.extend(m.layout.iter().flat_map(|l| l.paths()));
                }
            }
        }
        all.extend(self.paths.iter().cloned());
        all.dedup();
        all
    }

    /// This set with its MariaDB writers told that the provider snapshots every file at
    /// one instant (`atomic`: a btrfs snapshot of one volume), so they skip the check
    /// that file-by-file copies need. For this run only; never recorded.
    pub fn with_atomic_snapshot(&self, atomic: bool) -> SetSpec {
        let mut spec = self.clone();
        for w in spec.writers.iter_mut() {
            if let WriterSpec::Mariadb(m) = w {
                m.atomic_snapshot = atomic;
            }
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
            let fs = WriterSpec::Fsfreeze(FsfreezeOptions {
                paths: self.data_paths(),
            });
            writers.push(shadowcopy_writers::build(&fs, &context));
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
    pub fn validate(&self) -> Result<(), UsageError> {
        for p in &self.paths {
            if p.symlink_metadata().is_err() {
                return Err(UsageError::new(format!(
                    "set `{}`: {} does not exist",
                    self.name,
                    p.display()
                )));
            }
        }
        for mut w in self.build_writers() {
            w.identify()
                .map_err(|e| UsageError::new(format!("set `{}`: {e}", self.name)))?;
        }
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
            "auto" if self.freezes_file_systems() => shadowcopy_providers::build("copy", opts),
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
        if self.freezes_file_systems() && matches!(provider.kind(), "reflink" | "btrfs") {
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

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
