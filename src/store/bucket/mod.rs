//! The object-store tier: CAS blobs and ActionResults as objects in one
//! bucket (S3 and its clones such as Garage or MinIO, Google Cloud Storage,
//! Azure Blob Storage) through the `object_store` crate, shared by every cairn
//! node configured with the same `--object-store` URL.
//!
//! Layout under the URL's prefix:
//! - `cas/{function}/{hash}`: a blob, its size the object's size (a read
//!   whose object has another size is a miss, never a short or long blob);
//! - `ac/{instance}/{function}/{hash}`: an encoded ActionResult, the
//!   instance name hex-encoded (`-` for the empty one) so no name can escape
//!   its folder;
//! - `_cairn/uses/...`: use logs for the bounded bucket ([`uses`], [`evict`]);
//! - `_cairn/clock/{node}`: a tiny object whose `last_modified` gives the
//!   evictor the bucket's time.
//!
//! Every call has a deadline (`request_timeout`; for streams, between two
//! chunks) and few retries, so a hung or lost storage node costs a request
//! seconds, not minutes; every failure is [`Error::Unavailable`] naming the
//! bucket. Large blobs go up in 8 MiB parts from the caller's stream and come
//! down as a stream, never whole in memory.

mod background;
mod counts;
mod evict;
mod uses;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart};

pub use counts::{Op, OpCounts};
pub use evict::EvictReport;

use super::tier::{Body, Chunks, Tier};
use crate::digest::Digest;
use crate::error::{Error, Result};

/// Default deadline of one object-store call (and of the wait between two
/// chunks of a streamed read or write): long enough for an 8 MiB part over a
/// slow link, short enough that a hung node never holds a build for long.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// HEADs in flight at once for one FindMissingBlobs: stock Garage answers a
/// small request in 40–90 ms (it doesn't set TCP_NODELAY), so a thousand
/// digests one by one would take a minute; 64 at a time takes about one second.
pub const FIND_MISSING_CONCURRENCY: usize = 64;

/// Size of one multipart part, and the largest blob sent in one PUT. S3
/// requires parts of at least 5 MiB; 8 MiB keeps a 4 GiB blob under S3's
/// 10,000-part limit with room to spare.
pub const PART_SIZE: usize = 8 << 20;

/// Parts of one blob in flight at once.
const PART_CONCURRENCY: usize = 2;

/// Default interval between two use logs of a node.
pub const DEFAULT_USE_LOG_INTERVAL: Duration = Duration::from_secs(30);

/// How a [`Bucket`] behaves; the URL comes apart.
#[derive(Clone, Debug)]
pub struct BucketOptions {
    /// Bound on the bytes of CAS and AC objects (`--object-store-max-size`);
    /// None: unbounded, and no use logs are written.
    pub max_size: Option<u64>,
    /// Objects used within this time are never evicted (`--object-store-min-age`).
    pub min_age: Duration,
    /// Deadline of one call (see [`DEFAULT_REQUEST_TIMEOUT`]).
    pub request_timeout: Duration,
    /// Names this node's use logs; unique per process.
    pub node_id: String,
    /// `object_store` settings applied over the environment's (keys such as
    /// `aws_endpoint`, `aws_access_key_id`): for tests and embedders that
    /// reach several stores from one process.
    pub settings: Vec<(String, String)>,
}

impl Default for BucketOptions {
    fn default() -> Self {
        BucketOptions {
            max_size: None,
            min_age: crate::config::DEFAULT_MIN_AGE,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            node_id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            settings: Vec::new(),
        }
    }
}

/// A [`Tier`] over one bucket (or a prefix of it).
pub struct Bucket {
    url: String,
    store: Arc<dyn ObjectStore>,
    root: Path,
    opts: BucketOptions,
    counts: Arc<OpCounts>,
    uses: uses::Recorder,
    /// The task [`Bucket::start`] spawned; aborted on drop.
    background: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Bucket {
    /// Opens `url` (`s3://bucket[/prefix]`, `gs://...`, `az://...`, or
    /// `memory:///` for tests), with credentials, endpoint and region from
    /// the crate's standard environment variables (`AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`/`AWS_ENDPOINT`,
    /// `AWS_REGION`, `AWS_ALLOW_HTTP`; `GOOGLE_*`; `AZURE_*`). Makes no call:
    /// a bucket that is down at start-up only makes the first calls fail.
    pub fn open(url: &str, opts: BucketOptions) -> Result<Bucket> {
        let bad = |why: String| Error::InvalidArgument(format!("--object-store {url}: {why}"));
        let parsed = url::Url::parse(url).map_err(|e| bad(e.to_string()))?;
        // object_store's HTTP client speaks rustls with no provider of its
        // own; cairn uses ring everywhere. Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let timeout = opts.request_timeout;
        let retry = RetryConfig {
            backoff: object_store::BackoffConfig {
                init_backoff: Duration::from_millis(50),
                max_backoff: Duration::from_secs(1),
                base: 2.0,
            },
            max_retries: 2,
            retry_timeout: timeout,
        };
        // The whole of one HTTP request (an 8 MiB part, or a streamed GET of
        // a large blob) may take longer than one deadline; the gap between
        // two reads may not.
        let mut client = vec![
            ("connect_timeout".to_string(), "2s".to_string()),
            ("timeout".to_string(), "1h".to_string()),
            ("read_timeout".to_string(), format!("{}ms", timeout.as_millis())),
        ];
        client.extend(opts.settings.iter().cloned());
        let store: Arc<dyn ObjectStore> = match parsed.scheme() {
            "s3" | "s3a" => {
                use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
                let mut b = AmazonS3Builder::from_env().with_url(url).with_retry(retry);
                for (k, v) in client {
                    b = b.with_config(k.parse::<AmazonS3ConfigKey>().map_err(|e| bad(e.to_string()))?, v);
                }
                Arc::new(b.build().map_err(|e| bad(e.to_string()))?)
            }
            "gs" => {
                use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
                let mut b = GoogleCloudStorageBuilder::from_env().with_url(url).with_retry(retry);
                for (k, v) in client {
                    b = b.with_config(k.parse::<GoogleConfigKey>().map_err(|e| bad(e.to_string()))?, v);
                }
                Arc::new(b.build().map_err(|e| bad(e.to_string()))?)
            }
            "az" | "azure" | "abfs" | "abfss" => {
                use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
                let mut b = MicrosoftAzureBuilder::from_env().with_url(url).with_retry(retry);
                for (k, v) in client {
                    b = b.with_config(k.parse::<AzureConfigKey>().map_err(|e| bad(e.to_string()))?, v);
                }
                Arc::new(b.build().map_err(|e| bad(e.to_string()))?)
            }
            "memory" => Arc::new(object_store::memory::InMemory::new()),
            other => return Err(bad(format!("unsupported scheme {other}:; use s3://, gs:// or az://"))),
        };
        // s3://bucket/prefix: the bucket is the host, the prefix the path.
        let root = Path::parse(parsed.path().trim_matches('/')).map_err(|e| bad(e.to_string()))?;
        Ok(Bucket::with_store(url, store, root, opts))
    }

    /// Opens the bucket `cairn serve --object-store` names, with its knobs.
    pub fn from_config(cfg: &crate::config::ObjectStore) -> Result<Bucket> {
        let opts = BucketOptions {
            max_size: cfg.max_size,
            min_age: cfg.min_age,
            request_timeout: cfg.timeout,
            ..Default::default()
        };
        Bucket::open(&cfg.url, opts)
    }

    /// A bucket over an already built store (the `object_store` crate offers
    /// more back ends than the URL schemes above).
    pub fn with_store(url: &str, store: Arc<dyn ObjectStore>, root: Path, opts: BucketOptions) -> Bucket {
        Bucket {
            url: url.trim_end_matches('/').to_string(),
            store,
            root,
            opts,
            counts: Arc::new(OpCounts::default()),
            uses: uses::Recorder::default(),
            background: std::sync::Mutex::new(None),
        }
    }

    /// Object-store calls made so far, by kind.
    pub fn counts(&self) -> Arc<OpCounts> {
        self.counts.clone()
    }

    /// The options this bucket was opened with.
    pub fn options(&self) -> &BucketOptions {
        &self.opts
    }

    /// The full object path of `rel` (a key relative to the prefix).
    fn path(&self, rel: &str) -> Path {
        let mut p = self.root.clone();
        for part in rel.split('/') {
            p = p.join(part);
        }
        p
    }

    /// The key of `location` relative to the prefix, if it is under it.
    fn rel(&self, location: &Path) -> Option<String> {
        let parts = location.prefix_match(&self.root)?;
        Some(parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>().join("/"))
    }

    fn cas_key(d: &Digest) -> String {
        format!("cas/{}/{}", d.function.name(), d.hex())
    }

    fn ac_key(instance: &str, action: &Digest) -> String {
        let inst = if instance.is_empty() { "-".to_string() } else { hex::encode(instance) };
        format!("ac/{inst}/{}/{}", action.function.name(), action.hex())
    }

    /// Notes a use for the bucket's LRU, when the bucket is bounded.
    fn note_use(&self, key: String) {
        if self.opts.max_size.is_some() {
            self.uses.note(key);
        }
    }

    /// Runs one call under the deadline, counting it; a missing object is
    /// `Ok(None)`, anything else that goes wrong is Unavailable.
    async fn call<T>(
        &self,
        op: Op,
        what: &str,
        fut: impl Future<Output = object_store::Result<T>>,
    ) -> Result<Option<T>> {
        self.counts.add(op, 1);
        self.timed(what, fut).await
    }

    /// Runs one step under the deadline without counting it as a call.
    async fn timed<T>(&self, what: &str, fut: impl Future<Output = object_store::Result<T>>) -> Result<Option<T>> {
        match tokio::time::timeout(self.opts.request_timeout, fut).await {
            Ok(Ok(v)) => Ok(Some(v)),
            Ok(Err(object_store::Error::NotFound { .. })) => Ok(None),
            Ok(Err(e)) => Err(self.unavailable(what, &e)),
            Err(_) => Err(Error::Unavailable(format!(
                "object store {}: {what} timed out after {:?}",
                self.url, self.opts.request_timeout
            ))),
        }
    }

    fn unavailable(&self, what: &str, e: &dyn std::fmt::Display) -> Error {
        Error::Unavailable(format!("object store {}: {what}: {e}", self.url))
    }

    /// Wraps a body stream from the store: errors become Unavailable, and a
    /// stream that stalls for a whole deadline ends with an error instead of
    /// hanging its reader.
    fn guard_stream(
        &self,
        what: String,
        inner: futures::stream::BoxStream<'static, object_store::Result<Bytes>>,
    ) -> Chunks {
        let url = self.url.clone();
        let timeout = self.opts.request_timeout;
        futures::stream::unfold(Some(inner), move |state| {
            let (url, what) = (url.clone(), what.clone());
            async move {
                let mut inner = state?;
                match tokio::time::timeout(timeout, inner.next()).await {
                    Ok(None) => None,
                    Ok(Some(Ok(b))) => Some((Ok(b), Some(inner))),
                    Ok(Some(Err(e))) => {
                        Some((Err(Error::Unavailable(format!("object store {url}: {what}: {e}"))), None))
                    }
                    Err(_) => Some((
                        Err(Error::Unavailable(format!("object store {url}: {what} stalled for {timeout:?}"))),
                        None,
                    )),
                }
            }
        })
        .boxed()
    }

    /// Uploads a stream of `size` bytes in parts, aborting the upload on failure.
    async fn write_multipart(&self, key: &str, size: u64, mut chunks: Chunks) -> Result<()> {
        let path = self.path(key);
        let what = format!("multipart upload of {key}");
        let upload = match self.call(Op::MultipartCreate, &what, self.store.put_multipart(&path)).await? {
            Some(u) => u,
            None => return Err(self.unavailable(&what, &"bucket not found")),
        };
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
        let mut sent = 0u64;
        let result: Result<()> = async {
            while let Some(chunk) =
                tokio::time::timeout(self.opts.request_timeout, chunks.next()).await.map_err(|_| {
                    Error::Unavailable(format!("object store {}: {what}: the local stream stalled", self.url))
                })?
            {
                let chunk = chunk?;
                sent += chunk.len() as u64;
                self.timed(&what, writer.wait_for_capacity(PART_CONCURRENCY)).await?;
                writer.put(chunk);
            }
            if sent != size {
                return Err(Error::Internal(format!("{what}: the stream held {sent} bytes, the digest says {size}")));
            }
            Ok(())
        }
        .await;
        // Parts are counted by size: WriteMultipart sends them as its buffer fills.
        self.counts.add(Op::MultipartPart, sent.div_ceil(PART_SIZE as u64));
        match result {
            Ok(()) => {
                self.call(Op::MultipartComplete, &what, writer.finish()).await?;
                Ok(())
            }
            Err(e) => {
                let _ = tokio::time::timeout(self.opts.request_timeout, writer.abort()).await;
                Err(e)
            }
        }
    }
}

#[async_trait::async_trait]
impl Tier for Bucket {
    fn describe(&self) -> String {
        self.url.clone()
    }

    async fn find_missing(&self, digests: &[Digest]) -> Result<Vec<Digest>> {
        let heads = futures::stream::iter(digests.iter().copied())
            .map(|d| async move {
                if d.is_empty_blob() {
                    return Ok((d, true));
                }
                let key = Self::cas_key(&d);
                let meta = self.call(Op::Head, &format!("HEAD {key}"), self.store.head(&self.path(&key))).await?;
                let present = meta.is_some_and(|m| m.size == d.size);
                if present {
                    self.note_use(key);
                }
                Ok::<_, Error>((d, present))
            })
            .buffered(FIND_MISSING_CONCURRENCY);
        let answers: Vec<(Digest, bool)> = heads.try_collect().await?;
        Ok(answers.into_iter().filter(|(_, present)| !present).map(|(d, _)| d).collect())
    }

    async fn read(&self, digest: &Digest) -> Result<Option<Chunks>> {
        if digest.is_empty_blob() {
            return Ok(Some(futures::stream::empty().boxed()));
        }
        let key = Self::cas_key(digest);
        let what = format!("GET {key}");
        let Some(got) = self.call(Op::Get, &what, self.store.get(&self.path(&key))).await? else {
            return Ok(None);
        };
        if got.meta.size != digest.size {
            // A torn or foreign object: a miss, and the local store refills it.
            tracing::warn!(
                "object store {}: {key} holds {} bytes, its digest says {}; treated as missing",
                self.url,
                got.meta.size,
                digest.size
            );
            return Ok(None);
        }
        self.note_use(key);
        Ok(Some(self.guard_stream(what, got.into_stream())))
    }

    async fn write(&self, digest: &Digest, body: Body) -> Result<()> {
        let key = Self::cas_key(digest);
        match body {
            Body::Whole(bytes) => {
                let what = format!("PUT {key}");
                self.call(Op::Put, &what, self.store.put(&self.path(&key), PutPayload::from(bytes))).await?;
                Ok(())
            }
            Body::Stream(chunks) if digest.size > PART_SIZE as u64 => {
                self.write_multipart(&key, digest.size, chunks).await
            }
            Body::Stream(chunks) => {
                // At most one part: gathered (bounded by PART_SIZE) and sent in one PUT.
                let parts: Vec<Bytes> = chunks.try_collect().await?;
                let sent: u64 = parts.iter().map(|b| b.len() as u64).sum();
                if sent != digest.size {
                    return Err(Error::Internal(format!(
                        "PUT {key}: the stream held {sent} bytes, the digest says {}",
                        digest.size
                    )));
                }
                let what = format!("PUT {key}");
                self.call(Op::Put, &what, self.store.put(&self.path(&key), PutPayload::from_iter(parts))).await?;
                Ok(())
            }
        }
    }

    async fn get_action(&self, instance: &str, action: &Digest) -> Result<Option<Bytes>> {
        let key = Self::ac_key(instance, action);
        let what = format!("GET {key}");
        let got = async {
            let r = self.store.get(&self.path(&key)).await?;
            r.bytes().await
        };
        let found = self.call(Op::Get, &what, got).await?;
        if found.is_some() {
            self.note_use(key);
        }
        Ok(found)
    }

    async fn put_action(&self, instance: &str, action: &Digest, result: Bytes) -> Result<()> {
        let key = Self::ac_key(instance, action);
        let what = format!("PUT {key}");
        self.call(Op::Put, &what, self.store.put(&self.path(&key), PutPayload::from(result))).await?;
        Ok(())
    }

    fn calls(&self) -> Vec<(&'static str, u64)> {
        self.counts.snapshot().into_iter().map(|(op, n)| (op.name(), n)).collect()
    }

    fn note_used(&self, used: super::tier::Used<'_>) {
        self.note_local(used);
    }

    fn uses_dropped(&self) -> u64 {
        self.uses.dropped()
    }

    async fn finish(&self) {
        self.flush_at_stop().await;
    }
}
