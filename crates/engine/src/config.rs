//! The TOML config file: global settings, defaults, and named sets. Unknown keys are
//! errors, reported with `file:line:column` and nothing written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use shadowcopy_writers::WriterSpec;

use crate::error::UsageError;
use crate::retention::RetentionPolicy;

/// The system-wide config file, read when present and no `--config` is given.
pub const SYSTEM_CONFIG: &str = "/etc/shadowcopy/config.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Catalog directory (overridden by --catalog and SHADOWCOPY_CATALOG).
    pub catalog: Option<PathBuf>,
    #[serde(default)]
    pub defaults: SetDefaults,
    #[serde(default)]
    pub sets: BTreeMap<String, SetConfig>,
    /// `[providers.NAME]`: exec providers, used as `provider = "exec:NAME"`.
    #[serde(default)]
    pub providers: BTreeMap<String, ExecProviderOptions>,
    /// `[agent]`: where the agent's API listens.
    #[serde(default)]
    pub agent: AgentConfig,
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[agent]`: the agent's API socket (overridden by `agent --socket`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The unix socket the API listens on (default: `/run/shadowcopy/agent.sock` for the
    /// system catalog, else `agent.sock` in the catalog directory).
    pub socket: Option<PathBuf>,
    /// The group whose members may call the API (the socket is mode 0660, owned by it).
    pub socket_group: Option<String>,
    /// Also serve the API on TCP at this address (`"0.0.0.0:8443"`), TLS only, to
    /// callers with a client certificate signed by `tls_client_ca`.
    pub listen: Option<String>,
    /// The agent's certificate chain (PEM) for `listen`.
    pub tls_cert: Option<PathBuf>,
    /// The agent's private key (PEM) for `listen`.
    pub tls_key: Option<PathBuf>,
    /// The CA (PEM) whose certificates callers on `listen` must present.
    pub tls_client_ca: Option<PathBuf>,
}

/// Options every set inherits unless it sets its own.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetDefaults {
    pub provider: Option<String>,
    pub freeze_deadline: Option<HumanDuration>,
    pub copies_dir: Option<PathBuf>,
    pub verify: Option<bool>,
    /// How often a copy's verification reads everything (`"7d"`, the default); in
    /// between, a verification reads only what changed since the set's newest verified
    /// copy. `"0s"`: always read everything.
    pub full_verify_every: Option<HumanDuration>,
    /// Which copies `delete --policy` (and the agent) keep, for sets without their own.
    pub retention: Option<RetentionPolicy>,
    /// The same for `pre-restore` copies (without one they are all kept).
    pub pre_restore_retention: Option<RetentionPolicy>,
    /// Where `archive push` sends copies (`s3://bucket/prefix` or a directory).
    pub archive: Option<String>,
    /// Which archived copies `archive prune` keeps (for sets without their own).
    pub archive_retention: Option<RetentionPolicy>,
    /// A file whose first line is the archive's passphrase (the agent's; the CLI takes
    /// SHADOWCOPY_ARCHIVE_PASSWORD or --password-file first). Keep it mode 0600.
    pub archive_password_file: Option<PathBuf>,
}

/// `[sets.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetConfig {
    /// Application writers (`kind = "sqlite"`, …).
    #[serde(default)]
    pub writers: Vec<WriterSpec>,
    /// Plain files and directories copied without an application writer.
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    /// Freeze the file systems of the set's data (crash-consistent copies).
    pub fsfreeze: Option<bool>,
    pub provider: Option<String>,
    pub freeze_deadline: Option<HumanDuration>,
    pub copies_dir: Option<PathBuf>,
    pub verify: Option<bool>,
    /// How often a copy's verification reads everything (`"7d"`, the default); in
    /// between, a verification reads only what changed since the set's newest verified
    /// copy. `"0s"`: always read everything.
    pub full_verify_every: Option<HumanDuration>,
    /// Where `archive push` sends the set's copies (else `[defaults] archive`).
    pub archive: Option<String>,
    /// Which of the set's archived copies `archive prune` keeps.
    pub archive_retention: Option<RetentionPolicy>,
    /// How often the agent sends the set's new logs (WAL, closed binary logs) to its
    /// archive, between copies (default a minute; `"0s"`: only with each copy's push).
    pub logs_push_every: Option<HumanDuration>,
    /// Which of the set's copies `delete --policy` keeps (`[sets.NAME.retention]`).
    pub retention: Option<RetentionPolicy>,
    /// The same for the set's `pre-restore` copies.
    pub pre_restore_retention: Option<RetentionPolicy>,
    /// When the agent copies the set: a cron expression, `"*/15 * * * *"` (five fields,
    /// or six with seconds first), in local time.
    pub schedule: Option<toml::Spanned<String>>,
    /// When the agent verifies the set's newest copy again (a cron expression).
    pub verify_schedule: Option<toml::Spanned<String>>,
}

use shadowcopy_providers::exec::ExecProviderOptions;
pub use shadowcopy_writers::HumanDuration;

impl Config {
    /// Loads `explicit` (which must exist), else the system config when present, else
    /// an empty config.
    pub fn load(explicit: Option<&Path>) -> Result<Config, UsageError> {
        let path = match explicit {
            Some(p) => p.to_path_buf(),
            None if Path::new(SYSTEM_CONFIG).exists() => PathBuf::from(SYSTEM_CONFIG),
            None => return Ok(Config::default()),
        };
        let text = std::fs::read_to_string(&path).map_err(|e| {
            UsageError::new(format!(
                "cannot read the config file {}: {e}",
                path.display()
            ))
        })?;
        let mut config = Config::parse(&text, &path)?;
        config.source = Some(path);
        Ok(config)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, UsageError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            UsageError::new(format!(
                "{}:{line}:{col}: {}; fix the config file (unknown keys are errors)",
                path.display(),
                e.message().trim_end()
            ))
        })?;
        for (name, set) in &config.sets {
            check_set_name(name)
                .map_err(|e| UsageError::new(format!("{}: {e}", path.display())))?;
            for (key, given) in [
                ("schedule", &set.schedule),
                ("verify_schedule", &set.verify_schedule),
            ] {
                let Some(given) = given else { continue };
                if let Err(e) = parse_schedule(given.get_ref()) {
                    let (line, col) = line_col(text, given.span().start);
                    return Err(UsageError::new(format!(
                        "{}:{line}:{col}: set `{name}`: {key} {:?} is not a cron expression ({e}); write five fields (minute hour day month weekday) or six with seconds first, like \"*/15 * * * *\"",
                        path.display(),
                        given.get_ref()
                    )));
                }
            }
            if set.writers.is_empty() && set.paths.is_empty() {
                return Err(UsageError::new(format!(
                    "{}: set `{name}` names no data; add a [[sets.{name}.writers]] table or `paths = [...]`",
                    path.display()
                )));
            }
        }
        Ok(config)
    }

    /// The configured exec providers, each knowing its name.
    pub fn exec_providers(&self) -> Vec<ExecProviderOptions> {
        self.providers
            .iter()
            .map(|(name, o)| ExecProviderOptions {
                name: name.clone(),
                ..o.clone()
            })
            .collect()
    }

    /// The retention policies of set `name` (its own, else the defaults'): for its
    /// copies, and for its pre-restore copies. A set the config does not name (a
    /// zero-config one) gets the defaults'.
    pub fn retention(&self, name: &str) -> (Option<&RetentionPolicy>, Option<&RetentionPolicy>) {
        let set = self.sets.get(name);
        (
            set.and_then(|s| s.retention.as_ref())
                .or(self.defaults.retention.as_ref()),
            set.and_then(|s| s.pre_restore_retention.as_ref())
                .or(self.defaults.pre_restore_retention.as_ref()),
        )
    }

    /// The policy for set `name`'s archived copies (its own, else the defaults').
    pub fn archive_retention(&self, name: &str) -> Option<&RetentionPolicy> {
        self.sets
            .get(name)
            .and_then(|s| s.archive_retention.as_ref())
            .or(self.defaults.archive_retention.as_ref())
    }

    pub fn set(&self, name: &str) -> Result<&SetConfig, UsageError> {
        self.sets.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.sets.keys().map(String::as_str).collect();
            let place = self
                .source
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| format!("no config file was read (looked for {SYSTEM_CONFIG}; give one with --config)"));
            UsageError::new(if known.is_empty() {
                format!("unknown set `{name}`: {place} defines no sets. For a one-off copy use `create --sqlite PATH`")
            } else {
                format!("unknown set `{name}`; {place} defines: {}", known.join(", "))
            })
        })
    }
}

/// A set's name shows in tables, messages and hook environments: no line breaks or other
/// control characters, and not empty.
pub fn check_set_name(name: &str) -> Result<(), UsageError> {
    if name.trim().is_empty() {
        return Err(UsageError::new(
            "a set name cannot be empty; give one with --name (or name the set in the config file)",
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(UsageError::new(format!(
            "the set name {name:?} contains a line break or another control character; choose a name without them (--name, or the [sets.NAME] of the config file)"
        )));
    }
    Ok(())
}

/// A cron expression (`*/15 * * * *`, or with seconds first, `*/5 * * * * *`).
pub fn parse_schedule(expression: &str) -> Result<croner::Cron, croner::errors::CronError> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expression)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn unknown_key_names_file_line_and_column() {
        let text = "[sets.mail]\nprovider = \"copy\"\nfreez_deadline = \"5s\"\n[[sets.mail.writers]]\nkind = \"sqlite\"\npath = \"/x.db\"\n";
        let err = Config::parse(text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("c.toml:3:1: unknown field `freez_deadline`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_writer_field_is_an_error() {
        let text =
            "[sets.mail]\n[[sets.mail.writers]]\nkind = \"sqlite\"\npath = \"/x.db\"\nmode = 1\n";
        let err = Config::parse(text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `mode`"), "{err}");
        assert!(err.starts_with("c.toml:"), "{err}");
    }

    #[test]
    fn full_example_parses() {
        let text = "catalog = \"/tmp/cat\"\n[defaults]\nfreeze_deadline = \"5s\"\n[sets.mail]\nprovider = \"reflink\"\n[[sets.mail.writers]]\nkind = \"sqlite\"\npath = \"/srv/mail/index.db\"\n";
        let c = Config::parse(text, Path::new("c.toml")).unwrap();
        assert_eq!(
            c.defaults.freeze_deadline,
            Some(HumanDuration(Duration::from_secs(5)))
        );
        assert_eq!(c.set("mail").unwrap().writers.len(), 1);
        assert!(c
            .set("nope")
            .unwrap_err()
            .to_string()
            .contains("defines: mail"));
    }

    #[test]
    fn bad_duration_is_explained() {
        let text = "[defaults]\nfreeze_deadline = \"soon\"\n";
        let err = Config::parse(text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("c.toml:2:") && err.contains("invalid duration"),
            "{err}"
        );
    }
}
