//! A JWT's header and payload as read before its signature is checked: the
//! algorithm and key it names, and the claims whose `iss` picks the key set.
//! Pure. Nothing read here is trusted until the signature over it verifies
//! with a key of that issuer.

use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::denial::InvalidToken;

/// The members of a JWS header memgate reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwsHeader {
    /// One of the allowed algorithms.
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub typ: Option<String>,
}

/// The header and the (unverified) claims of the compact JWS `jwt`. Refused:
/// fewer than two segments, a segment that is not base64url of a JSON
/// object, an `alg` that is missing or not in `allowed` (`none`, HS*), a
/// `crit` header (no extension is implemented), and a `kid` or `typ` that is
/// not a string.
pub fn read_unverified(
    jwt: &str,
    allowed: &[Algorithm],
) -> Result<(JwsHeader, Map<String, Value>), InvalidToken> {
    let mut segments = jwt.split('.');
    let (Some(header), Some(payload)) = (segments.next(), segments.next()) else {
        return Err(InvalidToken::Malformed);
    };
    let header = json_segment(header)?;
    let alg = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(InvalidToken::Malformed)?;
    let alg = Algorithm::from_str(alg)
        .ok()
        .filter(|alg| allowed.contains(alg))
        .ok_or(InvalidToken::AlgorithmNotAllowed)?;
    if header.contains_key("crit") {
        return Err(InvalidToken::CriticalHeader);
    }
    let string = |name: &str| match header.get(name) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(InvalidToken::Malformed),
    };
    let header = JwsHeader {
        alg,
        kid: string("kid")?,
        typ: string("typ")?,
    };
    Ok((header, json_segment(payload)?))
}

/// A JWS segment that must decode to a JSON object.
fn json_segment(segment: &str) -> Result<Map<String, Value>, InvalidToken> {
    let bytes = URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| InvalidToken::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(object)) => Ok(object),
        _ => Err(InvalidToken::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn jws(header: &Value, claims: &Value) -> String {
        let segment = |value: &Value| URL_SAFE_NO_PAD.encode(value.to_string());
        format!("{}.{}.c2ln", segment(header), segment(claims))
    }

    #[test]
    fn the_header_names_an_allowed_algorithm_and_its_key() {
        let allowed = [Algorithm::ES256, Algorithm::RS256];
        let token = jws(
            &json!({"alg": "ES256", "kid": "k1", "typ": "at+jwt"}),
            &json!({"iss": "https://idp"}),
        );
        let (header, claims) = read_unverified(&token, &allowed).unwrap();
        assert_eq!(
            header,
            JwsHeader {
                alg: Algorithm::ES256,
                kid: Some("k1".into()),
                typ: Some("at+jwt".into())
            }
        );
        assert_eq!(claims["iss"], "https://idp");
        let refused = |header: Value| read_unverified(&jws(&header, &json!({})), &allowed);
        assert_eq!(
            refused(json!({"alg": "none"})),
            Err(InvalidToken::AlgorithmNotAllowed)
        );
        assert_eq!(
            refused(json!({"alg": "HS256"})),
            Err(InvalidToken::AlgorithmNotAllowed)
        );
        assert_eq!(
            refused(json!({"alg": "ES256", "crit": ["b64"]})),
            Err(InvalidToken::CriticalHeader)
        );
        assert_eq!(
            refused(json!({"alg": "ES256", "kid": 7})),
            Err(InvalidToken::Malformed)
        );
        assert_eq!(refused(json!({"kid": "k"})), Err(InvalidToken::Malformed));
        assert_eq!(
            read_unverified("e30", &allowed),
            Err(InvalidToken::Malformed)
        );
        assert_eq!(
            read_unverified("e30.W10.sig", &allowed),
            Err(InvalidToken::Malformed),
            "a header without alg, claims that are an array"
        );
    }
}
