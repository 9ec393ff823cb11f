//! A set's specification: its writers and options, resolved from the config file or from
//! zero-config flags, validated before any work starts, and recorded with every copy
//! (as JSON) so the copy can be verified and restored without the config file.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shadowcopy_core::coordinator::DEFAULT_FREEZE_DEADLINE;
use shadowcopy_core::{Provider, Writer};
use shadowcopy_providers::ProviderOptions;
use shadowcopy_writers::sqlite::SqliteOptions;
use shadowcopy_writers::WriterSpec;

use crate::config::{Config, SetDefaults};
use crate::errors::UsageError;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetSpec {
    pub name: String,
    pub writers: Vec<WriterSpec>,
    /// `auto` or a provider kind.
    pub provider: String,
    pub freeze_deadline_ms: u64,
    pub copies_dir: Option<PathBuf>,
    pub verify: bool,
}

/// Flags of `create` that override what the config says.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub provider: Option<String>,
    pub freeze_deadline: Option<Duration>,
    pub copies_dir: Option<PathBuf>,
    pub no_verify: bool,
}

impl SetSpec {
    /// A set named in the config file.
    pub fn from_config(config: &Config, name: &str, o: &Overrides) -> Result<SetSpec, UsageError> {
        let set = config.set(name)?;
        let d = &config.defaults;
        let writers = set
            .writers
            .iter()
            .map(|w| match w {
                WriterSpec::Sqlite(s) => WriterSpec::Sqlite(SqliteOptions {
                    path: absolute(&s.path),
                }),
            })
            .collect();
        SetSpec::resolve(
            name.to_string(),
            writers,
            d,
            set.provider.clone(),
            set.freeze_deadline.map(|h| h.0),
            set.copies_dir.clone(),
            set.verify,
            o,
        )
    }

    /// `create --sqlite PATH`: a one-writer set named after the database file unless
    /// `--name` is given.
    pub fn zero_config_sqlite(
        config: &Config,
        path: &std::path::Path,
        name: Option<&str>,
        o: &Overrides,
    ) -> Result<SetSpec, UsageError> {
        let path = absolute(path);
        let name = match name {
            Some(n) => n.to_string(),
            None => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .ok_or_else(|| UsageError::new(format!("{} names no file", path.display())))?,
        };
        if config.sets.contains_key(&name) {
            return Err(UsageError::new(format!(
                "`{name}` is a set in the config file; use `create {name}`, or pass --name for a separate zero-config set"
            )));
        }
        SetSpec::resolve(
            name,
            vec![WriterSpec::Sqlite(SqliteOptions { path })],
            &config.defaults,
            None,
            None,
            None,
            None,
            o,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn resolve(
        name: String,
        writers: Vec<WriterSpec>,
        d: &SetDefaults,
        provider: Option<String>,
        deadline: Option<Duration>,
        copies_dir: Option<PathBuf>,
        verify: Option<bool>,
        o: &Overrides,
    ) -> Result<SetSpec, UsageError> {
        let provider = o
            .provider
            .clone()
            .or(provider)
            .or(d.provider.clone())
            .unwrap_or_else(|| "auto".into());
        check_provider_name(&provider)?;
        let deadline = o
            .freeze_deadline
            .or(deadline)
            .or(d.freeze_deadline.map(|h| h.0))
            .unwrap_or(DEFAULT_FREEZE_DEADLINE);
        if deadline.is_zero() {
            return Err(UsageError::new(
                "the freeze deadline must be longer than zero",
            ));
        }
        Ok(SetSpec {
            name,
            writers,
            provider,
            freeze_deadline_ms: deadline.as_millis() as u64,
            copies_dir: o
                .copies_dir
                .clone()
                .or(copies_dir)
                .or(d.copies_dir.clone())
                .map(|p| absolute(&p)),
            verify: !o.no_verify && verify.or(d.verify).unwrap_or(true),
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

    /// The data paths the writers name (what a provider must be able to serve).
    pub fn paths(&self) -> Vec<PathBuf> {
        self.writers
            .iter()
            .map(|w| match w {
                WriterSpec::Sqlite(s) => s.path.clone(),
            })
            .collect()
    }

    pub fn build_writers(&self) -> Vec<Box<dyn Writer>> {
        self.writers.iter().map(shadowcopy_writers::build).collect()
    }

    /// Runs every writer's `identify` (reads only): a missing file or a file of the wrong
    /// kind is reported here, before the catalog is touched.
    pub fn validate(&self) -> Result<(), UsageError> {
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
            parallelism: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .max(2),
        }
    }

    /// The provider this set asks for; `auto` picks the fastest that can serve it.
    pub fn choose_provider(&self, opts: &ProviderOptions) -> Result<Arc<dyn Provider>, UsageError> {
        let chosen = if self.provider == "auto" {
            shadowcopy_providers::choose_auto(opts, &self.paths())
        } else {
            shadowcopy_providers::build(&self.provider, opts)
        };
        let provider = chosen.map_err(|e| UsageError::new(e.to_string()))?;
        if let Err(why) = provider.check(&self.paths()) {
            return Err(UsageError::new(format!(
                "provider {} cannot serve set `{}`: {why}",
                provider.kind(),
                self.name
            )));
        }
        Ok(provider)
    }
}

pub fn check_provider_name(name: &str) -> Result<(), UsageError> {
    if name == "auto" || shadowcopy_providers::KINDS.contains(&name) {
        Ok(())
    } else {
        Err(UsageError::new(format!(
            "unknown provider `{name}`; choose auto or one of: {}",
            shadowcopy_providers::KINDS.join(", ")
        )))
    }
}

fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
