//! The archive when things go wrong while it writes: the store failing in the middle of
//! a push (after the retries a real client makes) leaves no manifest, so nothing half
//! pushed is listed or restorable, and the next push completes; two pushes of the same
//! copy at once: one wins, the other is told, the repository stays whole.

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use shadowcopy_archive::{init, ArchiveError, Cut, PushSource, Repository, SourceFile, Store};

const PASS: &[u8] = b"faults";

/// A local store whose puts of packs fail once `allowed` of them went through.
#[derive(Debug)]
struct FailingPacks {
    inner: LocalFileSystem,
    allowed: usize,
    puts: AtomicUsize,
}

impl fmt::Display for FailingPacks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FailingPacks({})", self.inner)
    }
}

impl FailingPacks {
    fn check(&self, location: &ObjPath) -> object_store::Result<()> {
        if location.as_ref().starts_with("packs/")
            && self.puts.fetch_add(1, Ordering::SeqCst) >= self.allowed
        {
            return Err(object_store::Error::Generic {
                store: "test",
                source: "HTTP 500 Internal Server Error, after 10 retries".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectStore for FailingPacks {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check(location)?;
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &ObjPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjPath>> {
        self.inner.delete_stream(locations)
    }
    fn list(
        &self,
        prefix: Option<&ObjPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjPath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &ObjPath,
        to: &ObjPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

fn data(dir: &Path) -> PushSource {
    let file = dir.join("big.db");
    // Two packs' worth of incompressible bytes (a pack closes at 32 MiB).
    let mut bytes = vec![0u8; 40 << 20];
    blake3::Hasher::new().finalize_xof().fill(&mut bytes);
    std::fs::write(&file, &bytes).unwrap();
    PushSource {
        host: "db1".into(),
        set: "big".into(),
        origin: "create".into(),
        copy_id: 7,
        created_ms: 7_000,
        provider: "copy".into(),
        spec: serde_json::json!({}),
        components: serde_json::json!([]),
        tree: Vec::new(),
        files: vec![SourceFile {
            path: "/srv/big.db".into(),
            read_from: file,
            mode: 0o100600,
            uid: 0,
            gid: 0,
            size: bytes.len() as u64,
            mtime_ns: 0,
            blake3: Some(blake3::hash(&bytes).to_hex().to_string()),
            cut: Cut::Fixed,
        }],
    }
}

#[test]
fn a_push_the_store_fails_halfway_leaves_nothing_listed_and_the_next_one_completes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let url = format!("file://{}", root.display());
    init(&url, PASS, "t").unwrap();
    let source = data(dir.path());

    let failing = FailingPacks {
        inner: LocalFileSystem::new_with_prefix(&root).unwrap(),
        allowed: 1,
        puts: AtomicUsize::new(0),
    };
    let repo =
        Repository::open_store(Store::from_object_store(Arc::new(failing), &url), PASS).unwrap();
    let e = repo.push(&source, &|_, _| {}).unwrap_err();
    assert!(matches!(e, ArchiveError::Store(_)), "{e}");
    assert!(e.to_string().contains("HTTP 500"), "{e}");

    let healthy = Repository::open(&url, PASS).unwrap();
    assert!(
        healthy.list().unwrap().is_empty(),
        "a failed push lists nothing"
    );
    let report = healthy.push(&source, &|_, _| {}).unwrap();
    assert_eq!(report.files, 1);
    assert_eq!(healthy.list().unwrap().len(), 1);
    let to = dir.path().join("out");
    healthy
        .restore_to(&report.manifest, &to, &|_, _| {})
        .unwrap();
    assert_eq!(
        std::fs::read(to.join("srv/big.db")).unwrap(),
        std::fs::read(dir.path().join("big.db")).unwrap()
    );
    let verified = healthy.verify(1.0).unwrap();
    assert!(verified.ok, "{verified:?}");
}

#[test]
fn two_pushes_of_one_copy_at_once_one_wins_and_the_repository_stays_whole() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}", dir.path().join("repo").display());
    init(&url, PASS, "t").unwrap();
    let source = Arc::new(data(dir.path()));
    let outcomes: Vec<Result<String, ArchiveError>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let source = source.clone();
                let url = url.clone();
                s.spawn(move || {
                    Repository::open(&url, PASS)
                        .unwrap()
                        .push(&source, &|_, _| {})
                        .map(|r| r.manifest)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let won = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(won, 1, "{outcomes:?}");
    assert!(outcomes
        .iter()
        .any(|o| matches!(o, Err(ArchiveError::AlreadyArchived { copy: 7, .. }))));
    let repo = Repository::open(&url, PASS).unwrap();
    assert_eq!(repo.list().unwrap().len(), 1);
    let verified = repo.verify(1.0).unwrap();
    assert!(verified.ok, "{verified:?}");
}
