//! The model: phases of a shadow set, states of a copy, components and file manifests.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A copy's identifier in one catalog.
pub type CopyId = i64;

/// The steps of a shadow set, in protocol order (`Abort` is the undo path).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Identify,
    Prepare,
    Precommit,
    Freeze,
    Commit,
    Thaw,
    PostSnapshot,
    Verify,
    BackupComplete,
    Done,
    Abort,
    Restore,
}

impl Phase {
    pub const ALL: [Phase; 12] = [
        Phase::Identify,
        Phase::Prepare,
        Phase::Precommit,
        Phase::Freeze,
        Phase::Commit,
        Phase::Thaw,
        Phase::PostSnapshot,
        Phase::Verify,
        Phase::BackupComplete,
        Phase::Done,
        Phase::Abort,
        Phase::Restore,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Identify => "identify",
            Phase::Prepare => "prepare",
            Phase::Precommit => "precommit",
            Phase::Freeze => "freeze",
            Phase::Commit => "commit",
            Phase::Thaw => "thaw",
            Phase::PostSnapshot => "post-snapshot",
            Phase::Verify => "verify",
            Phase::BackupComplete => "backup-complete",
            Phase::Done => "done",
            Phase::Abort => "abort",
            Phase::Restore => "restore",
        }
    }

    pub fn parse(s: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

macro_rules! string_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        pub enum $name { $(#[serde(rename = $s)] $variant),+ }
        impl $name {
            pub fn as_str(self) -> &'static str { match self { $($name::$variant => $s),+ } }
            pub fn parse(s: &str) -> Option<Self> { match s { $($s => Some($name::$variant),)+ _ => None } }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}

string_enum!(
    /// Where a copy is in its life. Only `Usable` copies are offered for restore.
    CopyState {
        InProgress => "in-progress",
        Usable => "usable",
        Failed => "failed",
        Deleting => "deleting",
    }
);

string_enum!(
    /// Why a copy was made: `create`, a `pre-restore` copy of the state a restore
    /// replaced, or brought back from the `archive`.
    Origin {
        Create => "create",
        PreRestore => "pre-restore",
        Archive => "archive",
    }
);

string_enum!(
    /// The outcome of the newest integrity check of a copy.
    VerifyState {
        NotVerified => "not-verified",
        Passed => "passed",
        Failed => "failed",
    }
);

string_enum!(
    /// What a component holds for its application.
    ComponentRole {
        Data => "data",
        Log => "log",
    }
);

/// One piece of an application's data as its writer reports it (the writer metadata
/// document of the Windows framework). In JSON its path is written as [`JsonPath`] does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "ComponentJson", try_from = "ComponentJson")]
pub struct Component {
    /// The writer instance that reported it.
    pub writer: String,
    /// Short name within the writer: `db`, `wal`.
    pub name: String,
    pub role: ComponentRole,
    /// Absolute path of a file or directory.
    pub path: PathBuf,
    /// A required component that is missing at commit fails the set; an optional one is
    /// skipped (a SQLite `-wal` file that does not exist, say).
    pub required: bool,
    /// The writer pins this component from the end of `prepare` until `thaw`: a copy of
    /// it taken any time in that span, together with the unpinned components copied
    /// while frozen, opens as the application's state at the freeze. Providers whose
    /// commit is proportional to the data copy pinned components before the freeze
    /// (SQLite in WAL mode pins its database file; only the WAL is copied while frozen).
    #[serde(default)]
    pub pinned: bool,
}

/// One file in a copy's manifest, keyed by its original absolute path. In JSON its path
/// is written as [`JsonPath`] does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "FileEntryJson", try_from = "FileEntryJson")]
pub struct FileEntry {
    pub path: PathBuf,
    pub size: u64,
    pub mode: u32,
    pub mtime_ns: i64,
    /// BLAKE3 of the copied content, filled by verification.
    pub blake3: Option<String>,
}

/// A directory or symlink that a copy holds at or below one of its directory components:
/// what a restore recreates besides the regular files of the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeEntry {
    /// The original absolute path.
    pub path: PathBuf,
    pub kind: TreeKind,
    /// Permission bits (with set-user-ID, set-group-ID and sticky).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TreeKind {
    Dir,
    /// A symlink, kept as a link (never followed): where it points.
    Symlink {
        target: PathBuf,
    },
}

pub use crate::pathjson::JsonPath;

/// [`Component`] as JSON.
#[derive(Serialize, Deserialize)]
struct ComponentJson {
    writer: String,
    name: String,
    role: ComponentRole,
    #[serde(flatten)]
    path: JsonPath,
    required: bool,
    #[serde(default)]
    pinned: bool,
}

impl From<Component> for ComponentJson {
    fn from(c: Component) -> Self {
        ComponentJson {
            path: JsonPath::from(c.path.as_path()),
            writer: c.writer,
            name: c.name,
            role: c.role,
            required: c.required,
            pinned: c.pinned,
        }
    }
}

impl TryFrom<ComponentJson> for Component {
    type Error = String;

    fn try_from(c: ComponentJson) -> Result<Self, String> {
        Ok(Component {
            path: c.path.try_into()?,
            writer: c.writer,
            name: c.name,
            role: c.role,
            required: c.required,
            pinned: c.pinned,
        })
    }
}

/// [`FileEntry`] as JSON.
#[derive(Serialize, Deserialize)]
struct FileEntryJson {
    #[serde(flatten)]
    path: JsonPath,
    size: u64,
    mode: u32,
    mtime_ns: i64,
    blake3: Option<String>,
}

impl From<FileEntry> for FileEntryJson {
    fn from(f: FileEntry) -> Self {
        FileEntryJson {
            path: JsonPath::from(f.path.as_path()),
            size: f.size,
            mode: f.mode,
            mtime_ns: f.mtime_ns,
            blake3: f.blake3,
        }
    }
}

impl TryFrom<FileEntryJson> for FileEntry {
    type Error = String;

    fn try_from(f: FileEntryJson) -> Result<Self, String> {
        Ok(FileEntry {
            path: f.path.try_into()?,
            size: f.size,
            mode: f.mode,
            mtime_ns: f.mtime_ns,
            blake3: f.blake3,
        })
    }
}

/// A copy made readable: each original path with where its content can be read now.
#[derive(Clone, Debug, Default)]
pub struct CopyView {
    pub files: Vec<(PathBuf, PathBuf)>,
}

/// What changed in a copy since the verified copy its verification builds on
/// (`base`): for each file (by original path), the byte ranges whose blocks are not
/// the base's, ascending. A file not listed changed entirely (the base has no such
/// file, or the two could not be compared).
#[derive(Clone, Debug, Default)]
pub struct Changes {
    pub base: CopyId,
    pub files: HashMap<PathBuf, Vec<Range<u64>>>,
}

impl Changes {
    /// The changed ranges of `original`; `None`: all of it changed.
    pub fn of(&self, original: &Path) -> Option<&[Range<u64>]> {
        self.files.get(original).map(Vec::as_slice)
    }
}

impl CopyView {
    /// Where the copy of `original` can be read, if the copy holds it.
    pub fn path_of(&self, original: &Path) -> Option<&Path> {
        self.files
            .iter()
            .find(|(o, _)| o == original)
            .map(|(_, c)| c.as_path())
    }
}

/// What a writer found when it checked a copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub ok: bool,
    /// One line per check, for the catalog and `show`.
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    use super::*;

    fn entry(path: &Path) -> FileEntry {
        FileEntry {
            path: path.to_path_buf(),
            size: 3,
            mode: 0o644,
            mtime_ns: 7,
            blake3: None,
        }
    }

    #[test]
    fn a_utf8_path_is_a_plain_json_string() {
        let json = serde_json::to_value(entry(Path::new("/srv/a b.db"))).unwrap();
        assert_eq!(json["path"], "/srv/a b.db");
        assert!(json.get("path_hex").is_none(), "{json}");
        let back: FileEntry = serde_json::from_value(json).unwrap();
        assert_eq!(back.path, Path::new("/srv/a b.db"));
    }

    #[test]
    fn a_non_utf8_path_round_trips_through_json() {
        let path = Path::new(OsStr::from_bytes(b"/d/bad\xffname"));
        let json = serde_json::to_value(entry(path)).unwrap();
        assert_eq!(json["path"], "/d/bad\u{fffd}name");
        assert_eq!(json["path_hex"], "2f642f626164ff6e616d65");
        let back: FileEntry = serde_json::from_value(json).unwrap();
        assert_eq!(back.path.as_os_str().as_bytes(), b"/d/bad\xffname");
        let c = Component {
            writer: "paths".into(),
            name: "dir".into(),
            role: ComponentRole::Data,
            path: path.to_path_buf(),
            required: true,
            pinned: false,
        };
        let back: Component = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn a_lone_path_field_round_trips_either_way() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct S {
            #[serde(with = "crate::pathjson")]
            p: PathBuf,
        }
        for bytes in [&b"/plain/db"[..], &b"/odd\xfe/db"[..]] {
            let s = S {
                p: PathBuf::from(OsStr::from_bytes(bytes)),
            };
            let text = serde_json::to_string(&s).unwrap();
            assert_eq!(serde_json::from_str::<S>(&text).unwrap(), s, "{text}");
        }
        assert_eq!(
            serde_json::to_string(&S {
                p: "/plain/db".into()
            })
            .unwrap(),
            r#"{"p":"/plain/db"}"#
        );
    }
}
