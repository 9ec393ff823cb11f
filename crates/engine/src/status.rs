//! A set's state now, for front ends that show it rather than act on it (the web console,
//! through the agent's reports to the backup server): its writers identified now, the
//! provider a copy made now would use, the schedule and retention it runs by, whether its
//! restores can roll forward and what a stop point looks like, how far the logs kept
//! since each recent usable copy would carry a restore, and which of its copies the
//! archive off the host holds. Reads only; each part that cannot be found out says why
//! in its place instead of failing the whole.

use serde::{Deserialize, Serialize};
use shadowcopy_catalog::CopySummary;
use shadowcopy_core::CopyState;

use crate::engine::Engine;
use crate::error::UsageError;
use crate::set::{CreateOptions, SetSpec};

/// How many of a set's newest usable copies get their log reach worked out.
pub const REACH_COPIES: usize = 5;

/// One configured set, now.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct SetStatus {
    pub set: String,
    pub writers: Vec<WriterStatus>,
    /// The provider the set asks for (`auto` or a kind).
    pub provider: String,
    /// The provider a copy made now would use, or why none can.
    pub provider_state: Checked,
    pub schedule: Option<String>,
    pub verify_schedule: Option<String>,
    pub retention: Option<String>,
    /// What a roll-forward's stop point may be; absent: no writer of the set keeps logs
    /// to roll forward with (its restores are point-in-time only).
    pub roll_forward_until: Option<String>,
    /// The log reach of those of the newest usable copies whose writers keep logs,
    /// newest first.
    pub reach: Vec<CopyReach>,
    /// The set's archive off the host, when it has one.
    pub archive: Option<ArchiveStatus>,
}

/// Something checked now: fine (`detail` says what was found) or not (`detail` says why).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Checked {
    pub ok: bool,
    pub detail: String,
}

/// One writer of a set, identified now (`stable` or `failed`, as `writers` says).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WriterStatus {
    pub writer: String,
    pub state: String,
    pub detail: String,
    /// Processes holding its files open.
    pub in_use_by: Vec<u32>,
}

/// How far a restore of one copy would reach with the logs there are now.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CopyReach {
    pub copy_id: i64,
    pub point_in_time: String,
    pub roll_forward: String,
    /// The logs after the copy have no hole: a roll-forward replays all of them.
    pub complete: bool,
}

/// Which copies of the set the archive holds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ArchiveStatus {
    /// The repository, without any password its URL had.
    pub location: String,
    /// This host's copies of the set it holds that the catalog still lists.
    pub copies: Vec<i64>,
    /// Why it could not be listed (then `copies` is empty).
    pub error: Option<String>,
}

/// Each archive's copies as (host, set, copy id) by URL, or why it cannot be listed.
type ArchiveListings =
    std::collections::HashMap<String, Result<Vec<(String, String, i64)>, String>>;

impl Engine {
    /// Every configured set, now (each archive listed once, however many sets share it).
    pub fn sets_status(&self) -> Vec<SetStatus> {
        let copies = match self
            .open_catalog_read_only()
            .and_then(|c| Ok(c.list(None)?))
        {
            Ok(copies) => copies,
            Err(e) => {
                tracing::warn!("the catalog cannot be read for the sets' status: {e:#}");
                Vec::new()
            }
        };
        let mut archives = std::collections::HashMap::new();
        self.config
            .sets
            .keys()
            .map(|name| {
                let mut status = self.set_status(name, &copies);
                status.archive = self.archive_status(name, &copies, &mut archives);
                status
            })
            .collect()
    }

    /// Set `name` now; `copies` is the catalog's list (of every set).
    fn set_status(&self, name: &str, copies: &[CopySummary]) -> SetStatus {
        let config = &self.config.sets[name];
        let mut status = SetStatus {
            set: name.to_string(),
            schedule: config.schedule.as_ref().map(|s| s.get_ref().clone()),
            verify_schedule: config.verify_schedule.as_ref().map(|s| s.get_ref().clone()),
            retention: config.retention.as_ref().map(|r| r.to_string()),
            ..Default::default()
        };
        let usable: Vec<&CopySummary> = copies
            .iter()
            .rev()
            .filter(|c| c.set == name && c.state == CopyState::Usable)
            .collect();
        // Of the newest usable copies, those whose recorded writers can roll forward (a
        // pre-restore copy, raw files, cannot), with the forms their stop point takes.
        let rolling: Vec<(&CopySummary, String)> = usable
            .iter()
            .take(REACH_COPIES)
            .filter_map(|c| {
                let spec = SetSpec::from_json(&c.spec_json).ok()?;
                let forms = spec
                    .build_writers()
                    .into_iter()
                    .find(|w| w.can_roll_forward())?
                    .until_forms()
                    .to_string();
                Some((*c, forms))
            })
            .collect();
        match SetSpec::from_config(&self.config, name, &CreateOptions::default()) {
            Ok(spec) => self.live_state(&spec, &mut status),
            Err(e) => {
                status.writers.push(WriterStatus {
                    writer: "(the set's writers)".to_string(),
                    state: "failed".to_string(),
                    detail: format!("{e:#}"),
                    in_use_by: Vec::new(),
                });
                status.provider_state = Checked {
                    ok: false,
                    detail: "not chosen: the set does not resolve (see its writers)".to_string(),
                };
            }
        }
        // Whether restores can roll forward: by the writers as configured now, else as
        // the newest copies recorded them (a database server that is stopped, as an
        // in-place restore wants it, cannot be discovered, yet its copies roll forward).
        if status.roll_forward_until.is_none() {
            status.roll_forward_until = rolling.first().map(|(_, forms)| forms.clone());
        }
        status.reach = rolling
            .iter()
            .map(|(c, _)| {
                self.copy_reach(c.id).unwrap_or_else(|e| CopyReach {
                    copy_id: c.id,
                    point_in_time: String::new(),
                    roll_forward: format!("cannot be worked out: {e:#}"),
                    complete: false,
                })
            })
            .collect();
        status
    }

    /// The provider a copy made now would use, and each writer identified now.
    fn live_state(&self, spec: &SetSpec, status: &mut SetStatus) {
        status.provider = spec.provider.clone();
        status.provider_state =
            match spec.choose_provider(&spec.provider_options(self.catalog_dir.join("copies"))) {
                Ok(p) => Checked {
                    ok: true,
                    detail: p.kind().to_string(),
                },
                Err(e) => Checked {
                    ok: false,
                    detail: e.to_string(),
                },
            };
        for mut w in spec.build_writers() {
            let (state, detail, paths) = match w.identify() {
                Ok(components) => (
                    "stable",
                    format!("{} component(s)", components.len()),
                    components.into_iter().map(|c| c.path).collect(),
                ),
                Err(e) => ("failed", e.to_string(), Vec::new()),
            };
            if w.can_roll_forward() && status.roll_forward_until.is_none() {
                status.roll_forward_until = Some(w.until_forms().to_string());
            }
            status.writers.push(WriterStatus {
                writer: w.name(),
                state: state.to_string(),
                detail,
                in_use_by: shadowcopy_writers::proc_scan::holders(&paths)
                    .into_iter()
                    .map(|h| h.pid)
                    .collect(),
            });
        }
    }

    /// How far restores of copy `id` would reach with the logs there are now; an error
    /// when its writers keep none, or they cannot be read.
    pub fn copy_reach(&self, id: i64) -> anyhow::Result<CopyReach> {
        let pg = self.pg_log_analysis(id);
        if let Ok(a) = pg {
            let pit = &a.point_in_time;
            let rf = &a.roll_forward;
            let point_in_time = match (&pit.stop_lsn, &pit.stop_time) {
                (Some(lsn), Some(time)) => format!("to LSN {lsn}, {time}"),
                (Some(lsn), None) => format!("to LSN {lsn}"),
                _ => "to the end of the copy's own WAL".to_string(),
            };
            let mut roll_forward = match (&rf.newest_commit, &rf.last_segment) {
                (Some(c), _) => format!(
                    "WAL from {} to {}: to the commit of {} (LSN {}, xid {})",
                    a.start_segment,
                    rf.last_segment.as_deref().unwrap_or("?"),
                    c.time,
                    c.lsn,
                    c.xid
                ),
                (None, Some(last)) => format!("WAL from {} to {last}", a.start_segment),
                (None, None) => "no WAL after the copy".to_string(),
            };
            if let Some(hole) = rf.holes.first() {
                roll_forward.push_str(&format!(
                    "; stops at a hole ({}…{}, {} segments missing): {} later segments cannot be replayed",
                    hole.first, hole.last, hole.segments, rf.unreachable_segments
                ));
            }
            return Ok(CopyReach {
                copy_id: id,
                point_in_time,
                roll_forward,
                complete: rf.holes.is_empty(),
            });
        }
        // Each analysis refuses a copy without its database as bad input; any other
        // error is the one to tell.
        let a = match (pg, self.mariadb_log_analysis(id)) {
            (_, Ok(a)) => a,
            (Err(pg), Err(mariadb)) => {
                return Err(if pg.downcast_ref::<UsageError>().is_none() {
                    pg
                } else {
                    mariadb
                })
            }
            (Ok(_), _) => unreachable!("handled above"),
        };
        use shadowcopy_mariadb::log_analysis::{ChainEnd, PlainRestore};
        let pit = &a.point_in_time;
        let rf = &a.roll_forward;
        let mut roll_forward = format!(
            "{} transactions in {} binary log(s)",
            rf.transactions, rf.files
        );
        if let Some(t) = &rf.last_transaction {
            roll_forward.push_str(&format!(
                ", the last {}{}",
                t.time.as_deref().unwrap_or("of unknown time"),
                t.gtid
                    .as_deref()
                    .map(|g| format!(" (GTID {g})"))
                    .unwrap_or_default()
            ));
        }
        match &rf.ends {
            ChainEnd::EndOfLog { .. } => roll_forward.push_str("; to the end of the live log"),
            ChainEnd::Missing { file } => {
                roll_forward.push_str(&format!("; stops before {file}, which is not on the host"))
            }
            ChainEnd::NotInIndex { file } => roll_forward.push_str(&format!(
                "; stops before {file}, which the binlog index does not name"
            )),
            ChainEnd::NoIndex { why } => {
                roll_forward.push_str(&format!("; the binlog index cannot be read: {why}"))
            }
        }
        if rf.without_until == PlainRestore::Refused {
            if let Some(until) = &rf.until {
                roll_forward.push_str(&format!(
                    "; without a stop point it is refused: stop at {until}"
                ));
            }
        }
        Ok(CopyReach {
            copy_id: id,
            point_in_time: format!(
                "to {}:{}, {}{}",
                pit.file,
                pit.position,
                pit.time,
                pit.gtid
                    .as_deref()
                    .map(|g| format!(" (GTID {g})"))
                    .unwrap_or_default()
            ),
            roll_forward,
            complete: matches!(rf.ends, ChainEnd::EndOfLog { .. }),
        })
    }

    /// The set's archive and this host's copies of the set in it that the catalog still
    /// holds; `None` when the set has no archive. `listed` keeps each archive's listing
    /// (or why it failed) for the other sets of this report.
    fn archive_status(
        &self,
        name: &str,
        copies: &[CopySummary],
        listed: &mut ArchiveListings,
    ) -> Option<ArchiveStatus> {
        let url = self.archive_url(None, Some(name)).ok()?;
        let location = shadowcopy_core::secret::split_url(&url, false).0;
        let archived = listed.entry(url.clone()).or_insert_with(|| {
            self.archive_passphrase(None)
                .and_then(|passphrase| self.archive_list(&url, &passphrase))
                .map(|all| {
                    all.into_iter()
                        .map(|a| (a.host, a.set, a.copy_id))
                        .collect()
                })
                .map_err(|e| format!("{e:#}"))
        });
        Some(match archived {
            Ok(archived) => {
                let host = crate::archive::hostname();
                let held: std::collections::HashSet<i64> = copies
                    .iter()
                    .filter(|c| c.set == name)
                    .map(|c| c.id)
                    .collect();
                let mut ids: Vec<i64> = archived
                    .iter()
                    .filter(|(h, s, id)| *h == host && s == name && held.contains(id))
                    .map(|(_, _, id)| *id)
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                ArchiveStatus {
                    location,
                    copies: ids,
                    error: None,
                }
            }
            Err(e) => ArchiveStatus {
                location,
                copies: Vec::new(),
                error: Some(e.clone()),
            },
        })
    }
}
