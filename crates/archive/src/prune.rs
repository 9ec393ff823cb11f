//! Pruning: the manifests a policy dropped are deleted, then the space they held is
//! given back in two phases, so that a push running beside a prune never loses a block
//! it counts on (docs/archive-format.md, "prune"). Phase 1 condemns the packs no
//! manifest references: they leave the indexes (new pushes upload their blocks anew)
//! and are listed in `condemned/<id>`, still readable. Phase 2, in a later prune once the
//! grace period (longer than any push) has passed, deletes the condemned packs no
//! manifest has come to reference meanwhile and indexes again those that one has. Packs
//! in no index and no condemned list (a push that died) go once older than the grace
//! period. One pruner at a time: a lease object, written only if absent.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::crypto::{hex, BlockId};
use crate::error::ArchiveError;
use crate::format::{names, Index, IndexedPack};
use crate::repo::{now_ms, Repository};

/// `condemned/<id>`: packs out of the indexes, to be deleted after the grace period.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condemned {
    pub condemned_ms: i64,
    pub packs: Vec<IndexedPack>,
}

/// `locks/prune`: who prunes, until when.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Lease {
    host: String,
    pid: u32,
    since_ms: i64,
    until_ms: i64,
}

const LEASE: &str = "locks/prune";
/// A pruner that died is taken over once its lease has run out.
const LEASE_FOR: Duration = Duration::from_secs(3600);

/// What a prune did (or, in a dry run, would do).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub manifests_deleted: Vec<String>,
    pub packs_condemned: usize,
    pub packs_deleted: usize,
    pub packs_reindexed: usize,
    pub orphans_deleted: usize,
    pub bytes_freed: u64,
}

fn random_id() -> String {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes);
    hex(&bytes)
}

impl Repository {
    /// Deletes manifests `drop` (ids), then condemns and deletes packs as the module
    /// says; `grace` must be longer than the longest push.
    pub fn prune(
        &self,
        drop: &[String],
        grace: Duration,
        dry_run: bool,
        host: &str,
    ) -> Result<PruneReport, ArchiveError> {
        self.runtime.block_on(async {
            if !dry_run {
                self.take_lease(host).await?;
            }
            let result = self.prune_held(drop, grace, dry_run).await;
            if !dry_run {
                self.store.delete(LEASE).await?;
            }
            result
        })
    }

    async fn take_lease(&self, host: &str) -> Result<(), ArchiveError> {
        let now = now_ms();
        let lease = Lease {
            host: host.to_string(),
            pid: std::process::id(),
            since_ms: now,
            until_ms: now + LEASE_FOR.as_millis() as i64,
        };
        let bytes = serde_json::to_vec(&lease).expect("serializes");
        for _ in 0..2 {
            if self.store.put_new(LEASE, bytes.clone()).await? {
                return Ok(());
            }
            let held: Option<Lease> = self
                .store
                .get(LEASE)
                .await?
                .and_then(|b| serde_json::from_slice(&b).ok());
            match held {
                Some(h) if h.until_ms > now => {
                    return Err(ArchiveError::Usage(format!(
                    "another prune is running (host {}, pid {}, since {} ms ago); one at a time",
                    h.host,
                    h.pid,
                    now - h.since_ms
                )))
                }
                // Its pruner died: its lease ran out.
                _ => self.store.delete(LEASE).await?,
            }
        }
        Err(ArchiveError::Usage(
            "another prune took the lease at the same moment".into(),
        ))
    }

    async fn prune_held(
        &self,
        drop: &[String],
        grace: Duration,
        dry_run: bool,
    ) -> Result<PruneReport, ArchiveError> {
        let mut report = PruneReport {
            dry_run,
            ..PruneReport::default()
        };
        let now = now_ms();
        let old_enough = |ms: i64| now - ms >= grace.as_millis() as i64;
        let manifests = self.manifests().await?;
        let known: HashSet<&str> = manifests.iter().map(|(id, _)| id.as_str()).collect();
        for id in drop {
            if !known.contains(id.as_str()) {
                return Err(ArchiveError::Usage(format!(
                    "no archived copy {id} to delete"
                )));
            }
        }
        let drop: HashSet<&str> = drop.iter().map(String::as_str).collect();
        for id in &drop {
            if !dry_run {
                self.store.delete(&names::manifest(id)).await?;
            }
            report.manifests_deleted.push(id.to_string());
        }
        let referenced: HashSet<BlockId> = manifests
            .iter()
            .filter(|(id, _)| !drop.contains(id.as_str()))
            .flat_map(|(_, m)| m.files.iter().flat_map(|f| f.blocks.iter().copied()))
            .collect();
        let used = |pack: &IndexedPack| pack.blocks.iter().any(|b| referenced.contains(&b.id));

        // Phase 2: earlier condemnations past the grace period.
        let mut reindex: Vec<IndexedPack> = Vec::new();
        let mut accounted: HashSet<String> = HashSet::new();
        for (id, _) in self.store.list(names::CONDEMNED).await? {
            let name = names::condemned(&id);
            let Some(list) = self
                .read_sealed::<Condemned>(&name, &format!("condemned {id}"))
                .await?
            else {
                continue;
            };
            accounted.extend(list.packs.iter().map(|p| p.id.clone()));
            if !old_enough(list.condemned_ms) {
                continue;
            }
            for pack in list.packs {
                if used(&pack) {
                    report.packs_reindexed += 1;
                    reindex.push(pack);
                } else {
                    report.packs_deleted += 1;
                    report.bytes_freed += pack.size;
                    if !dry_run {
                        self.store.delete(&names::pack(&pack.id)).await?;
                    }
                }
            }
            if !dry_run {
                if !reindex.is_empty() {
                    let index_id = random_id();
                    let index = Index {
                        packs: std::mem::take(&mut reindex),
                    };
                    let sealed = self.seal_json(&index, &format!("index {index_id}"));
                    self.store.put(&names::index(&index_id), sealed).await?;
                }
                self.store.delete(&name).await?;
            }
        }

        // Phase 1: indexed packs nothing references are condemned.
        let mut keep: Vec<IndexedPack> = Vec::new();
        let mut condemn: Vec<IndexedPack> = Vec::new();
        let mut old_indexes = Vec::new();
        for (id, _) in self.store.list(names::INDEX).await? {
            let index: Option<Index> = self
                .read_sealed(&names::index(&id), &format!("index {id}"))
                .await?;
            for pack in index.unwrap_or_default().packs {
                accounted.insert(pack.id.clone());
                if used(&pack) {
                    keep.push(pack);
                } else {
                    condemn.push(pack);
                }
            }
            old_indexes.push(id);
        }
        report.packs_condemned = condemn.len();
        if !condemn.is_empty() && !dry_run {
            let list_id = random_id();
            let list = Condemned {
                condemned_ms: now,
                packs: condemn,
            };
            let sealed = self.seal_json(&list, &format!("condemned {list_id}"));
            self.store.put(&names::condemned(&list_id), sealed).await?;
            // The remaining packs in one new index, then the old indexes go.
            let index_id = random_id();
            let index = Index { packs: keep };
            let sealed = self.seal_json(&index, &format!("index {index_id}"));
            self.store.put(&names::index(&index_id), sealed).await?;
            for id in old_indexes {
                self.store.delete(&names::index(&id)).await?;
            }
        }

        // Packs in no index and no condemned list: a push that died, once past the grace.
        let stored = self.store.list_with_time(names::PACKS).await?;
        let mut by_id: HashMap<String, (u64, i64)> = HashMap::new();
        for (name, size, modified_ms) in stored {
            if let Some(id) = name.rsplit('/').next() {
                by_id.insert(id.to_string(), (size, modified_ms));
            }
        }
        for (id, (size, modified_ms)) in by_id {
            if accounted.contains(&id) || !old_enough(modified_ms) {
                continue;
            }
            report.orphans_deleted += 1;
            report.bytes_freed += size;
            if !dry_run {
                self.store.delete(&names::pack(&id)).await?;
            }
        }
        Ok(report)
    }
}
