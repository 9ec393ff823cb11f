//! The jobs the agent runs: what each asks ([`JobRequest`], from a schedule or an API
//! call), the checks made before one is queued (bad input is refused then, with nothing
//! recorded), and running one through the engine.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shadowcopy_core::CopyState;
use shadowcopy_engine::restore::Mode;
use shadowcopy_engine::{
    CreateOptions, DeleteOptions, Engine, PruneOptions, RestoreOptions, UsageError, WaitOptions,
};

use crate::events::JobProgress;

/// A job to run. As an API request body: `{"kind": "create", "set": "app"}`.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum JobRequest {
    /// A copy of a set the agent's config names.
    Create { set: String },
    /// Verify a copy again: `copy`, or else the newest usable copy of `set`; `full`
    /// reads everything even between the set's full verifications.
    Verify {
        #[serde(default)]
        copy: Option<i64>,
        #[serde(default)]
        set: Option<String>,
        #[serde(default)]
        full: bool,
    },
    /// Restore a copy in place (the current state kept as a pre-restore copy unless
    /// `discard_current`), or into `to`, a new directory in the agent's restore area
    /// ([`restore_area`]: only there, since the agent writes as root what the copy holds).
    Restore {
        copy: i64,
        /// Restore even while the data is held open, or from a copy that failed
        /// verification.
        #[serde(default)]
        force: bool,
        /// Restore a copy that failed verification (data in use is still refused).
        #[serde(default)]
        accept_failed_verification: bool,
        #[serde(default)]
        discard_current: bool,
        #[serde(default)]
        mode: Mode,
        /// With `roll-forward`: where replay stops (as `restore --until`).
        #[serde(default)]
        until: Option<String>,
        /// Restore into this new directory, directly in the agent's restore area, instead
        /// of in place.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(value_type = Option<String>)]
        to: Option<std::path::PathBuf>,
    },
    /// Delete these copies.
    Delete { copies: Vec<i64> },
    /// Push a copy to its set's archive (`archive` in the config; the passphrase from
    /// the agent's SHADOWCOPY_ARCHIVE_PASSWORD or `archive_password_file`).
    Push { copy: i64 },
    /// Delete what the retention policy of `set` (else of every set) does not keep.
    Prune {
        #[serde(default)]
        set: Option<String>,
    },
}

impl JobRequest {
    pub fn kind(&self) -> &'static str {
        match self {
            JobRequest::Create { .. } => "create",
            JobRequest::Verify { .. } => "verify",
            JobRequest::Restore { .. } => "restore",
            JobRequest::Delete { .. } => "delete",
            JobRequest::Push { .. } => "push",
            JobRequest::Prune { .. } => "prune",
        }
    }

    /// Refuses what would fail before writing anything (an unknown set or copy, a copy
    /// that is not usable, a restore of a copy that failed verification without `force`);
    /// else the set the job is for (`*` for several).
    pub fn check(&self, engine: &Engine) -> anyhow::Result<String> {
        match self {
            JobRequest::Create { set } => {
                if !engine.config.sets.contains_key(set) {
                    let known: Vec<&str> = engine.config.sets.keys().map(String::as_str).collect();
                    return Err(UsageError::new(format!(
                        "no set `{set}` in the agent's config (it has: {}); add [sets.{set}] to the config and reload the agent (SIGHUP)",
                        if known.is_empty() { "none".to_string() } else { known.join(", ") }
                    ))
                    .into());
                }
                Ok(set.clone())
            }
            JobRequest::Verify {
                copy: Some(id),
                set,
                ..
            } => {
                let of = engine.check_verify(*id)?;
                if set.as_ref().is_some_and(|s| *s != of) {
                    return Err(UsageError::new(format!(
                        "copy {id} is of set `{of}`, not `{}`; give one of `copy` and `set`",
                        set.as_deref().unwrap_or_default()
                    ))
                    .into());
                }
                Ok(of)
            }
            JobRequest::Verify {
                copy: None,
                set: Some(set),
                ..
            } => {
                newest_usable(engine, set)?;
                Ok(set.clone())
            }
            JobRequest::Verify {
                copy: None,
                set: None,
                ..
            } => Err(UsageError::new(
                "say which copy to verify: `copy` (an id) or `set` (its newest usable copy)",
            )
            .into()),
            JobRequest::Restore { to, mode, .. } => {
                if let Some(to) = to {
                    if *mode == Mode::RollForward {
                        return Err(UsageError::new(
                            "a roll-forward restores in place (it replays the server's own logs); leave out `to`, or restore point-in-time into the directory",
                        )
                        .into());
                    }
                    check_restore_to(engine, to)?;
                }
                engine.check_restore(&self.restore_options())
            }
            JobRequest::Push { copy } => {
                let set = engine.check_verify(*copy)?;
                engine.archive_url(None, Some(&set))?;
                engine.archive_passphrase(None)?;
                Ok(set)
            }
            JobRequest::Delete { copies } => {
                if copies.is_empty() {
                    return Err(UsageError::new(
                        "`copies` is empty: give the ids of the copies to delete",
                    )
                    .into());
                }
                let report = engine.delete(
                    &DeleteOptions {
                        ids: copies.clone(),
                        dry_run: true,
                        ..DeleteOptions::default()
                    },
                    &WaitOptions::default(),
                    &shadowcopy_engine::Silent,
                )?;
                let mut sets: Vec<&str> = report.copies.iter().map(|c| c.set.as_str()).collect();
                sets.dedup();
                Ok(match sets.as_slice() {
                    [one] => one.to_string(),
                    _ => "*".to_string(),
                })
            }
            JobRequest::Prune { set } => {
                engine.prune(
                    &PruneOptions {
                        set: set.clone(),
                        dry_run: true,
                    },
                    &WaitOptions::default(),
                    &shadowcopy_engine::Silent,
                )?;
                Ok(set.clone().unwrap_or_else(|| "*".to_string()))
            }
        }
    }

    fn restore_options(&self) -> RestoreOptions {
        match self {
            JobRequest::Restore {
                copy,
                force,
                accept_failed_verification,
                discard_current,
                mode,
                until,
                to,
            } => RestoreOptions {
                to: to.clone(),
                force: *force,
                accept_failed_verification: *accept_failed_verification,
                discard_current: *discard_current,
                mode: *mode,
                until: until.clone(),
                ..RestoreOptions::new(*copy)
            },
            _ => unreachable!("restore options of a {} job", self.kind()),
        }
    }
}

/// Where a job may restore into a directory: `restores/` in the agent's catalog
/// directory, made private (0700) when missing. Nobody but root can plant anything
/// there, and nothing outside it is written by a restore asked for over the network.
pub fn restore_area(engine: &Engine) -> std::path::PathBuf {
    engine.catalog_dir.join("restores")
}

/// Refuses a `to` that is not a new directory directly in [`restore_area`] (given
/// absolute, without `..`), and makes the area when missing.
fn check_restore_to(engine: &Engine, to: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    use std::path::Component;
    let area = restore_area(engine);
    let plain = to
        .components()
        .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
    // One level only: deeper, a symlink an earlier restore recreated could lead out.
    let in_area = to.parent() == Some(area.as_path());
    if !to.is_absolute() || !plain || !in_area {
        return Err(UsageError::new(format!(
            "`to` must be a new directory directly in the agent's restore area {} (such as {}/NAME), given absolute, without `..`; got {}",
            area.display(),
            area.display(),
            to.display()
        ))
        .into());
    }
    if std::fs::symlink_metadata(to).is_ok() {
        return Err(UsageError::new(format!(
            "{} exists already: restore into a new directory (another name)",
            to.display()
        ))
        .into());
    }
    match std::fs::DirBuilder::new().mode(0o700).create(&area) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::symlink_metadata(&area)?;
            if !meta.is_dir() || meta.uid() != rustix::process::geteuid().as_raw() {
                return Err(anyhow::anyhow!(
                    "the restore area {} is not a directory of the agent's own; remove it and the agent makes it again",
                    area.display()
                ));
            }
            std::fs::set_permissions(&area, std::fs::Permissions::from_mode(0o700))?;
        }
        Err(e) => {
            return Err(anyhow::Error::new(e)
                .context(format!("cannot make the restore area {}", area.display())))
        }
    }
    Ok(())
}

/// Checks `to` again as the job starts (another restore may have taken the name since
/// it was queued) and makes it, exclusively, so two restores never share a directory.
fn claim_restore_dir(engine: &Engine, to: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    check_restore_to(engine, to)?;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(to)
        .map_err(|e| anyhow::Error::new(e).context(format!("cannot make {}", to.display())))
}

/// How a job ended: ok or not, the copy it made, verified or restored, a line on what
/// it did, and what the metrics count.
pub struct Outcome {
    pub ok: bool,
    pub copy: Option<i64>,
    pub result: String,
    /// A create: its freeze window and bytes.
    pub created: Option<(Duration, u64)>,
    /// A verification that ran and found the copy damaged.
    pub verify_failed: bool,
}

/// Runs one job through the engine (the caller records it).
pub fn run(engine: &Engine, request: &JobRequest, progress: Arc<JobProgress>) -> Outcome {
    let wait = WaitOptions::default();
    let mut created = None;
    let outcome: anyhow::Result<(Option<i64>, String)> = match request {
        JobRequest::Create { set } => engine
            .create(
                &CreateOptions {
                    set: Some(set.clone()),
                    ..CreateOptions::default()
                },
                &wait,
                progress,
            )
            .map(|r| {
                created = Some((r.freeze_window, r.bytes));
                (
                    Some(r.id),
                    format!(
                        "copy {}: {} files, {} bytes, freeze window {}",
                        r.id,
                        r.files,
                        r.bytes,
                        humantime::format_duration(Duration::from_micros(
                            r.freeze_window.as_micros() as u64
                        ))
                    ),
                )
            }),
        JobRequest::Verify { copy, set, full } => copy
            .map(Ok)
            .unwrap_or_else(|| newest_usable(engine, set.as_deref().unwrap_or_default()))
            .and_then(|id| {
                let outcome = engine.verify(id, *full, &wait, &*progress)?;
                let line = format!(
                    "copy {id} {}: {}",
                    if outcome.ok { "passed" } else { "FAILED" },
                    outcome.detail.replace('\n', "; ")
                );
                outcome.into_result()?;
                Ok((Some(id), line))
            }),
        JobRequest::Restore { copy, to, .. } => to
            .as_deref()
            .map_or(Ok(()), |to| claim_restore_dir(engine, to))
            .and_then(|()| {
                let restored = engine.restore(&request.restore_options(), &wait, progress);
                if let (Err(_), Some(to)) = (&restored, to) {
                    // Left as it was: the name is free again (only if nothing is in it).
                    let _ = std::fs::remove_dir(to);
                }
                restored
            })
            .map(|r| {
                (
                    Some(*copy),
                    format!(
                        "copy {copy} restored in {}{}",
                        humantime::format_duration(
                            Duration::from_millis(r.took.as_millis() as u64)
                        ),
                        r.pre_restore
                            .map(|p| format!("; the state it replaced is copy {p}"))
                            .unwrap_or_default()
                    ),
                )
            }),
        JobRequest::Push { copy } => engine
            .show(*copy)
            .and_then(|detail| {
                let set = &detail.summary.set;
                let url = engine.archive_url(None, Some(set))?;
                let passphrase = engine.archive_passphrase(None)?;
                let r = engine.archive_push(*copy, &url, &passphrase, &wait, &*progress)?;
                // A set's logs go along (what roll-forward replays): a PostgreSQL set's
                // WAL archive, a MariaDB set's closed binary logs.
                let logs = match engine.logs_of(set, None) {
                    Ok(_) => match engine.archive_push_logs(&url, &passphrase, set, None) {
                        Ok(report) => Some(report),
                        // A server that writes no binary log: nothing to send.
                        Err(e) if e.downcast_ref::<UsageError>().is_some() => None,
                        Err(e) => return Err(e),
                    },
                    Err(_) => None,
                };
                Ok((r, logs))
            })
            .map(|(r, logs)| {
                (
                    Some(*copy),
                    format!(
                        "copy {copy} archived as {}: {} bytes read, {} new blocks, {} bytes sent{}",
                        r.manifest,
                        r.bytes_read,
                        r.blocks_new,
                        r.bytes_uploaded,
                        logs.map(|l| format!("; {} log files sent", l.copied))
                            .unwrap_or_default()
                    ),
                )
            }),
        JobRequest::Delete { copies } => engine
            .delete(
                &DeleteOptions {
                    ids: copies.clone(),
                    ..DeleteOptions::default()
                },
                &wait,
                &*progress,
            )
            .map(|r| (None, deleted_line(r.copies.iter().map(|c| c.id)))),
        JobRequest::Prune { set } => engine
            .prune(
                &PruneOptions {
                    set: set.clone(),
                    dry_run: false,
                },
                &wait,
                &*progress,
            )
            .map(|r| (None, deleted_line(r.deleted.iter().map(|d| d.id)))),
    };
    match outcome {
        Ok((copy, result)) => Outcome {
            ok: true,
            copy,
            result,
            created,
            verify_failed: false,
        },
        Err(e) => {
            let failed = shadowcopy_engine::error::failed_copy(&e);
            Outcome {
                ok: false,
                copy: failed,
                result: format!("{e:#}"),
                created: None,
                verify_failed: failed.is_some(),
            }
        }
    }
}

fn deleted_line(ids: impl Iterator<Item = i64>) -> String {
    let ids: Vec<String> = ids.map(|id| id.to_string()).collect();
    if ids.is_empty() {
        "nothing to delete".to_string()
    } else {
        format!("deleted copies {}", ids.join(", "))
    }
}

/// The set's newest usable copy (what a scheduled verification checks).
fn newest_usable(engine: &Engine, set: &str) -> anyhow::Result<i64> {
    engine
        .list(Some(set))?
        .iter()
        .rev()
        .find(|c| c.state == CopyState::Usable)
        .map(|c| c.id)
        .ok_or_else(|| {
            UsageError::new(format!("set `{set}` has no usable copy to verify yet")).into()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_from_json_and_unknown_fields_are_refused() {
        let r: JobRequest = serde_json::from_str(r#"{"kind":"create","set":"app"}"#).unwrap();
        assert!(matches!(r, JobRequest::Create { ref set } if set == "app"));
        let r: JobRequest =
            serde_json::from_str(r#"{"kind":"restore","copy":7,"mode":"roll-forward"}"#).unwrap();
        assert!(matches!(
            r,
            JobRequest::Restore {
                copy: 7,
                mode: Mode::RollForward,
                force: false,
                ..
            }
        ));
        let e = serde_json::from_str::<JobRequest>(r#"{"kind":"restore","copy":7,"into":"/etc"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `into`"), "{e}");
        let e = serde_json::from_str::<JobRequest>(r#"{"kind":"format-disk"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `format-disk`"), "{e}");
    }

    #[test]
    fn a_restore_into_a_directory_stays_in_the_agent_restore_area() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine {
            config: Default::default(),
            catalog_dir: dir.path().join("catalog"),
        };
        std::fs::create_dir(&engine.catalog_dir).unwrap();
        let area = restore_area(&engine);
        let refused = |to: std::path::PathBuf| {
            let e = check_restore_to(&engine, &to).unwrap_err();
            assert!(
                e.downcast_ref::<UsageError>().is_some(),
                "{}: {e:#}",
                to.display()
            );
            format!("{e:#}")
        };
        for outside in [
            std::path::PathBuf::from("/etc/cron.d"),
            area.clone(),
            area.join("../escape"),
            area.join("x/../../escape"),
            area.join("x/deeper"),
            std::path::PathBuf::from("restores/x"),
            dir.path().join("catalog/restoresX/y"),
        ] {
            let e = refused(outside);
            assert!(e.contains("restore area"), "{e}");
        }
        assert!(!area.exists(), "nothing made for a refused directory");
        check_restore_to(&engine, &area.join("check1")).unwrap();
        let mode = std::fs::metadata(&area).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "the area is private");
        std::fs::create_dir(area.join("check1")).unwrap();
        let e = refused(area.join("check1"));
        assert!(e.contains("exists already"), "{e}");
        // An area that is a symlink (planted before the agent made it) is refused.
        std::fs::remove_dir_all(&area).unwrap();
        std::os::unix::fs::symlink("/etc", &area).unwrap();
        let e = check_restore_to(&engine, &area.join("x")).unwrap_err();
        assert!(format!("{e:#}").contains("not a directory"), "{e:#}");
    }
}
