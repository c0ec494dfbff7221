//! Bearer tokens: API tokens for people and tools, join tokens for nodes.
//!
//! A token reads `vrg1.ID.SECRET` (8 and 32 random bytes, hex). The server
//! keeps only the SHA-256 of the secret, with the role, a name, an expiry
//! and a revocation time, in one 0600 JSON file replaced atomically, so an
//! acknowledged `token create` or `token revoke` survives `kill -9`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, hex, unhex};
use crate::rbac::Role;

const PREFIX: &str = "vrg1";
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;

/// Why a token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Not of the form `vrg1.ID.SECRET`.
    #[error("malformed token: expected vrg1.<16 hex>.<64 hex>")]
    Malformed,
    /// No such token, or the secret does not match.
    #[error("unknown token")]
    Unknown,
    /// Past its expiry.
    #[error("token expired")]
    Expired,
    /// Revoked by an admin.
    #[error("token revoked")]
    Revoked,
    /// The token file could not be read or written.
    #[error("token store {path}: {err}")]
    Io { path: String, err: std::io::Error },
    /// The token file is not valid JSON.
    #[error("token store {path} is corrupt: {err}")]
    Corrupt { path: String, err: String },
}

impl TokenError {
    /// The machine-readable code for API errors.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed_token",
            TokenError::Unknown => "unknown_token",
            TokenError::Expired => "token_expired",
            TokenError::Revoked => "token_revoked",
            TokenError::Io { .. } | TokenError::Corrupt { .. } => "token_store",
        }
    }
}

/// A token as presented: its id and secret, syntax-checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presented {
    /// The public part: names the token in listings and revocations.
    pub id: String,
    secret: Vec<u8>,
}

/// Parses `vrg1.ID.SECRET`. Never panics, whatever the input.
pub fn parse(s: &str) -> Result<Presented, TokenError> {
    let mut parts = s.trim().split('.');
    let (Some(PREFIX), Some(id), Some(secret), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed);
    };
    let lower_hex = |t: &str, n: usize| t.len() == 2 * n && t.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !lower_hex(id, ID_BYTES) || !lower_hex(secret, SECRET_BYTES) {
        return Err(TokenError::Malformed);
    }
    Ok(Presented { id: id.to_string(), secret: unhex(secret).ok_or(TokenError::Malformed)? })
}

/// What the server remembers about a token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenRecord {
    /// Public id.
    pub id: String,
    /// What it is for, e.g. `admin` or `join edge nodes`.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// SHA-256 of the secret, hex.
    secret_sha256: String,
    /// When it was created, Unix ms.
    pub created_ms: u64,
    /// When it stops working, Unix ms; `None` never.
    pub expires_ms: Option<u64>,
    /// When it was revoked, Unix ms.
    pub revoked_ms: Option<u64>,
    /// For a node token bound to one node: the only node id it may join as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl TokenRecord {
    /// Whether the token works at `now_ms`.
    pub fn check(&self, now_ms: u64) -> Result<(), TokenError> {
        if self.revoked_ms.is_some() {
            return Err(TokenError::Revoked);
        }
        if self.expires_ms.is_some_and(|e| now_ms >= e) {
            return Err(TokenError::Expired);
        }
        Ok(())
    }
}

/// All tokens, persisted in one file.
pub struct TokenStore {
    path: PathBuf,
    tokens: BTreeMap<String, TokenRecord>,
}

impl TokenStore {
    /// Opens `path`, or starts empty when it does not exist.
    pub fn open(path: &Path) -> Result<TokenStore, TokenError> {
        let p = path.display().to_string();
        let tokens = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| TokenError::Corrupt { path: p, err: e.to_string() })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(err) => return Err(TokenError::Io { path: p, err }),
        };
        Ok(TokenStore { path: path.to_path_buf(), tokens })
    }

    fn save(&self) -> Result<(), TokenError> {
        let bytes = serde_json::to_vec_pretty(&self.tokens)
            .map_err(|e| TokenError::Corrupt { path: self.path.display().to_string(), err: e.to_string() })?;
        fsutil::write_secret(&self.path, &bytes).map_err(|err| TokenError::Io { path: self.path.display().to_string(), err })
    }

    /// Mints a token and persists it before returning the only copy of its
    /// secret.
    pub fn create(
        &mut self,
        role: Role,
        name: &str,
        ttl_ms: Option<u64>,
        node: Option<String>,
        now_ms: u64,
    ) -> Result<(String, TokenRecord), TokenError> {
        let id = hex(&fsutil::random_bytes::<ID_BYTES>());
        let secret = fsutil::random_bytes::<SECRET_BYTES>();
        let rec = TokenRecord {
            id: id.clone(),
            name: name.to_string(),
            role,
            secret_sha256: fsutil::sha256_hex(&secret),
            created_ms: now_ms,
            expires_ms: ttl_ms.map(|t| now_ms.saturating_add(t)),
            revoked_ms: None,
            node,
        };
        self.tokens.insert(id.clone(), rec.clone());
        if let Err(e) = self.save() {
            self.tokens.remove(&id);
            return Err(e);
        }
        Ok((format!("{PREFIX}.{id}.{}", hex(&secret)), rec))
    }

    /// The record of a presented token that works at `now_ms`.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<&TokenRecord, TokenError> {
        let p = parse(token)?;
        let rec = self.tokens.get(&p.id).ok_or(TokenError::Unknown)?;
        let presented = ring::digest::digest(&ring::digest::SHA256, &p.secret);
        let stored = unhex(&rec.secret_sha256).unwrap_or_default();
        // Compare without an early exit, so timing says nothing of the hash.
        let diff = presented.as_ref().iter().zip(&stored).fold(stored.len() ^ 32, |acc, (a, b)| acc | usize::from(a ^ b));
        if diff != 0 {
            return Err(TokenError::Unknown);
        }
        rec.check(now_ms)?;
        Ok(rec)
    }

    /// Revokes token `id`; `Ok(false)` when there is no such token.
    pub fn revoke(&mut self, id: &str, now_ms: u64) -> Result<bool, TokenError> {
        let Some(rec) = self.tokens.get_mut(id) else { return Ok(false) };
        let before = rec.revoked_ms;
        rec.revoked_ms = before.or(Some(now_ms));
        if let Err(e) = self.save() {
            if let Some(rec) = self.tokens.get_mut(id) {
                rec.revoked_ms = before;
            }
            return Err(e);
        }
        Ok(true)
    }

    /// Every token, by id.
    pub fn list(&self) -> impl Iterator<Item = &TokenRecord> {
        self.tokens.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tokens_verify_expire_revoke_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.json");
        let mut store = TokenStore::open(&path).unwrap();
        let (admin, _) = store.create(Role::Admin, "admin", None, None, 1_000).unwrap();
        let (join, rec) = store.create(Role::Node, "join", Some(60_000), Some("edge-1".into()), 1_000).unwrap();
        assert_eq!(store.verify(&admin, 5_000).unwrap().role, Role::Admin);
        assert_eq!(store.verify(&join, 60_999).unwrap().role, Role::Node);
        assert!(matches!(store.verify(&join, 61_000), Err(TokenError::Expired)));
        let mut forged = join.clone();
        forged.replace_range(forged.len() - 1.., if join.ends_with('0') { "1" } else { "0" });
        assert!(matches!(store.verify(&forged, 2_000), Err(TokenError::Unknown)));
        assert!(store.revoke(&rec.id, 3_000).unwrap());
        let store = TokenStore::open(&path).unwrap();
        assert!(matches!(store.verify(&join, 4_000), Err(TokenError::Revoked)));
        assert!(store.verify(&admin, 4_000).is_ok());
        assert!(!std::fs::read_to_string(&path).unwrap().contains(admin.rsplit('.').next().unwrap()));
    }

    proptest! {
        #[test]
        fn parsing_never_panics(s in ".{0,200}") {
            let _ = parse(&s);
        }

        #[test]
        fn parsing_accepts_exactly_the_format(id in "[0-9a-f]{16}", secret in "[0-9a-f]{64}", junk in "[^.]{0,3}") {
            let good = format!("vrg1.{id}.{secret}");
            prop_assert!(parse(&good).is_ok());
            let bad = format!("vrg1.{id}{junk}x.{secret}");
            prop_assert!(parse(&bad).is_err());
        }
    }
}
