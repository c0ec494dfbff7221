//! The errors of the sync engine.

/// Why a sync operation failed. Every byte that came from a peer is
/// checked; a bad one becomes [`SyncError::Corrupt`], never a panic.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Encoded data (signature, delta, offer, request, bundle) is malformed.
    #[error("corrupt {what}: {why}")]
    Corrupt {
        /// Which kind of message was being read.
        what: &'static str,
        /// What was wrong with it.
        why: String,
    },
    /// The reconstructed content does not hash to what the sender promised.
    #[error("{path}: content hash mismatch after applying the delta")]
    HashMismatch {
        /// The file whose content was wrong.
        path: String,
    },
    /// A path from a peer would escape the sync root or is not a plain relative path.
    #[error("unsafe path {0:?}: must be relative, without '..' or empty components")]
    UnsafePath(String),
    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl SyncError {
    /// A [`SyncError::Corrupt`] for `what` with a reason.
    pub fn corrupt(what: &'static str, why: impl Into<String>) -> Self {
        SyncError::Corrupt { what, why: why.into() }
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        SyncError::Io { context: context.into(), source }
    }
}

/// Result with [`SyncError`].
pub type Result<T> = std::result::Result<T, SyncError>;
