//! `verge sync diff`: runs the whole transfer protocol in memory between
//! two local trees and reports what would cross the wire, checking that
//! every file rebuilds exactly.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Result, SyncError};
use crate::manifest::{join, Hash, Manifest};
use crate::transfer::{apply, build_bundle, held_chunks, unpack, Bases, BundleOptions, FileReport, NoBases, Offer, OfferOptions, Request};

/// A sender whose acknowledged base for each path is the receiver's tree
/// itself (`--known-base`: the sender kept what it sent last time).
pub struct TreeBases {
    root: PathBuf,
    manifest: Manifest,
}

impl TreeBases {
    /// Bases from the tree at `root`.
    pub fn new(root: &Path, manifest: Manifest) -> Self {
        TreeBases { root: root.to_path_buf(), manifest }
    }
}

impl Bases for TreeBases {
    fn known(&self, path: &str) -> Option<Hash> {
        self.manifest.get(path).map(|e| e.hash)
    }
    fn load(&self, path: &str, hash: &Hash) -> Option<Vec<u8>> {
        (self.known(path).as_ref() == Some(hash)).then(|| std::fs::read(join(&self.root, path)).ok()).flatten()
    }
    fn base_path(&self, path: &str, hash: &Hash) -> Option<PathBuf> {
        (self.known(path).as_ref() == Some(hash)).then(|| join(&self.root, path))
    }
    fn acked(&self) -> Vec<(String, Hash)> {
        self.manifest.files.iter().map(|e| (e.path.clone(), e.hash)).collect()
    }
}

/// What a transfer from NEW to a receiver holding OLD would send.
#[derive(Clone, Debug, Serialize)]
pub struct DiffReport {
    /// Every byte on the wire, both directions: offer + request + bundle.
    pub bytes_sent: u64,
    /// The offer (sender → receiver).
    pub offer_bytes: u64,
    /// The request with its signatures (receiver → sender).
    pub request_bytes: u64,
    /// The compressed bundle (sender → receiver).
    pub bundle_bytes: u64,
    /// Bytes sent as literals before compression.
    pub literal_bytes: u64,
    /// Bytes rebuilt from the receiver's copy.
    pub matched_bytes: u64,
    /// Total size of NEW.
    pub new_bytes: u64,
    /// `whole`, `delta`, `base`, `mixed`, or `none` when nothing changed.
    pub strategy: String,
    /// Files in NEW.
    pub files: usize,
    /// Files that would be sent.
    pub changed: usize,
    /// Receiver files NEW lacks.
    pub extraneous: usize,
    /// Per-file detail (with `--verbose`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<Vec<FileReport>>,
}

/// Computes the transfer from `new` to a receiver holding `old`, at zstd
/// `level`; with `known_base` the sender is assumed to still hold OLD.
/// Every file is rebuilt in memory and checked; nothing is written.
pub fn diff(old: &Path, new: &Path, known_base: bool, level: i32, verbose: bool) -> Result<DiffReport> {
    run(old, new, known_base, level, verbose, false)
}

/// Like [`diff`], but writes the result into `old`, as a receiver would,
/// deleting files NEW lacks so `old` becomes an exact copy.
pub fn sync_local(old: &Path, new: &Path, known_base: bool, level: i32) -> Result<DiffReport> {
    run(old, new, known_base, level, false, true)
}

fn run(old: &Path, new: &Path, known_base: bool, level: i32, verbose: bool, write: bool) -> Result<DiffReport> {
    let new_m = Manifest::scan(new, None)?;
    let old_m = Manifest::scan(old, None)?;
    let new_is_file = new_m.files.len() == 1 && new_m.files[0].path.is_empty();
    let old_is_file = old_m.files.len() == 1 && old_m.files[0].path.is_empty();
    if new_is_file != old_is_file && !old_m.files.is_empty() {
        return Err(SyncError::io("OLD and NEW must both be files or both be directories", std::io::ErrorKind::InvalidInput.into()));
    }
    let bases: Box<dyn Bases> = if known_base { Box::new(TreeBases::new(old, old_m.clone())) } else { Box::new(NoBases) };
    let mut offer = Offer::new(&new_m, bases.as_ref(), OfferOptions { mirror: write, ..OfferOptions::default() });
    if known_base {
        offer = offer.with_chunks(new)?;
    }
    // With a known base both ends remember the last sync (OLD), so the
    // offer carries only the changes since.
    let remembered = known_base.then(|| Offer::new(&old_m, &NoBases, OfferOptions::default()));
    let offer_wire = offer.encode_since(&bases.acked())?;
    let offer_rx = Offer::decode_since(&offer_wire, |_| remembered)?
        .ok_or_else(|| SyncError::corrupt("offer", "the incremental offer does not match the remembered state"))?;
    let request = Request::build(&offer_rx, old, &old_m, None)?;
    let request_wire = request.encode()?;
    let request_tx = Request::decode(&request_wire, &offer)?;
    let mut bundle = Vec::new();
    let reports = build_bundle(&offer, &request_tx, new, bases.as_ref(), BundleOptions::level(level), &mut bundle)?;
    if write {
        let applied = apply(&offer_rx, &request, &bundle[..], old)?;
        if let Some((path, why)) = applied.failed.into_iter().next() {
            return Err(SyncError::io(format!("{path}: {why}"), std::io::ErrorKind::InvalidData.into()));
        }
    } else {
        let mut failures = Vec::new();
        let chunks = held_chunks(&request, old, Some(&old_m))?;
        unpack(&offer_rx, &request, &bundle[..])?.rebuild(
            &offer_rx,
            &request,
            old,
            |c| chunks.read(old, c),
            |i, rebuilt| {
                if let Err(e) = rebuilt.and_then(|c| c.write_checked(&offer_rx.files[i].entry, &mut std::io::sink())) {
                    failures.push(e);
                }
            },
        )?;
        if let Some(e) = failures.into_iter().next() {
            return Err(e);
        }
    }
    let kinds: std::collections::BTreeSet<&str> = reports.iter().map(|r| r.strategy.as_str()).collect();
    let strategy = match kinds.len() {
        0 => "none".to_string(),
        1 => kinds.into_iter().collect(),
        _ => "mixed".to_string(),
    };
    Ok(DiffReport {
        bytes_sent: (offer_wire.len() + request_wire.len() + bundle.len()) as u64,
        offer_bytes: offer_wire.len() as u64,
        request_bytes: request_wire.len() as u64,
        bundle_bytes: bundle.len() as u64,
        literal_bytes: reports.iter().map(|r| r.literal_bytes).sum(),
        matched_bytes: reports.iter().map(|r| r.matched_bytes).sum(),
        new_bytes: new_m.total_bytes(),
        strategy,
        files: new_m.files.len(),
        changed: reports.len(),
        extraneous: request.extraneous.len(),
        detail: verbose.then_some(reports),
    })
}
