//! The database-file helpers every database writer shares (`shadowcopy_core::dbfiles`),
//! and the owner of a server's files.

pub use shadowcopy_core::dbfiles::{clone_tree, copy_root, make_traversable, Owner};
pub use shadowcopy_core::error::io_err;

use crate::server::ServerLayout;

/// The user a server's files are given to (when we run as root): its data directory's.
pub fn owner_of(layout: &ServerLayout) -> Owner {
    Owner::new(layout.owner_uid, layout.owner_gid)
}
