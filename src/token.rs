//! Token format, generation and hashing (docs/design.md §2).
//!
//! A token is `mcp_` + 43 base64url characters (32 bytes from the OS CSPRNG).
//! Only `sha256(token)` and a short display prefix ever leave this module.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

pub const TOKEN_PREFIX: &str = "mcp_";
const SECRET_LEN: usize = 43;
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + SECRET_LEN;
/// `mcp_` + the first 8 secret characters: names a token without revealing it.
pub const DISPLAY_PREFIX_LEN: usize = TOKEN_PREFIX.len() + 8;

/// SHA-256 of a token, the only form in which tokens are stored or cached.
pub type TokenHash = [u8; 32];

/// Creates a new random token from 32 bytes of OS randomness.
pub fn generate() -> Result<String, getrandom::Error> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)?;
    Ok(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(secret)))
}

/// Whether `text` has the exact token shape `^mcp_[A-Za-z0-9_-]{43}$`.
pub fn is_well_formed(text: &str) -> bool {
    text.len() == TOKEN_LEN
        && text.starts_with(TOKEN_PREFIX)
        && text[TOKEN_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

pub fn hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

pub fn hash_hex(token: &str) -> String {
    hex::encode(hash(token))
}

/// The display prefix of a well-formed token.
pub fn display_prefix(token: &str) -> &str {
    token.get(..DISPLAY_PREFIX_LEN).unwrap_or(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_well_formed_and_distinct() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert!(is_well_formed(&a), "{a}");
        assert_eq!(a.len(), 47);
        assert_ne!(a, b);
        assert_eq!(display_prefix(&a).len(), 12);
        assert!(a.starts_with(display_prefix(&a)));
    }

    #[test]
    fn rejects_malformed_tokens() {
        let good = format!("mcp_{}", "A".repeat(43));
        assert!(is_well_formed(&good));
        for bad in [
            "",
            "mcp_",
            &format!("mcp_{}", "A".repeat(42)),
            &format!("mcp_{}", "A".repeat(44)),
            &format!("MCP_{}", "A".repeat(43)),
            &format!("mcp_{}=", "A".repeat(42)),
            &format!("mcp_{}é", "A".repeat(41)),
            &format!("xyz_{}", "A".repeat(43)),
        ] {
            assert!(!is_well_formed(bad), "{bad:?}");
        }
    }

    #[test]
    fn hash_is_sha256_hex() {
        assert_eq!(
            hash_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
