//! The schedules and retention the backup server holds for this host's sets. The agent
//! keeps the last ones it was given (`server/policies.json`, written whole or not at
//! all), so its copies go on by them while the server is unreachable and after a
//! restart; they replace the config's `schedule`, `verify_schedule` and `retention` of
//! the sets they name. A standalone agent (never enrolled) runs by its config alone.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use shadowcopy_engine::config::parse_schedule;
use shadowcopy_engine::{Engine, EngineOptions};

use crate::link::identity::IDENTITY_DIR;
use crate::link::protocol::Policies;

const FILE: &str = "policies.json";

fn path(catalog_dir: &Path) -> PathBuf {
    catalog_dir.join(IDENTITY_DIR).join(FILE)
}

/// The policies last received, if any.
pub fn load(catalog_dir: &Path) -> anyhow::Result<Option<Policies>> {
    let path = path(catalog_dir);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{} is damaged ({e}); remove it and the agent fetches the policies again",
                path.display()
            )
        })?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(anyhow::anyhow!("cannot read {}: {e}", path.display())),
    }
}

/// Keeps `policies` (a new file renamed over the old one, synced).
pub fn store(catalog_dir: &Path, policies: &Policies) -> anyhow::Result<()> {
    let path = path(catalog_dir);
    let dir = path.parent().expect("below the identity directory");
    let temporary = dir.join(format!(".{FILE}.{}", std::process::id()));
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(&temporary)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", temporary.display()))?;
    file.write_all(&serde_json::to_vec_pretty(policies)?)?;
    file.sync_all()?;
    std::fs::rename(&temporary, &path)?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Puts `policies` in place of the config's schedules and retention of the sets they
/// name. A policy for a set the config lacks, or with an expression that does not
/// parse, is logged and left out.
pub fn apply(engine: &mut Engine, policies: &Policies) {
    for policy in &policies.sets {
        let Some(set) = engine.config.sets.get_mut(&policy.set) else {
            tracing::warn!(
                set = %policy.set,
                "the backup server has a policy for a set this agent's config does not have; add [sets.{}] to the config",
                policy.set
            );
            continue;
        };
        let checked = |expression: &Option<String>, what: &str| {
            let expression = expression.as_ref()?;
            match parse_schedule(expression) {
                Ok(_) => Some(toml::Spanned::new(0..0, expression.clone())),
                Err(e) => {
                    tracing::error!(set = %policy.set, "the server's {what} `{expression}` does not parse ({e}); left out");
                    None
                }
            }
        };
        set.schedule = checked(&policy.schedule, "schedule");
        set.verify_schedule = checked(&policy.verify_schedule, "verify_schedule");
        set.retention = policy.retention.clone();
    }
}

/// The engine on the config, with the server's last policies in place.
pub fn engine(options: &EngineOptions) -> anyhow::Result<Engine> {
    let mut engine = Engine::new(options)?;
    if let Some(policies) = load(&engine.catalog_dir)? {
        apply(&mut engine, &policies);
    }
    Ok(engine)
}
