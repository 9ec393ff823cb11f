//! `expose`, `exposed`, `unexpose`, `extract`: a copy opened read-only beside production for
//! single-item recovery, by its writers (`Writer::expose`: PostgreSQL as a paused hot
//! standby, MariaDB as a read-only server after crash recovery, SQLite as a
//! checkpointed read-only clone; optionally brought forward `--until` a target, on a
//! loopback `--port` or in a `--socket-dir`), from a scratch clone, or, for plain files,
//! as read-only bind mounts of the copy (bind_mount.rs); the copy itself is never
//! written. Bad options (a port in use, a socket directory open to all) are refused
//! before anything is built.
//!
//! Each exposure is recorded before anything is built (its scratch directory and the
//! process building it), and what each writer opens is recorded as it opens, so closing
//! it always finds all of it. Exposures past their TTL, whose server died, or whose
//! builder died before finishing are closed by the next `expose`, `exposed` or
//! `unexpose` (and by the agent's sweep).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use shadowcopy_catalog::{now_ms, Catalog, ExposureRecord, ExposureState};
use shadowcopy_core::extract::ExtractRequest;
use shadowcopy_core::model::ComponentRole;
use shadowcopy_core::writer::{ExposeOptions, Exposed};
use shadowcopy_core::VerifyState;

use crate::bind_mount;
use crate::copies::UsableCopy;
use crate::engine::Engine;
use crate::error::UsageError;

/// The longest an exposure may stay open.
const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long the exposure behind an `extract` may live if the command dies.
const EXTRACT_TTL: Duration = Duration::from_secs(3600);
/// How long a server asked to stop may take before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// What `unexpose` closed.
#[derive(Clone, Debug, Serialize)]
pub struct Closed {
    pub id: i64,
    pub copy_id: i64,
    /// Why: asked, its TTL passed, its server died, its build was interrupted.
    pub why: &'static str,
}

/// What `expose` is asked for.
#[derive(Clone, Debug)]
pub struct ExposeRequest {
    /// How long it stays open.
    pub ttl: Duration,
    /// Open a copy that failed verification.
    pub force: bool,
    /// Also listen on this loopback port (the copy's own accounts and passwords).
    pub port: Option<u16>,
    /// The server's socket in this directory (not reachable by every user).
    pub socket_dir: Option<PathBuf>,
    /// Replay the logs after the copy up to this target first (as `restore --until`).
    pub until: Option<String>,
}

impl ExposeRequest {
    pub fn new(ttl: Duration) -> ExposeRequest {
        ExposeRequest {
            ttl,
            force: false,
            port: None,
            socket_dir: None,
            until: None,
        }
    }

    /// Bad input, found before anything is built: the TTL's range, a port something
    /// already listens on, a socket directory that is missing or open to every user.
    fn check(&self) -> Result<(), UsageError> {
        let ttl = self.ttl;
        if ttl < Duration::from_secs(1) || ttl > MAX_TTL {
            return Err(UsageError::new(format!(
                "--ttl {} is out of range: an exposure lives from 1s to 30d",
                humantime::format_duration(ttl)
            )));
        }
        if let Some(port) = self.port {
            if port == 0 {
                return Err(UsageError::new(
                    "--port 0 is no port; give one from 1 to 65535",
                ));
            }
            if let Err(e) = std::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port)) {
                return Err(UsageError::new(format!(
                    "--port {port} cannot be used on 127.0.0.1 ({e}): something listens there \
                     already; choose another port, or leave out --port (the copy then has a \
                     private socket)"
                )));
            }
        }
        if let Some(dir) = &self.socket_dir {
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::symlink_metadata(dir).map_err(|e| {
                UsageError::new(format!(
                    "--socket-dir {}: {e}; give an existing directory",
                    dir.display()
                ))
            })?;
            if !meta.is_dir() {
                return Err(UsageError::new(format!(
                    "--socket-dir {} is not a directory (a link is not followed); give the \
                     directory itself",
                    dir.display()
                )));
            }
            if meta.mode() & 0o001 != 0 {
                return Err(UsageError::new(format!(
                    "--socket-dir {} can be entered by every user (mode {:o}), and the exposed \
                     copy lets in whoever reaches its socket; choose a directory only the \
                     database's owner and its group can enter (chmod o-rwx), or leave out \
                     --socket-dir",
                    dir.display(),
                    meta.mode() & 0o7777
                )));
            }
            let plain = dir
                .to_str()
                .is_some_and(|s| !s.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"'));
            if !plain {
                return Err(UsageError::new(format!(
                    "--socket-dir {} holds a space or a quote, which a server's command line \
                     cannot carry; choose another directory",
                    dir.display()
                )));
            }
        }
        Ok(())
    }
}

impl Engine {
    /// Opens copy `id` read-only beside production, as `request` says, until its TTL
    /// from now. A copy that failed verification is refused unless `force`; a copy
    /// already exposed is refused.
    pub fn expose(&self, id: i64, request: &ExposeRequest) -> anyhow::Result<ExposureRecord> {
        request.check()?;
        let ttl = request.ttl;
        let catalog = self.open_existing_catalog()?;
        self.close_stale_exposures(&catalog)?;
        let copy = UsableCopy::load(&catalog, id, "exposed")?;
        if copy.summary.verify_state == VerifyState::Failed && !request.force {
            return Err(UsageError::new(format!(
                "copy {id} failed verification; what it holds may be damaged. Expose it anyway \
                 with --force, or pick a verified copy (`shadowcopy list`)"
            ))
            .into());
        }
        if let Some(open) = catalog.exposures()?.iter().find(|e| e.copy_id == id) {
            return Err(already_exposed(id, open));
        }
        let files = catalog.manifest(id)?;
        let components = catalog.components(id)?;
        let view = copy
            .provider
            .expose(&copy.location, &files)
            .map_err(|e| anyhow::anyhow!("cannot read copy {id}: {e}"))?;
        // The owners of the copy's data (a database server runs as its owner) must
        // reach the scratch directory: each data component's first file's owner.
        let mut owners: Vec<(u32, u32)> = components
            .iter()
            .filter(|c| c.role == ComponentRole::Data)
            .filter_map(|c| files.iter().find(|f| f.path.starts_with(&c.path)))
            .filter_map(|f| view.path_of(&f.path))
            .filter_map(|p| std::fs::symlink_metadata(p).ok())
            .map(|m| {
                use std::os::unix::fs::MetadataExt;
                (m.uid(), m.gid())
            })
            .collect();
        owners.sort_unstable();
        owners.dedup();
        let scratch = scratch_near(Path::new(&copy.location), &owners)?;
        let expires_ms = now_ms() + ttl.as_millis() as i64;
        let exposure = match catalog.record_exposure(id, &copy.summary.set, &scratch, expires_ms) {
            Ok(exposure) => exposure,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&scratch);
                // Another `expose` of the same copy got there first (one per copy).
                return match catalog.exposures()?.iter().find(|r| r.copy_id == id) {
                    Some(open) => Err(already_exposed(id, open)),
                    None => Err(e.into()),
                };
            }
        };
        let options = ExposeOptions {
            scratch: scratch.clone(),
            port: request.port,
            socket_dir: request.socket_dir.clone(),
            until: request.until.clone(),
        };
        let mut exposed: Vec<Exposed> = Vec::new();
        let mut failure = None;
        // Built and served at background priority, as a verification is: the clone, the
        // recovery, a replay to --until and the server left running (it inherits it)
        // take what production leaves.
        let _background = shadowcopy_core::priority::background();
        for writer in copy.spec.build_writers() {
            match writer.expose(&view, &options) {
                Ok(Some(mut e)) => {
                    e.writer = writer.name();
                    exposed.push(e);
                    catalog.exposure_progress(exposure, &exposed, false)?;
                }
                Ok(None) => {}
                Err(e) => {
                    failure = Some(
                        anyhow::anyhow!(e)
                            .context(format!("{} cannot open copy {id}", writer.name())),
                    );
                    break;
                }
            }
        }
        if failure.is_none() && exposed.is_empty() {
            // Plain files: the copy's directories, mounted read-only in the scratch.
            let asked = [
                ("--until", request.until.is_some()),
                ("--port", request.port.is_some()),
                ("--socket-dir", request.socket_dir.is_some()),
            ];
            let given: Vec<&str> = asked
                .iter()
                .filter(|(_, on)| *on)
                .map(|(n, _)| *n)
                .collect();
            let mounted = if given.is_empty() {
                mount_plain_roots(&copy.spec.data_paths(), &view, &scratch)
            } else {
                Err(UsageError::new(format!(
                    "copy {id} of set `{}` holds plain files, which are mounted read-only as \
                     they were: {} do not apply; leave them out",
                    copy.summary.set,
                    given.join(", ")
                ))
                .into())
            };
            match mounted {
                Ok(mounted) if mounted.is_empty() => {
                    failure = Some(
                        UsageError::new(format!(
                            "copy {id} of set `{}` holds no database to open and no directory \
                             to mount; `shadowcopy show {id}` lists its files",
                            copy.summary.set
                        ))
                        .into(),
                    )
                }
                Ok(mounted) => {
                    exposed = mounted;
                    catalog.exposure_progress(exposure, &exposed, false)?;
                }
                Err(e) => failure = Some(e.context(format!("cannot mount copy {id}"))),
            }
        }
        if let Some(e) = failure {
            let record = catalog.exposures()?.into_iter().find(|r| r.id == exposure);
            if let Some(record) = record {
                close(&catalog, &record)?;
            }
            return Err(e);
        }
        catalog.exposure_progress(exposure, &exposed, true)?;
        catalog
            .exposures()?
            .into_iter()
            .find(|r| r.id == exposure)
            .ok_or_else(|| anyhow::anyhow!("exposure {exposure} vanished from the catalog"))
    }

    /// Writes the rows `request` names from copy `id` into `out`: from its open
    /// exposure if it has one (left open), else the copy is exposed (at `until` when
    /// given) for as long as it takes and closed afterwards, whatever happened.
    pub fn extract(
        &self,
        id: i64,
        request: &ExtractRequest,
        until: Option<&str>,
        out: &mut dyn std::io::Write,
    ) -> anyhow::Result<()> {
        let open = {
            let catalog = self.open_existing_catalog()?;
            self.close_stale_exposures(&catalog)?;
            catalog
                .exposures()?
                .into_iter()
                .find(|e| e.copy_id == id && e.state == ExposureState::Open)
        };
        let (record, ours) = match (open, until) {
            (Some(record), None) => (record, false),
            (Some(record), Some(_)) => {
                return Err(UsageError::new(format!(
                    "copy {id} is already exposed (exposure {}), and --until opens it anew at \
                     its target; close it first (`shadowcopy unexpose {}`), or leave out \
                     --until to extract from it as it is",
                    record.id, record.id
                ))
                .into())
            }
            (None, until) => {
                let mut expose = ExposeRequest::new(EXTRACT_TTL);
                expose.until = until.map(str::to_string);
                (self.expose(id, &expose)?, true)
            }
        };
        let extracted = (|| -> anyhow::Result<()> {
            let catalog = self.open_existing_catalog()?;
            let copy = UsableCopy::load(&catalog, id, "extracted from")?;
            for writer in copy.spec.build_writers() {
                let name = writer.name();
                let Some(exposed) = record.exposed.iter().find(|e| e.writer == name) else {
                    continue;
                };
                if writer
                    .extract(exposed, request, out)
                    .map_err(|e| anyhow::anyhow!(e).context(format!("{name}: extract")))?
                {
                    return Ok(());
                }
            }
            Err(UsageError::new(format!(
                "nothing in copy {id} can extract a table (its writers: {})",
                record
                    .exposed
                    .iter()
                    .map(|e| e.writer.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
            .into())
        })();
        if ours {
            let closed = self.unexpose(Some(record.id));
            extracted?;
            closed?;
            return Ok(());
        }
        extracted
    }

    /// The open exposures, after closing the stale ones.
    pub fn exposed(&self) -> anyhow::Result<Vec<ExposureRecord>> {
        let catalog = self.open_existing_catalog()?;
        self.close_stale_exposures(&catalog)?;
        Ok(catalog.exposures()?)
    }

    /// Closes exposure `id` (or every one with `None`): stops its servers, removes its
    /// scratch, forgets it. Stale ones are closed too and reported.
    pub fn unexpose(&self, id: Option<i64>) -> anyhow::Result<Vec<Closed>> {
        let catalog = self.open_existing_catalog()?;
        let mut closed = self.close_stale_exposures(&catalog)?;
        let all = catalog.exposures()?;
        let chosen: Vec<&ExposureRecord> = match id {
            None => all.iter().collect(),
            Some(id) => {
                let found: Vec<&ExposureRecord> = all.iter().filter(|e| e.id == id).collect();
                if found.is_empty() && !closed.iter().any(|c| c.id == id) {
                    return Err(UsageError::new(format!(
                        "there is no exposure {id}; `shadowcopy exposed` lists the open ones"
                    ))
                    .into());
                }
                found
            }
        };
        for record in chosen {
            close(&catalog, record)?;
            closed.push(Closed {
                id: record.id,
                copy_id: record.copy_id,
                why: "asked",
            });
        }
        Ok(closed)
    }

    /// Closes the exposures past their TTL, whose server died, or whose builder died.
    pub fn close_stale_exposures(&self, catalog: &Catalog) -> anyhow::Result<Vec<Closed>> {
        let mut closed = Vec::new();
        for record in catalog.exposures()? {
            let why = if record.expires_ms <= now_ms() {
                Some("its TTL passed")
            } else if record.state == ExposureState::Opening && !running(record.builder_pid) {
                Some("the command opening it ended before it was open")
            } else if record
                .exposed
                .iter()
                .any(|e| e.pid.is_some_and(|pid| !serves(pid, &record.scratch)))
            {
                Some("its server stopped")
            } else {
                None
            };
            if let Some(why) = why {
                close(catalog, &record)?;
                closed.push(Closed {
                    id: record.id,
                    copy_id: record.copy_id,
                    why,
                });
            }
        }
        Ok(closed)
    }
}

fn already_exposed(id: i64, open: &ExposureRecord) -> anyhow::Error {
    UsageError::new(format!(
        "copy {id} is already exposed (exposure {}: {}); use it, or close it first with \
         `shadowcopy unexpose {}`",
        open.id,
        open.exposed
            .iter()
            .map(|e| e.connect.as_str())
            .collect::<Vec<_>>()
            .join("; "),
        open.id
    ))
    .into()
}

/// Stops what `record` opened, removes its scratch, forgets it.
fn close(catalog: &Catalog, record: &ExposureRecord) -> anyhow::Result<()> {
    for e in &record.exposed {
        if let Some(pid) = e.pid.filter(|&pid| serves(pid, &record.scratch)) {
            stop(pid);
        }
        remove_left_socket(e);
        // A server's private run directory (its socket: unix socket paths are short) in
        // the temp directory rather than the scratch, as the writer recorded it; an
        // exposure recorded before that field (never one with --socket-dir) by its
        // address, or the socket's parent.
        let address = Path::new(&e.address);
        let candidates: Vec<&Path> = match &e.private_dir {
            Some(dir) => vec![dir.as_path()],
            None => [Some(address), address.parent()]
                .into_iter()
                .flatten()
                .collect(),
        };
        for dir in candidates {
            let ours = dir.parent() == Some(std::env::temp_dir().as_path())
                && dir.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with("shadowcopy-pg-") || n.starts_with("shadowcopy-mariadb-")
                });
            if ours && dir.is_dir() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
    // Never remove below a mount: a copy's directory mounted there would go with it.
    bind_mount::unmount_below(&record.scratch).map_err(|e| {
        anyhow::anyhow!(
            "exposure {} stays listed, its scratch directory {} in place: {e}",
            record.id,
            record.scratch.display()
        )
    })?;
    match std::fs::remove_dir_all(&record.scratch) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(anyhow::anyhow!(
                "cannot remove exposure {}'s scratch directory {}: {e}",
                record.id,
                record.scratch.display()
            ))
        }
    }
    catalog.remove_exposure(record.id)?;
    Ok(())
}

/// Mounts each of `roots` that the copy holds as a directory read-only below `scratch`
/// (`scratch/<n>-<its name>`), as one [`Exposed`] each; a failure unmounts what was
/// mounted before it.
fn mount_plain_roots(
    roots: &[PathBuf],
    view: &shadowcopy_core::CopyView,
    scratch: &Path,
) -> anyhow::Result<Vec<Exposed>> {
    let mut mounted = Vec::new();
    for (n, root) in roots.iter().enumerate() {
        let Some(in_copy) = shadowcopy_core::dbfiles::copy_root(view, root) else {
            continue;
        };
        if !std::fs::symlink_metadata(&in_copy).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let name = root
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "root".into());
        let at = scratch.join(format!("{n}-{name}"));
        std::fs::create_dir(&at)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", at.display()))?;
        if let Err(e) = bind_mount::mount_read_only(&in_copy, &at) {
            let _ = bind_mount::unmount_below(scratch);
            return Err(e);
        }
        mounted.push(Exposed {
            address: at.display().to_string(),
            connect: format!(
                "read-only at {}  (the copy of {})",
                shadowcopy_core::writer::shell_quote(&at),
                root.display()
            ),
            pid: None,
            port: None,
            private_dir: None,
            writer: "files".into(),
        });
    }
    Ok(mounted)
}

/// The socket a server killed before its shutdown left in a directory the user chose
/// (`--socket-dir`), where nothing else removes it: MariaDB's `shadowcopy-expose-*.sock`,
/// or PostgreSQL's `.s.PGSQL.PORT` and its lock file when that names this server.
fn remove_left_socket(e: &Exposed) {
    use std::os::unix::fs::FileTypeExt;
    let is_socket =
        |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket());
    let address = Path::new(&e.address);
    let ours = address.file_name().is_some_and(|n| {
        let n = n.to_string_lossy();
        n.starts_with("shadowcopy-expose-") && n.ends_with(".sock")
    });
    if ours && e.pid.is_none_or(|pid| !running(pid)) && is_socket(address) {
        let _ = std::fs::remove_file(address);
    }
    if let (Some(port), Some(pid)) = (e.port, e.pid) {
        let socket = address.join(format!(".s.PGSQL.{port}"));
        let lock = address.join(format!(".s.PGSQL.{port}.lock"));
        let named = std::fs::read_to_string(&lock)
            .is_ok_and(|t| t.lines().next().map(str::trim) == Some(pid.to_string().as_str()));
        if named && !running(pid) {
            if is_socket(&socket) {
                let _ = std::fs::remove_file(&socket);
            }
            let _ = std::fs::remove_file(&lock);
        }
    }
}

/// Whether `pid` is a live process serving from below `scratch` (a postmaster started
/// with `-D` there): a pid the kernel gave to something else since is not ours to stop.
fn serves(pid: u32, scratch: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    // `-D /scratch/...` (PostgreSQL), `--datadir=/scratch/...` (MariaDB).
    let scratch = scratch.as_os_str().as_encoded_bytes();
    cmdline
        .split(|&b| b == 0)
        .any(|arg| arg.windows(scratch.len()).any(|w| w == scratch))
}

/// SIGINT (PostgreSQL's fast shutdown: sessions are ended), then SIGTERM after two
/// seconds (MariaDB's shutdown; it ignores SIGINT), then SIGKILL after [`STOP_GRACE`].
fn stop(pid: u32) {
    use rustix::process::{kill_process, Pid, Signal};
    let Some(p) = Pid::from_raw(pid as i32) else {
        return;
    };
    let wait = |limit: Duration| {
        let began = std::time::Instant::now();
        while running(pid) && began.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let _ = kill_process(p, Signal::INT);
    wait(Duration::from_secs(2));
    if running(pid) {
        let _ = kill_process(p, Signal::TERM);
        wait(STOP_GRACE);
    }
    if running(pid) {
        let _ = kill_process(p, Signal::KILL);
        wait(Duration::from_secs(5));
    }
}

/// Whether `pid` is a process that has not ended: a zombie (a server this process
/// started, as `extract` does, and has not reaped) has.
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// A new private directory for an exposure: the first ancestor of the copy's location
/// (its file system, so clones are reflinks) where every one of `owners` can reach it
/// (mode 0711: they may enter, not list), else the temp directory.
fn scratch_near(location: &Path, owners: &[(u32, u32)]) -> anyhow::Result<PathBuf> {
    let make = |dir: &Path| -> Option<PathBuf> {
        let t = tempfile::Builder::new()
            .prefix(".shadowcopy-exposed-")
            .tempdir_in(dir)
            .ok()?;
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o711)).ok()?;
        let reachable = owners
            .iter()
            .all(|&(uid, gid)| can_reach(t.path(), uid, gid));
        reachable.then(|| t.keep())
    };
    for dir in location.ancestors().skip(1) {
        if let Some(scratch) = make(dir) {
            return Ok(scratch);
        }
    }
    make(&std::env::temp_dir()).ok_or_else(|| {
        anyhow::anyhow!(
            "no directory near {} nor in {} can hold the exposure where the copy's owners can \
             reach it",
            location.display(),
            std::env::temp_dir().display()
        )
    })
}

/// Whether user `uid` (group `gid`) can enter `dir`.
fn can_reach(dir: &Path, uid: u32, gid: u32) -> bool {
    if uid == rustix::process::geteuid().as_raw() {
        return true;
    }
    std::process::Command::new("test")
        .arg("-x")
        .arg(dir)
        .uid(uid)
        .gid(gid)
        .status()
        .is_ok_and(|s| s.success())
}
