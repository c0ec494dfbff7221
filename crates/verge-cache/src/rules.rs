//! What an edge-cache entry's key and type may be: each agent checks every
//! write against these, and the server checks a write before it fans it
//! out, so that a bad one gets one clear error rather than one per node.

/// Longest key accepted, bytes.
pub const MAX_KEY: usize = 1024;

/// Largest value the server fans out to nodes, bytes: the agents' default
/// `cache.max_value` (an agent configured lower refuses larger ones itself).
/// The CLI checks it before sending, so a too large file gets this limit
/// named instead of a connection the server cut.
pub const FANOUT_MAX_VALUE: usize = 64 << 20;

/// What [`valid_key`] accepts, for error messages.
pub const KEY_RULE: &str = "keys are 1-1024 bytes of UTF-8 without control characters";

/// What [`valid_type`] accepts, for error messages.
pub const TYPE_RULE: &str = "type is 1-64 characters of a-z, A-Z, 0-9, '_', '-' (e.g. vm_image, ml_model, app_data)";

/// Whether `key` can name an entry.
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY && !key.chars().any(char::is_control)
}

/// Whether `kind` can be an entry's type (`vm_image`, `ml_model`, `app_data`, …).
pub fn valid_type(kind: &str) -> bool {
    !kind.is_empty() && kind.len() <= 64 && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_types() {
        assert!(valid_key("img/ubuntu-24.04.qcow2") && valid_key("ключ") && valid_key(&"k".repeat(MAX_KEY)));
        assert!(!valid_key("") && !valid_key(&"k".repeat(MAX_KEY + 1)) && !valid_key("a\nb"));
        assert!(valid_type("ml_model") && valid_type("x-1"));
        assert!(!valid_type("") && !valid_type("vm image") && !valid_type(&"t".repeat(65)));
        assert!(KEY_RULE.contains(&MAX_KEY.to_string()));
    }
}
