//! Where a repository's objects live, through `object_store`: an S3-compatible bucket
//! (`s3://bucket/prefix`; endpoint, region and credentials from the standard AWS
//! variables, retries with backoff on 5xx and timeouts, conditional puts) or a local
//! directory (`file:///path`, or an absolute path).

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3Builder, S3ConditionalPut};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, RetryConfig,
    WriteMultipart,
};

use crate::error::ArchiveError;

/// A repository's storage: the store and the prefix inside it.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.url)
    }
}

/// The HTTP client's options: the CAs of `AWS_CA_BUNDLE` (a PEM file, as the AWS CLI
/// reads it) trusted besides the system's, for an endpoint with a private CA.
fn client_options() -> Result<ClientOptions, ArchiveError> {
    let mut options = ClientOptions::new();
    if let Some(bundle) = std::env::var_os("AWS_CA_BUNDLE") {
        let pem = std::fs::read(&bundle).map_err(|e| {
            ArchiveError::Usage(format!(
                "cannot read AWS_CA_BUNDLE {}: {e}",
                std::path::Path::new(&bundle).display()
            ))
        })?;
        let certs = object_store::Certificate::from_pem_bundle(&pem).map_err(|e| {
            ArchiveError::Usage(format!(
                "AWS_CA_BUNDLE {} holds no usable PEM certificate: {e}",
                std::path::Path::new(&bundle).display()
            ))
        })?;
        if certs.is_empty() {
            return Err(ArchiveError::Usage(format!(
                "AWS_CA_BUNDLE {} holds no PEM certificate",
                std::path::Path::new(&bundle).display()
            )));
        }
        for cert in certs {
            options = options.with_root_certificate(cert);
        }
    }
    Ok(options)
}

/// Multipart parts of uploads.
const PART_SIZE: usize = 8 << 20;

impl Store {
    /// The store `url` names; `create` makes a local directory that does not exist yet
    /// (mode 0700).
    pub fn open(url: &str, create: bool) -> Result<Store, ArchiveError> {
        let usage = || {
            ArchiveError::Usage(format!(
                "{url:?} is not an archive URL; write s3://BUCKET/PREFIX (endpoint and credentials from \
                 AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or a directory \
                 (file:///srv/archive or /srv/archive)"
            ))
        };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(usage());
            }
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_conditional_put(S3ConditionalPut::ETagMatch)
                .with_retry(RetryConfig {
                    max_retries: 10,
                    retry_timeout: Duration::from_secs(300),
                    ..RetryConfig::default()
                })
                .with_client_options(
                    client_options()?
                        .with_connect_timeout(Duration::from_secs(10))
                        .with_timeout(Duration::from_secs(120))
                        // Plain HTTP only when asked for, as object_store's users ask.
                        .with_allow_http(
                            std::env::var("AWS_ALLOW_HTTP")
                                .is_ok_and(|v| v.eq_ignore_ascii_case("true")),
                        ),
                );
            if std::env::var_os("AWS_REGION").is_none()
                && std::env::var_os("AWS_DEFAULT_REGION").is_none()
            {
                builder = builder.with_region("us-east-1");
            }
            let inner = builder
                .build()
                .map_err(|e| ArchiveError::Usage(format!("cannot use {url}: {e}")))?;
            return Ok(Store {
                inner: Arc::new(inner),
                prefix: Path::from(prefix.trim_matches('/')),
                url: url.to_string(),
            });
        }
        let dir = url.strip_prefix("file://").unwrap_or(url);
        if !dir.starts_with('/') || url.contains("://") && !url.starts_with("file://") {
            return Err(usage());
        }
        if create && !std::path::Path::new(dir).exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let inner =
            LocalFileSystem::new_with_prefix(dir).map_err(|e| ArchiveError::NoRepository {
                url: url.to_string(),
                why: e.to_string(),
            })?;
        Ok(Store {
            inner: Arc::new(inner),
            prefix: Path::default(),
            url: url.to_string(),
        })
    }

    /// A store made elsewhere (a wrapper that injects faults, in tests), named `url`.
    pub fn from_object_store(inner: Arc<dyn ObjectStore>, url: &str) -> Store {
        Store {
            inner,
            prefix: Path::default(),
            url: url.to_string(),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn path(&self, name: &str) -> Path {
        if self.prefix.as_ref().is_empty() {
            Path::from(name)
        } else {
            Path::from(format!("{}/{name}", self.prefix))
        }
    }

    /// The object, or `None` when there is none.
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>, ArchiveError> {
        match self.inner.get(&self.path(name)).await {
            // Without a copy where the body is one buffer already.
            Ok(r) => Ok(Some(r.bytes().await?.into())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn get_range(&self, name: &str, range: Range<u64>) -> Result<Vec<u8>, ArchiveError> {
        Ok(self.inner.get_range(&self.path(name), range).await?.into())
    }

    /// Writes the object, replacing any.
    pub async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<(), ArchiveError> {
        self.inner
            .put(&self.path(name), PutPayload::from(bytes))
            .await?;
        Ok(())
    }

    /// Writes the object only if there is none; false when one was there.
    pub async fn put_new(&self, name: &str, bytes: Vec<u8>) -> Result<bool, ArchiveError> {
        let options = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        match self
            .inner
            .put_opts(&self.path(name), PutPayload::from(bytes), options)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a big object in parts (a pack).
    pub async fn put_large(&self, name: &str, bytes: Vec<u8>) -> Result<(), ArchiveError> {
        if bytes.len() <= PART_SIZE {
            return self.put(name, bytes).await;
        }
        let upload = self.inner.put_multipart(&self.path(name)).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        writer.write(&bytes);
        writer.finish().await?;
        Ok(())
    }

    /// The objects below `dir`: (name below `dir`, size), by name.
    pub async fn list(&self, dir: &str) -> Result<Vec<(String, u64)>, ArchiveError> {
        let mut out: Vec<(String, u64)> = self
            .list_with_time(dir)
            .await?
            .into_iter()
            .map(|(name, size, _)| (name, size))
            .collect();
        out.sort();
        Ok(out)
    }

    /// The names of the objects below `dir`, sorted.
    pub async fn names(&self, dir: &str) -> Result<Vec<String>, ArchiveError> {
        Ok(self.list(dir).await?.into_iter().map(|(n, _)| n).collect())
    }

    /// The objects below `dir`: (name below `dir`, size, last modified in Unix ms).
    pub async fn list_with_time(&self, dir: &str) -> Result<Vec<(String, u64, i64)>, ArchiveError> {
        let base = self.path(dir);
        let found: Vec<object_store::ObjectMeta> =
            self.inner.list(Some(&base)).try_collect().await?;
        Ok(found
            .into_iter()
            .filter_map(|m| {
                let rel = m
                    .location
                    .as_ref()
                    .strip_prefix(base.as_ref())?
                    .trim_start_matches('/')
                    .to_string();
                Some((rel, m.size, m.last_modified.timestamp_millis()))
            })
            .collect())
    }

    pub async fn delete(&self, name: &str) -> Result<(), ArchiveError> {
        match self.inner.delete(&self.path(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
