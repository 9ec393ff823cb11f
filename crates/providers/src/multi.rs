//! The multi-volume provider: one copy of a set whose data lies on several file systems,
//! made by one provider per volume (`btrfs` for one, `reflink` or `copy` for another)
//! inside the same freeze window, so every volume has the same point in time.
//!
//! - Components go to the volume whose root (mount point) holds them.
//! - The location records each volume's root, provider kind and location (JSON), so a
//!   copy can be read, restored and deleted later without the set's configuration.
//! - All or nothing: a commit fails if any volume fails, and `delete` removes every
//!   volume's copy, so the coordinator's abort discards the volumes already done.
//! - Pinned components are not copied early here: every volume commits inside the
//!   freeze (a full `copy` volume therefore holds the writers for its whole copy).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shadowcopy_core::error::BoxError;
use shadowcopy_core::model::{Component, CopyView, FileEntry, TreeEntry};
use shadowcopy_core::provider::{
    Capabilities, CommitControl, CommitRequest, Provider, Unsupported,
};

use crate::ProviderOptions;

/// The kind recorded for multi-volume copies.
pub const MULTI: &str = "multi";

/// One file system of a set and the provider that copies it.
#[derive(Clone)]
pub struct Volume {
    /// The mount point (or any directory that holds this volume's paths).
    pub root: PathBuf,
    pub provider: Arc<dyn Provider>,
}

#[derive(Debug, thiserror::Error)]
pub enum MultiError {
    #[error("{} is on none of the set's volumes ({})", .path.display(), .roots.join(", "))]
    NoVolume { path: PathBuf, roots: Vec<String> },
    #[error("volume {} ({provider}) failed", .root.display())]
    Volume {
        root: PathBuf,
        provider: String,
        #[source]
        source: BoxError,
    },
    #[error("{location:?} is not a multi-volume copy location")]
    BadLocation {
        location: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot rebuild the {kind} provider of volume {}: {reason}", .root.display())]
    Rebuild {
        root: PathBuf,
        kind: String,
        reason: String,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct VolumeLocation {
    root: PathBuf,
    provider: String,
    location: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct MultiLocation {
    volumes: Vec<VolumeLocation>,
}

pub struct MultiVolumeProvider {
    volumes: Vec<Volume>,
    opts: ProviderOptions,
}

impl MultiVolumeProvider {
    /// For a new copy: the volumes and their providers.
    pub fn new(volumes: Vec<Volume>, opts: &ProviderOptions) -> Self {
        MultiVolumeProvider {
            volumes,
            opts: opts.clone(),
        }
    }

    /// For an existing copy: the volumes come from its location.
    pub fn for_existing(opts: &ProviderOptions) -> Self {
        MultiVolumeProvider {
            volumes: Vec::new(),
            opts: opts.clone(),
        }
    }

    /// For an existing copy, able to make new copies of the same volumes with the same
    /// kinds of provider (the pre-restore copy an in-place restore keeps first): the
    /// volumes and provider kinds `location` recorded.
    pub fn for_location(location: &str, opts: &ProviderOptions) -> Result<Self, MultiError> {
        let mut multi = Self::for_existing(opts);
        for v in Self::parse(location)?.volumes {
            let provider = multi.provider_of(&v)?;
            multi.volumes.push(Volume {
                root: v.root,
                provider,
            });
        }
        Ok(multi)
    }

    fn roots(&self) -> Vec<String> {
        self.volumes
            .iter()
            .map(|v| v.root.display().to_string())
            .collect()
    }

    /// The volume (index) holding `path`: the one with the longest root that is a prefix.
    fn volume_of(&self, path: &Path) -> Result<usize, MultiError> {
        self.volumes
            .iter()
            .enumerate()
            .filter(|(_, v)| path.starts_with(&v.root))
            .max_by_key(|(_, v)| v.root.as_os_str().len())
            .map(|(i, _)| i)
            .ok_or_else(|| MultiError::NoVolume {
                path: path.to_path_buf(),
                roots: self.roots(),
            })
    }

    /// The request's components per volume, volumes without components left out.
    fn split(&self, request: &CommitRequest) -> Result<Vec<(usize, CommitRequest)>, MultiError> {
        let mut per: Vec<Vec<Component>> = vec![Vec::new(); self.volumes.len()];
        for c in &request.components {
            per[self.volume_of(&c.path)?].push(c.clone());
        }
        Ok(per
            .into_iter()
            .enumerate()
            .filter(|(_, c)| !c.is_empty())
            .map(|(i, components)| {
                (
                    i,
                    CommitRequest {
                        components,
                        ..request.clone()
                    },
                )
            })
            .collect())
    }

    fn parse(location: &str) -> Result<MultiLocation, MultiError> {
        serde_json::from_str(location).map_err(|source| MultiError::BadLocation {
            location: location.to_string(),
            source,
        })
    }

    /// The provider of a recorded volume: the configured one, or rebuilt by kind.
    fn provider_of(&self, v: &VolumeLocation) -> Result<Arc<dyn Provider>, MultiError> {
        if let Some(known) = self
            .volumes
            .iter()
            .find(|k| k.root == v.root && k.provider.kind() == v.provider)
        {
            return Ok(known.provider.clone());
        }
        crate::build(&v.provider, &self.opts).map_err(|e| MultiError::Rebuild {
            root: v.root.clone(),
            kind: v.provider.clone(),
            reason: e.to_string(),
        })
    }

    /// The recorded volume holding `path`: the longest root that is a prefix of it.
    fn recorded_volume<'a>(recorded: &'a MultiLocation, path: &Path) -> Option<&'a VolumeLocation> {
        recorded
            .volumes
            .iter()
            .filter(|v| path.starts_with(&v.root))
            .max_by_key(|v| v.root.as_os_str().len())
    }

    fn on_volume(v: &VolumeLocation) -> impl FnOnce(BoxError) -> MultiError + '_ {
        move |source| MultiError::Volume {
            root: v.root.clone(),
            provider: v.provider.clone(),
            source,
        }
    }
}

impl Provider for MultiVolumeProvider {
    fn kind(&self) -> &'static str {
        MULTI
    }

    /// Never chosen by `auto`: the CLI builds it for sets that span volumes.
    fn rank(&self) -> u32 {
        u32::MAX
    }

    /// One instant across volumes comes from the writers' freeze, not from the storage:
    /// no atomic snapshot is promised. The set writes to its data's file systems when any
    /// volume's provider does; the location is a record of the volumes, not a directory.
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            atomic_snapshot: false,
            writes_to_the_data_file_system: self
                .volumes
                .iter()
                .any(|v| v.provider.capabilities().writes_to_the_data_file_system),
            location_is_a_local_directory: false,
        }
    }

    fn check(&self, paths: &[PathBuf]) -> Result<(), Unsupported> {
        let mut per: Vec<Vec<PathBuf>> = vec![Vec::new(); self.volumes.len()];
        for p in paths {
            let i = self.volume_of(p).map_err(|e| Unsupported {
                reason: e.to_string(),
            })?;
            per[i].push(p.clone());
        }
        for (v, paths) in self.volumes.iter().zip(per) {
            if !paths.is_empty() {
                v.provider.check(&paths).map_err(|why| Unsupported {
                    reason: format!("volume {} ({}): {why}", v.root.display(), v.provider.kind()),
                })?;
            }
        }
        Ok(())
    }

    fn location(&self, request: &CommitRequest) -> Result<String, BoxError> {
        let mut volumes = Vec::new();
        for (i, sub) in self.split(request)? {
            let v = &self.volumes[i];
            let location = v
                .provider
                .location(&sub)
                .map_err(|source| MultiError::Volume {
                    root: v.root.clone(),
                    provider: v.provider.kind().to_string(),
                    source,
                })?;
            volumes.push(VolumeLocation {
                root: v.root.clone(),
                provider: v.provider.kind().to_string(),
                location,
            });
        }
        Ok(serde_json::to_string(&MultiLocation { volumes })?)
    }

    /// Each volume in turn, inside the same freeze window; the first failure fails all.
    fn commit(
        &self,
        request: &CommitRequest,
        location: &str,
        control: &CommitControl,
    ) -> Result<Vec<FileEntry>, BoxError> {
        let recorded = Self::parse(location)?;
        let mut files = Vec::new();
        for (i, sub) in self.split(request)? {
            let v = recorded
                .volumes
                .iter()
                .find(|r| r.root == self.volumes[i].root)
                .ok_or_else(|| MultiError::NoVolume {
                    path: self.volumes[i].root.clone(),
                    roots: self.roots(),
                })?;
            let provider = self.provider_of(v)?;
            files.extend(
                provider
                    .commit(&sub, &v.location, control)
                    .map_err(Self::on_volume(v))?,
            );
        }
        Ok(files)
    }

    fn persist(&self, location: &str) -> Result<(), BoxError> {
        for v in Self::parse(location)?.volumes {
            self.provider_of(&v)?
                .persist(&v.location)
                .map_err(Self::on_volume(&v))?;
        }
        Ok(())
    }

    /// Deletes every volume's copy (each delete is idempotent); reports the first error
    /// after trying all.
    fn delete(&self, location: &str) -> Result<(), BoxError> {
        let mut first: Option<BoxError> = None;
        for v in Self::parse(location)?.volumes {
            let result = self
                .provider_of(&v)
                .map_err(BoxError::from)
                .and_then(|p| p.delete(&v.location));
            if let Err(e) = result {
                first.get_or_insert(Box::new(Self::on_volume(&v)(e)));
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn expose(&self, location: &str, files: &[FileEntry]) -> Result<CopyView, BoxError> {
        let mut view = CopyView::default();
        let recorded = Self::parse(location)?;
        for v in &recorded.volumes {
            // Each file belongs to the volume with the longest root holding it.
            let mine: Vec<FileEntry> = files
                .iter()
                .filter(|f| {
                    Self::recorded_volume(&recorded, &f.path).is_some_and(|r| r.root == v.root)
                })
                .cloned()
                .collect();
            let part = self
                .provider_of(v)?
                .expose(&v.location, &mine)
                .map_err(Self::on_volume(v))?;
            view.files.extend(part.files);
        }
        Ok(view)
    }

    fn add_files(
        &self,
        location: &str,
        files: &[(PathBuf, PathBuf)],
    ) -> Result<Vec<FileEntry>, BoxError> {
        let recorded = Self::parse(location)?;
        let mut entries = Vec::new();
        for v in &recorded.volumes {
            let mine: Vec<(PathBuf, PathBuf)> = files
                .iter()
                .filter(|(original, _)| {
                    Self::recorded_volume(&recorded, original).is_some_and(|r| r.root == v.root)
                })
                .cloned()
                .collect();
            if mine.is_empty() {
                continue;
            }
            entries.extend(
                self.provider_of(v)?
                    .add_files(&v.location, &mine)
                    .map_err(Self::on_volume(v))?,
            );
        }
        if entries.len() != files.len() {
            let placed: Vec<&Path> = entries.iter().map(|e| e.path.as_path()).collect();
            if let Some((missing, _)) = files.iter().find(|(o, _)| !placed.contains(&o.as_path())) {
                return Err(MultiError::NoVolume {
                    path: missing.clone(),
                    roots: recorded
                        .volumes
                        .iter()
                        .map(|v| v.root.display().to_string())
                        .collect(),
                }
                .into());
            }
        }
        Ok(entries)
    }

    fn restore_file(&self, location: &str, original: &Path, dest: &Path) -> Result<(), BoxError> {
        let recorded = Self::parse(location)?;
        let v = Self::recorded_volume(&recorded, original).ok_or_else(|| MultiError::NoVolume {
            path: original.to_path_buf(),
            roots: recorded
                .volumes
                .iter()
                .map(|v| v.root.display().to_string())
                .collect(),
        })?;
        self.provider_of(v)?
            .restore_file(&v.location, original, dest)
            .map_err(|e| Self::on_volume(v)(e).into())
    }

    fn tree(&self, location: &str, roots: &[PathBuf]) -> Result<Vec<TreeEntry>, BoxError> {
        let recorded = Self::parse(location)?;
        let mut out = Vec::new();
        for v in &recorded.volumes {
            let mine: Vec<PathBuf> = roots
                .iter()
                .filter(|r| Self::recorded_volume(&recorded, r).is_some_and(|w| w.root == v.root))
                .cloned()
                .collect();
            if mine.is_empty() {
                continue;
            }
            out.extend(
                self.provider_of(v)?
                    .tree(&v.location, &mine)
                    .map_err(Self::on_volume(v))?,
            );
        }
        Ok(out)
    }

    fn bytes_used(&self, location: &str) -> Option<u64> {
        let recorded = Self::parse(location).ok()?;
        recorded
            .volumes
            .iter()
            .map(|v| self.provider_of(v).ok()?.bytes_used(&v.location))
            .sum()
    }
}
