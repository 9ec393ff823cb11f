//! The database-file helpers every database writer shares (`shadowcopy_core::dbfiles`),
//! the owner of a cluster's files, and files root writes anew into a cluster's
//! directories.

pub use shadowcopy_core::dbfiles::{clone_tree, copy_root, Owner};

use crate::cluster::ClusterLayout;

/// The user a cluster's files are given to (when we run as root): its data directory's.
pub fn owner_of(layout: &ClusterLayout) -> Owner {
    Owner::new(layout.owner_uid, layout.owner_gid)
}

/// Writes `content` as a new file at `path`, mode 0600: whatever was there (a file, or a
/// link someone planted) is removed first, and the new file is created exclusively, so
/// it is never written through a link.
pub fn replace_file(
    path: &std::path::Path,
    content: &str,
) -> Result<(), shadowcopy_core::error::IoError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |action: &'static str| {
        move |source| shadowcopy_core::error::IoError {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("replace")(e)),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io("create"))?;
    file.write_all(content.as_bytes()).map_err(io("write"))?;
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(io("set the mode of"))
}
