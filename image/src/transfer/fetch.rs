//! Fetching the images a plan needs from the hosts that hold them, with
//! retries over the sources and progress as it goes.

use std::net::SocketAddr;
use std::time::Instant;

use labspan_proto::image::{ImagePlan, ImageSource};
use labspan_transport::{finish, read_message_within, write_message, TransportError};
use prometheus_client::metrics::counter::Counter;
use quinn::{Connection, Endpoint};

use super::{
    AttemptError, FetchError, Progress, FETCH_ATTEMPTS, MAX_ENVELOPE, PROGRESS_EVERY, RETRY_PAUSE,
};
use crate::endpoint::connect_image;
use crate::msg::{ImageReply, ImageRequest};
use crate::{Expected, Image, ImageStore};

/// Fetches images this host lacks from the hosts that hold them.
pub struct Fetcher {
    endpoint: Endpoint,
    store: ImageStore,
    /// Image bytes received, failed attempts included (for `/metrics`).
    received: Counter,
}

impl Fetcher {
    /// A fetcher into `store` that dials from `endpoint` (see
    /// [`crate::endpoint::image_client_endpoint`]).
    pub fn new(endpoint: Endpoint, store: ImageStore) -> Fetcher {
        Fetcher {
            endpoint,
            store,
            received: Counter::default(),
        }
    }

    /// Image bytes this fetcher has received so far.
    /// The endpoint it dials from (checkpoint copies use it too).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    pub fn received_bytes(&self) -> u64 {
        self.received.get()
    }

    /// Makes `image.name` point at `image.hash` in the store, fetching the
    /// image first when it is not here: each source in turn, then again,
    /// [`FETCH_ATTEMPTS`] attempts in all.
    pub async fn ensure(
        &self,
        image: &ImagePlan,
        progress: &(dyn Fn(Progress) + Sync),
        retrying: &(dyn Fn(&str, &str) + Sync),
    ) -> Result<Image, FetchError> {
        let store_err = |cause| FetchError::Store {
            image: image.name.clone(),
            cause,
        };
        if self.store.has(&image.hash) {
            return self
                .store
                .name_hash(&image.name, &image.hash)
                .map_err(store_err);
        }
        if image.sources.is_empty() {
            return Err(FetchError::NoSource {
                image: image.name.clone(),
                hash: image.hash.clone(),
            });
        }
        let mut attempts = Vec::new();
        for n in 0..FETCH_ATTEMPTS {
            let source = &image.sources[n % image.sources.len()];
            if n > 0 {
                tokio::time::sleep(RETRY_PAUSE * n as u32).await;
            }
            match self.fetch_from(image, source, progress).await {
                Ok(img) => return Ok(img),
                Err(e) => {
                    let why = format!("from host {} ({}): {e}", source.host, source.addr);
                    tracing::warn!(
                        image = image.name,
                        attempt = n + 1,
                        error = why,
                        "image fetch failed"
                    );
                    retrying(&source.host, &why);
                    attempts.push(why);
                }
            }
        }
        Err(FetchError::Exhausted {
            image: image.name.clone(),
            attempts,
        })
    }

    /// One attempt from one source.
    async fn fetch_from(
        &self,
        image: &ImagePlan,
        source: &ImageSource,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Image, AttemptError> {
        let addr: SocketAddr = source
            .addr
            .parse()
            .map_err(|e| AttemptError::Refused(format!("image address {:?}: {e}", source.addr)))?;
        let conn = connect_image(&self.endpoint, addr).await?;
        let result = self.fetch_on(&conn, image, source, progress).await;
        conn.close(0u32.into(), b"done");
        result
    }

    async fn fetch_on(
        &self,
        conn: &Connection,
        image: &ImagePlan,
        source: &ImageSource,
        progress: &(dyn Fn(Progress) + Sync),
    ) -> Result<Image, AttemptError> {
        let (mut send, mut recv) =
            conn.open_bi()
                .await
                .map_err(|e| TransportError::Connection {
                    peer: conn.remote_address(),
                    cause: e,
                })?;
        write_message(
            &mut send,
            &ImageRequest::Get {
                hash: image.hash.clone(),
            },
        )
        .await?;
        finish(&mut send)?;
        let offer = tokio::time::timeout(
            crate::receive::STALL_TIMEOUT,
            read_message_within(&mut recv, MAX_ENVELOPE),
        )
        .await
        .map_err(|_| AttemptError::Refused("the host did not answer in time".into()))?;
        let digest = match offer? {
            ImageReply::Offer { hash, digest } if hash == image.hash => digest,
            ImageReply::Error(e) => return Err(AttemptError::Refused(e.message)),
            other => {
                return Err(AttemptError::Refused(format!(
                    "unexpected answer {other:?}"
                )))
            }
        };
        let want = Expected {
            name: &image.name,
            hash: &image.hash,
            digest: &image.digest,
        };
        let mut meter = Meter::new(&image.name, &source.host, digest.size(), progress);
        let mut counted = 0;
        let img = self
            .store
            .receive(want, &digest, &mut recv, &mut |bytes| {
                self.received.inc_by(bytes.saturating_sub(counted));
                counted = counted.max(bytes);
                meter.at(bytes);
            })
            .await?;
        meter.done();
        Ok(img)
    }
}

/// Turns byte counts into progress reports, at most one per [`PROGRESS_EVERY`].
struct Meter<'a> {
    image: &'a str,
    from: &'a str,
    total: u64,
    started: Instant,
    last: Instant,
    bytes: u64,
    report: &'a (dyn Fn(Progress) + Sync),
}

impl<'a> Meter<'a> {
    fn new(
        image: &'a str,
        from: &'a str,
        total: u64,
        report: &'a (dyn Fn(Progress) + Sync),
    ) -> Self {
        let now = Instant::now();
        Meter {
            image,
            from,
            total,
            started: now,
            last: now,
            bytes: 0,
            report,
        }
    }

    fn at(&mut self, bytes: u64) {
        self.bytes = bytes;
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = Instant::now();
            self.emit();
        }
    }

    fn done(&mut self) {
        self.bytes = self.total;
        self.emit();
    }

    fn emit(&self) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-6);
        (self.report)(Progress {
            image: self.image.to_string(),
            from: self.from.to_string(),
            bytes: self.bytes,
            total: self.total,
            mib_per_s: self.bytes as f64 / (1024.0 * 1024.0) / secs,
        });
    }
}
