//! A repository opened with its key: `init`, `open`, and reading its indexes and
//! manifests. Push, restore and verify are in their own modules.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::{stream, StreamExt, TryStreamExt};

use crate::crypto::{hex, BlockId, KeyFile, MasterKey};
use crate::error::ArchiveError;
use crate::format::{names, Index, Manifest, RepoConfig};
use crate::store::Store;

/// How many objects are fetched at once.
pub(crate) const PARALLEL_GETS: usize = 8;

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn random_id() -> String {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes);
    hex(&bytes)
}

/// Where a block is.
#[derive(Clone, Debug)]
pub struct Location {
    pub pack: Arc<str>,
    pub index: Arc<str>,
    pub offset: u64,
    pub length: u32,
    pub raw_length: u32,
}

/// An open repository.
pub struct Repository {
    pub(crate) store: Store,
    pub(crate) config: RepoConfig,
    pub(crate) key: MasterKey,
    /// The key file the passphrase opened.
    pub(crate) key_id: String,
    pub(crate) runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Repository({})", self.store.url())
    }
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, ArchiveError> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("archive")
        .build()?)
}

fn json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, ArchiveError> {
    serde_json::from_slice(bytes).map_err(|e| ArchiveError::Format {
        what: what.to_string(),
        why: e.to_string(),
    })
}

/// What `init` made.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Initialized {
    pub url: String,
    pub id: String,
    pub key: String,
}

/// Creates a repository at `url` with one key sealed by `passphrase`.
pub fn init(url: &str, passphrase: &[u8], label: &str) -> Result<Initialized, ArchiveError> {
    if passphrase.is_empty() {
        return Err(ArchiveError::Usage(
            "the archive's passphrase is empty; set SHADOWCOPY_ARCHIVE_PASSWORD or give --password-file".into(),
        ));
    }
    let store = Store::open(url, true)?;
    let rt = runtime()?;
    rt.block_on(async {
        if store.get(names::CONFIG).await?.is_some() {
            return Err(ArchiveError::Usage(format!(
                "there is already an archive at {url}; use it, or choose another prefix"
            )));
        }
        let config = RepoConfig::new(random_id(), now_ms());
        let master = MasterKey::generate();
        let key_id = random_id();
        let file = KeyFile::seal(&master, passphrase, &config.id, label, now_ms())?;
        let key_json = serde_json::to_vec_pretty(&file).expect("serializes");
        store.put_new(&names::key(&key_id), key_json).await?;
        let config_json = serde_json::to_vec_pretty(&config).expect("serializes");
        if !store.put_new(names::CONFIG, config_json).await? {
            store.delete(&names::key(&key_id)).await?;
            return Err(ArchiveError::Usage(format!(
                "another `archive init` created an archive at {url} at the same moment; use it"
            )));
        }
        Ok(Initialized {
            url: url.to_string(),
            id: config.id,
            key: key_id,
        })
    })
}

impl Repository {
    /// Opens the repository at `url` with `passphrase` (any of its keys).
    pub fn open(url: &str, passphrase: &[u8]) -> Result<Repository, ArchiveError> {
        Repository::open_store(Store::open(url, false)?, passphrase)
    }

    /// Opens the repository in `store` with `passphrase`.
    pub fn open_store(store: Store, passphrase: &[u8]) -> Result<Repository, ArchiveError> {
        let url = store.url().to_string();
        let url = url.as_str();
        let runtime = runtime()?;
        let (config, key, key_id) = runtime.block_on(async {
            let config: RepoConfig = match store.get(names::CONFIG).await {
                Ok(Some(bytes)) => json(&bytes, "the archive's config")?,
                Ok(None) => {
                    return Err(ArchiveError::NoRepository {
                        url: url.to_string(),
                        why: "it has no `config` object".into(),
                    })
                }
                Err(ArchiveError::Store(e)) => {
                    return Err(ArchiveError::NoRepository {
                        url: url.to_string(),
                        why: e.to_string(),
                    })
                }
                Err(e) => return Err(e),
            };
            config.check().map_err(|why| ArchiveError::Format {
                what: format!("the archive at {url}"),
                why,
            })?;
            for (name, _) in store.list(names::KEYS).await? {
                let Some(bytes) = store.get(&format!("{}/{name}", names::KEYS)).await? else {
                    continue;
                };
                let file: KeyFile = json(&bytes, &format!("key {name}"))?;
                match file.open(passphrase, &config.id) {
                    Ok(key) => return Ok((config, key, name)),
                    Err(ArchiveError::WrongPassphrase) => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(ArchiveError::WrongPassphrase)
        })?;
        Ok(Repository {
            store,
            config,
            key,
            key_id,
            runtime,
        })
    }

    /// The repository's keys (each a passphrase that opens it).
    pub fn keys(&self) -> Result<Vec<KeyInfo>, ArchiveError> {
        self.runtime.block_on(async {
            let mut keys = Vec::new();
            for (id, _) in self.store.list(names::KEYS).await? {
                let Some(bytes) = self.store.get(&names::key(&id)).await? else {
                    continue;
                };
                let file: KeyFile = json(&bytes, &format!("key {id}"))?;
                keys.push(KeyInfo {
                    current: id == self.key_id,
                    id,
                    label: file.label,
                    created_ms: file.created_ms,
                });
            }
            keys.sort_by_key(|k| k.created_ms);
            Ok(keys)
        })
    }

    /// Seals the master key under another passphrase; the new key's id.
    pub fn add_key(&self, passphrase: &[u8], label: &str) -> Result<String, ArchiveError> {
        if passphrase.is_empty() {
            return Err(ArchiveError::Usage("the new passphrase is empty".into()));
        }
        let id = random_id();
        let file = KeyFile::seal(&self.key, passphrase, &self.config.id, label, now_ms())?;
        self.runtime.block_on(self.store.put_new(
            &names::key(&id),
            serde_json::to_vec_pretty(&file).expect("serializes"),
        ))?;
        Ok(id)
    }

    /// Removes key `id` (a unique prefix will do); never the last one, nor the one in use.
    pub fn remove_key(&self, id: &str) -> Result<String, ArchiveError> {
        let keys = self.keys()?;
        let found: Vec<&KeyInfo> = keys.iter().filter(|k| k.id.starts_with(id)).collect();
        let key = match found.as_slice() {
            [one] => *one,
            [] => {
                return Err(ArchiveError::Usage(format!(
                    "no key {id:?}; `archive key list` shows them"
                )))
            }
            _ => {
                return Err(ArchiveError::Usage(format!(
                    "several keys start with {id:?}; give more of it"
                )))
            }
        };
        if key.current {
            return Err(ArchiveError::Usage(format!(
                "key {} is the one this passphrase opened; remove it with another key's passphrase",
                key.id
            )));
        }
        if keys.len() == 1 {
            return Err(ArchiveError::Usage(
                "a repository keeps at least one key".into(),
            ));
        }
        self.runtime
            .block_on(self.store.delete(&names::key(&key.id)))?;
        Ok(key.id.clone())
    }

    pub fn url(&self) -> &str {
        self.store.url()
    }

    /// Whether the repository this was opened on is still at its URL (one read of its
    /// `config`): for a caller that keeps it open between uses, as the agent does.
    pub fn still_there(&self) -> Result<(), ArchiveError> {
        let gone = |why: &str| ArchiveError::NoRepository {
            url: self.url().to_string(),
            why: why.to_string(),
        };
        let bytes = self
            .runtime
            .block_on(self.store.get(names::CONFIG))?
            .ok_or_else(|| gone("it has no `config` object any more"))?;
        let config: RepoConfig = json(&bytes, "the archive's config")?;
        if config.id != self.config.id {
            return Err(gone("another repository is there now"));
        }
        Ok(())
    }

    pub fn config(&self) -> &RepoConfig {
        &self.config
    }

    /// Reads and opens a sealed object (zstd JSON).
    pub(crate) async fn read_sealed<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        aad: &str,
    ) -> Result<Option<T>, ArchiveError> {
        let Some(sealed) = self.store.get(name).await? else {
            return Ok(None);
        };
        let plain = self.key.open(&sealed, aad.as_bytes(), name)?;
        let json_bytes = zstd::decode_all(&plain[..]).map_err(|e| ArchiveError::Damaged {
            what: name.to_string(),
            why: format!("it does not decompress: {e}"),
        })?;
        json(&json_bytes, name).map(Some)
    }

    pub(crate) fn seal_json<T: serde::Serialize>(&self, value: &T, aad: &str) -> Vec<u8> {
        let plain = serde_json::to_vec(value).expect("serializes");
        let packed = zstd::encode_all(&plain[..], 3).expect("compressing into memory");
        self.key.seal(&packed, aad.as_bytes())
    }

    /// Where each block is: the indexes, and with `condemned` also the packs a prune
    /// condemned but has not deleted yet (still readable; a push does not count on them).
    pub(crate) async fn blocks(
        &self,
        condemned: bool,
    ) -> Result<HashMap<BlockId, Location>, ArchiveError> {
        let mut names: Vec<(String, bool)> = self
            .store
            .list(names::INDEX)
            .await?
            .into_iter()
            .map(|(n, _)| (n, false))
            .collect();
        if condemned {
            names.extend(
                self.store
                    .list(names::CONDEMNED)
                    .await?
                    .into_iter()
                    .map(|(n, _)| (n, true)),
            );
        }
        let indexes: Vec<(String, Index)> = stream::iter(names)
            .map(|(id, condemned)| async move {
                let index: Option<Index> = if condemned {
                    self.read_sealed::<crate::prune::Condemned>(
                        &names::condemned(&id),
                        &format!("condemned {id}"),
                    )
                    .await?
                    .map(|c| Index { packs: c.packs })
                } else {
                    self.read_sealed(&names::index(&id), &format!("index {id}"))
                        .await?
                };
                Ok::<_, ArchiveError>((id, index.unwrap_or_default()))
            })
            .buffer_unordered(PARALLEL_GETS)
            .try_collect()
            .await?;
        let mut blocks = HashMap::new();
        for (id, index) in indexes {
            let id: Arc<str> = id.into();
            for pack in index.packs {
                let pack_id: Arc<str> = pack.id.into();
                for b in pack.blocks {
                    blocks.entry(b.id).or_insert_with(|| Location {
                        pack: pack_id.clone(),
                        index: id.clone(),
                        offset: b.offset,
                        length: b.length,
                        raw_length: b.raw_length,
                    });
                }
            }
        }
        Ok(blocks)
    }

    /// Every manifest, by id, oldest copy first; fails on one that cannot be read
    /// (what prune needs: a block only a damaged manifest names must not be freed).
    pub(crate) async fn manifests(&self) -> Result<Vec<(String, Manifest)>, ArchiveError> {
        let (good, damaged) = self.manifests_checked().await?;
        match damaged.into_iter().next() {
            None => Ok(good),
            Some((_, e)) => Err(e),
        }
    }

    /// The manifests that open, oldest copy first, and apart those that do not (changed,
    /// truncated, moved under another name) with why: reading goes on past them.
    pub(crate) async fn manifests_checked(
        &self,
    ) -> Result<(Vec<(String, Manifest)>, Vec<(String, ArchiveError)>), ArchiveError> {
        let names: Vec<String> = self
            .store
            .names(names::MANIFESTS)
            .await?
            .into_iter()
            .collect();
        let read: Vec<(String, Result<Option<Manifest>, ArchiveError>)> = stream::iter(names)
            .map(|id| async move {
                let manifest = self
                    .read_sealed::<Manifest>(&names::manifest(&id), &format!("manifest {id}"))
                    .await;
                (id, manifest)
            })
            .buffer_unordered(PARALLEL_GETS)
            .collect()
            .await;
        let mut good = Vec::new();
        let mut damaged = Vec::new();
        for (id, manifest) in read {
            match manifest {
                Ok(Some(m)) => good.push((id, m)),
                Ok(None) => {}
                Err(e @ (ArchiveError::Damaged { .. } | ArchiveError::Format { .. })) => {
                    damaged.push((id, e))
                }
                Err(e) => return Err(e),
            }
        }
        good.sort_by_key(|(id, m): &(String, Manifest)| (m.created_ms, m.copy_id, id.clone()));
        damaged.sort_by(|a, b| a.0.cmp(&b.0));
        Ok((good, damaged))
    }

    /// The archived copies, oldest first.
    pub fn list(&self) -> Result<Vec<ArchivedCopy>, ArchiveError> {
        let (manifests, damaged) = self.runtime.block_on(self.manifests_checked())?;
        for (id, e) in damaged {
            tracing::warn!("archived copy {id} is not listed: {e}; `archive verify` reports it");
        }
        Ok(manifests
            .into_iter()
            .map(|(id, m)| ArchivedCopy::of(id, &m))
            .collect())
    }

    /// One archived copy's manifest, by its id or a unique prefix of it.
    pub fn manifest(&self, id: &str) -> Result<(String, Manifest), ArchiveError> {
        let found: Vec<(String, Manifest)> = self
            .runtime
            .block_on(self.manifests_checked())?
            .0
            .into_iter()
            .filter(|(m, _)| m.starts_with(id))
            .collect();
        match found.len() {
            1 => Ok(found.into_iter().next().expect("one")),
            0 => Err(ArchiveError::Usage(format!(
                "no archived copy {id:?} in {}; `shadowcopy archive list` shows them",
                self.url()
            ))),
            n => Err(ArchiveError::Usage(format!(
                "{n} archived copies start with {id:?}; give more of the id"
            ))),
        }
    }
}

/// A key as `archive key list` shows it (never the key itself).
#[derive(Clone, Debug, serde::Serialize)]
pub struct KeyInfo {
    pub id: String,
    pub label: String,
    pub created_ms: i64,
    /// The key the given passphrase opened.
    pub current: bool,
}

/// An archived copy as `archive list` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ArchivedCopy {
    pub id: String,
    pub host: String,
    pub set: String,
    pub copy_id: i64,
    pub origin: String,
    pub created_ms: i64,
    pub archived_ms: i64,
    pub files: usize,
    pub bytes: u64,
}

impl ArchivedCopy {
    fn of(id: String, m: &Manifest) -> ArchivedCopy {
        ArchivedCopy {
            id,
            host: m.host.clone(),
            set: m.set.clone(),
            copy_id: m.copy_id,
            origin: m.origin.clone(),
            created_ms: m.created_ms,
            archived_ms: m.archived_ms,
            files: m.files.len(),
            bytes: m.bytes(),
        }
    }
}
