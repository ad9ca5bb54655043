//! Reading a message body by its framing, from bytes as they arrive.

use bytes::{Bytes, BytesMut};

use super::chunked::{ChunkError, ChunkedDecoder, Decoded};
use super::head::Framing;

#[derive(Debug)]
pub enum BodyReader {
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Until the peer closes.
    UntilClose,
    Done,
}

/// What the buffer yields next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    NeedMore,
    End,
}

impl BodyReader {
    /// A body framed as an upstream's answer may be (RFC 9112 as written).
    pub fn of(framing: Framing) -> BodyReader {
        BodyReader::framed(framing, ChunkedDecoder::default)
    }

    /// A client's request body: chunks are read by the stricter request
    /// rules ([`ChunkedDecoder::request`]).
    pub fn of_request(framing: Framing) -> BodyReader {
        BodyReader::framed(framing, ChunkedDecoder::request)
    }

    fn framed(framing: Framing, chunked: fn() -> ChunkedDecoder) -> BodyReader {
        match framing {
            Framing::Empty | Framing::Length(0) => BodyReader::Done,
            Framing::Length(n) => BodyReader::Length(n),
            Framing::Chunked => BodyReader::Chunked(chunked()),
            Framing::UntilClose => BodyReader::UntilClose,
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, BodyReader::Done)
    }

    /// Takes the next piece of the body from the front of `buf`; bytes past
    /// the body's end are left there.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Step, ChunkError> {
        let step = match self {
            BodyReader::Done => Step::End,
            BodyReader::Length(_) | BodyReader::UntilClose if buf.is_empty() => Step::NeedMore,
            BodyReader::Length(left) => {
                let n = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                *left -= n as u64;
                if *left == 0 {
                    *self = BodyReader::Done;
                }
                Step::Data(buf.split_to(n).freeze())
            }
            BodyReader::UntilClose => Step::Data(buf.split().freeze()),
            BodyReader::Chunked(decoder) => match decoder.decode(buf)? {
                Decoded::Data(data) => Step::Data(data),
                Decoded::NeedMore => Step::NeedMore,
                Decoded::Done => {
                    *self = BodyReader::Done;
                    Step::End
                }
            },
        };
        Ok(step)
    }

    /// The peer closed: `true` when that ends the body properly (a body
    /// delimited by the close), `false` when the body was cut short.
    pub fn closed(&mut self) -> bool {
        let ends = matches!(self, BodyReader::UntilClose | BodyReader::Done);
        if ends {
            *self = BodyReader::Done;
        }
        ends
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_length_body_stops_at_its_length() {
        let mut reader = BodyReader::of(Framing::Length(5));
        let mut buf = BytesMut::from("hel");
        assert_eq!(reader.next(&mut buf), Ok(Step::Data(Bytes::from("hel"))));
        assert_eq!(reader.next(&mut buf), Ok(Step::NeedMore));
        buf.extend_from_slice(b"loGET /");
        assert_eq!(reader.next(&mut buf), Ok(Step::Data(Bytes::from("lo"))));
        assert_eq!(reader.next(&mut buf), Ok(Step::End));
        assert_eq!(&buf[..], b"GET /");
        assert!(!BodyReader::of(Framing::Length(5)).closed(), "cut short");
    }

    #[test]
    fn a_body_until_the_close_ends_with_it() {
        let mut reader = BodyReader::of(Framing::UntilClose);
        let mut buf = BytesMut::from("abc");
        assert_eq!(reader.next(&mut buf), Ok(Step::Data(Bytes::from("abc"))));
        assert_eq!(reader.next(&mut buf), Ok(Step::NeedMore));
        assert!(reader.closed());
        assert_eq!(reader.next(&mut buf), Ok(Step::End));
        assert_eq!(BodyReader::of(Framing::Empty).next(&mut buf), Ok(Step::End));
    }

    #[test]
    fn a_chunked_body_ends_at_its_last_chunk() {
        let mut reader = BodyReader::of(Framing::Chunked);
        let mut buf = BytesMut::from("3\r\nabc\r\n0\r\n\r\nNEXT");
        assert_eq!(reader.next(&mut buf), Ok(Step::Data(Bytes::from("abc"))));
        assert_eq!(reader.next(&mut buf), Ok(Step::End));
        assert!(reader.is_done());
        assert_eq!(&buf[..], b"NEXT");
        let mut broken = BodyReader::of(Framing::Chunked);
        assert!(broken.next(&mut BytesMut::from("x\r\n")).is_err());
    }

    #[test]
    fn only_request_bodies_refuse_padded_chunk_sizes() {
        let padded = "03\r\nabc\r\n0\r\n\r\n";
        let mut answer = BodyReader::of(Framing::Chunked);
        assert_eq!(
            answer.next(&mut BytesMut::from(padded)),
            Ok(Step::Data(Bytes::from("abc")))
        );
        let mut request = BodyReader::of_request(Framing::Chunked);
        assert!(request.next(&mut BytesMut::from(padded)).is_err());
        let mut plain = BodyReader::of_request(Framing::Chunked);
        let mut buf = BytesMut::from("3\r\nabc\r\n0\r\n\r\n");
        assert_eq!(plain.next(&mut buf), Ok(Step::Data(Bytes::from("abc"))));
        assert_eq!(plain.next(&mut buf), Ok(Step::End));
    }
}
