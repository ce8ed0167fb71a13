//! The artifact bucket of one app, `BASE/APP/` (`s3://`, `gs://`, `az://`, `https://`, `file://`), through the
//! `object_store` crate:
//!
//! ```text
//! BASE/APP/releases/VERSION.tar.zst (+ .minisig)
//! BASE/APP/channels/CHANNEL.json (+ .minisig)
//! BASE/APP/reports/HOST.json            (each host's last word, see `rollout`)
//! BASE/APP/failures/SEQUENCE/HOST.json  (a host failed the release of that manifest, see `rollout`)
//! ```
//!
//! Polls are conditional (`If-None-Match` with the last ETag), so an idle poll is one small request answered
//! `304`. Downloads stream to `STATE_DIR/APP/downloads/`, resume with a range request after a failure, never take
//! more bytes than the manifest's size, and are checked against its sha256 before anything is unpacked.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, ObjectStoreScheme, RetryConfig};
use sha2::{Digest, Sha256};

use super::error::{Mismatch, Redacted, SourceError};
use crate::base::digest::{sha256_file, sha256_prefix};
use crate::config::{AppConfig, DownloadPolicy};

/// Largest manifest or signature we read: they are a few hundred bytes.
const MAX_SMALL: u64 = 64 << 10;
/// A small request (manifest, signature) that takes longer than this has failed.
const SMALL_TIMEOUT: Duration = Duration::from_secs(20);
/// `publish` reading an object: no data for this long fails it.
const STALL: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Source {
    url: String,
    store: Arc<dyn ObjectStore>,
    prefix: ObjPath,
    policy: DownloadPolicy,
}

/// Per-source connection settings (from the app's config, or `publish`'s flags).
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub allow_http: bool,
    pub download: DownloadPolicy,
}

impl Options {
    pub fn of(cfg: &AppConfig) -> Options {
        Options {
            endpoint: cfg.endpoint.clone(),
            region: cfg.region.clone(),
            allow_http: cfg.allow_http,
            download: cfg.download.clone(),
        }
    }
}

/// An object found by [`Source::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Relative to `BASE/APP/`.
    pub rel: String,
    pub size: u64,
    pub etag: Option<String>,
    /// Unix seconds, by the store's clock.
    pub modified: i64,
}

/// What a conditional fetch found.
#[derive(Debug)]
pub enum Fetched {
    NotModified,
    Missing,
    Body { bytes: Bytes, etag: Option<String> },
}

impl Source {
    /// Opens `url` (the app's `BASE/APP`). Credentials come from the standard environment of each store
    /// (`AWS_*`, `GOOGLE_*`, `AZURE_*`) and, for S3, the instance's metadata service.
    pub fn open(url: &str, opts: &Options) -> Result<Source, SourceError> {
        let shown = || crate::base::redact::url(url);
        crate::config::no_credentials(url).map_err(|source| SourceError::Credentials { url: shown(), source })?;
        if let Some(e) = &opts.endpoint {
            crate::config::no_credentials(e)
                .map_err(|source| SourceError::EndpointCredentials { url: shown(), source })?;
        }
        let parsed = url::Url::parse(url).map_err(|source| SourceError::NotAUrl { url: shown(), source })?;
        let (scheme, prefix) = ObjectStoreScheme::parse(&parsed)
            .map_err(|e| SourceError::Unsupported { url: shown(), source: Redacted::text(e) })?;
        let mut client = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            // Downloads are bounded by our own stall timer instead: a large artifact may take long, but never
            // silently.
            .with_timeout_disabled();
        if opts.allow_http {
            client = client.with_allow_http(true);
        }
        let retry = RetryConfig { max_retries: 2, retry_timeout: Duration::from_secs(15), ..Default::default() };
        let connector = SameOriginRedirects;
        let built: object_store::Result<Arc<dyn ObjectStore>> = match scheme {
            ObjectStoreScheme::Local => Ok(Arc::new(object_store::local::LocalFileSystem::new())),
            ObjectStoreScheme::AmazonS3 => {
                let mut b = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url)
                    .with_client_options(client)
                    .with_retry(retry)
                    .with_http_connector(connector)
                    .with_allow_http(opts.allow_http);
                if let Some(r) = &opts.region {
                    b = b.with_region(r);
                }
                if let Some(e) = &opts.endpoint {
                    b = b.with_endpoint(e).with_virtual_hosted_style_request(false);
                }
                b.build().map(|s| Arc::new(s) as _)
            }
            ObjectStoreScheme::GoogleCloudStorage => object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(url)
                .with_client_options(client)
                .with_retry(retry)
                .with_http_connector(connector)
                .build()
                .map(|s| Arc::new(s) as _),
            ObjectStoreScheme::MicrosoftAzure => {
                let mut b = object_store::azure::MicrosoftAzureBuilder::from_env()
                    .with_url(url)
                    .with_client_options(client)
                    .with_retry(retry)
                    .with_http_connector(connector)
                    .with_allow_http(opts.allow_http);
                if let Some(e) = &opts.endpoint {
                    b = b.with_endpoint(e.clone());
                }
                b.build().map(|s| Arc::new(s) as _)
            }
            ObjectStoreScheme::Http => {
                if parsed.scheme() == "http" && !opts.allow_http {
                    return Err(SourceError::PlainHttp { url: shown() });
                }
                object_store::http::HttpBuilder::new()
                    .with_url(&parsed[..url::Position::BeforePath])
                    .with_client_options(client)
                    .with_retry(retry)
                    .with_http_connector(connector)
                    .build()
                    .map(|s| Arc::new(s) as _)
            }
            other => return Err(SourceError::UnsupportedScheme { url: shown(), scheme: format!("{other:?}") }),
        };
        let store = built.map_err(|e| SourceError::Client { url: shown(), source: Redacted::text(e) })?;
        // Only ever shown redacted (it carries no credentials, as checked above; this is the second line).
        let shown = crate::base::redact::url(url.trim_end_matches('/'));
        Ok(Source { url: shown, store, prefix, policy: opts.download.clone() })
    }

    fn key(&self, rel: &str) -> ObjPath {
        rel.split('/').fold(self.prefix.clone(), |p, part| p.clone().join(part))
    }

    pub fn describe(&self, rel: &str) -> String {
        format!("{}/{rel}", self.url)
    }

    /// A request about `rel` failed; `e` (the store's error, often with URLs in it) is kept redacted.
    fn failed(&self, rel: &str, e: &dyn std::error::Error) -> SourceError {
        SourceError::Request { at: self.describe(rel), source: Redacted::chain(e) }
    }

    /// A local file of a download or an upload of `rel` failed.
    fn io(&self, rel: &str, action: &'static str, path: &Path, source: std::io::Error) -> SourceError {
        SourceError::Io { at: self.describe(rel), action, path: path.to_owned(), source }
    }

    /// A small object (manifest, signature), conditionally on `etag`.
    pub async fn fetch_small(&self, rel: &str, etag: Option<&str>) -> Result<Fetched, SourceError> {
        let opts = GetOptions { if_none_match: etag.map(str::to_owned), ..Default::default() };
        let get = async {
            match self.store.get_opts(&self.key(rel), opts).await {
                Ok(r) => {
                    if r.meta.size > MAX_SMALL {
                        return Err(SourceError::TooLarge {
                            at: self.describe(rel),
                            size: r.meta.size,
                            max: MAX_SMALL,
                        });
                    }
                    let etag = r.meta.e_tag.clone();
                    let bytes = r.bytes().await.map_err(|e| self.failed(rel, &e))?;
                    if bytes.len() as u64 > MAX_SMALL {
                        return Err(SourceError::LargerThanAnnounced { at: self.describe(rel) });
                    }
                    Ok(Fetched::Body { bytes, etag })
                }
                Err(object_store::Error::NotModified { .. }) => Ok(Fetched::NotModified),
                Err(object_store::Error::NotFound { .. }) => Ok(Fetched::Missing),
                Err(e) => Err(self.failed(rel, &e)),
            }
        };
        tokio::time::timeout(SMALL_TIMEOUT, get).await.unwrap_or_else(|_| {
            Err(SourceError::NoAnswer { at: self.describe(rel), within: Some(SMALL_TIMEOUT.as_secs()) })
        })
    }

    /// Downloads `rel` into `dir` as `SHA256.tar.zst`, resuming a partial download, retrying with exponential
    /// backoff. Returns the path of a file whose size and sha256 match. `progress` hears (bytes so far, size) as
    /// bytes arrive. File work (hashing what an earlier run left, writing, syncing) runs on the blocking pool:
    /// the async thread only waits, so the watchdog and `STATUS=` never stall behind a disk.
    pub async fn download(
        &self,
        rel: &str,
        dir: &Path,
        sha256: &str,
        size: u64,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<PathBuf, SourceError> {
        let d = dir.to_owned();
        blocking(move || crate::base::trust::private_dir(&d, None).map_err(|e| format!("{e:#}")))
            .await
            .map_err(|e| SourceError::local(&self.describe(rel), e))?;
        let done = dir.join(format!("{sha256}.tar.zst"));
        let part = dir.join(format!("{sha256}.tar.zst.part"));
        let (d, want) = (done.clone(), sha256.to_owned());
        let have_done = blocking(move || {
            if std::fs::symlink_metadata(&d).is_err() {
                return Ok(false);
            }
            if sha256_file(&d).is_ok_and(|(h, n)| n == size && h == want) {
                return Ok(true);
            }
            let _ = std::fs::remove_file(&d);
            Ok(false)
        })
        .await
        .unwrap_or(false);
        if have_done {
            progress(size, size);
            return Ok(done);
        }
        let p = &self.policy;
        let attempts = async {
            let mut backoff = Duration::from_secs(1);
            let mut attempt = 1;
            loop {
                match self.download_once(rel, &part, sha256, size, progress).await {
                    Ok(()) => return Ok(()),
                    Err(Attempt::Final(e)) => {
                        let _ = tokio::fs::remove_file(&part).await;
                        return Err(e);
                    }
                    Err(Attempt::Again(e)) if attempt >= p.attempts || crate::base::progress::shutting_down() => {
                        return Err(e)
                    }
                    Err(Attempt::Again(e)) => {
                        tracing::warn!(
                            "download of {} failed (attempt {attempt} of {}): {}; retrying in {}s",
                            self.describe(rel),
                            p.attempts,
                            crate::base::chain::text(&e),
                            backoff.as_secs()
                        );
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                        attempt += 1;
                    }
                }
            }
        };
        tokio::time::timeout(p.deadline, attempts)
            .await
            .unwrap_or_else(|_| Err(SourceError::Deadline { at: self.describe(rel), deadline: p.deadline }))?;
        tokio::fs::rename(&part, &done).await.map_err(|e| self.io(rel, "renaming", &part, e))?;
        Ok(done)
    }

    async fn download_once(
        &self,
        rel: &str,
        part: &Path,
        sha256: &str,
        size: u64,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<(), Attempt> {
        use tokio::io::{AsyncSeekExt, AsyncWriteExt};
        let again = |e: SourceError| Attempt::Again(e);
        let io = |what: &'static str, e: std::io::Error| Attempt::Again(self.io(rel, what, part, e));
        // What an earlier attempt left is hashed on the blocking pool (it may be gigabytes).
        let p2 = part.to_owned();
        let (file, mut hasher, mut have) = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
            let file = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&p2)?;
            crate::base::trust::share(&file, None, false)?;
            let (hasher, have) = sha256_prefix(&p2, size)?;
            Ok((file, hasher, have))
        })
        .await
        .map_err(|e| io("opening", std::io::Error::other(Redacted::text(e))))?
        .map_err(|e| io("reading", e))?;
        let mut file = tokio::fs::File::from_std(file);
        if have >= size && size > 0 {
            // A complete (or overlong) part from an earlier run: check it as it is.
            file.set_len(size).await.map_err(|e| io("truncating", e))?;
            have = size;
        }
        progress(have, size);
        if have < size || size == 0 {
            let range = (have > 0).then_some(GetRange::Offset(have));
            let opts = GetOptions { range, ..Default::default() };
            let stall = self.policy.stall;
            let result = tokio::time::timeout(stall, self.store.get_opts(&self.key(rel), opts))
                .await
                .map_err(|_| again(SourceError::NoAnswer { at: self.describe(rel), within: None }))?;
            let result = match result {
                Ok(r) => r,
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(again(SourceError::NotFound { at: self.describe(rel) }))
                }
                Err(e) => return Err(again(self.failed(rel, &e))),
            };
            if result.meta.size != size {
                return Err(Attempt::Final(SourceError::Mismatch {
                    artifact: self.describe(rel),
                    mismatch: Mismatch::Size { held: result.meta.size, size },
                }));
            }
            if result.range.start != have {
                // The server ignored the range: start over.
                file.set_len(0).await.map_err(|e| io("truncating", e))?;
                hasher = Sha256::new();
                have = 0;
            }
            file.seek(std::io::SeekFrom::Start(have)).await.map_err(|e| io("seeking", e))?;
            let mut stream = result.into_stream();
            // Throughput is judged over windows of `stall`: fewer than min_rate × stall bytes in one is too slow.
            let (mut window_start, mut window_bytes) = (tokio::time::Instant::now(), 0u64);
            let window_min = self.policy.min_rate.saturating_mul(stall.as_secs().max(1));
            loop {
                let next = tokio::time::timeout(stall, stream.next())
                    .await
                    .map_err(|_| again(SourceError::Stalled { at: self.describe(rel), silent: stall }))?;
                let Some(chunk) = next else { break };
                let chunk = chunk.map_err(|e| again(self.failed(rel, &e)))?;
                if have.saturating_add(chunk.len() as u64) > size {
                    return Err(Attempt::Final(SourceError::Mismatch {
                        artifact: self.describe(rel),
                        mismatch: Mismatch::Longer { size },
                    }));
                }
                file.write_all(&chunk).await.map_err(|e| io("writing", e))?;
                hasher.update(&chunk);
                have += chunk.len() as u64;
                progress(have, size);
                window_bytes += chunk.len() as u64;
                if window_start.elapsed() >= stall {
                    if window_bytes < window_min {
                        return Err(again(SourceError::TooSlow {
                            at: self.describe(rel),
                            bytes: window_bytes,
                            window: stall,
                            min_rate: self.policy.min_rate,
                        }));
                    }
                    (window_start, window_bytes) = (tokio::time::Instant::now(), 0);
                }
                crate::base::progress::beat();
                if crate::base::progress::shutting_down() {
                    return Err(again(SourceError::Stopped { at: self.describe(rel) }));
                }
            }
        }
        if have != size {
            return Err(again(SourceError::Truncated { at: self.describe(rel), have, size }));
        }
        let actual = hex::encode(hasher.finalize());
        if actual != sha256 {
            return Err(Attempt::Final(SourceError::Mismatch {
                artifact: self.describe(rel),
                mismatch: Mismatch::Digest { actual, expected: sha256.to_owned() },
            }));
        }
        file.flush().await.map_err(|e| io("writing", e))?;
        file.sync_all().await.map_err(|e| io("syncing", e))?;
        Ok(())
    }

    /// Streams an object to `dest` as it is (for `publish`, which hashes what is already there). `None` when
    /// the object does not exist.
    pub async fn download_unverified(&self, rel: &str, dest: &Path) -> Result<Option<PathBuf>, SourceError> {
        let result = match self.store.get_opts(&self.key(rel), GetOptions::default()).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.failed(rel, &e)),
        };
        let mut file = File::create(dest).map_err(|e| self.io(rel, "creating", dest, e))?;
        let mut stream = result.into_stream();
        while let Some(chunk) = tokio::time::timeout(STALL, stream.next())
            .await
            .map_err(|_| SourceError::Stalled { at: self.describe(rel), silent: STALL })?
        {
            let chunk = chunk.map_err(|e| self.failed(rel, &e))?;
            file.write_all(&chunk).map_err(|e| self.io(rel, "writing", dest, e))?;
        }
        Ok(Some(dest.to_owned()))
    }

    /// The objects under the folder `dir` (relative to `BASE/APP/`, not recursing further), at most `max` of
    /// them: one request per thousand objects on S3.
    pub async fn list(&self, dir: &str, max: usize) -> Result<Vec<Listed>, SourceError> {
        let base = self.key(dir);
        let list = async {
            let listed = self.store.list_with_delimiter(Some(&base)).await.map_err(|e| self.failed(dir, &e))?;
            Ok(listed
                .objects
                .into_iter()
                .filter_map(|o| {
                    let name = o.location.filename()?.to_owned();
                    Some(Listed {
                        rel: format!("{dir}/{name}"),
                        size: o.size,
                        etag: o.e_tag,
                        modified: o.last_modified.timestamp(),
                    })
                })
                .take(max)
                .collect())
        };
        tokio::time::timeout(SMALL_TIMEOUT * 3, list).await.unwrap_or_else(|_| {
            Err(SourceError::NoAnswer { at: self.describe(dir), within: Some(SMALL_TIMEOUT.as_secs() * 3) })
        })
    }

    pub async fn put(&self, rel: &str, bytes: Bytes) -> Result<(), SourceError> {
        self.store.put(&self.key(rel), bytes.into()).await.map(|_| ()).map_err(|e| self.failed(rel, &e))
    }

    /// Uploads a file in parts (large artifacts never sit in memory whole).
    pub async fn put_file(&self, rel: &str, path: &Path) -> Result<(), SourceError> {
        use tokio::io::AsyncWriteExt;
        // The writer's errors are the store's, inside an io::Error whose message is the store's message.
        let upload = |e: std::io::Error| SourceError::Request { at: self.describe(rel), source: Redacted::text(e) };
        let mut w = object_store::buffered::BufWriter::new(self.store.clone(), self.key(rel));
        let mut f = File::open(path).map_err(|e| self.io(rel, "opening", path, e))?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|e| self.io(rel, "reading", path, e))?;
            if n == 0 {
                break;
            }
            w.write_all(&buf[..n]).await.map_err(upload)?;
        }
        w.shutdown().await.map_err(upload)
    }
}

/// An HTTP client for `object_store` that follows a redirect only to the same origin (scheme, host and port): a
/// bucket endpoint that redirects elsewhere would otherwise get the request's headers, session token included,
/// sent to another host. A redirect to elsewhere is returned as it is, and fails the request with its status.
/// The other settings follow the options object_store passes (plain http is allowed where they allow it: the
/// instance metadata service, or a source with `allow_http`).
#[derive(Debug, Clone, Copy)]
struct SameOriginRedirects;

impl object_store::client::HttpConnector for SameOriginRedirects {
    fn connect(&self, options: &ClientOptions) -> object_store::Result<object_store::client::HttpClient> {
        let allow_http =
            options.get_config_value(&object_store::client::ClientConfigKey::AllowHttp).is_some_and(|v| v == "true");
        let policy = reqwest::redirect::Policy::custom(|attempt| {
            let same = attempt.previous().first().is_some_and(|first| first.origin() == attempt.url().origin());
            if same && attempt.previous().len() < 10 {
                attempt.follow()
            } else {
                attempt.stop()
            }
        });
        let client = reqwest::Client::builder()
            .redirect(policy)
            .connect_timeout(Duration::from_secs(5))
            // A daemon on every server keeps few sockets open on the bucket between polls: one idle poll is
            // one request, and a download's parallel ranges close their extra connections when done.
            .pool_max_idle_per_host(2)
            .https_only(!allow_http)
            // Compression would change Content-Length, which object_store relies on.
            .no_gzip()
            .no_brotli()
            .no_zstd()
            .no_deflate()
            .user_agent(concat!("switchback/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| object_store::Error::Generic { store: "HTTP", source: Box::new(e) })?;
        Ok(object_store::client::HttpClient::new(client))
    }
}

/// Runs file work on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, String> + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f).await.map_err(|e| e.to_string())?
}

enum Attempt {
    /// Worth retrying (network, stall, truncated body).
    Again(SourceError),
    /// The artifact itself is wrong: retrying cannot help.
    Final(SourceError),
}
