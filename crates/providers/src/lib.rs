//! `shadowcopy-providers`: the built-in providers and the registry that builds them by
//! kind.
//!
//! | kind | rank | what a copy is | needs |
//! |---|---|---|---|
//! | [`btrfs`](btrfs::BtrfsProvider) | 10 | a read-only snapshot of the subvolume holding the data, O(1) | the data in a btrfs subvolume of its own |
//! | [`reflink`](reflink::ReflinkProvider) | 20 | a `FICLONE` clone of every file, O(1) in data size | XFS (reflink=1) or btrfs, copies on the data's file system |
//! | [`exec`](exec::ExecProvider) | 50 | whatever a command does (`exec:NAME`; a storage array, a cloud snapshot) | `[providers.NAME] command = ...`; never picked by `auto` |
//! | [`copy`](copy::CopyProvider) | 30 | a full, independent, sparse-aware parallel copy | any file system |
//!
//! A set whose data spans several file systems is copied by [`multi`], one provider per
//! volume in one freeze window.
//!
//! `copy` and `reflink` share one on-disk layout (see `layout`): a copy is the directory
//! `<base>/copy-<id>-<nonce>` holding `files/<original absolute path without '/'>`, and a commit
//! never writes into an existing location.
//!
//! A new provider is one module, one line in [`Registry::builtin`] (a duplicate name is
//! rejected) and one call of `shadowcopy_testing::provider_suite::run_all` in
//! `tests/providers.rs`. [`choose_auto`] picks the lowest rank whose `check` passes.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use shadowcopy_core::provider::{Capabilities, Provider};

pub mod btrfs;
pub mod copy;
pub mod exec;
mod layout;

/// Where the `copy` provider keeps copy `id` below `base`: `<base>/copy-<id>-<nonce>`,
/// whose `files/` holds each file at its original path (what `archive restore` fills).
pub fn copy_location(base: &std::path::Path, id: shadowcopy_core::CopyId) -> std::path::PathBuf {
    layout::location_dir(base, id)
}
pub mod multi;
mod pool;
pub mod reflink;

pub use layout::LayoutError;

/// What every provider is built from (the config file's and the CLI's provider options).
#[derive(Clone, Debug)]
pub struct ProviderOptions {
    /// Where copies go, when the user chose; each provider has its own default.
    pub copies_dir: Option<PathBuf>,
    /// The `copy` provider's default: beside the catalog.
    pub default_copies_dir: PathBuf,
    /// Threads a commit may use; 0 means one per CPU.
    pub parallelism: usize,
    /// The exec providers the config file defines (`exec:NAME`).
    pub exec: Vec<exec::ExecProviderOptions>,
}

impl ProviderOptions {
    /// `parallelism`, with 0 resolved to the number of CPUs.
    pub fn threads(&self) -> usize {
        if self.parallelism > 0 {
            self.parallelism
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }
}

/// The built-in kinds, in registry order.
pub const KINDS: &[&str] = &["copy", "reflink", "btrfs"];

/// Errors of the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("unknown provider kind `{kind}`; use one of: {}, or `auto` to pick the fastest that fits", known.join(", "))]
    UnknownKind {
        kind: String,
        known: Vec<&'static str>,
    },
    #[error("{0}")]
    Exec(String),
    #[error(
        "provider kind `{name}` is registered twice; every provider module needs its own name"
    )]
    Duplicate { name: &'static str },
    #[error(
        "no provider can copy these paths:\n{}\nFix one of the reasons above, or name a provider with --provider",
        reasons.iter().map(|(kind, why)| format!("  {kind}: {why}")).collect::<Vec<_>>().join("\n")
    )]
    NoneFits {
        reasons: Vec<(&'static str, String)>,
    },
}

/// Builds a provider from the options.
pub type Constructor = fn(&ProviderOptions) -> Arc<dyn Provider>;

/// The list of (kind, constructor) that [`build`], [`all`] and [`choose_auto`] use.
pub struct Registry {
    entries: Vec<(&'static str, Constructor)>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry {
            entries: Vec::new(),
        }
    }

    /// The built-in providers, one line each.
    pub fn builtin() -> Result<Self, RegistryError> {
        let mut r = Registry::new();
        r.register("copy", |o| Arc::new(copy::CopyProvider::new(o)))?;
        r.register("reflink", |o| Arc::new(reflink::ReflinkProvider::new(o)))?;
        r.register("btrfs", |o| Arc::new(btrfs::BtrfsProvider::new(o)))?;
        Ok(r)
    }

    /// Adds a kind; a name that is already registered is rejected.
    pub fn register(&mut self, name: &'static str, make: Constructor) -> Result<(), RegistryError> {
        if self.entries.iter().any(|(n, _)| *n == name) {
            return Err(RegistryError::Duplicate { name });
        }
        self.entries.push((name, make));
        Ok(())
    }

    /// The registered kinds, in registration order.
    pub fn kinds(&self) -> Vec<&'static str> {
        self.entries.iter().map(|(n, _)| *n).collect()
    }

    pub fn build(
        &self,
        kind: &str,
        opts: &ProviderOptions,
    ) -> Result<Arc<dyn Provider>, RegistryError> {
        self.entries
            .iter()
            .find(|(n, _)| *n == kind)
            .map(|(_, make)| make(opts))
            .ok_or_else(|| RegistryError::UnknownKind {
                kind: kind.to_string(),
                known: self.kinds(),
            })
    }

    pub fn all(&self, opts: &ProviderOptions) -> Vec<Arc<dyn Provider>> {
        self.entries.iter().map(|(_, make)| make(opts)).collect()
    }

    /// The lowest `rank()` among the providers whose capabilities `fits` accepts and
    /// whose `check(paths)` passes; otherwise every reason.
    pub fn choose_auto(
        &self,
        opts: &ProviderOptions,
        paths: &[PathBuf],
        fits: impl Fn(&Capabilities) -> bool,
    ) -> Result<Arc<dyn Provider>, RegistryError> {
        let mut candidates = self.all(opts);
        candidates.retain(|p| fits(&p.capabilities()));
        candidates.sort_by_key(|p| p.rank());
        let mut reasons = Vec::new();
        for p in candidates {
            match p.check(paths) {
                Ok(()) => return Ok(p),
                Err(why) => reasons.push((p.kind(), why.reason)),
            }
        }
        Err(RegistryError::NoneFits { reasons })
    }
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new()
    }
}

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| match Registry::builtin() {
        Ok(r) => r,
        // A duplicate among the built-in names is a programming error, caught by the
        // unit test below before it can ship.
        Err(e) => panic!("{e}"),
    })
}

/// Builds the provider of this kind; an unknown kind is an error listing [`KINDS`].
/// [`multi::MULTI`] gives the multi-volume provider of an existing copy (its volumes
/// come from the copy's location).
pub fn build(kind: &str, opts: &ProviderOptions) -> Result<Arc<dyn Provider>, RegistryError> {
    if kind == multi::MULTI {
        return Ok(Arc::new(multi::MultiVolumeProvider::for_existing(opts)));
    }
    if let Some(found) = exec::build(kind, &opts.exec) {
        return found
            .map(|p| Arc::new(p) as Arc<dyn Provider>)
            .map_err(|e| RegistryError::Exec(e.to_string()));
    }
    registry().build(kind, opts)
}

/// Every built-in provider.
pub fn all(opts: &ProviderOptions) -> Vec<Arc<dyn Provider>> {
    registry().all(opts)
}

/// auto: the lowest `rank()` whose `check(paths)` passes; error lists each provider's reason.
pub fn choose_auto(
    opts: &ProviderOptions,
    paths: &[PathBuf],
) -> Result<Arc<dyn Provider>, RegistryError> {
    registry().choose_auto(opts, paths, |_| true)
}

/// auto for a set whose file systems are frozen while it commits: the lowest `rank()`
/// among the providers that write elsewhere (a clone onto a frozen file system would
/// wait for the thaw).
pub fn choose_auto_off_the_data_file_system(
    opts: &ProviderOptions,
    paths: &[PathBuf],
) -> Result<Arc<dyn Provider>, RegistryError> {
    registry().choose_auto(opts, paths, |c| !c.writes_to_the_data_file_system)
}

/// The provider that made a copy of kind `kind` at `location`, configured as `opts`
/// say: a multi-volume copy's volumes (and each one's provider) are read from its
/// location; an unreadable one falls back to what `build` makes of the kind.
pub fn build_for_copy(
    kind: &str,
    location: Option<&str>,
    opts: &ProviderOptions,
) -> Result<Arc<dyn Provider>, RegistryError> {
    if kind == multi::MULTI {
        if let Some(Ok(multi)) = location.map(|l| multi::MultiVolumeProvider::for_location(l, opts))
        {
            return Ok(Arc::new(multi));
        }
    }
    build(kind, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_registry_matches_kinds() {
        assert_eq!(Registry::builtin().unwrap().kinds(), KINDS);
    }

    #[test]
    fn builtin_kinds_promise_what_their_storage_does() {
        use shadowcopy_core::provider::Capabilities;
        let opts = ProviderOptions {
            copies_dir: None,
            default_copies_dir: PathBuf::from("/nonexistent/copies"),
            parallelism: 1,
            exec: Vec::new(),
        };
        let expected = |atomic, writes, local| Capabilities {
            atomic_snapshot: atomic,
            writes_to_the_data_file_system: writes,
            location_is_a_local_directory: local,
        };
        for (kind, caps) in [
            ("copy", expected(false, false, true)),
            ("reflink", expected(false, true, true)),
            ("btrfs", expected(true, true, true)),
        ] {
            assert_eq!(build(kind, &opts).unwrap().capabilities(), caps, "{kind}");
        }
        assert_eq!(KINDS.len(), 3, "a new kind says here what it promises");
    }

    #[test]
    fn duplicate_name_is_rejected() {
        let mut r = Registry::builtin().unwrap();
        let err = r
            .register("copy", |o| Arc::new(copy::CopyProvider::new(o)))
            .expect_err("a duplicate name must be rejected");
        assert!(matches!(err, RegistryError::Duplicate { name: "copy" }));
        assert_eq!(r.kinds(), KINDS);
    }
}
