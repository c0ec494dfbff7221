//! The other end of the data port: pushes a local tree to an agent, or
//! pulls one from it. Used by `verge sync push|pull|watch` and by agents
//! running sync jobs for the server. Chunks are paced by a token bucket
//! and a lost connection resumes where the receiver's staging left off.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use verge_client::{Api, ClientError, Method};
use verge_sync::bandwidth::TokenBucket;
use verge_sync::conflict::Resolution;
use verge_sync::manifest::{hex, Manifest};
use verge_sync::store::BaseStore;
use verge_sync::transfer::{apply, build_bundle, ApplyReport, Bases, BundleOptions, FileReport, NoBases, Offer, Request};

use crate::dataport::{join_pair, TRANSFER_HEADER};

/// Why a push or pull failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncClientError {
    /// The remote agent answered with an error or could not be reached in time.
    #[error("{0}")]
    Remote(#[from] ClientError),
    /// Local data or the remote's bytes were bad.
    #[error("{0}")]
    Sync(#[from] verge_sync::SyncError),
    /// The remote kept failing past the deadline.
    #[error("gave up after {0:?}: {1}")]
    GaveUp(Duration, String),
}

/// How to push.
#[derive(Clone, Debug)]
pub struct PushOptions {
    /// Delete remote files the local tree lacks.
    pub mirror: bool,
    /// Send every file whole (full sync) instead of deltas.
    pub full: bool,
    /// How the receiver settles files it changed since our last push.
    pub conflict: verge_sync::conflict::Strategy,
    /// Our name, for files the receiver keeps side by side.
    pub sender: String,
    /// zstd level of the bundle.
    pub level: i32,
    /// Upload limit in bytes per second (`None`: unlimited).
    pub limit_bps: Option<u64>,
    /// Bundle chunk size.
    pub chunk_bytes: usize,
    /// How long to keep retrying a remote that went away.
    pub retry_for: Duration,
    /// Where to keep acknowledged versions for known-base deltas (`None`: block deltas only).
    pub bases_dir: Option<PathBuf>,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            mirror: false,
            full: false,
            conflict: verge_sync::conflict::Strategy::default(),
            sender: "verge".into(),
            level: 3,
            limit_bps: None,
            chunk_bytes: 1 << 20,
            retry_for: Duration::from_secs(60),
            bases_dir: None,
        }
    }
}

/// What a push did.
#[derive(Clone, Debug, Serialize)]
pub struct PushReport {
    /// Files in the local tree.
    pub files: usize,
    /// Per-file strategy and sizes for the files sent.
    pub sent: Vec<FileReport>,
    /// Bytes on the wire: offer + request + bundle chunks uploaded.
    pub bytes_sent: u64,
    /// Bundle chunks.
    pub chunks: u32,
    /// Chunks found already staged on the receiver after a reconnect.
    pub chunks_resumed: u32,
    /// Chunk uploads attempted, retries included: `chunks` when nothing
    /// was lost, one more per upload cut off mid-way.
    pub chunk_uploads: u32,
    /// What the receiver wrote and removed.
    pub applied: ApplyReport,
    /// Wall time.
    pub elapsed_ms: u64,
}

/// Runs blocking sync work off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, verge_sync::SyncError> + Send + 'static,
) -> Result<T, SyncClientError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| SyncClientError::GaveUp(Duration::ZERO, e.to_string()))?.map_err(Into::into)
}

/// Percent-encodes a query value.
pub(crate) fn encode_query(v: &str) -> String {
    v.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_./~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// Retries `f` on connection failures (not on answers) until `deadline`.
pub(crate) async fn retrying<T, F, Fut>(deadline: Instant, mut f: F) -> Result<T, SyncClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut wait = Duration::from_millis(50);
    loop {
        match f().await {
            Err(e @ (ClientError::Unreachable { .. } | ClientError::Body(_))) => {
                if Instant::now() + wait > deadline {
                    return Err(SyncClientError::GaveUp(wait, e.to_string()));
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(2));
            }
            other => return other.map_err(Into::into),
        }
    }
}

/// Fetches a bundle into an unnamed temporary file (a fresh one per try),
/// so a large bundle is never held in memory; returns it rewound.
pub(crate) async fn download(api: &Api, deadline: Instant, url: &str, body: Vec<u8>) -> Result<std::fs::File, SyncClientError> {
    let local = |what: &str, e: std::io::Error| ClientError::Request(format!("{what} a bundle spool: {e}"));
    let mut spool = retrying(deadline, || async {
        let spool = tempfile::tempfile().map_err(|e| local("creating", e))?;
        let mut out = tokio::fs::File::from_std(spool.try_clone().map_err(|e| local("opening", e))?);
        api.call_to_writer(Method::POST, url, body.clone(), &mut out).await?;
        Ok(spool)
    })
    .await?;
    std::io::Seek::rewind(&mut spool).map_err(|e| verge_sync::SyncError::io("reading the bundle spool", e))?;
    Ok(spool)
}

/// Another agent's data port: its address and, with TLS, how to verify it
/// (its node identity) and who we are (our certificate).
#[derive(Clone)]
pub struct Peer {
    /// `host:port`.
    pub addr: String,
    /// TLS settings; `None` for a plain-text port.
    pub tls: Option<verge_client::Tls>,
}

impl Peer {
    /// A client for the peer's data port.
    pub fn api(&self) -> Api {
        match &self.tls {
            Some(t) => Api::secure(&self.addr, t.clone()),
            None => Api::new(&format!("http://{}", self.addr)),
        }
    }
}

/// Pushes the tree (or file) at `local` to `remote_path` on the agent
/// behind `peer`; `progress(sent, total)` follows the upload.
pub async fn push(
    peer_port: &Peer,
    local: &Path,
    remote_path: &str,
    opts: &PushOptions,
    progress: impl Fn(u64, u64),
) -> Result<PushReport, SyncClientError> {
    let started = Instant::now();
    let deadline = started + opts.retry_for;
    let api = peer_port.api();
    let peer = format!("{}:{remote_path}", peer_port.addr);
    let offer_opts =
        verge_sync::transfer::OfferOptions { mirror: opts.mirror, full: opts.full, conflict: opts.conflict, sender: opts.sender.clone() };
    let (local_owned, bases_dir) = (local.to_path_buf(), opts.bases_dir.clone());
    let (manifest, offer, bases) = blocking(move || {
        let m = Manifest::scan(&local_owned, None)?;
        let bases = bases_dir.map(|d| BaseStore::open(&d, &peer)).transpose()?;
        let offer = match &bases {
            // Files the receiver never acknowledged carry chunk lists, so it can dedupe them.
            Some(b) => Offer::new(&m, b, offer_opts).with_chunks(&local_owned)?,
            None => Offer::new(&m, &NoBases, offer_opts),
        };
        Ok((m, offer, bases))
    })
    .await?;
    // Incremental: only the changes since the state the receiver last
    // confirmed; a receiver that remembers otherwise asks for the full offer.
    let acked = bases.as_ref().map(|b| b.acked()).unwrap_or_default();
    let path_q = format!("/sync/v1/offer?path={}&mirror={}", encode_query(remote_path), opts.mirror);
    let mut offer_wire = offer.encode_since(&acked)?;
    let mut wire = offer_wire.len() as u64;
    let answer = match retrying(deadline, || api.call_bytes(Method::POST, &path_q, offer_wire.clone(), TRANSFER_HEADER)).await {
        Err(SyncClientError::Remote(ClientError::Api { status: 409, .. })) if !acked.is_empty() => {
            offer_wire = offer.encode()?;
            wire += offer_wire.len() as u64;
            retrying(deadline, || api.call_bytes(Method::POST, &path_q, offer_wire.clone(), TRANSFER_HEADER)).await
        }
        other => other,
    };
    let (request_wire, id) = answer?;
    wire += request_wire.len() as u64;
    let id = id.ok_or_else(|| SyncClientError::GaveUp(Duration::ZERO, "the receiver returned no transfer id".into()))?;
    let request = Request::decode(&request_wire, &offer)?;
    let (local_owned, level) = (local.to_path_buf(), opts.level);
    // The bundle is spooled to an unnamed temporary file and uploaded from
    // there a chunk at a time: a large file is never held in memory.
    let (offer, request, spool, sent, bases, digest) = blocking(move || {
        let io = |what: &str, e| verge_sync::SyncError::io(format!("{what} the bundle spool"), e);
        // The bundle is hashed as it is written: one pass over it.
        let spool = tempfile::tempfile().map_err(|e| io("creating", e))?;
        let (mut hasher, mut file) = (blake3::Hasher::new(), &spool);
        let mut w = std::io::BufWriter::with_capacity(1 << 20, verge_sync::fsio::Tee(&mut hasher, &mut file));
        let sent = build_bundle(
            &offer,
            &request,
            &local_owned,
            bases.as_ref().map_or(&NoBases as &dyn Bases, |b| b),
            BundleOptions::level(level),
            &mut w,
        )?;
        w.into_inner().map_err(|e| io("writing", e.into_error()))?;
        Ok((offer, request, spool, sent, bases, hex(hasher.finalize().as_bytes())))
    })
    .await?;
    let total = spool.metadata().map_err(|e| verge_sync::SyncError::io("reading the bundle spool", e))?.len();
    let chunk_bytes = opts.chunk_bytes.max(1) as u64;
    let count = total.div_ceil(chunk_bytes) as usize;
    let chunk_len = |n: usize| (total - n as u64 * chunk_bytes).min(chunk_bytes);
    let read_chunk = |n: usize| -> Result<Vec<u8>, SyncClientError> {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; chunk_len(n) as usize];
        spool.read_exact_at(&mut buf, n as u64 * chunk_bytes).map_err(|e| verge_sync::SyncError::io("reading the bundle spool", e))?;
        Ok(buf)
    };
    let mut bucket = opts.limit_bps.map(|r| TokenBucket::new(r, (opts.chunk_bytes as u64).min(r.max(1)), 0));
    let (mut uploaded, mut resumed, mut uploads, mut done) = (0u64, 0u32, 0u32, vec![false; count]);
    loop {
        let mut failed = None;
        let pending: Vec<usize> = (0..count).filter(|&n| !done[n]).collect();
        for n in pending {
            let chunk = read_chunk(n)?;
            if let Some(b) = bucket.as_mut() {
                let wait = b.take(chunk.len() as u64, started.elapsed().as_millis() as u64);
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
            uploads += 1;
            let len = chunk.len() as u64;
            match api.call_bytes(Method::PUT, &format!("/sync/v1/transfers/{id}/chunks/{n}"), chunk, "").await {
                Ok(_) => {
                    done[n] = true;
                    uploaded += len;
                    wire += len;
                    progress(uploaded, total);
                }
                Err(e @ (ClientError::Unreachable { .. } | ClientError::Body(_))) => {
                    failed = Some(e);
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let Some(e) = failed else { break };
        if Instant::now() > deadline {
            return Err(SyncClientError::GaveUp(opts.retry_for, e.to_string()));
        }
        // The receiver may have restarted: ask which chunks it already holds.
        let status_url = format!("/sync/v1/transfers/{id}");
        let staged = retrying(deadline, || api.get(&status_url)).await?;
        for n in staged["chunks"].as_array().into_iter().flatten().filter_map(|v| v.as_u64()) {
            let n = n as usize;
            if n < done.len() && !done[n] {
                done[n] = true;
                resumed += 1;
                uploaded += chunk_len(n);
                progress(uploaded, total);
            }
        }
    }
    let commit = format!("/sync/v1/transfers/{id}/commit?chunks={count}&blake3={digest}");
    let answer = retrying(deadline, || api.call(Method::POST, &commit, None)).await?;
    let applied: ApplyReport =
        serde_json::from_value(answer).map_err(|e| SyncClientError::GaveUp(Duration::ZERO, format!("unreadable commit answer: {e}")))?;
    if let Some(mut bases) = bases {
        let local_owned = local.to_path_buf();
        let written: HashSet<String> = applied.written.iter().cloned().collect();
        blocking(move || {
            // The receiver now holds the offered version of every file it wrote
            // or did not need, except where a conflict kept its own version.
            let needed: HashSet<usize> = request.needs.iter().map(|(i, _)| *i).collect();
            let kept_own: HashSet<usize> = request.conflicts.iter().filter(|(_, r)| *r != Resolution::Source).map(|(i, _)| *i).collect();
            let mut confirmed = HashSet::new();
            for (i, f) in offer.files.iter().enumerate() {
                let (rel, h) = (&f.entry.path, &f.entry.hash);
                let holds = if needed.contains(&i) { written.contains(rel) } else { true };
                if !holds || kept_own.contains(&i) {
                    continue;
                }
                confirmed.insert(rel.clone());
                if bases.known(rel).as_ref() == Some(h) {
                    continue;
                }
                bases.acknowledge(rel, h, &verge_sync::manifest::join(&local_owned, rel))?;
            }
            bases.retain(|p| confirmed.contains(p));
            bases.save()
        })
        .await?;
    }
    Ok(PushReport {
        files: manifest.files.len(),
        sent,
        bytes_sent: wire,
        chunks: count as u32,
        chunks_resumed: resumed,
        chunk_uploads: uploads,
        applied,
        elapsed_ms: started.elapsed().as_millis() as u64,
    })
}

/// Pulls `remote_path` from the agent behind `peer` into `local`.
pub async fn pull(peer: &Peer, remote_path: &str, local: &Path, mirror: bool, retry_for: Duration) -> Result<ApplyReport, SyncClientError> {
    let deadline = Instant::now() + retry_for;
    let api = peer.api();
    let q = format!("?path={}&mirror={mirror}", encode_query(remote_path));
    let offer_url = format!("/sync/v1/pull/offer{q}");
    let (offer_wire, _) = retrying(deadline, || api.call_bytes(Method::POST, &offer_url, Vec::new(), "")).await?;
    let offer = Offer::decode(&offer_wire)?;
    let (local_owned, offer_c) = (local.to_path_buf(), offer.clone());
    let request = blocking(move || {
        let have = Manifest::scan(&local_owned, None)?;
        Request::build(&offer_c, &local_owned, &have, None)
    })
    .await?;
    let body = join_pair(&offer_wire, &request.encode()?);
    let bundle = download(&api, deadline, &format!("/sync/v1/pull/bundle{q}"), body).await?;
    let local_owned = local.to_path_buf();
    blocking(move || apply(&offer, &request, std::io::BufReader::with_capacity(1 << 20, bundle), &local_owned)).await
}
