//! Crash-safe file writes: a temporary file in the target's directory,
//! fsynced, then renamed over the target and the directory fsynced, so a
//! reader sees the old content or the new, never a half-written file.

use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Result, SyncError};

/// Prefix of temporary files; scans skip them and [`clean_temporaries`] removes leftovers.
pub const TEMP_PREFIX: &str = ".verge-tmp-";

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `data` to `path` atomically and durably.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    write_atomic_with(path, |w| w.write_all(data).map_err(|e| SyncError::io(format!("writing {}", path.display()), e)))
}

/// Writes `path` atomically and durably with what `fill` writes; when
/// `fill` fails, the temporary file is removed and `path` is untouched.
pub fn write_atomic_with(path: &Path, fill: impl FnOnce(&mut BufWriter<std::fs::File>) -> Result<()>) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!("{TEMP_PREFIX}{}-{}-{name}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
    let io = |what: &str, e| SyncError::io(format!("{what} {}", tmp.display()), e);
    let result = (|| {
        let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(&tmp).map_err(|e| io("creating", e))?);
        fill(&mut w)?;
        let f = w.into_inner().map_err(|e| io("writing", e.into_error()))?;
        f.sync_all().map_err(|e| io("syncing", e))?;
        std::fs::rename(&tmp, path).map_err(|e| SyncError::io(format!("renaming onto {}", path.display()), e))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes to two writers at once: a copy and its hash, say, in one pass.
pub struct Tee<'a, A, B>(pub &'a mut A, pub &'a mut B);

impl<A: Write, B: Write> Write for Tee<'_, A, B> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(buf)?;
        self.1.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()?;
        self.1.flush()
    }
}

/// Fsyncs a directory so a rename or removal in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| SyncError::io(format!("syncing directory {}", dir.display()), e))
}

/// Removes temporary files a crash left under `root`; returns how many.
pub fn clean_temporaries(root: &Path) -> usize {
    let mut removed = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else { continue };
        for item in rd.flatten() {
            let Ok(ft) = item.file_type() else { continue };
            if ft.is_dir() {
                stack.push(item.path());
            } else if item.file_name().to_string_lossy().starts_with(TEMP_PREFIX) && std::fs::remove_file(item.path()).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}
