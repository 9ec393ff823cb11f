//! The database-file helpers every database writer shares (`shadowcopy_core::dbfiles`),
//! and the owner of a cluster's files.

pub use shadowcopy_core::dbfiles::{clone_tree, copy_root, Owner};

use crate::cluster::ClusterLayout;

/// The user a cluster's files are given to (when we run as root): its data directory's.
pub fn owner_of(layout: &ClusterLayout) -> Owner {
    Owner::new(layout.owner_uid, layout.owner_gid)
}
