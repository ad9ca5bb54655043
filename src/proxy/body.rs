//! Request and response bodies: reading a whole request body for the
//! policy (bounded by `limits.max_body_bytes`, uncompressed, with an honest
//! Content-Length), and how streamed bodies are framed on each side.

use bytes::{Bytes, BytesMut};
use pingora::prelude::*;

use crate::listener::{Relayed, Session, SetHeaders};
use crate::policy::deny::Deny;
use crate::policy::header_names;

/// Sends `100 Continue` when the client waits for it before its body
/// (`Expect: 100-continue` on HTTP/1.1), once memgate wants that body.
pub async fn continue_if_expected(session: &mut Session) -> Result<()> {
    let req = session.req_header();
    let expects = req.version == http::Version::HTTP_11
        && req
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects && session.response_status().is_none() {
        session
            .write_continue_response()
            .await
            .map_err(|e| e.into_down())?;
    }
    Ok(())
}

/// How a streamed request's body reaches the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestFraming {
    Empty,
    /// The client's declared length (maybe 0), sent as declared.
    Length(usize),
    /// A body of unknown length (HTTP/1 chunked, or HTTP/2 without a
    /// length), sent chunked.
    Chunked,
}

impl RequestFraming {
    /// The framing of the client's request. A `Transfer-Encoding` other than
    /// plain `chunked` is refused; one sent with a `Content-Length` was
    /// refused for every route at admission already (`policy::admission`).
    pub fn of(session: &mut Session) -> Result<RequestFraming, Deny> {
        let req = session.req_header();
        let encoding = header_names::single(&req.headers, &http::header::TRANSFER_ENCODING)?;
        let length = header_names::single(&req.headers, &http::header::CONTENT_LENGTH)?;
        match (encoding, length) {
            (Some(te), _) if te.eq_ignore_ascii_case("chunked") => Ok(RequestFraming::Chunked),
            (Some(_), _) => Err(Deny::bad_request(
                "Only chunked Transfer-Encoding is accepted",
            )),
            (None, Some(n)) => match n.parse::<usize>() {
                Ok(n) => Ok(RequestFraming::Length(n)),
                Err(_) => Err(Deny::bad_request("Invalid Content-Length")),
            },
            (None, None) => Ok(if session.is_http2() && !session.is_body_empty() {
                RequestFraming::Chunked
            } else {
                RequestFraming::Empty
            }),
        }
    }

    /// The `Content-Length` the upstream request carries.
    pub fn content_length(self) -> Option<usize> {
        match self {
            RequestFraming::Empty => None,
            RequestFraming::Length(n) => Some(n),
            RequestFraming::Chunked => None,
        }
    }
}

/// Frames a streamed answer for the client: the upstream's length when the
/// body passes unchanged, else chunked on HTTP/1.1 (HTTP/1.0 clients read to
/// the close; HTTP/2 frames itself). Bodiless answers get neither.
pub fn frame_stream(header: &mut Relayed, session: &Session, length: Option<usize>) -> Result<()> {
    let status = header.status().as_u16();
    let req = session.req_header();
    let bodiless =
        status < 200 || status == 204 || status == 304 || req.method == http::Method::HEAD;
    // 1xx and 204 answers never carry a length (RFC 9110 §8.6); HEAD and
    // 304 answers may, for the body they stand for.
    if let Some(length) = length.filter(|_| status >= 200 && status != 204) {
        header.set(http::header::CONTENT_LENGTH, length.into())?;
    } else if !bodiless && !session.is_http2() && req.version == http::Version::HTTP_11 {
        header.set(
            http::header::TRANSFER_ENCODING,
            http::HeaderValue::from_static("chunked"),
        )?;
    }
    Ok(())
}

/// The body (`None` when empty), or the refusal: 413 over `limit` (announced
/// or actual), 415 for a Content-Encoding the policy cannot look inside, 400
/// for an ambiguous or broken framing.
pub async fn read_whole(session: &mut Session, limit: usize) -> Result<Option<Bytes>, Deny> {
    let req = session.req_header();
    let encoding = header_names::single(&req.headers, &http::header::CONTENT_ENCODING)?;
    if encoding.is_some_and(|e| !e.eq_ignore_ascii_case("identity")) {
        return Err(Deny::unsupported_media_type());
    }
    if let Some(declared) = header_names::single(&req.headers, &http::header::CONTENT_LENGTH)? {
        match declared.parse::<usize>() {
            Ok(n) if n > limit => return Err(Deny::payload_too_large(limit)),
            Ok(_) => {}
            Err(_) => return Err(Deny::bad_request("Invalid Content-Length")),
        }
    }
    if continue_if_expected(session).await.is_err() {
        return Err(Deny::bad_request("The request body could not be read"));
    }
    // A body that arrived in one piece is kept as it came; only one that
    // arrived in several is copied together.
    let mut whole = Bytes::new();
    let mut joined = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if whole.len() + joined.len() + chunk.len() > limit {
                    return Err(Deny::payload_too_large(limit));
                }
                if whole.is_empty() && joined.is_empty() {
                    whole = chunk;
                } else {
                    joined.extend_from_slice(&std::mem::take(&mut whole));
                    joined.extend_from_slice(&chunk);
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "reading the request body failed");
                return Err(Deny::bad_request("The request body could not be read"));
            }
        }
    }
    if !joined.is_empty() {
        whole = joined.freeze();
    }
    Ok((!whole.is_empty()).then_some(whole))
}
