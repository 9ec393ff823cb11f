//! `Writer::expose` for MariaDB: a copy opened read-only beside production. A clone of
//! the copy below the exposure's scratch directory (as for a verification, sandbox.rs)
//! is started once for InnoDB's crash recovery; with `--until` the binary logs after
//! the copy's position are replayed into it up to the target (replay.rs, as a
//! roll-forward does); it stops cleanly, then starts again with `--innodb-read-only
//! --read-only` and no binary log, and keeps running; closing the exposure stops it.
//!
//! It listens on a socket in a private directory (no networking, no privilege checks:
//! only the server's owner and root reach it), or in the directory the user chose, and
//! with `--port` on the loopback address too, where the copy's own accounts and
//! passwords are asked for (privilege checks on, on the socket as well).

use std::path::Path;

use shadowcopy_core::model::CopyView;
use shadowcopy_core::writer::{shell_quote, ExposeOptions, Exposed};
use shadowcopy_core::BoxError;

use crate::files;
use crate::instance::{StartOptions, TempServer};
use crate::position::{BinlogPosition, POSITION_FILE};
use crate::replay;
use crate::sandbox::{build, SandboxError, START_LIMIT, STOP_LIMIT};
use crate::server::ServerLayout;
use crate::until::Until;

#[derive(Debug, thiserror::Error)]
pub enum ExposeError {
    #[error("--until replays the binary logs after the copy, and this server writes none (log_bin is off); expose the copy at its own point (leave out --until)")]
    NoBinlog,
    #[error("--until replays the binary logs from the copy's position, and the copy holds no readable {POSITION_FILE} ({0}); expose it at its own point (leave out --until)")]
    NoPosition(String),
    #[error("--until {until} is past the binary logs there are: {newest}. Choose a target up to there (`shadowcopy mariadb log-analysis ID` shows the chain)")]
    Unreachable { until: String, newest: String },
}

/// Opens the copy as described in the module documentation.
pub fn expose_copy(
    layout: &ServerLayout,
    copy: &CopyView,
    options: &ExposeOptions,
) -> Result<Exposed, BoxError> {
    let until = options.until.as_deref().map(Until::parse).transpose()?;
    let owner = crate::files::owner_of(layout);
    let copy_data =
        files::copy_root(copy, &layout.datadir).ok_or_else(|| SandboxError::NotInCopy {
            what: "data directory",
            path: layout.datadir.clone(),
        })?;
    // What the replay needs is checked before anything is built.
    let replay_plan = match &until {
        Some(until) => {
            let binlog = layout.binlog.as_ref().ok_or(ExposeError::NoBinlog)?;
            let position = copy_position(copy, layout)?;
            let (file, pos) = position
                .start()
                .ok_or_else(|| ExposeError::NoPosition("it names no binlog file".into()))?;
            let logs = replay::logs_from(layout, binlog, file, Some(until))?;
            check_reachable(&logs, until)?;
            Some((logs, pos, until))
        }
        None => None,
    };
    let dir = options.scratch.join("mariadb");
    std::fs::create_dir(&dir).map_err(files::io_err("create", &dir))?;
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
        .map_err(files::io_err("set the mode of", &dir))?;
    owner.chown(&dir)?;
    let dirs = build(layout, copy, &copy_data, &dir, &owner)?;
    let mut recovery = TempServer::start(layout, &dirs, START_LIMIT)?;
    if let Some((logs, pos, until)) = replay_plan {
        replay::replay(&recovery, &logs, pos, Some(until))?;
    }
    recovery.stop(STOP_LIMIT)?;
    let socket = options
        .socket_dir
        .as_ref()
        .map(|d| d.join(format!("shadowcopy-expose-{}.sock", std::process::id())));
    let server = TempServer::start_with(
        layout,
        &dirs,
        START_LIMIT,
        &StartOptions {
            extra: &["--innodb-read-only", "--read-only"],
            socket,
            port: options.port,
        },
    )?;
    let pid = server.pid();
    let socket = server.socket.clone();
    server.keep();
    let connect = match options.port {
        Some(port) => format!(
            "mariadb --no-defaults --host=127.0.0.1 --port={port} --user=USER -p  (the copy's own accounts and passwords; as root on this host: mariadb --no-defaults --socket={})",
            shell_quote(&socket)
        ),
        None => format!(
            "mariadb --no-defaults --socket={} --user=root",
            shell_quote(&socket)
        ),
    };
    Ok(Exposed {
        address: socket.display().to_string(),
        connect,
        pid,
        port: options.port,
        writer: String::new(),
    })
}

/// The binlog position the copy holds (its position file).
fn copy_position(copy: &CopyView, layout: &ServerLayout) -> Result<BinlogPosition, ExposeError> {
    let file = copy
        .path_of(&layout.datadir.join(POSITION_FILE))
        .ok_or_else(|| ExposeError::NoPosition("it is not in the copy".into()))?;
    let text = std::fs::read_to_string(file).map_err(|e| ExposeError::NoPosition(e.to_string()))?;
    BinlogPosition::parse(&text).map_err(|e| ExposeError::NoPosition(e.to_string()))
}

/// A binlog position past the end of its file is refused before anything is built.
/// (A time or GTID past the logs is found by reading them: see `log_analysis.rs`.)
fn check_reachable(logs: &[std::path::PathBuf], until: &Until) -> Result<(), ExposeError> {
    if let Until::Position { file, position } = until {
        let last = logs.last().map(Path::new);
        let size = last
            .and_then(|l| std::fs::metadata(l).ok())
            .map(|m| m.len());
        if let (Some(last), Some(size)) = (last, size) {
            if *position > size {
                return Err(ExposeError::Unreachable {
                    until: format!("{file}:{position}"),
                    newest: format!("{} ends at position {size}", last.display()),
                });
            }
        }
    }
    Ok(())
}
