//! The read-only use cases: `list`, `show` and `jobs` (what the catalog holds), `expose` (a
//! copy's files, to read), `writers` (the
//! writer kinds and each configured set's writers with their state, like `vssadmin list
//! writers`) and `providers` (which can serve some paths, and what `auto` picks).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use shadowcopy_catalog::{CopyDetail, CopySummary, JobRecord, SetTotals};

use crate::copies::UsableCopy;
use crate::engine::Engine;
use crate::error::UsageError;
use crate::set::{CreateOptions, SetSpec};

/// A writer kind this build knows.
#[derive(Clone, Debug, Serialize)]
pub struct WriterKindInfo {
    pub kind: &'static str,
    pub description: &'static str,
}

/// One writer of a configured set, identified now.
#[derive(Clone, Debug, Serialize)]
pub struct WriterInstance {
    pub set: String,
    pub writer: String,
    /// `stable` (identified) or `failed`.
    pub state: &'static str,
    pub detail: String,
    pub in_use_by: Vec<u32>,
    /// What discovery found (database writers: the server's layout, flavour, version,
    /// engines in use), as recorded with copies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovered: Option<serde_json::Value>,
}

/// What `writers --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct WritersReport {
    pub kinds: Vec<WriterKindInfo>,
    pub configured: Vec<WriterInstance>,
}

/// One provider and whether it can serve the paths.
#[derive(Clone, Debug, Serialize)]
pub struct ProviderRow {
    pub provider: &'static str,
    pub rank: u32,
    pub can_serve: bool,
    pub reason: Option<String>,
}

/// One file system of paths that span several, and what `auto` picks for it.
#[derive(Clone, Debug, Serialize)]
pub struct VolumeChoice {
    pub volume: PathBuf,
    pub paths: Vec<PathBuf>,
    pub auto: Option<&'static str>,
}

/// What `providers --json` prints.
#[derive(Clone, Debug, Serialize)]
pub struct ProvidersReport {
    pub paths: Vec<PathBuf>,
    pub providers: Vec<ProviderRow>,
    pub auto: Option<&'static str>,
    /// When the paths span file systems: what `auto` picks for each (a multi-volume set).
    pub volumes: Vec<VolumeChoice>,
}

impl Engine {
    /// The copies in the catalog (of `set`), oldest first. Reads only.
    pub fn list(&self, set: Option<&str>) -> anyhow::Result<Vec<CopySummary>> {
        Ok(self.open_catalog_read_only()?.list(set)?)
    }

    /// A page of [`Engine::list`]: at most `limit` copies with ids above `after`.
    pub fn list_page(
        &self,
        set: Option<&str>,
        after: i64,
        limit: usize,
    ) -> anyhow::Result<Vec<CopySummary>> {
        Ok(self
            .open_catalog_read_only()?
            .list_page(set, after, limit)?)
    }

    /// Each set's copies counted by state, and its newest usable copy. Reads only.
    pub fn set_totals(&self) -> anyhow::Result<BTreeMap<String, SetTotals>> {
        Ok(self.open_catalog_read_only()?.set_totals()?)
    }

    /// The agent's jobs, newest first, at most `limit`. Reads only.
    pub fn jobs(&self, limit: usize) -> anyhow::Result<Vec<JobRecord>> {
        Ok(self.open_catalog_read_only()?.jobs(limit)?)
    }

    /// Job `id`, if there is one. Reads only.
    pub fn job(&self, id: i64) -> anyhow::Result<Option<JobRecord>> {
        Ok(self.open_catalog_read_only()?.job(id)?)
    }

    /// Everything the catalog knows of copy `id`. Reads only.
    pub fn show(&self, id: i64) -> anyhow::Result<CopyDetail> {
        Ok(self.open_catalog_read_only()?.detail(id)?)
    }

    /// Copy `id`'s files, readable (read-only use): for a front end that looks inside
    /// a copy. Reads the catalog only.
    pub fn copy_files(&self, id: i64) -> anyhow::Result<shadowcopy_core::CopyView> {
        let catalog = self.open_catalog_read_only()?;
        let copy = UsableCopy::load(&catalog, id, "read")?;
        let files = catalog.manifest(id)?;
        copy.provider
            .expose(&copy.location, &files)
            .map_err(|e| anyhow::anyhow!(e).context(format!("cannot read copy {id}")))
    }

    /// The writer kinds, and each configured set's writers identified now.
    pub fn writers(&self) -> anyhow::Result<WritersReport> {
        let kinds = shadowcopy_writers::KINDS
            .iter()
            .map(|k| WriterKindInfo {
                kind: k.name,
                description: k.description,
            })
            .collect();
        let mut configured = Vec::new();
        for name in self.config.sets.keys() {
            let spec = SetSpec::from_config(&self.config, name, &CreateOptions::default())?;
            let discovered: Vec<Option<serde_json::Value>> = spec
                .writers
                .iter()
                .map(|w| w.options().discovered())
                .collect();
            for (i, mut w) in spec.build_writers().into_iter().enumerate() {
                let (state, detail, paths) = match w.identify() {
                    Ok(components) => (
                        "stable",
                        components
                            .iter()
                            .map(|c| format!("{} {}", c.name, c.path.display()))
                            .collect::<Vec<_>>()
                            .join(", "),
                        components.into_iter().map(|c| c.path).collect(),
                    ),
                    Err(e) => ("failed", e.to_string(), Vec::new()),
                };
                let in_use_by = shadowcopy_writers::proc_scan::holders(&paths)
                    .into_iter()
                    .map(|h| h.pid)
                    .collect();
                configured.push(WriterInstance {
                    set: name.clone(),
                    writer: w.name(),
                    state,
                    detail,
                    in_use_by,
                    discovered: discovered.get(i).cloned().flatten(),
                });
            }
        }
        Ok(WritersReport { kinds, configured })
    }

    /// Each provider and whether it can serve `paths` (default: the configured sets'
    /// data, else the current directory), and what `auto` picks.
    pub fn providers(&self, paths: &[PathBuf]) -> anyhow::Result<ProvidersReport> {
        let mut paths: Vec<PathBuf> = paths
            .iter()
            .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
            .collect();
        if paths.is_empty() {
            for name in self.config.sets.keys() {
                paths.extend(
                    SetSpec::from_config(&self.config, name, &CreateOptions::default())?
                        .data_paths(),
                );
            }
        }
        if paths.is_empty() {
            paths.push(std::env::current_dir()?);
        }
        let opts = shadowcopy_providers::ProviderOptions {
            copies_dir: None,
            default_copies_dir: self.catalog_dir.join("copies"),
            parallelism: 2,
            exec: self.config.exec_providers(),
        };
        let mut rows: Vec<ProviderRow> = shadowcopy_providers::all(&opts)
            .iter()
            .map(|p| {
                let check = p.check(&paths);
                ProviderRow {
                    provider: p.kind(),
                    rank: p.rank(),
                    can_serve: check.is_ok(),
                    reason: check.err().map(|e| e.reason),
                }
            })
            .collect();
        rows.sort_by_key(|r| r.rank);
        let auto = rows.iter().find(|r| r.can_serve).map(|r| r.provider);
        let mut volumes: Vec<VolumeChoice> = Vec::new();
        for p in &paths {
            let volume = shadowcopy_writers::fsfreeze::mount_point(p)
                .map_err(|e| UsageError::new(e.to_string()))?;
            match volumes.iter_mut().find(|v| v.volume == volume) {
                Some(v) => v.paths.push(p.clone()),
                None => volumes.push(VolumeChoice {
                    volume,
                    paths: vec![p.clone()],
                    auto: None,
                }),
            }
        }
        if volumes.len() > 1 {
            for v in &mut volumes {
                v.auto = shadowcopy_providers::choose_auto(&opts, &v.paths)
                    .ok()
                    .map(|p| p.kind());
            }
        } else {
            volumes.clear();
        }
        Ok(ProvidersReport {
            paths,
            providers: rows,
            auto,
            volumes,
        })
    }
}
