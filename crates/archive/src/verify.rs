//! Checking a repository: every archived copy's blocks are in an index and every
//! indexed pack is stored at its size; with `--read-data` (all packs, or a share of
//! them) every block of the packs read is opened and its id checked, and each problem
//! names the archived copies and files it damages.

use std::collections::{BTreeSet, HashMap};

use futures_util::{stream, StreamExt};

use crate::block::BlockOpener;
use crate::crypto::BlockId;
use crate::error::ArchiveError;
use crate::format::{names, Index, PackHeader};
use crate::repo::{Repository, PARALLEL_GETS};

/// What `archive verify` found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub copies: usize,
    pub packs: usize,
    pub packs_read: usize,
    pub blocks_checked: usize,
    /// One line per problem, naming what it damages.
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// The report, or for a damaged repository the error it is (exit 4).
    pub fn into_result(self, url: &str) -> Result<VerifyReport, ArchiveError> {
        if self.ok {
            return Ok(self);
        }
        Err(ArchiveError::Damaged {
            what: format!("the archive at {url}"),
            why: format!(
                "{} problems: {}",
                self.problems.len(),
                self.problems.join("; ")
            ),
        })
    }
}

impl Repository {
    /// Checks the repository; `read_data`: the share of packs (0 to 1) read in full.
    pub fn verify(&self, read_data: f64) -> Result<VerifyReport, ArchiveError> {
        self.runtime.block_on(async {
            let (manifests, damaged) = self.manifests_checked().await?;
            let stored: HashMap<String, u64> = self
                .store
                .list(names::PACKS)
                .await?
                .into_iter()
                .filter_map(|(name, size)| Some((name.rsplit('/').next()?.to_string(), size)))
                .collect();
            let mut packs: HashMap<String, (u64, Vec<crate::format::BlockEntry>)> = HashMap::new();
            for (id, _) in self.store.list(names::INDEX).await? {
                let index: Option<Index> = self
                    .read_sealed(&names::index(&id), &format!("index {id}"))
                    .await?;
                for pack in index.unwrap_or_default().packs {
                    packs.insert(pack.id, (pack.size, pack.blocks));
                }
            }
            // Condemned packs are still stored and readable until a prune deletes them.
            for (id, _) in self.store.list(names::CONDEMNED).await? {
                let list: Option<crate::prune::Condemned> = self
                    .read_sealed(&names::condemned(&id), &format!("condemned {id}"))
                    .await?;
                for pack in list.unwrap_or_default().packs {
                    packs.entry(pack.id).or_insert((pack.size, pack.blocks));
                }
            }
            let mut report = VerifyReport {
                copies: manifests.len() + damaged.len(),
                packs: packs.len(),
                ..VerifyReport::default()
            };
            for (id, e) in &damaged {
                report.problems.push(format!("archived copy {id}: {e}"));
            }
            // Who needs each block: (archived copy, file) names for problems.
            let mut users: HashMap<BlockId, BTreeSet<String>> = HashMap::new();
            let indexed: HashMap<BlockId, &str> = packs
                .iter()
                .flat_map(|(p, (_, blocks))| blocks.iter().map(move |b| (b.id, p.as_str())))
                .collect();
            for (id, m) in &manifests {
                for f in &m.files {
                    for b in &f.blocks {
                        let user = format!(
                            "archived copy {id} (copy {} of {} on {}), file {}",
                            m.copy_id,
                            m.set,
                            m.host,
                            f.path.display()
                        );
                        if !indexed.contains_key(b) {
                            report
                                .problems
                                .push(format!("{user}: block {} is in no index", b.hex()));
                        }
                        users.entry(*b).or_default().insert(user);
                    }
                }
            }
            let damaged = |problem: String, ids: &mut dyn Iterator<Item = BlockId>| {
                let mut who: BTreeSet<String> = BTreeSet::new();
                for id in ids {
                    if let Some(u) = users.get(&id) {
                        who.extend(u.iter().cloned());
                    }
                }
                if who.is_empty() {
                    format!("{problem} (no archived copy uses it)")
                } else {
                    format!(
                        "{problem}; this damages {}",
                        who.into_iter().collect::<Vec<_>>().join("; ")
                    )
                }
            };
            for (pack, (size, blocks)) in &packs {
                match stored.get(pack) {
                    None => report.problems.push(damaged(
                        format!("pack {pack} is missing"),
                        &mut blocks.iter().map(|b| b.id),
                    )),
                    Some(s) if s != size => report.problems.push(damaged(
                        format!("pack {pack} is {s} bytes, not {size}"),
                        &mut blocks.iter().map(|b| b.id),
                    )),
                    Some(_) => {}
                }
            }
            if read_data > 0.0 {
                let mut chosen: Vec<(&String, &(u64, Vec<crate::format::BlockEntry>))> = packs
                    .iter()
                    .filter(|(p, _)| stored.contains_key(*p))
                    .collect();
                chosen.sort_by_key(|(p, _)| p.as_str());
                if read_data < 1.0 {
                    // A different share each run: packs whose ids hash low this time.
                    let mut salt = [0u8; 8];
                    rand::fill(&mut salt);
                    let limit = (read_data * u64::MAX as f64) as u64;
                    chosen.retain(|(p, _)| {
                        let h = blake3::hash(&[&salt[..], p.as_bytes()].concat());
                        u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes")) <= limit
                    });
                }
                report.packs_read = chosen.len();
                let results: Vec<(usize, Vec<String>)> = stream::iter(chosen)
                    .map(|(pack, (_, blocks))| async move {
                        let mut problems = Vec::new();
                        let bytes = match self.store.get(&names::pack(pack)).await {
                            Ok(Some(b)) => b,
                            Ok(None) => {
                                return (0, vec![format!("pack {pack} vanished while being read")])
                            }
                            Err(e) => {
                                return (0, vec![format!("pack {pack} could not be read: {e}")])
                            }
                        };
                        if let Err(why) = check_header(self, &bytes, blocks) {
                            problems.push(format!("pack {pack}: {why}"));
                        }
                        let mut checked = 0;
                        let mut bytes = bytes;
                        let mut opener = match BlockOpener::new() {
                            Ok(o) => o,
                            Err(e) => {
                                return (0, vec![format!("pack {pack} could not be read: {e}")])
                            }
                        };
                        for b in blocks {
                            let sealed = bytes
                                .get_mut(b.offset as usize..(b.offset + b.length as u64) as usize);
                            let outcome = match sealed {
                                None => Err("it lies beyond the pack's end".to_string()),
                                Some(sealed) => opener
                                    .open(&self.key, &b.id, b.raw_length, sealed, pack)
                                    .map(|_| ())
                                    .map_err(|e| e.to_string()),
                            };
                            checked += 1;
                            if let Err(why) = outcome {
                                problems.push(format!(
                                    "block {} in pack {pack}: {why}|{}",
                                    b.id.hex(),
                                    b.id.hex()
                                ));
                            }
                        }
                        (checked, problems)
                    })
                    .buffer_unordered(PARALLEL_GETS)
                    .collect()
                    .await;
                for (checked, problems) in results {
                    report.blocks_checked += checked;
                    for p in problems {
                        match p.split_once('|') {
                            Some((line, hex)) => {
                                let id = crate::crypto::unhex(hex)
                                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                                    .map(BlockId);
                                report
                                    .problems
                                    .push(damaged(line.to_string(), &mut id.into_iter()));
                            }
                            None => report.problems.push(p),
                        }
                    }
                }
            }
            report.ok = report.problems.is_empty();
            Ok(report)
        })
    }
}

/// The pack's own header agrees with the index.
fn check_header(
    repo: &Repository,
    bytes: &[u8],
    indexed: &[crate::format::BlockEntry],
) -> Result<(), String> {
    let n = bytes.len();
    if n < 4 {
        return Err("it is too short to hold a header".into());
    }
    let len = u32::from_le_bytes(bytes[n - 4..].try_into().expect("4 bytes")) as usize;
    let sealed = bytes
        .get(n.saturating_sub(4 + len)..n - 4)
        .filter(|_| len + 4 <= n)
        .ok_or("its header length points outside it")?;
    let plain = repo
        .key
        .open(sealed, b"pack-header", "pack header")
        .map_err(|e| e.to_string())?;
    let header: PackHeader =
        serde_json::from_slice(&plain).map_err(|e| format!("its header does not parse: {e}"))?;
    if header.blocks != indexed {
        return Err("its header and the index disagree".into());
    }
    Ok(())
}
