//! What a writer kind says of itself: [`WriterKind`] (what the engine asks of a set's
//! writers: their paths, their checks, their discovery, their writer) and [`KindInfo`]
//! (what the registry lists). Both are implemented by the kind's options type, the
//! struct the config file spells, in the kind's own module; the engine asks these
//! questions through [`crate::WriterSpec::options`] and never matches on a kind.

use std::path::{Path, PathBuf};

use shadowcopy_core::{BoxError, Writer};

use crate::SetContext;

/// Makes one path absolute: given the path and what it is (`"sqlite path"`, for the
/// message), the engine's normalisation (symlinks resolved where the path exists).
pub type Normalize<'a> = &'a dyn Fn(&Path, &str) -> Result<PathBuf, String>;

/// The questions the engine asks of a configured writer (dyn-compatible: reached
/// through [`crate::WriterSpec::options`] and [`crate::WriterSpec::options_mut`]).
pub trait WriterKind: Send + Sync {
    /// Makes every path of the options absolute with `normalize`, in place; the first
    /// error is returned as it is (the caller names the set).
    fn normalize_paths(&mut self, normalize: Normalize<'_>) -> Result<(), String>;

    /// Checks option values a config file can get wrong (ranges), before any work.
    fn check(&self) -> Result<(), String> {
        Ok(())
    }

    /// Paths that must be regular files when they exist (a missing one is the writer's
    /// to report, with its own advice, at identify).
    fn regular_files(&self) -> Vec<&Path> {
        Vec::new()
    }

    /// Asks the application where its files are (a database server's layout), once, when
    /// the set is resolved; what it finds is recorded with every copy. Returns whether
    /// it discovered anything: the writer's `identify` would then only repeat it.
    fn discover(&mut self) -> Result<bool, BoxError> {
        Ok(false)
    }

    /// What discovery found, as `writers --json` shows it.
    fn discovered(&self) -> Option<serde_json::Value> {
        None
    }

    /// The files and directories whose data this writer copies (what a provider must be
    /// able to serve); for a server, what discovery found.
    fn data_paths(&self) -> Vec<PathBuf>;

    /// The options without how to log in (a password file), for telling two sets apart:
    /// a password file given one day and an environment variable the next is the same
    /// server.
    fn forget_credentials(&mut self) {}

    /// Told for one run that the provider snapshots every file at one instant, so a
    /// check that file-by-file copies need can be skipped. Never recorded.
    fn set_atomic_snapshot(&mut self, _atomic: bool) {}

    /// The writer these options configure, for a set with `context`.
    fn build(&self, context: &SetContext) -> Box<dyn Writer>;
}

/// What a kind is for. It decides what the engine does with the kind beyond its own
/// methods, and orders the list of kinds (`writers`): databases, hooks, file systems.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindRole {
    /// An application's data (a database): copied, consistent through the application.
    Database,
    /// A script told of each event: holds no data of its own, so a set of hooks alone
    /// copies nothing.
    Hook,
    /// Freezes the file systems of its paths: the copy's provider must write elsewhere
    /// (a clone onto a frozen file system would wait for the thaw).
    FileSystems,
}

impl KindRole {
    /// The place in the list of kinds.
    pub const fn rank(self) -> u8 {
        match self {
            KindRole::Database => 0,
            KindRole::Hook => 1,
            KindRole::FileSystems => 2,
        }
    }
}

/// A kind's constants, for the registry ([`crate::KINDS`]); apart from [`WriterKind`]
/// so that one stays dyn-compatible.
pub trait KindInfo: WriterKind {
    /// One line on what the kind is for (`shadowcopy writers`).
    const DESCRIPTION: &'static str;
    const ROLE: KindRole;
    /// The `create` flag that makes a zero-config set of this kind, if any (the flags
    /// themselves are fields of the engine's `CreateOptions`, which a test holds to
    /// these names).
    const ZERO_CONFIG_FLAG: Option<&'static str>;
}

/// A kind as the registry lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindEntry {
    /// `kind = "…"` in the config file.
    pub name: &'static str,
    pub description: &'static str,
    pub role: KindRole,
    pub zero_config_flag: Option<&'static str>,
}

impl KindEntry {
    pub const fn of<K: KindInfo>(name: &'static str) -> KindEntry {
        KindEntry {
            name,
            description: K::DESCRIPTION,
            role: K::ROLE,
            zero_config_flag: K::ZERO_CONFIG_FLAG,
        }
    }
}

/// `kinds` ordered by role (stable: in registry order within a role).
pub const fn by_role<const N: usize>(mut kinds: [KindEntry; N]) -> [KindEntry; N] {
    let mut i = 1;
    while i < N {
        let mut j = i;
        while j > 0 && kinds[j - 1].role.rank() > kinds[j].role.rank() {
            let t = kinds[j - 1];
            kinds[j - 1] = kinds[j];
            kinds[j] = t;
            j -= 1;
        }
        i += 1;
    }
    kinds
}
