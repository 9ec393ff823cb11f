//! The unix socket the API listens on: where it is by default, and binding it safely.
//! Its directory must be ours (nobody else can swap the socket for theirs); a stale
//! socket a dead agent left is replaced, a live one is refused (one agent per catalog);
//! the socket is mode 0660, owned by the operators' group when one is configured.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use shadowcopy_engine::{default_catalog_dir, Engine, UsageError};

/// Where the system agent listens.
pub const SYSTEM_SOCKET: &str = "/run/shadowcopy/agent.sock";

/// The socket of the agent of `engine`'s catalog: `[agent] socket` when configured, else
/// `/run/shadowcopy/agent.sock` for the system catalog, else `agent.sock` in the catalog
/// directory (an agent per catalog, so tests and users with their own catalog don't meet).
pub fn socket_path(engine: &Engine, given: Option<&Path>) -> PathBuf {
    if let Some(p) = given.or(engine.config.agent.socket.as_deref()) {
        return p.to_path_buf();
    }
    if engine.catalog_dir == default_catalog_dir() && rustix::process::geteuid().is_root() {
        PathBuf::from(SYSTEM_SOCKET)
    } else {
        engine.catalog_dir.join("agent.sock")
    }
}

/// Refuses a socket path the agent could not safely listen on (its directory someone
/// else's, a file that is not a socket there, another agent listening), before anything
/// is written. A directory that does not exist yet is made by [`bind`].
pub fn check(path: &Path) -> anyhow::Result<()> {
    let dir = socket_dir(path)?;
    if dir.exists() {
        check_dir(dir)?;
        check_path(path)?;
    }
    Ok(())
}

/// Binds the socket at `path`, mode 0660, group `group` (a name or a number) when given.
pub fn bind(path: &Path, group: Option<&str>) -> anyhow::Result<UnixListener> {
    let gid = group.map(group_id).transpose()?;
    let dir = socket_dir(path)?;
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| {
            anyhow::anyhow!(
                "cannot create the socket's directory {}: {e}",
                dir.display()
            )
        })?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
        if let Some(gid) = gid {
            rustix::fs::chown(dir, None, Some(gid))?;
        }
    }
    let meta = check_dir(dir)?;
    if let Some(gid) = gid {
        if dir == Path::new(SYSTEM_SOCKET).parent().expect("has a directory") {
            // The system socket's own directory (systemd's RuntimeDirectory): the
            // operators' group may enter it, no one else.
            rustix::fs::chown(dir, None, Some(gid))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o750))?;
        } else if meta.gid() != gid.as_raw() && meta.mode() & 0o001 == 0
            || meta.gid() == gid.as_raw() && meta.mode() & 0o010 == 0
        {
            tracing::warn!(
                "members of group {} cannot reach the socket: its directory {} (mode {:o}) is closed to them; \
                 put the socket where they may enter ([agent] socket, e.g. {SYSTEM_SOCKET})",
                group.unwrap_or_default(),
                dir.display(),
                meta.mode() & 0o7777
            );
        }
    }
    if check_path(path)? {
        // A dead agent's socket.
        std::fs::remove_file(path)?;
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", path.display()))?;
    if let Some(gid) = gid {
        rustix::fs::chown(path, None, Some(gid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

fn socket_dir(path: &Path) -> anyhow::Result<&Path> {
    Ok(path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .ok_or_else(|| {
            UsageError::new(format!(
                "the socket path {} has no directory",
                path.display()
            ))
        })?)
}

/// The socket's directory must be ours and closed to others' writes.
fn check_dir(dir: &Path) -> anyhow::Result<std::fs::Metadata> {
    let meta = std::fs::symlink_metadata(dir)?;
    let me = rustix::process::geteuid().as_raw();
    if !meta.is_dir() || meta.uid() != me || meta.mode() & 0o022 != 0 {
        return Err(UsageError::new(format!(
            "the socket's directory {} must be a directory of ours (uid {me}) that no one else can write; \
             it is {} of uid {} mode {:o}: choose another socket path ([agent] socket or --socket)",
            dir.display(),
            if meta.is_dir() { "a directory" } else { "not a directory" },
            meta.uid(),
            meta.mode() & 0o7777
        ))
        .into());
    }
    Ok(meta)
}

/// Nothing at `path` (false), or a dead agent's socket (true); anything else refused.
fn check_path(path: &Path) -> anyhow::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(UsageError::new(format!(
                    "another agent is listening on {}; stop it first (one agent per catalog)",
                    path.display()
                ))
                .into());
            }
            Ok(true)
        }
        Ok(_) => Err(UsageError::new(format!(
            "{} exists and is not a socket; remove it or choose another socket path",
            path.display()
        ))
        .into()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A group's id, from its name (through the system's user database, `getent`) or its number.
fn group_id(group: &str) -> anyhow::Result<rustix::fs::Gid> {
    if let Ok(n) = group.parse::<u32>() {
        return Ok(rustix::fs::Gid::from_raw(n));
    }
    let out = std::process::Command::new("getent")
        .args(["group", group])
        .output()
        .map_err(|e| anyhow::anyhow!("cannot look up group `{group}` (getent): {e}"))?;
    let line = String::from_utf8_lossy(&out.stdout);
    line.split(':')
        .nth(2)
        .and_then(|gid| gid.trim().parse::<u32>().ok())
        .filter(|_| out.status.success())
        .map(rustix::fs::Gid::from_raw)
        .ok_or_else(|| {
            UsageError::new(format!(
                "there is no group `{group}` for the agent's socket; create it (groupadd {group}) or change [agent] socket_group"
            ))
            .into()
        })
}
