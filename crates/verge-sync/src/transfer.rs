//! The transfer protocol between a sender and a receiver, as pure
//! functions over bytes so it runs the same over HTTP, in a test or in
//! `verge sync diff`:
//!
//! 1. the sender **offers** its tree: paths, sizes, modes, mtimes, content
//!    hashes, and for each path the hash of the version it knows this
//!    receiver last acknowledged;
//! 2. the receiver **requests** what it lacks: a whole file, a delta
//!    against its copy (with that copy's block signature), or a delta
//!    against the acknowledged base when it still has exactly that;
//! 3. the sender answers with one compressed **bundle** of payloads; the
//!    receiver rebuilds each file, checks its hash and writes it atomically.

use std::io::{Read, Write};
use std::path::Path;

use serde::Serialize;

use crate::base;
use crate::cdc::{self, ChunkIndex, ChunkRef};
use crate::conflict::{side_by_side_name, Resolution, Strategy as ConflictStrategy};
use crate::delta;
use crate::error::{Result, SyncError};
use crate::fsio::{sync_dir, write_atomic_with};
use crate::manifest::{check_path, join, Entry, Hash, HashIndex, Manifest, HASH_LEN};
use crate::signature::{Signature, MAX_FILE_LEN};
use crate::wire::{put_bytes, put_varint, read_u8, read_varint, varint_len, Reader};

/// Most entries one offer may list.
const MAX_ENTRIES: u64 = 10_000_000;
/// Largest decompressed offer or request.
const MAX_MESSAGE: u64 = 1 << 30;
/// A delta whose literals exceed this share of the file is sent whole.
pub const WHOLE_THRESHOLD: f64 = 0.9;
/// Most bytes of new content in a bundle's joint known-base frame, which
/// both ends build in memory (with the bases). Files beyond it travel
/// streamed: a large file with a known base as a block delta against the
/// sender's stored copy of that base.
pub const JOINT_MAX: u64 = 64 << 20;

/// The sender's memory of what each path's receiver last acknowledged.
pub trait Bases {
    /// The hash of the version the receiver last acknowledged at `path`.
    fn known(&self, path: &str) -> Option<Hash>;
    /// That version's content, if the sender still has it.
    fn load(&self, path: &str, hash: &Hash) -> Option<Vec<u8>>;
    /// Where that version is stored as a file, so that a base too large to
    /// load whole can be read piece by piece instead.
    fn base_path(&self, _path: &str, _hash: &Hash) -> Option<std::path::PathBuf> {
        None
    }
    /// Every path the receiver acknowledged with its hash, sorted by path:
    /// the state an incremental offer describes changes against.
    fn acked(&self) -> Vec<(String, Hash)> {
        Vec::new()
    }
}

/// A sender that remembers nothing: every change goes by block delta.
pub struct NoBases;

impl Bases for NoBases {
    fn known(&self, _: &str) -> Option<Hash> {
        None
    }
    fn load(&self, _: &str, _: &Hash) -> Option<Vec<u8>> {
        None
    }
}

/// One offered file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferEntry {
    /// The sender's file.
    pub entry: Entry,
    /// The version of this path the sender knows the receiver has.
    pub base: Option<Hash>,
    /// Content-defined chunks, offered for large files the receiver never
    /// acknowledged, so it can ask only for chunks it holds nowhere.
    pub chunks: Vec<ChunkRef>,
}

/// Step 1: the sender's tree.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Offer {
    /// Files, sorted by path.
    pub files: Vec<OfferEntry>,
    /// Directories, sorted.
    pub dirs: Vec<String>,
    /// How the receiver should treat the offer.
    pub opts: OfferOptions,
}

/// The sync mode an offer asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OfferOptions {
    /// Delete receiver files the sender does not have.
    pub mirror: bool,
    /// Full sync: send every file whole, whatever the receiver holds.
    pub full: bool,
    /// What to do when the receiver changed a file since it last
    /// acknowledged the sender's version (a concurrent write).
    pub conflict: ConflictStrategy,
    /// The sender's name, for files kept side by side.
    pub sender: String,
}

const STRATEGIES: [ConflictStrategy; 5] = [
    ConflictStrategy::LatestWins,
    ConflictStrategy::SourceWins,
    ConflictStrategy::TargetWins,
    ConflictStrategy::Merge,
    ConflictStrategy::VersionVector,
];

/// Offer base flags: no known base, the base is the offered version
/// itself (unchanged since acknowledged), or another version whose hash follows.
const BASE_NONE: u8 = 0;
const BASE_SAME: u8 = 1;
const BASE_OTHER: u8 = 2;

fn compress(raw: &[u8], level: i32) -> Result<Vec<u8>> {
    zstd::bulk::compress(raw, level).map_err(|e| SyncError::io("zstd compression", e))
}

/// Compresses an offer or request: they are small next to the data, so
/// the strongest level is worth it up to a megabyte.
fn compress_message(raw: &[u8]) -> Result<Vec<u8>> {
    compress(raw, if raw.len() <= 1 << 20 { 19 } else { 3 })
}

/// Decompresses at most `max` bytes of a zstd stream.
fn decompress(what: &'static str, data: &[u8], max: u64) -> Result<Vec<u8>> {
    let dec = zstd::stream::read::Decoder::new(data).map_err(|e| SyncError::corrupt(what, e.to_string()))?;
    let mut out = Vec::new();
    dec.take(max.saturating_add(1)).read_to_end(&mut out).map_err(|e| SyncError::corrupt(what, e.to_string()))?;
    if out.len() as u64 > max {
        return Err(SyncError::corrupt(what, format!("decompresses beyond {max} bytes")));
    }
    Ok(out)
}

fn put_path(out: &mut Vec<u8>, prev: &str, path: &str) {
    let common = prev.bytes().zip(path.bytes()).take_while(|(a, b)| a == b).count();
    let common = (0..=common).rev().find(|&c| path.is_char_boundary(c)).unwrap_or(0);
    put_varint(out, common as u64);
    put_bytes(out, &path.as_bytes()[common..]);
}

fn read_path(r: &mut Reader<'_>, prev: &str, allow_root: bool) -> Result<String> {
    let common = r.varint_max(prev.len() as u64, "shared path prefix")?;
    let rest = r.string(4096, "path")?;
    let prefix = prev.get(..common).ok_or_else(|| r.error("path prefix splits a character"))?;
    let path = format!("{prefix}{rest}");
    if !(allow_root && path.is_empty()) {
        check_path(&path)?;
    }
    Ok(path)
}

impl Offer {
    /// The offer of tree `m` to a receiver whose acknowledged versions `bases` knows.
    pub fn new(m: &Manifest, bases: &dyn Bases, opts: OfferOptions) -> Self {
        let files = m.files.iter().map(|e| OfferEntry { base: bases.known(&e.path), entry: e.clone(), chunks: Vec::new() }).collect();
        Offer { files, dirs: m.dirs.clone(), opts }
    }

    /// Adds chunk lists (read from the tree at `root`) to the large files
    /// the receiver never acknowledged. Only a sender that remembers
    /// acknowledgements (a real [`Bases`]) should call it: to one that does
    /// not, every file looks new.
    pub fn with_chunks(mut self, root: &Path) -> Result<Self> {
        for f in self.files.iter_mut().filter(|f| f.base.is_none() && f.entry.size >= cdc::MIN_FILE) {
            f.chunks = cdc::chunk_file(&join(root, &f.entry.path))?;
        }
        Ok(self)
    }

    /// The compressed wire form.
    pub fn encode(&self) -> Result<Vec<u8>> {
        self.encode_since(&[])
    }

    /// The compressed wire form of the changes since `acked` (sorted
    /// `(path, hash)`, the state the receiver acknowledged): a digest of
    /// that state, the paths gone since, and only the files that differ.
    /// A receiver that remembers the same state rebuilds the whole offer
    /// ([`Offer::decode_since`]); with `acked` empty this is the full offer.
    pub fn encode_since(&self, acked: &[(String, Hash)]) -> Result<Vec<u8>> {
        let incremental = !acked.is_empty();
        let mut raw = Vec::new();
        raw.push(u8::from(self.opts.mirror) | (u8::from(self.opts.full) << 1) | (u8::from(incremental) << 2));
        raw.push(STRATEGIES.iter().position(|s| *s == self.opts.conflict).unwrap_or(0) as u8);
        put_bytes(&mut raw, self.opts.sender.as_bytes());
        let mut unchanged = std::collections::HashSet::new();
        if incremental {
            raw.extend_from_slice(&state_digest(acked.iter().map(|(p, h)| (p.as_str(), h))));
            let gone: Vec<&str> = acked.iter().map(|(p, _)| p.as_str()).filter(|p| self.get(p).is_none()).collect();
            put_varint(&mut raw, gone.len() as u64);
            let mut prev = "";
            for p in gone {
                put_path(&mut raw, prev, p);
                prev = p;
            }
            unchanged.extend(acked.iter().filter(|(p, h)| self.get(p).is_some_and(|f| f.entry.hash == *h)).map(|(p, _)| p.as_str()));
        }
        put_varint(&mut raw, self.dirs.len() as u64);
        let mut prev = "";
        for d in &self.dirs {
            put_path(&mut raw, prev, d);
            prev = d;
        }
        let listed: Vec<&OfferEntry> = self.files.iter().filter(|f| !unchanged.contains(f.entry.path.as_str())).collect();
        put_varint(&mut raw, listed.len() as u64);
        let mut prev = "";
        for f in listed {
            let e = &f.entry;
            put_path(&mut raw, prev, &e.path);
            prev = &e.path;
            put_varint(&mut raw, e.size);
            raw.extend_from_slice(&e.hash);
            put_varint(&mut raw, u64::from(e.mode));
            put_varint(&mut raw, e.mtime as u64);
            match &f.base {
                Some(b) if *b == e.hash => raw.push(BASE_SAME),
                Some(b) => {
                    raw.push(BASE_OTHER);
                    raw.extend_from_slice(b);
                }
                None => raw.push(BASE_NONE),
            }
            put_varint(&mut raw, f.chunks.len() as u64);
            for c in &f.chunks {
                put_varint(&mut raw, u64::from(c.len));
                raw.extend_from_slice(&c.hash.to_le_bytes());
            }
        }
        compress_message(&raw)
    }

    /// The offered file at `path`.
    pub fn get(&self, path: &str) -> Option<&OfferEntry> {
        self.files.binary_search_by(|f| f.entry.path.as_str().cmp(path)).ok().map(|i| &self.files[i])
    }

    /// Reads a full offer, checking every path and size.
    pub fn decode(data: &[u8]) -> Result<Self> {
        Self::decode_since(data, |_| None)?.ok_or_else(|| SyncError::corrupt("offer", "an incremental offer where a full one was expected"))
    }

    /// Reads a full or incremental offer; an incremental one is rebuilt on
    /// what `remembered` returns for its sender: the last offer this
    /// receiver applied from it. `None` means the receiver's memory does not
    /// match the state the sender describes changes against: it must ask
    /// for the full offer.
    pub fn decode_since(data: &[u8], remembered: impl FnOnce(&OfferOptions) -> Option<Offer>) -> Result<Option<Self>> {
        let raw = decompress("offer", data, MAX_MESSAGE)?;
        let mut r = Reader::new(&raw, "offer");
        let flags = r.u8()?;
        if flags > 7 {
            return Err(r.error(format!("mode flags {flags}")));
        }
        let strategy = r.u8()?;
        let conflict = *STRATEGIES.get(usize::from(strategy)).ok_or_else(|| r.error(format!("conflict strategy {strategy}")))?;
        let sender = r.string(256, "sender")?.to_string();
        let opts = OfferOptions { mirror: flags & 1 != 0, full: flags & 2 != 0, conflict, sender };
        let since = if flags & 4 != 0 {
            let digest = r.array::<HASH_LEN>()?;
            let ngone = r.varint_max(MAX_ENTRIES, "removed count")?;
            let mut gone = std::collections::HashSet::with_capacity(ngone.min(1 << 16));
            let mut prev = String::new();
            for _ in 0..ngone {
                let p = read_path(&mut r, &prev, true)?;
                prev.clone_from(&p);
                gone.insert(p);
            }
            Some((digest, gone))
        } else {
            None
        };
        let ndirs = r.varint_max(MAX_ENTRIES, "directory count")?;
        let mut dirs = Vec::with_capacity(ndirs.min(1 << 16));
        let mut prev = String::new();
        for _ in 0..ndirs {
            let d = read_path(&mut r, &prev, false)?;
            if d <= prev && !dirs.is_empty() {
                return Err(r.error("directories not sorted"));
            }
            prev.clone_from(&d);
            dirs.push(d);
        }
        let nfiles = r.varint_max(MAX_ENTRIES, "file count")?;
        let mut files: Vec<OfferEntry> = Vec::with_capacity(nfiles.min(1 << 16));
        let mut prev = String::new();
        for i in 0..nfiles {
            let path = read_path(&mut r, &prev, nfiles == 1)?;
            if i > 0 && path <= prev {
                return Err(r.error("files not sorted"));
            }
            let size = r.varint()?;
            if size > MAX_FILE_LEN {
                return Err(r.error(format!("{path}: size {size} exceeds {MAX_FILE_LEN}")));
            }
            let hash = r.array::<HASH_LEN>()?;
            let mode = (r.varint()? & 0o7777) as u32;
            let mtime = r.varint()? as i64;
            let base = match r.u8()? {
                BASE_NONE => None,
                BASE_SAME => Some(hash),
                BASE_OTHER => Some(r.array::<HASH_LEN>()?),
                b => return Err(r.error(format!("base flag {b}"))),
            };
            let nchunks = r.varint_max(size / 1024 + 1, "chunk count")?;
            let mut chunks = Vec::with_capacity(nchunks);
            for _ in 0..nchunks {
                let len = r.varint_max(u64::from(u32::MAX), "chunk length")? as u32;
                chunks.push(ChunkRef { len, hash: u64::from_le_bytes(r.array::<8>()?) });
            }
            if !chunks.is_empty() && chunks.iter().map(|c| u64::from(c.len)).sum::<u64>() != size {
                return Err(r.error(format!("{path}: chunks do not add up to its size")));
            }
            prev.clone_from(&path);
            files.push(OfferEntry { entry: Entry { path, size, hash, mode, mtime }, base, chunks });
        }
        r.finish()?;
        let Some((digest, gone)) = since else {
            return Ok(Some(Offer { files, dirs, opts }));
        };
        let Some(old) =
            remembered(&opts).filter(|o| state_digest(o.files.iter().map(|f| (f.entry.path.as_str(), &f.entry.hash))) == digest)
        else {
            return Ok(None);
        };
        let mut merged: std::collections::BTreeMap<String, OfferEntry> = old
            .files
            .iter()
            .filter(|f| !gone.contains(&f.entry.path))
            .map(|f| (f.entry.path.clone(), OfferEntry { entry: f.entry.clone(), base: Some(f.entry.hash), chunks: Vec::new() }))
            .collect();
        for f in files {
            merged.insert(f.entry.path.clone(), f);
        }
        Ok(Some(Offer { files: merged.into_values().collect(), dirs, opts }))
    }
}

/// A digest of a tree state: every `(path, hash)`, in path order.
fn state_digest<'a>(entries: impl Iterator<Item = (&'a str, &'a Hash)>) -> Hash {
    let mut h = blake3::Hasher::new();
    for (p, hash) in entries {
        h.update(p.as_bytes());
        h.update(&[0]);
        h.update(hash);
    }
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(&h.finalize().as_bytes()[..HASH_LEN]);
    out
}

/// What the receiver asks for one offered file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Need {
    /// It has nothing like it: send the whole file.
    Whole,
    /// Send a block delta against its copy, whose signature this is.
    Delta(Signature),
    /// It holds exactly the acknowledged base: send a delta against that.
    Base,
    /// It lacks the file but holds the offered chunks marked true elsewhere
    /// in its tree: send only the others.
    Chunks(Vec<bool>),
}

/// What the receiver does with a file both sides changed, knowing only the
/// two versions' metadata: `latest-wins` compares modification times; with
/// no common base at hand, `merge` and `version-vector` keep both.
fn decide_conflict(strategy: ConflictStrategy, offered: &Entry, mine: &Entry) -> Resolution {
    match strategy {
        ConflictStrategy::SourceWins => Resolution::Source,
        ConflictStrategy::TargetWins => Resolution::Target,
        ConflictStrategy::LatestWins if offered.mtime > mine.mtime => Resolution::Source,
        ConflictStrategy::LatestWins => Resolution::Target,
        ConflictStrategy::Merge | ConflictStrategy::VersionVector => Resolution::Both,
    }
}

/// Step 2: what the receiver lacks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// Offered file index and what it needs, by increasing index.
    pub needs: Vec<(usize, Need)>,
    /// Receiver paths the offer does not list (deleted when mirroring).
    pub extraneous: Vec<String>,
    /// Offered files the receiver changed concurrently, with what it decided.
    pub conflicts: Vec<(usize, Resolution)>,
}

const NEED_WHOLE: u8 = 0;
const NEED_DELTA: u8 = 1;
const NEED_BASE: u8 = 2;
const NEED_CHUNKS: u8 = 3;

impl Request {
    /// The receiver's answer to `offer` for the tree at `root`, whose
    /// current state is `have`; `cache` keeps chunk lists between transfers.
    pub fn build(offer: &Offer, root: &Path, have: &Manifest, mut cache: Option<&mut HashIndex>) -> Result<Self> {
        let mut needs = Vec::new();
        let mut chunk_index: Option<ChunkIndex> = None;
        let mut conflicts = Vec::new();
        for (i, f) in offer.files.iter().enumerate() {
            let mine = have.get(&f.entry.path);
            if offer.opts.full {
                needs.push((i, Need::Whole));
                continue;
            }
            // The receiver holds neither the new version nor the one the
            // sender knows it acknowledged: both sides wrote since.
            if let (Some(mine), Some(base)) = (mine, f.base) {
                if mine.hash != f.entry.hash && mine.hash != base {
                    let decision = decide_conflict(offer.opts.conflict, &f.entry, mine);
                    let keep_target = decision == Resolution::Target;
                    conflicts.push((i, decision));
                    if keep_target {
                        continue;
                    }
                }
            }
            let need = match mine {
                Some(mine) if mine.hash == f.entry.hash => continue,
                Some(mine) if f.base == Some(mine.hash) => Need::Base,
                Some(_) => Need::Delta(Signature::of_file(&join(root, &f.entry.path))?),
                None if f.chunks.is_empty() => Need::Whole,
                None => {
                    let index = match &mut chunk_index {
                        Some(index) => index,
                        None => chunk_index.insert(ChunkIndex::build(root, have, cache.as_deref_mut())?),
                    };
                    let held: Vec<bool> = f.chunks.iter().map(|c| index.has(c)).collect();
                    if held.iter().any(|h| *h) {
                        Need::Chunks(held)
                    } else {
                        Need::Whole
                    }
                }
            };
            needs.push((i, need));
        }
        let offered: std::collections::HashSet<&str> = offer.files.iter().map(|f| f.entry.path.as_str()).collect();
        let extraneous = have.files.iter().map(|e| e.path.clone()).filter(|p| !offered.contains(p.as_str())).collect();
        Ok(Request { needs, extraneous, conflicts })
    }

    /// The compressed wire form.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let mut raw = Vec::new();
        put_varint(&mut raw, self.needs.len() as u64);
        let mut next = 0usize;
        for (i, need) in &self.needs {
            put_varint(&mut raw, (i - next) as u64);
            next = i + 1;
            match need {
                Need::Whole => raw.push(NEED_WHOLE),
                Need::Base => raw.push(NEED_BASE),
                Need::Delta(sig) => {
                    raw.push(NEED_DELTA);
                    sig.encode(&mut raw);
                }
                Need::Chunks(held) => {
                    raw.push(NEED_CHUNKS);
                    let mut bits = vec![0u8; held.len().div_ceil(8)];
                    for (k, _) in held.iter().enumerate().filter(|(_, h)| **h) {
                        bits[k / 8] |= 1 << (k % 8);
                    }
                    raw.extend_from_slice(&bits);
                }
            }
        }
        put_varint(&mut raw, self.extraneous.len() as u64);
        let mut prev = "";
        for p in &self.extraneous {
            put_path(&mut raw, prev, p);
            prev = p;
        }
        put_varint(&mut raw, self.conflicts.len() as u64);
        for (i, r) in &self.conflicts {
            put_varint(&mut raw, *i as u64);
            raw.push(match r {
                Resolution::Source => 0,
                Resolution::Target => 1,
                _ => 2,
            });
        }
        // Mostly signatures, which do not compress: a fast level is enough.
        compress(&raw, 3)
    }

    /// Reads a request for `offer`, checking indexes and signatures.
    pub fn decode(data: &[u8], offer: &Offer) -> Result<Self> {
        let raw = decompress("request", data, MAX_MESSAGE)?;
        let mut r = Reader::new(&raw, "request");
        let n = r.varint_max(offer.files.len() as u64, "need count")?;
        let mut needs = Vec::with_capacity(n);
        let mut next = 0usize;
        for _ in 0..n {
            let skip = r.varint_max((offer.files.len() - next.min(offer.files.len())) as u64, "file index")?;
            let i = next + skip;
            if i >= offer.files.len() {
                return Err(r.error(format!("file index {i} beyond the offer")));
            }
            next = i + 1;
            let need = match r.u8()? {
                NEED_WHOLE => Need::Whole,
                NEED_BASE => Need::Base,
                NEED_DELTA => Need::Delta(Signature::decode(&mut r)?),
                NEED_CHUNKS => {
                    let n = offer.files[i].chunks.len();
                    if n == 0 {
                        return Err(r.error(format!("chunks asked for {}, which was offered without", offer.files[i].entry.path)));
                    }
                    let bits = r.take(n.div_ceil(8))?;
                    Need::Chunks((0..n).map(|k| bits[k / 8] & (1 << (k % 8)) != 0).collect())
                }
                t => return Err(r.error(format!("need kind {t}"))),
            };
            needs.push((i, need));
        }
        let nx = r.varint_max(MAX_ENTRIES, "extraneous count")?;
        let mut extraneous = Vec::with_capacity(nx.min(1 << 16));
        let mut prev = String::new();
        for _ in 0..nx {
            let p = read_path(&mut r, &prev, false)?;
            prev.clone_from(&p);
            extraneous.push(p);
        }
        let nc = r.varint_max(offer.files.len() as u64, "conflict count")?;
        let mut conflicts = Vec::with_capacity(nc);
        for _ in 0..nc {
            let i = r.varint_max(offer.files.len().saturating_sub(1) as u64, "conflict index")?;
            let decision = match r.u8()? {
                0 => Resolution::Source,
                1 => Resolution::Target,
                2 => Resolution::Both,
                t => return Err(r.error(format!("conflict decision {t}"))),
            };
            conflicts.push((i, decision));
        }
        r.finish()?;
        Ok(Request { needs, extraneous, conflicts })
    }
}

/// How one file travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The whole file, compressed with the bundle.
    Whole,
    /// Block matches against the receiver's copy plus literals.
    Delta,
    /// zstd against the acknowledged base (patch-from).
    Base,
    /// Only the content-defined chunks the receiver holds nowhere.
    Dedupe,
}

impl Strategy {
    /// The strategy's name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Whole => "whole",
            Strategy::Delta => "delta",
            Strategy::Base => "base",
            Strategy::Dedupe => "dedupe",
        }
    }
}

/// Bundle entry tags: a whole file, a block delta, a file in the joint
/// frame with a base, a whole file in the joint frame (no base of its own,
/// but it may match the other files' bases).
const TAG_WHOLE: u8 = 0;
const TAG_DELTA: u8 = 1;
const TAG_BASE: u8 = 2;
const TAG_JOINT_WHOLE: u8 = 3;
const TAG_CHUNKS: u8 = 4;

/// What the sender did for one file.
#[derive(Clone, Debug, Serialize)]
pub struct FileReport {
    /// Relative path.
    pub path: String,
    /// How it was sent.
    pub strategy: Strategy,
    /// Size of the new version.
    pub size: u64,
    /// Bytes sent as literals (before bundle compression); the payload size for `base`.
    pub literal_bytes: u64,
    /// Bytes the receiver rebuilds from its own copy.
    pub matched_bytes: u64,
}

fn read_file(root: &Path, rel: &str) -> Result<Vec<u8>> {
    let path = join(root, rel);
    std::fs::read(&path).map_err(|e| SyncError::io(format!("reading {}", path.display()), e))
}

/// What the entry section carries for one file.
enum Body<'a> {
    /// Bytes at hand (a delta).
    Bytes(Vec<u8>),
    /// The whole file, streamed from disk: it is never held in memory.
    File,
    /// The offered chunks the receiver does not hold (flags true: held),
    /// streamed from disk.
    Missing(&'a [bool]),
}

/// How a bundle is built.
#[derive(Clone, Copy, Debug)]
pub struct BundleOptions {
    /// zstd level, chosen from the link speed.
    pub level: i32,
    /// Most new bytes in the joint known-base frame.
    pub joint_max: u64,
}

impl BundleOptions {
    /// zstd `level` and a joint frame of at most [`JOINT_MAX`].
    pub fn level(level: i32) -> Self {
        BundleOptions { level, joint_max: JOINT_MAX }
    }
}

/// Step 3 (sender): writes the bundle answering `req` to `out`, reading
/// the tree at `root`, as `opts` says.
///
/// Layout: the known-base group (files with a base the receiver holds,
/// and, when there are any, the whole files too, up to `opts.joint_max`
/// new bytes) as one patch-from frame of their concatenation against their
/// bases' concatenation, so similar content across files is found; then
/// one zstd stream of the other entries. Whole files, block deltas and
/// missing chunks are streamed piece by piece, so a large file costs
/// memory for neither side.
pub fn build_bundle(
    offer: &Offer,
    req: &Request,
    root: &Path,
    bases: &dyn Bases,
    opts: BundleOptions,
    out: &mut impl std::io::Write,
) -> Result<Vec<FileReport>> {
    let BundleOptions { level, joint_max } = opts;
    let mut reports = Vec::with_capacity(req.needs.len());
    let (mut joint_base, mut joint_new) = (Vec::new(), Vec::new());
    let (mut group, mut entries) = (Vec::new(), Vec::new());
    let any_base = req.needs.iter().any(|(i, n)| *n == Need::Base && offer.files[*i].entry.size <= joint_max);
    for (i, need) in &req.needs {
        let f = &offer.files[*i];
        let mut report = FileReport {
            path: f.entry.path.clone(),
            strategy: Strategy::Whole,
            size: f.entry.size,
            literal_bytes: f.entry.size,
            matched_bytes: 0,
        };
        let joins = joint_new.len() as u64 + f.entry.size <= joint_max;
        // A block delta against the receiver's signature, or, for a known
        // base too large for the joint frame, against the sender's own copy.
        let stored;
        let sig = match need {
            Need::Delta(sig) => Some(sig),
            Need::Base if !joins => {
                stored = f.base.and_then(|b| stored_base_signature(bases, &f.entry.path, &b));
                stored.as_ref()
            }
            _ => None,
        };
        if let Some(sig) = sig {
            if let Some(d) = delta_from_disk(sig, root, &f.entry)? {
                let mut enc = Vec::new();
                d.encode(sig.block_size, &mut enc);
                report.strategy = Strategy::Delta;
                report.literal_bytes = d.literal_bytes;
                report.matched_bytes = d.matched_bytes;
                entries.push((*i, TAG_DELTA, Body::Bytes(enc)));
                reports.push(report);
                continue;
            }
        }
        if let Need::Chunks(held) = need {
            for (c, held) in f.chunks.iter().zip(held) {
                if *held {
                    report.matched_bytes += u64::from(c.len);
                }
            }
            report.literal_bytes = f.entry.size.saturating_sub(report.matched_bytes);
            report.strategy = Strategy::Dedupe;
            entries.push((*i, TAG_CHUNKS, Body::Missing(held)));
            reports.push(report);
            continue;
        }
        let base = if *need == Need::Base && joins { f.base.and_then(|b| bases.load(&f.entry.path, &b)) } else { None };
        if base.is_none() && !(any_base && joins) {
            entries.push((*i, TAG_WHOLE, Body::File));
            reports.push(report);
            continue;
        }
        let data = read_file(root, &f.entry.path)?;
        if data.len() as u64 != f.entry.size {
            return Err(changed_since_offer(&f.entry.path));
        }
        let tag = match base {
            Some(old) => {
                joint_base.extend_from_slice(&old);
                report.strategy = Strategy::Base;
                TAG_BASE
            }
            None => TAG_JOINT_WHOLE,
        };
        joint_new.extend_from_slice(&data);
        group.push((*i, tag, reports.len()));
        reports.push(report);
    }
    let joint = if group.is_empty() { Vec::new() } else { base::encode(&joint_base, &joint_new, level)? };
    for &(_, _, r) in &group {
        reports[r].literal_bytes = (joint.len() as u64 * reports[r].size) / (joint_new.len() as u64).max(1);
    }
    drop((joint_base, joint_new));
    let io = |e| SyncError::io("writing the bundle", e);
    let mut head = Vec::new();
    put_varint(&mut head, group.len() as u64);
    let mut next = 0usize;
    for &(i, tag, _) in &group {
        put_varint(&mut head, (i - next) as u64);
        head.push(tag);
        next = i + 1;
    }
    put_varint(&mut head, joint.len() as u64);
    out.write_all(&head).and_then(|_| out.write_all(&joint)).map_err(io)?;
    let mut z = zstd::stream::write::Encoder::new(out, level).map_err(io)?;
    // Announcing the length up front gets the parameters a one-shot compression would pick.
    let payloads: Vec<u64> = entries
        .iter()
        .map(|(i, _, body)| match body {
            Body::Bytes(b) => b.len() as u64,
            Body::File => offer.files[*i].entry.size,
            Body::Missing(held) => {
                offer.files[*i].chunks.iter().zip(held.iter()).filter(|(_, h)| !**h).map(|(c, _)| u64::from(c.len)).sum()
            }
        })
        .collect();
    let mut raw_len = varint_len(entries.len() as u64);
    next = 0;
    for ((i, _, _), &len) in entries.iter().zip(&payloads) {
        raw_len += varint_len((i - next) as u64) + 1 + varint_len(len) + len;
        next = i + 1;
    }
    z.set_pledged_src_size(Some(raw_len)).map_err(io)?;
    head.clear();
    put_varint(&mut head, entries.len() as u64);
    z.write_all(&head).map_err(io)?;
    head.clear();
    next = 0;
    for ((i, tag, body), len) in entries.into_iter().zip(payloads) {
        put_varint(&mut head, (i - next) as u64);
        head.push(tag);
        next = i + 1;
        put_varint(&mut head, len);
        z.write_all(&head).map_err(io)?;
        head.clear();
        let f = &offer.files[i];
        let path = join(root, &f.entry.path);
        let read_err = |err| SyncError::io(format!("reading {}", path.display()), err);
        match body {
            Body::Bytes(b) => z.write_all(&b).map_err(io)?,
            Body::File => {
                let file = std::fs::File::open(&path).map_err(read_err)?;
                if std::io::copy(&mut file.take(len), &mut z).map_err(read_err)? != len {
                    return Err(changed_since_offer(&f.entry.path));
                }
            }
            Body::Missing(held) => {
                let mut file = std::fs::File::open(&path).map_err(read_err)?;
                for (c, held) in f.chunks.iter().zip(held) {
                    let n = u64::from(c.len);
                    if *held {
                        std::io::Seek::seek(&mut file, std::io::SeekFrom::Current(n as i64)).map_err(read_err)?;
                    } else if std::io::copy(&mut (&mut file).take(n), &mut z).map_err(read_err)? != n {
                        return Err(changed_since_offer(&f.entry.path));
                    }
                }
            }
        }
    }
    z.finish().map_err(io)?;
    Ok(reports)
}

/// The block delta from the file `sig` describes to `e` as it is on disk
/// under `root`, read piece by piece; `None` when it would carry so many
/// literals that the whole file is cheaper.
fn delta_from_disk(sig: &Signature, root: &Path, e: &Entry) -> Result<Option<delta::Delta>> {
    let path = join(root, &e.path);
    let io = |err| SyncError::io(format!("reading {}", path.display()), err);
    let file = std::fs::File::open(&path).map_err(io)?;
    let Some(d) = delta::compute_from(sig, file, (WHOLE_THRESHOLD * e.size as f64) as u64).map_err(io)? else {
        return Ok(None);
    };
    if d.literal_bytes + d.matched_bytes != e.size {
        return Err(changed_since_offer(&e.path));
    }
    Ok(Some(d))
}

/// The signature of the stored version `hash` of `path`, read piece by
/// piece and checked against its hash on the way (`None` when it is not
/// stored as a file, or no longer matches).
fn stored_base_signature(bases: &dyn Bases, path: &str, hash: &Hash) -> Option<Signature> {
    /// Hashes what passes through.
    struct Hashing<R>(R, blake3::Hasher);
    impl<R: Read> Read for Hashing<R> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.read(buf)?;
            self.1.update(&buf[..n]);
            Ok(n)
        }
    }
    let file = std::fs::File::open(bases.base_path(path, hash)?).ok()?;
    let len = file.metadata().ok()?.len();
    let mut reader = Hashing(file, blake3::Hasher::new());
    let sig = Signature::from_reader(&mut reader, len).ok()?;
    (reader.1.finalize().as_bytes()[..HASH_LEN] == hash[..]).then_some(sig)
}

/// A file that changed since the offer fails the receiver's hash check; its size is checked here for free.
fn changed_since_offer(path: &str) -> SyncError {
    SyncError::io(format!("{path}: changed since it was offered"), std::io::ErrorKind::Other.into())
}

/// A received bundle being read: the known-base group and its joint frame
/// in memory, the other entries as a zstd stream.
pub struct Unpacked<R: Read> {
    /// Offer index and tag of each file in the joint frame.
    group: Vec<(usize, u8)>,
    joint: Vec<u8>,
    entries: zstd::stream::read::Decoder<'static, std::io::BufReader<R>>,
}

/// Starts reading a bundle answering `req` from `bundle`: its header and
/// joint frame are read and checked here, the entries as they are rebuilt.
pub fn unpack<R: Read>(offer: &Offer, req: &Request, mut bundle: R) -> Result<Unpacked<R>> {
    const WHAT: &str = "bundle";
    let asked = |i: usize| req.needs.binary_search_by_key(&i, |(k, _)| *k).map(|k| &req.needs[k].1).ok();
    let n = read_varint(&mut bundle, req.needs.len() as u64, WHAT, "joint entry count")? as usize;
    let mut group = Vec::with_capacity(n);
    let mut next = 0usize;
    for _ in 0..n {
        let index = next.saturating_add(read_varint(&mut bundle, offer.files.len() as u64, WHAT, "file index")? as usize);
        let tag = read_u8(&mut bundle, WHAT)?;
        match (asked(index), tag) {
            (Some(Need::Base), TAG_BASE) | (Some(Need::Whole | Need::Delta(_) | Need::Base), TAG_JOINT_WHOLE) => {}
            (None, _) => return Err(SyncError::corrupt(WHAT, format!("file index {index} was not requested"))),
            _ => return Err(SyncError::corrupt(WHAT, format!("file index {index}: tag {tag} in the joint frame"))),
        }
        group.push((index, tag));
        next = index + 1;
    }
    let max: u64 = req.needs.iter().map(|(i, _)| offer.files[*i].entry.size.saturating_mul(2).saturating_add(1024)).sum::<u64>() + 64;
    let len = read_varint(&mut bundle, max, WHAT, "joint frame length")?;
    let mut joint = Vec::new();
    (&mut bundle).take(len).read_to_end(&mut joint).map_err(|e| SyncError::corrupt(WHAT, e.to_string()))?;
    if joint.len() as u64 != len {
        return Err(SyncError::corrupt(WHAT, format!("joint frame truncated at {} of {len} bytes", joint.len())));
    }
    if group.is_empty() != joint.is_empty() {
        return Err(SyncError::corrupt(WHAT, "a joint frame without known-base entries, or the reverse"));
    }
    let entries = zstd::stream::read::Decoder::new(bundle).map_err(|e| SyncError::corrupt(WHAT, e.to_string()))?;
    Ok(Unpacked { group, joint, entries })
}

impl<R: Read> Unpacked<R> {
    /// Rebuilds every file and hands each to `each` with its offer index:
    /// the known-base group from the joint frame, then the entries in
    /// stream order (whole files as a stream, deltas against the
    /// receiver's copy under `root`). A malformed entry stops the rebuild
    /// with an error; files handed over before it stand on their own.
    pub fn rebuild(
        mut self,
        offer: &Offer,
        req: &Request,
        root: &Path,
        held_chunk: impl Fn(&ChunkRef) -> Option<Vec<u8>>,
        mut each: impl FnMut(usize, Result<Content<'_>>),
    ) -> Result<()> {
        const WHAT: &str = "bundle";
        let mut seen = vec![false; offer.files.len()];
        if !self.group.is_empty() {
            let joint = (|| {
                let mut bases = Vec::new();
                for &(i, _) in self.group.iter().filter(|(_, tag)| *tag == TAG_BASE) {
                    bases.extend_from_slice(&read_file(root, &offer.files[i].entry.path)?);
                }
                let total = self.group.iter().map(|&(i, _)| offer.files[i].entry.size).sum();
                base::decode(&bases, &self.joint, total)
            })();
            let mut at = 0usize;
            for &(i, _) in &self.group {
                seen[i] = true;
                let n = offer.files[i].entry.size as usize;
                match &joint {
                    Ok(all) => each(i, Ok(Content::Bytes(&all[at..at + n]))),
                    Err(e) => each(i, Err(SyncError::corrupt("known-base group", e.to_string()))),
                }
                at += n;
            }
        }
        let z = &mut self.entries;
        let n = read_varint(z, req.needs.len() as u64, WHAT, "entry count")?;
        let mut next = 0usize;
        for _ in 0..n {
            let index = next.saturating_add(read_varint(z, offer.files.len() as u64, WHAT, "file index")? as usize);
            let Ok(k) = req.needs.binary_search_by_key(&index, |(i, _)| *i) else {
                return Err(SyncError::corrupt(WHAT, format!("file index {index} was not requested")));
            };
            if std::mem::replace(&mut seen[index], true) {
                return Err(SyncError::corrupt(WHAT, format!("file index {index} sent twice")));
            }
            next = index + 1;
            let tag = read_u8(z, WHAT)?;
            let e = &offer.files[index].entry;
            let asked_chunks = matches!(req.needs[k].1, Need::Chunks(_));
            if (tag == TAG_CHUNKS) != asked_chunks || !matches!(tag, TAG_WHOLE | TAG_DELTA | TAG_CHUNKS) {
                return Err(SyncError::corrupt(WHAT, format!("file index {index}: entry tag {tag} does not answer the request")));
            }
            let limit = if tag == TAG_DELTA { e.size.saturating_mul(2).saturating_add(1024) } else { e.size };
            let len = read_varint(z, limit, WHAT, "payload length")?;
            if tag == TAG_WHOLE {
                if len != e.size {
                    return Err(SyncError::corrupt(WHAT, format!("{}: {len} bytes sent, {} offered", e.path, e.size)));
                }
                let mut payload = z.take(len);
                each(index, Ok(Content::Stream(&mut payload)));
                // Whatever the receiver did not read still precedes the next entry.
                std::io::copy(&mut payload, &mut std::io::sink()).map_err(|err| SyncError::corrupt(WHAT, err.to_string()))?;
                continue;
            }
            if let Need::Chunks(held) = &req.needs[k].1 {
                let chunks = &offer.files[index].chunks;
                let missing: u64 = chunks.iter().zip(held).filter(|(_, h)| !**h).map(|(c, _)| u64::from(c.len)).sum();
                if len != missing {
                    return Err(SyncError::corrupt(WHAT, format!("{}: {len} chunk bytes sent, {missing} missing", e.path)));
                }
                let mut payload = z.take(len);
                let mut file = Assembled {
                    path: &e.path,
                    chunks: chunks.iter().zip(held),
                    payload: &mut payload,
                    held_chunk: &held_chunk,
                    current: std::io::Cursor::new(Vec::new()),
                    from_payload: 0,
                };
                each(index, Ok(Content::Stream(&mut file)));
                std::io::copy(&mut payload, &mut std::io::sink()).map_err(|err| SyncError::corrupt(WHAT, err.to_string()))?;
                continue;
            }
            let mut payload = Vec::new();
            z.take(len).read_to_end(&mut payload).map_err(|err| SyncError::corrupt(WHAT, err.to_string()))?;
            if payload.len() as u64 != len {
                return Err(SyncError::corrupt(WHAT, format!("{}: payload truncated", e.path)));
            }
            let path = join(root, &e.path);
            let rebuilt = std::fs::File::open(&path)
                .and_then(|f| Ok((f.metadata()?.len(), f)))
                .map_err(|err| SyncError::io(format!("reading {}", path.display()), err))
                .and_then(|(len, file)| Ok((delta::Base::File(file), delta::plan(len as usize, &payload, e.size)?)));
            match rebuilt {
                Ok((base, plan)) => each(index, Ok(Content::Delta { base, plan })),
                Err(err) => each(index, Err(err)),
            }
        }
        let mut rest = [0u8; 1];
        if z.read(&mut rest).map_err(|err| SyncError::corrupt(WHAT, err.to_string()))? != 0 {
            return Err(SyncError::corrupt(WHAT, "bytes after the last entry"));
        }
        Ok(())
    }
}

/// Where the receiver at `root` holds the chunks `req` says it holds; empty
/// (and nothing read) when the request asks for no chunks.
pub fn held_chunks(req: &Request, root: &Path, have: Option<&Manifest>) -> Result<ChunkIndex> {
    if !req.needs.iter().any(|(_, n)| matches!(n, Need::Chunks(_))) {
        return Ok(ChunkIndex::default());
    }
    match have {
        Some(m) => ChunkIndex::build(root, m, None),
        None => ChunkIndex::build(root, &Manifest::scan(root, None)?, None),
    }
}

/// A deduplicated file as it is read: held chunks from the receiver's tree,
/// the others from the payload, in offer order, one chunk in memory at a time.
struct Assembled<'a, F> {
    path: &'a str,
    chunks: std::iter::Zip<std::slice::Iter<'a, ChunkRef>, std::slice::Iter<'a, bool>>,
    payload: &'a mut dyn Read,
    held_chunk: F,
    current: std::io::Cursor<Vec<u8>>,
    /// Bytes of the current missing chunk still to come from the payload.
    from_payload: u64,
}

impl<F: Fn(&ChunkRef) -> Option<Vec<u8>>> Read for Assembled<'_, F> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.from_payload > 0 {
                let want = (buf.len() as u64).min(self.from_payload) as usize;
                let n = self.payload.read(&mut buf[..want])?;
                if n == 0 && want > 0 {
                    return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "the chunk payload ends early"));
                }
                self.from_payload -= n as u64;
                return Ok(n);
            }
            let n = self.current.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            match self.chunks.next() {
                None => return Ok(0),
                Some((c, true)) => {
                    let held = (self.held_chunk)(c).ok_or_else(|| {
                        std::io::Error::new(std::io::ErrorKind::NotFound, format!("{}: a chunk it held is gone", self.path))
                    })?;
                    self.current = std::io::Cursor::new(held);
                }
                Some((c, false)) => self.from_payload = u64::from(c.len),
            }
        }
    }
}

/// One rebuilt file, not yet checked: bytes at hand, the file as it
/// streams out of the bundle, or a checked delta plan over the receiver's
/// copy; the last two never hold the file in memory.
pub enum Content<'a> {
    /// The file's bytes.
    Bytes(&'a [u8]),
    /// The file's bytes, read from the bundle as they are written.
    Stream(&'a mut dyn Read),
    /// Copies from `base` and literals, in order.
    Delta {
        /// The receiver's current copy.
        base: delta::Base<'a>,
        /// The checked delta.
        plan: delta::Plan<'a>,
    },
}

impl Content<'_> {
    /// Writes the file to `w` while hashing it; fails unless it is exactly
    /// the offered `e` (length and hash).
    pub fn write_checked(self, e: &Entry, w: &mut impl std::io::Write) -> Result<()> {
        let mut hasher = blake3::Hasher::new();
        let mut len = 0u64;
        let mut piece = |b: &[u8]| -> std::io::Result<()> {
            hasher.update(b);
            len += b.len() as u64;
            w.write_all(b)
        };
        let written = match self {
            Content::Bytes(b) => piece(b),
            Content::Stream(src) => (|| {
                let mut buf = vec![0u8; crate::signature::READ_PIECE];
                loop {
                    match src.read(&mut buf) {
                        Ok(0) => return Ok(()),
                        Ok(n) => piece(&buf[..n])?,
                        Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(err) => return Err(err),
                    }
                }
            })(),
            Content::Delta { base, plan } => plan.emit(&base, piece),
        };
        written.map_err(|err| SyncError::io(format!("writing {}", e.path), err))?;
        if len != e.size || hasher.finalize().as_bytes()[..HASH_LEN] != e.hash {
            return Err(SyncError::HashMismatch { path: e.path.clone() });
        }
        Ok(())
    }
}

/// What applying a bundle did.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct ApplyReport {
    /// Files written.
    pub written: Vec<String>,
    /// Files removed (mirror mode).
    pub removed: Vec<String>,
    /// Files that failed, with the reason; the old content stays in place.
    pub failed: Vec<(String, String)>,
    /// Files both sides changed, with how each was settled (`source`:
    /// overwritten, `both`: the incoming version written next to it).
    #[serde(default)]
    pub conflicts: Vec<(String, String)>,
}

/// Step 3 (receiver): applies a bundle to the tree at `root`. Each file is
/// rebuilt, verified and renamed into place on its own, so a bad file
/// leaves its old version and the others still land.
pub fn apply(offer: &Offer, req: &Request, bundle: impl Read, root: &Path) -> Result<ApplyReport> {
    let unpacked = unpack(offer, req, bundle)?;
    let single_file = offer.files.len() == 1 && offer.files[0].entry.path.is_empty();
    if !single_file {
        std::fs::create_dir_all(root).map_err(|e| SyncError::io(format!("creating {}", root.display()), e))?;
        for d in &offer.dirs {
            let p = join(root, d);
            std::fs::create_dir_all(&p).map_err(|e| SyncError::io(format!("creating {}", p.display()), e))?;
        }
    }
    let mut report = ApplyReport::default();
    let chunk_index = held_chunks(req, root, None)?;
    unpacked.rebuild(
        offer,
        req,
        root,
        |c| chunk_index.read(root, c),
        |index, rebuilt| {
            let e = &offer.files[index].entry;
            let both = req.conflicts.iter().any(|(i, r)| *i == index && *r == Resolution::Both);
            let target = if both { join(root, &side_by_side_name(&e.path, &offer.opts.sender)) } else { join(root, &e.path) };
            let result = rebuilt.and_then(|content| {
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).map_err(|err| SyncError::io(format!("creating {}", parent.display()), err))?;
                }
                write_atomic_with(&target, |w| content.write_checked(e, w))?;
                set_metadata(&target, e)
            });
            if let Some((_, r)) = req.conflicts.iter().find(|(i, _)| *i == index) {
                report.conflicts.push((e.path.clone(), format!("{r:?}").to_lowercase()));
            }
            match result {
                Ok(()) => report.written.push(e.path.clone()),
                Err(err) => report.failed.push((e.path.clone(), err.to_string())),
            }
        },
    )?;
    for (i, r) in &req.conflicts {
        if *r == Resolution::Target {
            report.conflicts.push((offer.files[*i].entry.path.clone(), "target".into()));
        }
    }
    if offer.opts.mirror {
        for p in &req.extraneous {
            let path = join(root, p);
            if std::fs::remove_file(&path).is_ok() {
                report.removed.push(p.clone());
                if let Some(parent) = path.parent() {
                    sync_dir(parent)?;
                }
            }
        }
    }
    Ok(report)
}

/// Gives the file at `path` the mode and modification time of `e`.
pub fn set_metadata(path: &Path, e: &Entry) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let io = |err| SyncError::io(format!("setting metadata of {}", path.display()), err);
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(e.mtime.max(0) as u64);
    std::fs::File::options().write(true).open(path).and_then(|f| f.set_modified(when)).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(e.mode)).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::TreeBases;
    use proptest::prelude::*;

    fn write(root: &Path, files: &[(&str, &[u8])]) {
        for (p, d) in files {
            let path = root.join(p);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, d).unwrap();
        }
    }

    /// Runs one transfer from `src` to `dst`; `acked` is the tree the sender believes `dst` holds.
    fn transfer(src: &Path, dst: &Path, acked: Option<&Path>, conflict: ConflictStrategy) -> ApplyReport {
        let m = Manifest::scan(src, None).unwrap();
        let bases: Box<dyn Bases> = match acked {
            Some(a) => Box::new(TreeBases::new(a, Manifest::scan(a, None).unwrap())),
            None => Box::new(NoBases),
        };
        let opts = OfferOptions { conflict, sender: "edge-a".into(), ..OfferOptions::default() };
        let offer = Offer::decode(&Offer::new(&m, bases.as_ref(), opts).encode().unwrap()).unwrap();
        let req = Request::build(&offer, dst, &Manifest::scan(dst, None).unwrap(), None).unwrap();
        let req = Request::decode(&req.encode().unwrap(), &offer).unwrap();
        let mut bundle = Vec::new();
        build_bundle(&offer, &req, src, bases.as_ref(), BundleOptions::level(3), &mut bundle).unwrap();
        apply(&offer, &req, &bundle[..], dst).unwrap()
    }

    #[test]
    fn concurrent_changes_follow_the_strategy() {
        for (strategy, expect_dst, side) in [
            (ConflictStrategy::SourceWins, &b"sender v2"[..], false),
            (ConflictStrategy::TargetWins, &b"receiver edit"[..], false),
            (ConflictStrategy::Merge, &b"receiver edit"[..], true),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (src, dst, acked) = (dir.path().join("src"), dir.path().join("dst"), dir.path().join("acked"));
            write(&acked, &[("f.txt", b"v1")]);
            write(&dst, &[("f.txt", b"receiver edit")]);
            write(&src, &[("f.txt", b"sender v2")]);
            let report = transfer(&src, &dst, Some(&acked), strategy);
            assert_eq!(std::fs::read(dst.join("f.txt")).unwrap(), expect_dst, "{strategy:?}");
            assert_eq!(report.conflicts.len(), 1, "{strategy:?}: {report:?}");
            assert_eq!(dst.join("f.txt.conflict-edge-a").exists(), side, "{strategy:?}");
            if side {
                assert_eq!(std::fs::read(dst.join("f.txt.conflict-edge-a")).unwrap(), b"sender v2");
            }
        }
    }

    #[test]
    fn a_new_file_sends_only_the_chunks_the_receiver_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let model: Vec<u8> = (0..2_000_000u64).map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8).collect();
        let mut tuned = model.clone();
        tuned[1_000_000..1_020_000].fill(7);
        write(&dst, &[("models/v1.bin", &model)]);
        write(&src, &[("models/v1.bin", &model), ("models/v2.bin", &tuned)]);
        // The sender remembers that the receiver acknowledged v1 only.
        let bases = TreeBases::new(&dst, Manifest::scan(&dst, None).unwrap());
        let m = Manifest::scan(&src, None).unwrap();
        let offer = Offer::new(&m, &bases, OfferOptions::default()).with_chunks(&src).unwrap();
        let offer = Offer::decode(&offer.encode().unwrap()).unwrap();
        let req = Request::build(&offer, &dst, &Manifest::scan(&dst, None).unwrap(), None).unwrap();
        assert!(matches!(req.needs[..], [(1, Need::Chunks(_))]), "{:?}", req.needs.iter().map(|(i, _)| i).collect::<Vec<_>>());
        let req = Request::decode(&req.encode().unwrap(), &offer).unwrap();
        let mut bundle = Vec::new();
        let reports = build_bundle(&offer, &req, &src, &bases, BundleOptions::level(3), &mut bundle).unwrap();
        assert_eq!(reports[0].strategy, super::Strategy::Dedupe);
        assert!(reports[0].literal_bytes < 600_000, "{} literal bytes", reports[0].literal_bytes);
        let report = apply(&offer, &req, &bundle[..], &dst).unwrap();
        assert_eq!(report.written, ["models/v2.bin"]);
        assert_eq!(std::fs::read(dst.join("models/v2.bin")).unwrap(), tuned);
    }

    #[test]
    fn incremental_offers_carry_only_changes_and_need_the_same_memory() {
        let dir = tempfile::tempdir().unwrap();
        let (old, new) = (dir.path().join("old"), dir.path().join("new"));
        let files: Vec<(String, Vec<u8>)> =
            (0..200).map(|i| (format!("d{}/f{i}.txt", i % 7), format!("file {i}\n").repeat(50).into_bytes())).collect();
        let refs: Vec<(&str, &[u8])> = files.iter().map(|(p, d)| (p.as_str(), d.as_slice())).collect();
        write(&old, &refs);
        write(&new, &refs[1..]);
        write(&new, &[("d3/f3.txt", b"changed"), ("added.txt", b"new")]);
        let old_m = Manifest::scan(&old, None).unwrap();
        let bases = TreeBases::new(&old, old_m.clone());
        let offer = Offer::new(&Manifest::scan(&new, None).unwrap(), &bases, OfferOptions::default());
        let full = offer.encode().unwrap();
        let since = offer.encode_since(&bases.acked()).unwrap();
        assert!(since.len() * 4 < full.len(), "incremental {} vs full {} bytes", since.len(), full.len());
        let remembered = Offer::new(&old_m, &NoBases, OfferOptions::default());
        let rebuilt = Offer::decode_since(&since, |_| Some(remembered.clone())).unwrap().unwrap();
        assert_eq!(
            rebuilt.files.iter().map(|f| (&f.entry.path, f.entry.hash)).collect::<Vec<_>>(),
            offer.files.iter().map(|f| (&f.entry.path, f.entry.hash)).collect::<Vec<_>>()
        );
        // A receiver that remembers nothing, or something else, must ask for the full offer.
        assert!(Offer::decode_since(&since, |_| None).unwrap().is_none());
        let mut other = remembered.clone();
        other.files[5].entry.hash[0] ^= 1;
        assert!(Offer::decode_since(&since, |_| Some(other)).unwrap().is_none());
        assert!(Offer::decode(&since).is_err());
    }

    #[test]
    fn trees_arrive_exactly_and_unchanged_files_are_not_sent() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let big: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        write(&src, &[("a/b.bin", &big), ("same", b"same"), ("new", b"new")]);
        let mut old = big.clone();
        old[100_000] ^= 0xff;
        write(&dst, &[("a/b.bin", &old), ("same", b"same")]);
        let report = transfer(&src, &dst, None, ConflictStrategy::default());
        assert_eq!(report.written, ["a/b.bin", "new"]);
        assert_eq!(std::fs::read(dst.join("a/b.bin")).unwrap(), big);
        assert_eq!(std::fs::read(dst.join("new")).unwrap(), b"new");
    }

    /// `n` bytes of deterministic noise (no block repeats), distinct per `seed`.
    fn noise(n: usize, seed: u32) -> Vec<u8> {
        (0..n as u32).map(|i| (i.wrapping_add(seed).wrapping_mul(2654435761) >> 13) as u8).collect()
    }

    #[test]
    fn files_beyond_the_joint_budget_stream_even_with_a_known_base() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let (big_old, mut big_new) = (noise(400_000, 1), noise(400_000, 1));
        big_new[200_000..204_000].fill(7);
        write(&dst, &[("big.bin", &big_old), ("small.txt", b"one\ntwo\n")]);
        write(
            &src,
            &[("big.bin", &big_new), ("small.txt", b"one\ntwo\nthree\n"), ("new-big.bin", &noise(300_000, 2)), ("new.txt", b"hello")],
        );
        let bases = TreeBases::new(&dst, Manifest::scan(&dst, None).unwrap());
        let offer =
            Offer::decode(&Offer::new(&Manifest::scan(&src, None).unwrap(), &bases, OfferOptions::default()).encode().unwrap()).unwrap();
        let req = Request::build(&offer, &dst, &Manifest::scan(&dst, None).unwrap(), None).unwrap();
        assert!(req.needs.iter().all(|(i, n)| (*n == Need::Base) == offer.files[*i].base.is_some()));
        let mut bundle = Vec::new();
        let reports = build_bundle(&offer, &req, &src, &bases, BundleOptions { level: 3, joint_max: 100_000 }, &mut bundle).unwrap();
        let by_path: std::collections::BTreeMap<&str, super::Strategy> = reports.iter().map(|r| (r.path.as_str(), r.strategy)).collect();
        assert_eq!(by_path["big.bin"], super::Strategy::Delta, "a base beyond the budget goes by block delta");
        assert_eq!(by_path["small.txt"], super::Strategy::Base);
        assert_eq!(by_path["new-big.bin"], super::Strategy::Whole);
        assert!(reports.iter().find(|r| r.path == "big.bin").unwrap().literal_bytes < 20_000);
        let report = apply(&offer, &req, &bundle[..], &dst).unwrap();
        assert!(report.failed.is_empty(), "{:?}", report.failed);
        for f in ["big.bin", "small.txt", "new-big.bin", "new.txt"] {
            assert!(std::fs::read(dst.join(f)).unwrap() == std::fs::read(src.join(f)).unwrap(), "{f}");
        }
    }

    #[test]
    fn damaged_bundles_leave_every_file_old_or_exactly_new() {
        let dir = tempfile::tempdir().unwrap();
        let (src, dst) = (dir.path().join("src"), dir.path().join("dst"));
        let (whole, edited) = (noise(3 << 20, 1), noise(1 << 20, 2));
        let mut old = edited.clone();
        old[500_000] ^= 0xff;
        write(&src, &[("a-whole.bin", &whole), ("b-edited.bin", &edited)]);
        write(&dst, &[("b-edited.bin", &old)]);
        let offer =
            Offer::decode(&Offer::new(&Manifest::scan(&src, None).unwrap(), &NoBases, OfferOptions::default()).encode().unwrap()).unwrap();
        let req = Request::build(&offer, &dst, &Manifest::scan(&dst, None).unwrap(), None).unwrap();
        let mut bundle = Vec::new();
        let reports = build_bundle(&offer, &req, &src, &NoBases, BundleOptions::level(3), &mut bundle).unwrap();
        assert_eq!(reports.iter().map(|r| r.strategy).collect::<Vec<_>>(), [super::Strategy::Whole, super::Strategy::Delta]);
        let mut flipped = bundle.clone();
        let at = flipped.len() / 2;
        flipped[at] ^= 0x55;
        for damaged in [&bundle[..bundle.len() / 3], &bundle[..bundle.len() - 1], &flipped[..]] {
            let result = apply(&offer, &req, damaged, &dst);
            assert!(result.is_err() || !result.unwrap().failed.is_empty(), "{} bytes", damaged.len());
            // Every file is its old version or exactly the new one, and no temporary file is left.
            let whole_now = std::fs::read(dst.join("a-whole.bin")).ok();
            assert!(whole_now.is_none() || whole_now.as_deref() == Some(&whole[..]));
            let edited_now = std::fs::read(dst.join("b-edited.bin")).unwrap();
            assert!(edited_now == old || edited_now == edited);
            assert_eq!(crate::fsio::clean_temporaries(&dst), 0);
            write(&dst, &[("b-edited.bin", &old)]);
            let _ = std::fs::remove_file(dst.join("a-whole.bin"));
        }
        let report = apply(&offer, &req, &bundle[..], &dst).unwrap();
        assert_eq!(report.written, ["a-whole.bin", "b-edited.bin"]);
        assert!(std::fs::read(dst.join("a-whole.bin")).unwrap() == whole);
        assert!(std::fs::read(dst.join("b-edited.bin")).unwrap() == edited);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn decoders_never_panic_on_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Offer::decode(&bytes);
            let compressed = zstd::bulk::compress(&bytes, 1).unwrap();
            if let Ok(offer) = Offer::decode(&compressed) {
                let _ = Request::decode(&compressed, &offer);
            }
            let offer = Offer {
                files: vec![OfferEntry { entry: Entry { path: "f".into(), size: 10, hash: [0; HASH_LEN], mode: 0o644, mtime: 0 }, base: None, chunks: Vec::new() }],
                ..Offer::default()
            };
            let req = Request { needs: vec![(0, Need::Whole)], ..Request::default() };
            let _ = Request::decode(&compressed, &offer);
            let root = tempfile::tempdir().unwrap();
            std::fs::write(root.path().join("f"), [1, 2, 3]).unwrap();
            for candidate in [&bytes, &compressed] {
                if let Ok(u) = unpack(&offer, &req, &candidate[..]) {
                    let _ = u.rebuild(&offer, &req, root.path(), |_| None, |_, _| {});
                }
            }
        }
    }
}
