//! Verge data synchronisation.
