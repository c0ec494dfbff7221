//! Identifiers for nodes and workloads, validated where they enter.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;

/// Longest identifier accepted, as for a DNS label.
const MAX_ID_LEN: usize = 63;

fn check_id(kind: &str, s: &str) -> Result<(), ValidationError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.';
    if s.is_empty() || s.len() > MAX_ID_LEN || !s.chars().all(ok_char) || s.starts_with(['-', '.']) {
        return Err(ValidationError::new(
            "id",
            format!("{kind} id must be 1-{MAX_ID_LEN} characters of a-z, A-Z, 0-9, '-', '_', '.', not starting with '-' or '.', got {s:?}"),
        ));
    }
    Ok(())
}

macro_rules! id_type {
    ($name:ident, $kind:literal, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Parses and validates an identifier.
            pub fn new(s: impl Into<String>) -> Result<Self, ValidationError> {
                let s = s.into();
                check_id($kind, &s)?;
                Ok(Self(s))
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ValidationError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(NodeId, "node", "The unique name of an edge node, e.g. `edge-node-001`.");
id_type!(WorkloadId, "workload", "The unique name of a workload, e.g. `video-transcode`.");

impl WorkloadId {
    /// A fresh random id for a workload submitted without one.
    pub fn generate() -> Self {
        let mut b = [0u8; 4];
        // A failing entropy source only makes ids less random, never invalid.
        let _ = getrandom::fill(&mut b);
        Self(format!("wl-{:08x}", u32::from_le_bytes(b)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated() {
        assert!(NodeId::new("edge-node-001").is_ok());
        assert!(NodeId::new("").is_err());
        assert!(NodeId::new("a/b").is_err());
        assert!(NodeId::new("-x").is_err());
        assert!(NodeId::new("x".repeat(64)).is_err());
        assert!(serde_json::from_str::<NodeId>("\"bad id\"").is_err());
        assert!(WorkloadId::new(WorkloadId::generate().to_string()).is_ok());
    }
}
