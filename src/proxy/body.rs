//! Reading a whole request body for the policy: bounded by
//! `limits.max_body_bytes`, uncompressed, with an honest Content-Length.

use bytes::{Bytes, BytesMut};
use pingora::proxy::Session;

use super::headers;
use crate::policy::deny::Deny;

/// The body (`None` when empty), or the refusal: 413 over `limit` (announced
/// or actual), 415 for a Content-Encoding the policy cannot look inside, 400
/// for an ambiguous or broken framing.
pub async fn read_whole(session: &mut Session, limit: usize) -> Result<Option<Bytes>, Deny> {
    let req = session.req_header();
    let encoding = headers::single(req, "content-encoding")?;
    if encoding.is_some_and(|e| !e.eq_ignore_ascii_case("identity")) {
        return Err(Deny::unsupported_media_type());
    }
    if let Some(declared) = headers::single(req, "content-length")? {
        match declared.parse::<usize>() {
            Ok(n) if n > limit => return Err(Deny::payload_too_large(limit)),
            Ok(_) => {}
            Err(_) => return Err(Deny::bad_request("Invalid Content-Length")),
        }
    }
    let mut buf = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > limit {
                    return Err(Deny::payload_too_large(limit));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "reading the request body failed");
                return Err(Deny::bad_request("The request body could not be read"));
            }
        }
    }
    Ok((!buf.is_empty()).then(|| buf.freeze()))
}
