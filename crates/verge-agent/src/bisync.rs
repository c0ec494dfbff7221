//! Bidirectional sync between a local tree and a node: what changed on one
//! side only flows to the other, deletions included, and files both sides
//! changed since the last sync are settled by a conflict strategy (with a
//! three-way merge against the version both held last time).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;
use verge_client::{ClientError, Method};
use verge_sync::bisync::{plan, Action};
use verge_sync::conflict::{resolve, side_by_side_name, Hlc, Resolution, Side, Strategy, VersionVector};
use verge_sync::fsio::write_atomic_with;
use verge_sync::manifest::{join, Hash, Manifest};
use verge_sync::signature::Signature;
use verge_sync::store::BaseStore;
use verge_sync::transfer::{set_metadata, unpack, Bases, Need, Offer, Request};
use verge_sync::SyncError;

use crate::dataport::join_pair;
use crate::syncclient::{blocking, download, encode_query, push, retrying, Peer, PushOptions, PushReport, SyncClientError};

/// What a bidirectional sync did.
#[derive(Clone, Debug, Serialize)]
pub struct BisyncReport {
    /// Files copied from the node.
    pub pulled: Vec<String>,
    /// Local files removed because the node deleted them.
    pub deleted_local: Vec<String>,
    /// Files both sides changed, with how each was settled.
    pub conflicts: Vec<(String, String)>,
    /// The push of the settled local tree to the node.
    pub push: PushReport,
}

fn side<'a>(data: &'a [u8], mtime: i64, node: &str) -> Side<'a> {
    let mut vv = VersionVector::default();
    vv.bump(node);
    Side { data, stamp: Hlc { wall_ms: mtime.max(0) as u64 * 1000, counter: 0, node: node.to_string() }, vv }
}

/// Syncs the tree at `local` and `remote_path` on the agent at `addr` both
/// ways. `opts.bases_dir` must be set: it holds the state of the last sync.
/// `remote_name` names the node in side-by-side conflict files.
pub async fn bisync(
    peer_port: &Peer,
    local: &Path,
    remote_path: &str,
    remote_name: &str,
    conflict: Strategy,
    opts: &PushOptions,
) -> Result<BisyncReport, SyncClientError> {
    let deadline = Instant::now() + opts.retry_for;
    let bases_dir = opts
        .bases_dir
        .clone()
        .ok_or_else(|| SyncClientError::GaveUp(Duration::ZERO, "bidirectional sync needs a state directory".into()))?;
    let api = peer_port.api();
    let addr = &peer_port.addr;
    let q = format!("?path={}", encode_query(remote_path));
    let offer_url = format!("/sync/v1/pull/offer{q}");
    let offer_wire = match retrying(deadline, || api.call_bytes(Method::POST, &offer_url, Vec::new(), "")).await {
        Ok((w, _)) => w,
        Err(SyncClientError::Remote(ClientError::Api { status: 404, .. })) => Offer::default().encode()?,
        Err(e) => return Err(e),
    };
    let remote = Offer::decode(&offer_wire)?;
    let (local_owned, peer, remote_c) = (local.to_path_buf(), format!("{addr}:{remote_path}"), remote.clone());
    let (mine, base, steps, request) = blocking(move || {
        let mine = Manifest::scan(&local_owned, None)?;
        let base: BTreeMap<String, Hash> = BaseStore::open(&bases_dir, &peer)?.acked().into_iter().collect();
        let here = mine.files.iter().map(|e| (e.path.clone(), e.hash)).collect();
        let there = remote_c.files.iter().map(|f| (f.entry.path.clone(), f.entry.hash)).collect();
        let steps = plan(&here, &there, &base);
        // Fetch what the node changed, and its side of every conflict, as deltas against our copies.
        let mut needs = Vec::new();
        for (path, action) in &steps {
            if let (Action::Pull | Action::Conflict, Ok(i)) = (action, remote_c.files.binary_search_by(|f| f.entry.path.as_str().cmp(path)))
            {
                let need = match mine.get(path) {
                    Some(_) => Need::Delta(Signature::of_file(&join(&local_owned, path))?),
                    None => Need::Whole,
                };
                needs.push((i, need));
            }
        }
        needs.sort_by_key(|(i, _)| *i);
        Ok((mine, base, steps, Request { needs, ..Request::default() }))
    })
    .await?;
    let bundle = if request.needs.is_empty() {
        None
    } else {
        let body = join_pair(&offer_wire, &request.encode()?);
        Some(download(&api, deadline, &format!("/sync/v1/pull/bundle{q}"), body).await?)
    };
    let (local_owned, bases_dir, peer, remote_name) =
        (local.to_path_buf(), opts.bases_dir.clone(), format!("{addr}:{remote_path}"), remote_name.to_string());
    let (pulled, deleted_local, conflicts) = blocking(move || {
        let bases = bases_dir.map(|d| BaseStore::open(&d, &peer)).transpose()?;
        let action: BTreeMap<&str, Action> = steps.iter().map(|(p, a)| (p.as_str(), *a)).collect();
        let (mut pulled, mut conflicts, mut failure) = (Vec::new(), Vec::new(), None);
        if let Some(bundle) = bundle {
            unpack(&remote, &request, std::io::BufReader::with_capacity(1 << 20, bundle))?.rebuild(
                &remote,
                &request,
                &local_owned,
                |_| None,
                |i, content| {
                    let e = &remote.files[i].entry;
                    let target = join(&local_owned, &e.path);
                    let done = content.and_then(|c| match action.get(e.path.as_str()) {
                        Some(Action::Pull) => {
                            if let Some(parent) = target.parent() {
                                std::fs::create_dir_all(parent)
                                    .map_err(|err| SyncError::io(format!("creating {}", parent.display()), err))?;
                            }
                            write_atomic_with(&target, |w| c.write_checked(e, w))?;
                            set_metadata(&target, e)?;
                            pulled.push(e.path.clone());
                            Ok(())
                        }
                        _ => {
                            let mut theirs = Vec::new();
                            c.write_checked(e, &mut theirs)?;
                            let ours = read(&local_owned, &e.path)?;
                            let common = base.get(&e.path).and_then(|h| bases.as_ref()?.load(&e.path, h));
                            let ours_entry = mine.get(&e.path).map_or(0, |m| m.mtime);
                            let decision = resolve(
                                conflict,
                                common.as_deref(),
                                &side(&theirs, e.mtime, &remote_name),
                                &side(&ours, ours_entry, "local"),
                            );
                            let (write_to, data): (Option<String>, &[u8]) = match &decision {
                                Resolution::Source => (Some(e.path.clone()), &theirs),
                                Resolution::Target => (None, &[]),
                                Resolution::Merged { data, .. } => (Some(e.path.clone()), data),
                                Resolution::Both => (Some(side_by_side_name(&e.path, &remote_name)), &theirs),
                            };
                            if let Some(rel) = write_to {
                                verge_sync::fsio::write_atomic(&join(&local_owned, &rel), data)?;
                            }
                            let how = match decision {
                                Resolution::Source => "theirs",
                                Resolution::Target => "ours",
                                Resolution::Merged { clean: true, .. } => "merged",
                                Resolution::Merged { clean: false, .. } => "merged with conflict markers",
                                Resolution::Both => "both kept",
                            };
                            conflicts.push((e.path.clone(), how.to_string()));
                            Ok(())
                        }
                    });
                    if let Err(err) = done {
                        failure.get_or_insert(err);
                    }
                },
            )?;
        }
        if let Some(err) = failure {
            return Err(err);
        }
        let mut deleted_local = Vec::new();
        for (path, _) in steps.iter().filter(|(_, a)| *a == Action::DeleteLocal) {
            std::fs::remove_file(join(&local_owned, path)).map_err(|err| SyncError::io(format!("removing {path}"), err))?;
            deleted_local.push(path.clone());
        }
        Ok((pulled, deleted_local, conflicts))
    })
    .await?;
    // The local tree is now the settled state: push it, deletions included.
    let push_opts = PushOptions { mirror: true, conflict: Strategy::SourceWins, ..opts.clone() };
    let push = push(peer_port, local, remote_path, &push_opts, |_, _| {}).await?;
    Ok(BisyncReport { pulled, deleted_local, conflicts, push })
}

fn read(root: &Path, rel: &str) -> Result<Vec<u8>, SyncError> {
    let path = join(root, rel);
    std::fs::read(&path).map_err(|e| SyncError::io(format!("reading {}", path.display()), e))
}
