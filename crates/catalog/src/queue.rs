//! The request queue: one shadow set at a time per catalog. The holder takes an
//! exclusive `flock` on `queue.lock` in the catalog directory; the kernel drops it when
//! the holder exits or is killed, so a crashed holder never blocks the queue. Who holds
//! it is written to `queue.holder` for the messages of those who wait.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::fs::{flock, FlockOperation};
use serde::{Deserialize, Serialize};

use crate::Catalog;

/// Who holds the queue, as they announced it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueueHolder {
    pub pid: u32,
    pub set: String,
    pub command: String,
    pub since_ms: i64,
}

/// How long to wait for the queue.
#[derive(Clone, Copy, Debug)]
pub enum Wait {
    No,
    Upto(Duration),
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("{}; not waiting (--no-wait)", busy(.holder))]
    Busy { holder: Option<QueueHolder> },
    #[error("{} for longer than {}; try again later or raise --wait", busy(.holder), humantime(*.waited))]
    TimedOut {
        holder: Option<QueueHolder>,
        waited: Duration,
    },
    #[error("cannot lock the queue file {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn busy(holder: &Option<QueueHolder>) -> String {
    match holder {
        Some(h) => format!(
            "another shadow set is running: `{}` for set `{}` (pid {})",
            h.command, h.set, h.pid
        ),
        None => "another shadow set is running in this catalog".to_string(),
    }
}

fn humantime(d: Duration) -> String {
    shadowcopy_core::error::humanize(d)
}

/// Holding this is the right to run a shadow set (and to clean up interrupted ones).
pub struct QueueGuard {
    _file: File,
    holder_path: PathBuf,
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.holder_path);
    }
}

impl Catalog {
    /// Takes the queue, waiting as `wait` allows. `on_queued` is called once, with the
    /// current holder, if the queue is busy and we are going to wait.
    pub fn acquire_queue(
        &self,
        me: &QueueHolder,
        wait: Wait,
        mut on_queued: impl FnMut(Option<&QueueHolder>),
    ) -> Result<QueueGuard, QueueError> {
        let path = self.dir.join("queue.lock");
        let holder_path = self.dir.join("queue.holder");
        let io = |source| QueueError::Io {
            path: path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(crate::PRIVATE_FILE_MODE)
            .open(&path)
            .map_err(io)?;
        let started = Instant::now();
        let mut announced = false;
        loop {
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => break,
                Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                    let holder = std::fs::read(&holder_path)
                        .ok()
                        .and_then(|b| serde_json::from_slice::<QueueHolder>(&b).ok());
                    match wait {
                        Wait::No => return Err(QueueError::Busy { holder }),
                        Wait::Upto(limit) if started.elapsed() >= limit => {
                            return Err(QueueError::TimedOut {
                                holder,
                                waited: limit,
                            })
                        }
                        Wait::Upto(_) => {}
                    }
                    if !announced {
                        on_queued(holder.as_ref());
                        announced = true;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(io(e.into())),
            }
        }
        // Best effort: the lock is what counts, the holder file only informs.
        let tmp = holder_path.with_extension("tmp");
        let created = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(crate::PRIVATE_FILE_MODE)
            .open(&tmp);
        if let Ok(mut f) = created {
            let _ = f.write_all(&serde_json::to_vec(me).unwrap_or_default());
            let _ = std::fs::rename(&tmp, &holder_path);
        }
        Ok(QueueGuard {
            _file: file,
            holder_path,
        })
    }
}
