//! The archive's use cases: a repository made (`archive init`), a copy pushed from the
//! catalog and its provider (`archive push`), the archived copies listed, one restored
//! into a directory, the repository checked. Which repository: the one given, else the
//! copy's set's `archive`, else `[defaults] archive`; its passphrase comes from the
//! front end (never from the config, never into the catalog).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use shadowcopy_archive::{
    ArchivedCopy, Cut, Initialized, KeyInfo, PruneReport, PushReport, PushSource, Repository,
    RestoreReport, SourceFile, VerifyReport,
};
use shadowcopy_core::model::ComponentRole;
use shadowcopy_core::secret::Secret;

use crate::copies::UsableCopy;
use crate::engine::{Engine, WaitOptions};
use crate::error::UsageError;
use crate::progress::Progress;

/// Writer kinds whose data files are cut into fixed blocks (a changed page changes one).
const DATABASE_WRITERS: [&str; 4] = ["sqlite", "postgres", "mariadb", "mysql"];

impl Engine {
    /// The repository URL: `given`, else set `set`'s `archive`, else `[defaults] archive`.
    pub fn archive_url(&self, given: Option<&str>, set: Option<&str>) -> anyhow::Result<String> {
        given
            .map(str::to_string)
            .or_else(|| {
                set.and_then(|s| self.config.sets.get(s))
                    .and_then(|s| s.archive.clone())
            })
            .or_else(|| self.config.defaults.archive.clone())
            .ok_or_else(|| {
                UsageError::new(
                    "say which archive: --archive URL (s3://bucket/prefix or a directory), or `archive` in the set's config or [defaults]",
                )
                .into()
            })
    }

    /// The archive's passphrase: from `file`, else SHADOWCOPY_ARCHIVE_PASSWORD, else the
    /// config's `archive_password_file`.
    pub fn archive_passphrase(&self, file: Option<&Path>) -> anyhow::Result<Secret> {
        let read = |file: &Path| {
            Secret::read_file(file).map_err(|e| {
                anyhow::Error::new(UsageError::new(format!(
                    "cannot read the archive's passphrase from {}: {e}",
                    file.display()
                )))
            })
        };
        if let Some(file) = file {
            return read(file);
        }
        match std::env::var("SHADOWCOPY_ARCHIVE_PASSWORD") {
            Ok(p) if !p.is_empty() => return Ok(Secret::new(p)),
            _ => {}
        }
        match &self.config.defaults.archive_password_file {
            Some(file) => read(file),
            None => Err(UsageError::new(
                "the archive's passphrase is needed: set SHADOWCOPY_ARCHIVE_PASSWORD, give --password-file FILE, \
                 or name a file in [defaults] archive_password_file",
            )
            .into()),
        }
    }

    pub fn archive_init(&self, url: &str, passphrase: &Secret) -> anyhow::Result<Initialized> {
        Ok(shadowcopy_archive::init(
            url,
            passphrase.expose().as_bytes(),
            "init",
        )?)
    }

    pub fn archive_keys(&self, url: &str, passphrase: &Secret) -> anyhow::Result<Vec<KeyInfo>> {
        Ok(Repository::open(url, passphrase.expose().as_bytes())?.keys()?)
    }

    /// Adds a key: `new` opens the repository too. The new key's id.
    pub fn archive_add_key(
        &self,
        url: &str,
        passphrase: &Secret,
        new: &Secret,
        label: &str,
    ) -> anyhow::Result<String> {
        Ok(Repository::open(url, passphrase.expose().as_bytes())?
            .add_key(new.expose().as_bytes(), label)?)
    }

    /// Removes key `id` (not the one `passphrase` opens, not the last). Its id.
    pub fn archive_remove_key(
        &self,
        url: &str,
        passphrase: &Secret,
        id: &str,
    ) -> anyhow::Result<String> {
        Ok(Repository::open(url, passphrase.expose().as_bytes())?.remove_key(id)?)
    }

    pub fn archive_list(
        &self,
        url: &str,
        passphrase: &Secret,
    ) -> anyhow::Result<Vec<ArchivedCopy>> {
        Ok(Repository::open(url, passphrase.expose().as_bytes())?.list()?)
    }

    /// Pushes usable copy `id` into the repository at `url` (the copy stays put while it
    /// is read: the push holds the queue).
    pub fn archive_push(
        &self,
        id: i64,
        url: &str,
        passphrase: &Secret,
        wait: &WaitOptions,
        progress: &dyn Progress,
    ) -> anyhow::Result<PushReport> {
        let catalog = self.open_existing_catalog()?;
        UsableCopy::load(&catalog, id, "archived")?;
        // Reading, compressing and sealing every changed block is work the application
        // should not feel: at background priority, as the repository's threads started
        // below inherit it.
        let _background = shadowcopy_core::priority::background();
        // Opened before the queue is taken: a wrong passphrase fails at once.
        let repo = Repository::open(url, passphrase.expose().as_bytes())?;
        let _queue = self.take_queue(
            &catalog,
            "archive push",
            &format!("copy {id}"),
            wait.policy(),
            progress,
        )?;
        let copy = UsableCopy::load(&catalog, id, "archived")?;
        let files = catalog.manifest(id)?;
        let components = catalog.components(id)?;
        let view = copy
            .provider
            .expose(&copy.location, &files)
            .map_err(|e| anyhow::anyhow!("cannot read copy {id}: {e}"))?;
        // A database writer's data component: its writer's name starts with its kind.
        let database = |path: &Path| {
            components.iter().any(|c| {
                c.role == ComponentRole::Data
                    && path.starts_with(&c.path)
                    && DATABASE_WRITERS.contains(&c.writer.split(':').next().unwrap_or_default())
            })
        };
        // A PostgreSQL copy's WAL directory holds recycled segments (old files renamed
        // to future names) and segments from before its backup's start: no recovery
        // from the copy reads them, and they can be most of its bytes. Its lock files
        // name the server that ran: no restore uses them.
        let spec = crate::set::SetSpec::from_json(&copy.summary.spec_json).ok();
        let not_needed: std::collections::BTreeSet<std::path::PathBuf> = spec
            .iter()
            .flat_map(|s| s.writers.iter())
            .filter_map(|w| match w {
                shadowcopy_writers::WriterSpec::Postgres(o) => o.layout.as_ref(),
                _ => None,
            })
            .flat_map(|layout| {
                let mut left_out = shadowcopy_postgres::log_analysis::wal_not_needed(layout, &view);
                left_out.extend(shadowcopy_postgres::recovery::lock_files(&layout.data_dir));
                left_out
            })
            .collect();
        if !not_needed.is_empty() {
            let bytes: u64 = files
                .iter()
                .filter(|f| not_needed.contains(&f.path))
                .map(|f| f.size)
                .sum();
            tracing::info!(
                "copy {id}: {} files ({bytes} bytes) no recovery reads are left out (old WAL \
                 segments, the server's lock files)",
                not_needed.len()
            );
        }
        let files: Vec<_> = files
            .into_iter()
            .filter(|f| !not_needed.contains(&f.path))
            .collect();
        let mut sources = Vec::with_capacity(files.len());
        for f in &files {
            let read_from = view
                .path_of(&f.path)
                .ok_or_else(|| anyhow::anyhow!("copy {id} does not hold {}", f.path.display()))?
                .to_path_buf();
            let meta = std::fs::symlink_metadata(&read_from)?;
            sources.push(SourceFile {
                path: f.path.clone(),
                read_from,
                mode: f.mode,
                uid: meta.uid(),
                gid: meta.gid(),
                size: f.size,
                mtime_ns: f.mtime_ns,
                blake3: f.blake3.clone(),
                cut: if database(&f.path) {
                    Cut::Fixed
                } else {
                    Cut::Cdc
                },
            });
        }
        let roots: Vec<std::path::PathBuf> = components.iter().map(|c| c.path.clone()).collect();
        let tree = copy
            .provider
            .tree(&copy.location, &roots)
            .map_err(|e| anyhow::anyhow!("cannot list copy {id}'s directories and symlinks: {e}"))?
            .into_iter()
            .map(|e| shadowcopy_archive::format::TreeRecord {
                path: e.path,
                symlink: match e.kind {
                    shadowcopy_core::model::TreeKind::Dir => None,
                    shadowcopy_core::model::TreeKind::Symlink { target } => Some(target),
                },
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
            })
            .collect();
        let source = PushSource {
            host: hostname(),
            set: copy.summary.set.clone(),
            origin: copy.summary.origin.as_str().to_string(),
            copy_id: id,
            created_ms: copy.summary.created_ms,
            provider: copy.summary.provider.clone(),
            spec: serde_json::from_str(&copy.summary.spec_json).unwrap_or_default(),
            components: serde_json::to_value(&components)?,
            files: sources,
            tree,
        };
        Ok(repo.push(&source, &|done, total| progress.bytes(done, total))?)
    }

    /// Restores archived copy `archived` (an id or its unique prefix) below `to`.
    pub fn archive_restore_to(
        &self,
        url: &str,
        passphrase: &Secret,
        archived: &str,
        to: &Path,
        progress: &dyn Progress,
    ) -> anyhow::Result<RestoreReport> {
        let repo = Repository::open(url, passphrase.expose().as_bytes())?;
        // The live files seed it: their unchanged blocks are not downloaded.
        Ok(repo.restore_seeded(
            archived,
            to,
            &|original| vec![original.to_path_buf()],
            &|done, total| progress.bytes(done, total),
        )?)
    }

    /// Checks the repository, reading `read_data` (0 to 1) of its packs in full.
    pub fn archive_verify(
        &self,
        url: &str,
        passphrase: &Secret,
        read_data: f64,
    ) -> anyhow::Result<VerifyReport> {
        let repo = Repository::open(url, passphrase.expose().as_bytes())?;
        Ok(repo.verify(read_data)?)
    }
}

/// An archived copy brought back as a local copy.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ImportReport {
    /// The new local copy (origin `archive`), verified.
    pub copy_id: i64,
    pub restore: RestoreReport,
    pub verification: crate::verify::VerifyOutcome,
}

impl Engine {
    /// Brings archived copy `archived` back as a new local copy of the `copy` provider
    /// (in the catalog's copies directory), recorded with the archived copy's set spec,
    /// components and manifest, then verified as any copy is (hashes and the writers'
    /// own checks). What `archive restore` without `--to` restores from, by the usual
    /// safe swap. A failure leaves the copy recorded as failed and its files removed.
    pub fn archive_import(
        &self,
        url: &str,
        passphrase: &Secret,
        archived: &str,
        wait: &WaitOptions,
        progress: &dyn Progress,
    ) -> anyhow::Result<ImportReport> {
        use shadowcopy_core::journal::{Journal, NewCopy};
        use shadowcopy_core::{CopyState, FileEntry, Origin};

        let repo = Repository::open(url, passphrase.expose().as_bytes())?;
        let (manifest_id, manifest) = repo.manifest(archived)?;
        let components: Vec<shadowcopy_core::Component> =
            serde_json::from_value(manifest.components.clone()).map_err(|e| {
                anyhow::anyhow!(
                    "archived copy {manifest_id} has components this version cannot read: {e}"
                )
            })?;
        let spec_json = serde_json::to_string(&manifest.spec)?;
        let spec = crate::set::SetSpec::from_json(&spec_json).map_err(|e| {
            anyhow::anyhow!(
                "archived copy {manifest_id} has a set spec this version cannot read: {e}"
            )
        })?;
        let catalog = self.open_catalog()?;
        let id = {
            let _queue = self.take_queue(
                &catalog,
                "archive restore",
                &manifest.set,
                wait.policy(),
                progress,
            )?;
            let id = catalog
                .begin_copy(&NewCopy {
                    set_name: &manifest.set,
                    spec_json: &spec_json,
                    origin: Origin::Archive,
                    provider: "copy",
                    freeze_deadline: std::time::Duration::ZERO,
                })
                .map_err(|e| anyhow::anyhow!(e))?;
            // The set's copies directory (where its blocks can be cloned from the live
            // files: the same file system, for a reflink or btrfs set), else the catalog's.
            let copies_dir = self
                .config
                .sets
                .get(&manifest.set)
                .and_then(|s| s.copies_dir.clone())
                .or_else(|| spec.copies_dir.clone().filter(|d| d.is_dir()))
                .unwrap_or_else(|| catalog.default_copies_dir());
            let location = shadowcopy_providers::copy_location(&copies_dir, id);
            let filled = (|| -> anyhow::Result<RestoreReport> {
                catalog
                    .set_location(id, &location.to_string_lossy())
                    .map_err(|e| anyhow::anyhow!(e))?;
                // Seeds: the live files, and the set's newest usable local copy.
                let newest = catalog
                    .list(Some(&manifest.set))?
                    .into_iter()
                    .rev()
                    .find(|c| c.state == CopyState::Usable && c.id != id)
                    .and_then(|c| {
                        let copy = crate::copies::UsableCopy::load(&catalog, c.id, "read").ok()?;
                        let files = catalog.manifest(c.id).ok()?;
                        copy.provider.expose(&copy.location, &files).ok()
                    });
                let restored = repo.restore_seeded(
                    &manifest_id,
                    &location.join("files"),
                    &|original| {
                        let mut seeds = vec![original.to_path_buf()];
                        if let Some(p) = newest.as_ref().and_then(|v| v.path_of(original)) {
                            seeds.push(p.to_path_buf());
                        }
                        seeds
                    },
                    &|done, total| progress.bytes(done, total),
                )?;
                catalog
                    .record_components(id, &components)
                    .map_err(|e| anyhow::anyhow!(e))?;
                let files: Vec<FileEntry> = manifest
                    .files
                    .iter()
                    .map(|f| FileEntry {
                        path: f.path.clone(),
                        size: f.size,
                        mode: f.mode,
                        mtime_ns: f.mtime_ns,
                        blake3: Some(f.blake3.clone()),
                    })
                    .collect();
                catalog
                    .record_files(id, &files)
                    .map_err(|e| anyhow::anyhow!(e))?;
                catalog
                    .finish_copy(id, CopyState::Usable, None)
                    .map_err(|e| anyhow::anyhow!(e))?;
                Ok(restored)
            })();
            match filled {
                Ok(restored) => (id, restored),
                Err(e) => {
                    let _ = catalog.finish_copy(id, CopyState::Failed, Some(&format!("{e:#}")));
                    let _ = std::fs::remove_dir_all(&location);
                    return Err(e.context(format!(
                        "bringing archived copy {manifest_id} back as copy {id}"
                    )));
                }
            }
        };
        let (id, restore) = id;
        // Brought back from off the host: read and checked in full.
        let verification = self.verify(id, true, wait, progress)?.into_result()?;
        Ok(ImportReport {
            copy_id: id,
            restore,
            verification,
        })
    }
}

/// An archived copy and what the policy decided for it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ArchiveDecision {
    pub id: String,
    pub host: String,
    pub set: String,
    pub copy_id: i64,
    pub created_ms: i64,
    pub keep: bool,
    pub reasons: Vec<String>,
}

/// What `archive prune` decided and did.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ArchivePruneReport {
    pub decisions: Vec<ArchiveDecision>,
    #[serde(flatten)]
    pub prune: PruneReport,
}

impl Engine {
    /// Applies each set's `archive_retention` to its archived copies (per host; a set
    /// without one keeps all), deletes what no policy keeps, and frees what no kept copy
    /// uses, in two phases (`grace`: longer than the longest push).
    pub fn archive_prune(
        &self,
        url: &str,
        passphrase: &Secret,
        grace: std::time::Duration,
        dry_run: bool,
    ) -> anyhow::Result<ArchivePruneReport> {
        let repo = Repository::open(url, passphrase.expose().as_bytes())?;
        let copies = repo.list()?;
        let mut groups: std::collections::BTreeMap<(String, String), Vec<&ArchivedCopy>> =
            Default::default();
        for c in &copies {
            groups
                .entry((c.host.clone(), c.set.clone()))
                .or_default()
                .push(c);
        }
        let mut decisions = Vec::new();
        for ((host, set), mut group) in groups {
            // Oldest first: the stand-in ids rank them as the catalog's ids would.
            group.sort_by_key(|c| (c.created_ms, c.copy_id));
            let Some(policy) = self.config.archive_retention(&set) else {
                decisions.extend(group.iter().map(|c| ArchiveDecision {
                    id: c.id.clone(),
                    host: host.clone(),
                    set: set.clone(),
                    copy_id: c.copy_id,
                    created_ms: c.created_ms,
                    keep: true,
                    reasons: vec!["the set has no archive_retention".into()],
                }));
                continue;
            };
            let stand_ins: Vec<shadowcopy_catalog::CopySummary> = group
                .iter()
                .enumerate()
                .map(|(n, c)| archived_as_summary(n as i64, c))
                .collect();
            for d in crate::retention::decide(&stand_ins, policy, None, &chrono::Local) {
                let c = group[d.id as usize];
                decisions.push(ArchiveDecision {
                    id: c.id.clone(),
                    host: host.clone(),
                    set: set.clone(),
                    copy_id: c.copy_id,
                    created_ms: c.created_ms,
                    keep: d.keep,
                    reasons: d.reasons,
                });
            }
        }
        let drop: Vec<String> = decisions
            .iter()
            .filter(|d| !d.keep)
            .map(|d| d.id.clone())
            .collect();
        let prune = repo.prune(&drop, grace, dry_run, &hostname())?;
        Ok(ArchivePruneReport { decisions, prune })
    }
}

/// An archived copy as the retention rules read a copy: usable and verified (a push
/// checks every file against its verified hash).
fn archived_as_summary(id: i64, c: &ArchivedCopy) -> shadowcopy_catalog::CopySummary {
    shadowcopy_catalog::CopySummary {
        id,
        set: c.set.clone(),
        origin: shadowcopy_core::Origin::parse(&c.origin)
            .unwrap_or(shadowcopy_core::Origin::Create),
        provider: String::new(),
        location: None,
        state: shadowcopy_core::CopyState::Usable,
        phase: String::new(),
        error: None,
        pid: 0,
        created_ms: c.created_ms,
        finished_ms: None,
        freeze_deadline_ms: 0,
        freeze_window_us: None,
        verify_state: shadowcopy_core::VerifyState::Passed,
        files: c.files as i64,
        bytes: c.bytes as i64,
        spec_json: String::new(),
    }
}

/// This host's name, as manifests record it.
pub(crate) fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}
