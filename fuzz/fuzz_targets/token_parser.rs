//! Drives credential extraction (`auth::credential::extract`, and
//! `oauth_bearer` for other schemes' bearer tokens) and the token
//! format (`token.rs`) with arbitrary header values. Panics when a promise is
//! broken, not only on a crash:
//!
//! - an accepted credential's token is well-formed and is exactly the trimmed
//!   single value presented (the X-MCP-Token value, the Bearer token, or both,
//!   and then they are equal);
//! - repeated token or user-id headers, and two differing tokens, are refused;
//! - `Missing` means no token header at all, and the only other refusals are
//!   `Malformed` and (for a user id that is not UTF-8) `UserMismatch`;
//! - the claimed user id is the one value sent, trimmed;
//! - an accepted credential presented again in canonical form, in either or
//!   both headers, is accepted as the same credential, and adding a second
//!   token header or a differing token refuses it;
//! - the token helpers agree with each other: well-formedness is the
//!   `^mcp_[A-Za-z0-9_-]{43}$` shape, the display prefix is a 12-character
//!   prefix of a well-formed token, the hash is SHA-256 and its hex form.
//!
//! Input: lines (split on `\n`); each line's first byte picks what the rest
//! is (see [`Line`]), so the fuzzer can build well-formed tokens cheaply.
#![no_main]

use sha2::{Digest, Sha256};

// Only `extract` and the token helpers are reachable from this target.
#[allow(dead_code)]
#[path = "../../src/token.rs"]
mod token;

#[allow(dead_code)]
#[path = "../../src/auth/denial.rs"]
mod denial;

#[path = "../../src/auth/credential.rs"]
mod credential;

// `credential.rs` names it `super::Denial`, as in memgate's `auth` module.
use credential::{PresentedHeaders, extract, oauth_bearer};
use denial::Denial;

const SECRET_CHARS: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// What one input line adds to the request.
enum Line {
    /// An `X-MCP-Token` value, as sent.
    Token(Vec<u8>),
    /// An `Authorization` value, as sent.
    Authorization(Vec<u8>),
    /// An `X-MCP-UserID` value, as sent.
    UserId(Vec<u8>),
    /// Text only for the token helpers.
    Text(Vec<u8>),
}

fn lines(data: &[u8]) -> Vec<Line> {
    data.split(|&b| b == b'\n')
        .filter_map(|line| {
            let (&selector, rest) = line.split_first()?;
            Some(match selector % 6 {
                0 => Line::Token(rest.to_vec()),
                1 => Line::Authorization(rest.to_vec()),
                2 => Line::UserId(rest.to_vec()),
                // A well-formed token built from the bytes, then whatever
                // follows them (which may well break it).
                3 => Line::Token(synthesised(rest)),
                4 => {
                    let scheme: &[u8] = match rest.first().map(|b| b % 4) {
                        Some(0) => b"bearer  ",
                        Some(1) => b"BEARER ",
                        Some(2) => b" Bearer\t",
                        _ => b"Bearer ",
                    };
                    let mut value = scheme.to_vec();
                    value.extend(synthesised(rest.get(1..).unwrap_or_default()));
                    Line::Authorization(value)
                }
                _ => Line::Text(rest.to_vec()),
            })
        })
        .collect()
}

/// `mcp_` and 43 secret characters chosen by `bytes`, then `bytes[43..]`.
fn synthesised(bytes: &[u8]) -> Vec<u8> {
    let mut token = token::TOKEN_PREFIX.as_bytes().to_vec();
    token.extend(
        (0..43).map(|i| SECRET_CHARS[usize::from(bytes.get(i).copied().unwrap_or(0) % 64)]),
    );
    token.extend_from_slice(bytes.get(43..).unwrap_or_default());
    token
}

/// ASCII whitespace trimmed from both ends, as `extract` trims header values.
fn trimmed(value: &[u8]) -> &[u8] {
    value.trim_ascii()
}

/// The token of an `Authorization` value, by RFC 7235's `Bearer` rule.
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let value = trimmed(value);
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    let token = trimmed(rest);
    (scheme.eq_ignore_ascii_case(b"bearer") && !token.is_empty() && !token.contains(&b' '))
        .then_some(token)
}

fn shaped_like_a_token(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 47
        && bytes.starts_with(b"mcp_")
        && bytes[4..].iter().all(|b| SECRET_CHARS.contains(b))
}

fn check_token_helpers(text: &str) {
    let well_formed = token::is_well_formed(text);
    assert_eq!(well_formed, shaped_like_a_token(text), "{text:?}");
    let prefix = token::display_prefix(text);
    assert!(text.starts_with(prefix));
    if well_formed {
        assert_eq!(prefix.len(), token::DISPLAY_PREFIX_LEN);
        assert!(prefix.starts_with(token::TOKEN_PREFIX));
    }
    let hash = token::hash(text);
    assert_eq!(hash, <[u8; 32]>::from(Sha256::digest(text.as_bytes())));
    let hex = token::hash_hex(text);
    assert_eq!(hex.len(), 64);
    assert!(hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    assert_eq!(hex, hex::encode(hash));
}

fn presented<'a>(token: &[&'a [u8]], auth: &[&'a [u8]], user: &[&'a [u8]]) -> PresentedHeaders<'a> {
    PresentedHeaders {
        x_mcp_token: token.to_vec(),
        authorization: auth.to_vec(),
        x_mcp_user_id: user.to_vec(),
    }
}

/// `oauth_bearer`: another scheme's token is taken only as the one
/// `Authorization: Bearer` value, never beside `X-MCP-Token`, never an
/// `mcp_` token, and exactly the bearer value presented.
fn check_oauth_bearer(headers: &PresentedHeaders<'_>) {
    let Ok(credential) = oauth_bearer(headers) else {
        return;
    };
    assert!(headers.x_mcp_token.is_empty(), "{headers:?}");
    assert!(!credential.token.starts_with(token::TOKEN_PREFIX));
    let [sent] = headers.authorization.as_slice() else {
        panic!("accepted without exactly one Authorization value: {headers:?}");
    };
    assert_eq!(bearer(sent), Some(credential.token.as_bytes()), "{sent:?}");
}

fn check_extract(headers: &PresentedHeaders<'_>) {
    let result = extract(headers);
    let no_token = headers.x_mcp_token.is_empty() && headers.authorization.is_empty();
    assert_eq!(
        result == Err(Denial::Missing),
        no_token,
        "{headers:?} {result:?}"
    );
    let credential = match result {
        Ok(credential) => credential,
        Err(Denial::Missing | Denial::Malformed) => return,
        Err(Denial::UserMismatch) => {
            // Only for a single claimed user id that is not UTF-8.
            assert!(
                matches!(headers.x_mcp_user_id.as_slice(), [one] if std::str::from_utf8(one).is_err())
            );
            return;
        }
        Err(other) => panic!("extract refused with {other:?}"),
    };
    let token = credential.token;
    assert!(token::is_well_formed(token), "{token:?}");
    assert!(headers.x_mcp_token.len() <= 1 && headers.authorization.len() <= 1);
    assert!(headers.x_mcp_user_id.len() <= 1);
    if let [sent] = headers.x_mcp_token.as_slice() {
        assert_eq!(trimmed(sent), token.as_bytes());
    }
    if let [sent] = headers.authorization.as_slice() {
        assert_eq!(bearer(sent), Some(token.as_bytes()), "{sent:?}");
    }
    match headers.x_mcp_user_id.as_slice() {
        [] => assert_eq!(credential.claimed_user_id, None),
        [sent] => {
            let text = std::str::from_utf8(sent).expect("accepted a user id that is not UTF-8");
            assert_eq!(credential.claimed_user_id, Some(text.trim()));
        }
        _ => unreachable!(),
    }

    // The same credential in canonical form, in either header or both.
    let bearer_value = format!("Bearer {token}");
    let user: Vec<&[u8]> = headers.x_mcp_user_id.clone();
    for (t, a) in [
        (vec![token.as_bytes()], vec![]),
        (vec![], vec![bearer_value.as_bytes()]),
        (vec![token.as_bytes()], vec![bearer_value.as_bytes()]),
    ] {
        let again = extract(&presented(&t, &a, &user));
        assert_eq!(again.as_ref().map(|c| c.token), Ok(token));
    }
    // A second token header, even an identical one, is refused.
    let twice = presented(&[token.as_bytes(), token.as_bytes()], &[], &user);
    assert_eq!(extract(&twice), Err(Denial::Malformed));
    let twice = presented(
        &[],
        &[bearer_value.as_bytes(), bearer_value.as_bytes()],
        &user,
    );
    assert_eq!(extract(&twice), Err(Denial::Malformed));
    // So is a second user id.
    let users = presented(&[token.as_bytes()], &[], &[b"alice", b"alice"]);
    assert_eq!(extract(&users), Err(Denial::Malformed));
    // And a differing token in the other header.
    let mut other = token.as_bytes().to_vec();
    let last = other.len() - 1;
    other[last] = if other[last] == b'A' { b'B' } else { b'A' };
    let other_bearer = [b"Bearer ".as_slice(), &other].concat();
    let differing = presented(&[token.as_bytes()], &[&other_bearer], &user);
    assert_eq!(extract(&differing), Err(Denial::Malformed));
    let differing = presented(&[&other], &[bearer_value.as_bytes()], &user);
    assert_eq!(extract(&differing), Err(Denial::Malformed));
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let lines = lines(data);
    let mut headers = PresentedHeaders::default();
    for line in &lines {
        match line {
            Line::Token(value) => headers.x_mcp_token.push(value),
            Line::Authorization(value) => headers.authorization.push(value),
            Line::UserId(value) => headers.x_mcp_user_id.push(value),
            Line::Text(text) => check_token_helpers(&String::from_utf8_lossy(text)),
        }
    }
    check_extract(&headers);
    check_oauth_bearer(&headers);
    // Each value on its own, in each header, and the whole input as text.
    for line in &lines {
        let (Line::Token(value) | Line::Authorization(value) | Line::UserId(value)) = line else {
            continue;
        };
        check_extract(&presented(&[value], &[], &[]));
        check_extract(&presented(&[], &[value], &[]));
        check_oauth_bearer(&presented(&[], &[value], &[]));
        if let Ok(text) = std::str::from_utf8(value) {
            check_token_helpers(text);
            check_token_helpers(text.trim());
        }
    }
    check_token_helpers(&String::from_utf8_lossy(data));
});
