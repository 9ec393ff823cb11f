//! Paths in the catalog are the kernel's bytes, stored as BLOBs: a Linux file name need
//! not be UTF-8, and a copy must record (and give back) the exact name. Catalogs written
//! before schema version 3 held TEXT; both read back the same.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rusqlite::types::{FromSqlError, ValueRef};
use rusqlite::Row;

/// The bytes to store for `path`.
pub(crate) fn to_sql(path: &Path) -> &[u8] {
    path.as_os_str().as_bytes()
}

/// The path stored in column `i` of `row` (a BLOB, or TEXT from an older catalog).
pub(crate) fn from_row(row: &Row<'_>, i: usize) -> rusqlite::Result<PathBuf> {
    let bytes = match row.get_ref(i)? {
        ValueRef::Blob(b) | ValueRef::Text(b) => b,
        other => {
            return Err(rusqlite::Error::FromSqlConversionFailure(
                i,
                other.data_type(),
                Box::new(FromSqlError::InvalidType),
            ))
        }
    };
    Ok(PathBuf::from(OsStr::from_bytes(bytes)))
}
