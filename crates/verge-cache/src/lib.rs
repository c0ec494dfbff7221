//! Verge edge cache.
