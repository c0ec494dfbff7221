//! The agent's data port: the receiving end of `verge sync push` and the
//! sending end of `verge sync pull`, over HTTP. Transfers are staged on
//! disk chunk by chunk, so a sender that lost its connection (or a
//! receiver that restarted) resumes without resending finished chunks;
//! files land only after their hash is verified.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use verge_client::serve::{json_error, ApiPath, ApiQuery};
use verge_sync::manifest::{check_path, hex, HashIndex, Manifest};
use verge_sync::transfer::{apply, build_bundle, BundleOptions, Offer, Request};
use verge_sync::SyncError;

/// Header carrying a new transfer's id.
pub const TRANSFER_HEADER: &str = "x-verge-transfer";
/// Largest chunk a sender may upload.
pub const MAX_CHUNK: usize = 4 << 20;
/// Largest offer or request body.
const MAX_MESSAGE: usize = 64 << 20;

/// Where the data port keeps files and state.
#[derive(Clone)]
pub struct DataPort {
    /// Synced trees live under here; remote paths are relative to it.
    pub root: PathBuf,
    /// Transfer staging and change-detection indexes.
    pub state: PathBuf,
    /// Seals staged transfers and remembered offers at rest.
    pub vault: Arc<crate::vault::Vault>,
}

/// An error answer: `{"error":{"code","message"}}`.
struct PortError(StatusCode, &'static str, String);

impl IntoResponse for PortError {
    fn into_response(self) -> Response {
        json_error(self.0, self.1, &self.2)
    }
}

impl From<SyncError> for PortError {
    fn from(e: SyncError) -> Self {
        match e {
            SyncError::Io { .. } => PortError(StatusCode::INTERNAL_SERVER_ERROR, "io", e.to_string()),
            _ => PortError(StatusCode::BAD_REQUEST, "bad_data", e.to_string()),
        }
    }
}

fn bad(message: impl Into<String>) -> PortError {
    PortError(StatusCode::BAD_REQUEST, "bad_request", message.into())
}

type PortResult<T> = Result<T, PortError>;

#[derive(Deserialize)]
struct PathQuery {
    path: String,
    #[serde(default)]
    mirror: bool,
}

#[derive(Deserialize)]
struct CommitQuery {
    chunks: u32,
    blake3: String,
}

impl DataPort {
    /// The HTTP routes.
    pub fn router(self) -> Router {
        Router::new()
            .route("/sync/v1/offer", post(offer))
            .route("/sync/v1/transfers/{id}", get(status))
            .route("/sync/v1/transfers/{id}/chunks/{n}", put(chunk))
            .route("/sync/v1/transfers/{id}/commit", post(commit))
            .route("/sync/v1/pull/offer", post(pull_offer))
            .route("/sync/v1/pull/bundle", post(pull_bundle))
            .layer(DefaultBodyLimit::max(MAX_MESSAGE))
            .with_state(Arc::new(self))
    }

    /// The tree a remote path names.
    fn tree(&self, rel: &str) -> PortResult<PathBuf> {
        check_path(rel).map_err(|e| bad(e.to_string()))?;
        Ok(self.root.join(rel))
    }

    /// Where the last offer applied from `sender` to `rel` is kept.
    fn remembered_file(&self, sender: &str, rel: &str) -> PathBuf {
        self.state.join(format!("remembered-{}.offer", hex(&verge_sync::manifest::hash(format!("{sender}\0{rel}").as_bytes()))))
    }

    fn index_file(&self, rel: &str) -> PathBuf {
        self.state.join(format!("index-{}.json", hex(&verge_sync::manifest::hash(rel.as_bytes()))))
    }

    /// Writes sync state through the vault (sealed when encryption is on).
    fn keep(&self, path: &Path, bytes: &[u8]) -> Result<(), SyncError> {
        self.vault.write(path, bytes).map_err(|e| SyncError::io(format!("writing {}", path.display()), e))
    }

    /// Reads sync state written by [`DataPort::keep`].
    fn recall(&self, path: &Path) -> Result<Vec<u8>, SyncError> {
        self.vault.read(path).map_err(|e| SyncError::io(format!("reading {}", path.display()), e))
    }

    fn staging(&self, id: &str) -> PortResult<PathBuf> {
        if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(format!("unknown transfer {id:?}")));
        }
        let dir = self.state.join("staging").join(id);
        if !dir.is_dir() {
            return Err(PortError(StatusCode::NOT_FOUND, "not_found", format!("no transfer {id}")));
        }
        Ok(dir)
    }

    /// Scans a tree and lets `then` use its change-detection index (hashes
    /// and chunk lists of unchanged files) before the index is saved.
    fn scan<T>(
        &self,
        rel: &str,
        tree: &Path,
        then: impl FnOnce(&Manifest, &mut HashIndex) -> Result<T, SyncError>,
    ) -> Result<T, SyncError> {
        let index_file = self.index_file(rel);
        let mut index = HashIndex::load(&index_file);
        let m = Manifest::scan(tree, Some(&mut index))?;
        let out = then(&m, &mut index)?;
        std::fs::create_dir_all(&self.state).map_err(|e| SyncError::io("creating the sync state directory", e))?;
        index.save(&index_file)?;
        Ok(out)
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> PortResult<T> + Send + 'static) -> PortResult<T> {
    tokio::task::spawn_blocking(f).await.map_err(|e| PortError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
}

/// Step 1 of a push: takes the sender's offer, answers with the request
/// and a transfer id, and stages both for the chunks that follow.
async fn offer(State(port): State<Arc<DataPort>>, ApiQuery(q): ApiQuery<PathQuery>, body: Bytes) -> PortResult<Response> {
    blocking(move || {
        let tree = port.tree(&q.path)?;
        let remembered = |o: &verge_sync::transfer::OfferOptions| {
            port.recall(&port.remembered_file(&o.sender, &q.path)).ok().and_then(|b| Offer::decode(&b).ok())
        };
        let offer = Offer::decode_since(&body, remembered)?.ok_or_else(|| {
            PortError(
                StatusCode::CONFLICT,
                "need_full_offer",
                "this node does not remember the state the offer builds on; send the full offer".into(),
            )
        })?;
        let request = port.scan(&q.path, &tree, |have, index| Request::build(&offer, &tree, have, Some(index)))?;
        let wire = request.encode()?;
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).map_err(|e| PortError(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
        let id = hex(&raw);
        let dir = port.state.join("staging").join(&id);
        std::fs::create_dir_all(&dir).map_err(|e| SyncError::io(format!("creating {}", dir.display()), e))?;
        port.keep(&dir.join("offer"), &offer.encode()?)?;
        port.keep(&dir.join("request"), &wire)?;
        port.keep(&dir.join("path"), q.path.as_bytes())?;
        let mut headers = HeaderMap::new();
        headers.insert(TRANSFER_HEADER, HeaderValue::from_str(&id).map_err(|e| bad(e.to_string()))?);
        Ok((headers, wire).into_response())
    })
    .await
}

/// The chunks of a transfer already staged, so a sender can resume.
async fn status(State(port): State<Arc<DataPort>>, ApiPath(id): ApiPath<String>) -> PortResult<Json<serde_json::Value>> {
    let dir = port.staging(&id)?;
    let mut chunks: Vec<u32> = std::fs::read_dir(&dir)
        .map_err(|e| SyncError::io(format!("listing {}", dir.display()), e))?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("chunk-")?.parse().ok())
        .collect();
    chunks.sort_unstable();
    Ok(Json(serde_json::json!({"id": id, "chunks": chunks})))
}

/// Stages one chunk of the bundle.
async fn chunk(State(port): State<Arc<DataPort>>, ApiPath((id, n)): ApiPath<(String, u32)>, body: Bytes) -> PortResult<StatusCode> {
    if body.len() > MAX_CHUNK {
        return Err(PortError(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("chunk of {} bytes exceeds {MAX_CHUNK}", body.len())));
    }
    let dir = port.staging(&id)?;
    blocking(move || Ok(port.keep(&dir.join(format!("chunk-{n}")), &body)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Assembles the staged chunks, checks the bundle's hash, and applies it.
async fn commit(
    State(port): State<Arc<DataPort>>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<CommitQuery>,
) -> PortResult<Json<serde_json::Value>> {
    let dir = port.staging(&id)?;
    blocking(move || {
        let read = |name: &str| port.recall(&dir.join(name));
        let rel = String::from_utf8(read("path")?).map_err(|_| bad("staged path is not UTF-8"))?;
        let tree = port.tree(&rel)?;
        let offer = Offer::decode(&read("offer")?)?;
        let request = Request::decode(&read("request")?, &offer)?;
        if let Some(n) = (0..q.chunks).find(|n| !dir.join(format!("chunk-{n}")).is_file()) {
            return Err(PortError(StatusCode::CONFLICT, "incomplete", format!("chunk {n} of {} is missing", q.chunks)));
        }
        let mut hasher = blake3::Hasher::new();
        hasher.update_reader(StagedChunks::new(&port, &dir, q.chunks)).map_err(|e| SyncError::io("reading the staged chunks", e))?;
        if hex(hasher.finalize().as_bytes()) != q.blake3.to_ascii_lowercase() {
            return Err(bad("the assembled bundle does not match its BLAKE3 hash; resend the chunks"));
        }
        let report = apply(&offer, &request, StagedChunks::new(&port, &dir, q.chunks), &tree)?;
        // Remember what this sender now believes we hold, for its next incremental offer.
        port.keep(&port.remembered_file(&offer.opts.sender, &rel), &read("offer")?)?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(Json(serde_json::to_value(&report).unwrap_or_default()))
    })
    .await
}

/// The staged chunks of a bundle read one after another, each recalled
/// (and unsealed) only when reached: a bundle is never held whole.
struct StagedChunks<'a> {
    port: &'a DataPort,
    dir: &'a Path,
    next: u32,
    count: u32,
    current: std::io::Cursor<Vec<u8>>,
}

impl<'a> StagedChunks<'a> {
    fn new(port: &'a DataPort, dir: &'a Path, count: u32) -> Self {
        StagedChunks { port, dir, next: 0, count, current: std::io::Cursor::new(Vec::new()) }
    }
}

impl std::io::Read for StagedChunks<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            let n = self.current.read(buf)?;
            if n > 0 || buf.is_empty() || self.next >= self.count {
                return Ok(n);
            }
            let chunk = self.port.recall(&self.dir.join(format!("chunk-{}", self.next))).map_err(std::io::Error::other)?;
            self.current = std::io::Cursor::new(chunk);
            self.next += 1;
        }
    }
}

/// Step 1 of a pull: this agent is the sender and offers its tree.
async fn pull_offer(State(port): State<Arc<DataPort>>, ApiQuery(q): ApiQuery<PathQuery>) -> PortResult<Vec<u8>> {
    blocking(move || {
        let tree = port.tree(&q.path)?;
        if !tree.exists() {
            return Err(PortError(StatusCode::NOT_FOUND, "not_found", format!("{} does not exist on this node", q.path)));
        }
        let m = port.scan(&q.path, &tree, |m, _| Ok(m.clone()))?;
        let opts = verge_sync::transfer::OfferOptions { mirror: q.mirror, ..Default::default() };
        Ok(Offer::new(&m, &verge_sync::transfer::NoBases, opts).encode()?)
    })
    .await
}

/// Step 3 of a pull: the puller sends back the offer and its request; the
/// bundle is built from this agent's files into a temporary file and
/// streamed from there, never held in memory.
async fn pull_bundle(State(port): State<Arc<DataPort>>, ApiQuery(q): ApiQuery<PathQuery>, body: Bytes) -> PortResult<Response> {
    use tokio::io::AsyncReadExt;
    let spool = blocking(move || {
        let tree = port.tree(&q.path)?;
        let (offer_wire, request_wire) = split_pair(&body)?;
        let offer = Offer::decode(offer_wire)?;
        let request = Request::decode(request_wire, &offer)?;
        let io = |what: &str, e| SyncError::io(format!("{what} the bundle spool"), e);
        let mut spool = tempfile::tempfile().map_err(|e| io("creating", e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, &spool);
        build_bundle(&offer, &request, &tree, &verge_sync::transfer::NoBases, BundleOptions::level(3), &mut w)?;
        w.into_inner().map_err(|e| io("writing", e.into_error()))?;
        std::io::Seek::rewind(&mut spool).map_err(|e| io("reading", e))?;
        Ok(spool)
    })
    .await?;
    let pieces = futures_util::stream::unfold(Some(tokio::fs::File::from_std(spool)), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; 1 << 20];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((Err(e), None)),
        }
    });
    Ok(axum::body::Body::from_stream(pieces).into_response())
}

/// Joins an offer and a request into one body: a varint length, then both.
pub fn join_pair(offer: &[u8], request: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(offer.len() + request.len() + 10);
    verge_sync::wire::put_varint(&mut out, offer.len() as u64);
    out.extend_from_slice(offer);
    out.extend_from_slice(request);
    out
}

fn split_pair(body: &[u8]) -> Result<(&[u8], &[u8]), SyncError> {
    let mut r = verge_sync::wire::Reader::new(body, "pull request");
    let offer = r.bytes(body.len() as u64, "offer")?;
    let rest = r.take(r.remaining())?;
    Ok((offer, rest))
}
