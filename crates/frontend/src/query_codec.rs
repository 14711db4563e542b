//! Decoding of simple-query messages without pgwire's byte-at-a-time scan.
//!
//! pgwire decodes a Query by looking for its terminating NUL one byte at a
//! time and then copying the text through `from_utf8_lossy`. For the
//! megabyte statements of a batched INSERT that was about 9% of the server's
//! CPU. [`QueryCodec`] wraps pgwire's codec while the connection waits for
//! its next message: a complete Query is decoded here (the NUL found with
//! `memchr`, the text validated once and moved, not copied again); every
//! other message goes to pgwire's decoder unchanged. Invalid UTF-8 is
//! replaced as pgwire replaces it.
//!
//! A Query whose text does not end with the message's only NUL is refused
//! as a protocol violation, as PostgreSQL refuses it. pgwire read such a
//! text up to the first NUL anywhere in its buffer, across the message's
//! end, and decoded what was left as further messages.
//!
//! The connection loop swaps this codec in only around reading
//! (`Framed::map_codec` keeps the read and write buffers), because pgwire's
//! message handlers take the socket framed with its own codec.

use bytes::{Buf, BytesMut};
use pgwire::api::PgWireConnectionState;
use pgwire::messages::simplequery::{Query, MESSAGE_TYPE_BYTE_QUERY};
use pgwire::messages::PgWireFrontendMessage;
use pgwire::tokio::server::PgWireMessageServerCodec;
use tokio_util::codec::Decoder;

/// pgwire's server codec, with Query messages decoded by [`decode_query`].
pub(crate) struct QueryCodec<S>(PgWireMessageServerCodec<S>);

impl<S> QueryCodec<S> {
    pub(crate) fn new(inner: PgWireMessageServerCodec<S>) -> Self {
        Self(inner)
    }

    pub(crate) fn into_inner(self) -> PgWireMessageServerCodec<S> {
        self.0
    }
}

impl<S> Decoder for QueryCodec<S> {
    type Item = PgWireFrontendMessage;
    type Error = pgwire::error::PgWireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Self::Item>, Self::Error> {
        // Until startup the stream is untyped: a leading 'Q' is a length byte.
        let untyped = matches!(
            self.0.client_info.state,
            PgWireConnectionState::AwaitingSslRequest | PgWireConnectionState::AwaitingStartup
        );
        if !untyped {
            match decode_query(src) {
                Ok(Some(query)) => return Ok(Some(PgWireFrontendMessage::Query(query))),
                Ok(None) => {}
                Err(malformed) => return Err(malformed.into()),
            }
        }
        self.0.decode(src)
    }
}

/// Takes a complete Query message off the front of `src`: type byte, length,
/// then the text and a NUL that ends the message. `Ok(None)` leaves `src`
/// to pgwire: not a Query, not complete yet, or a length pgwire refuses.
fn decode_query(src: &mut BytesMut) -> std::io::Result<Option<Query>> {
    if src.first() != Some(&MESSAGE_TYPE_BYTE_QUERY) || src.len() < 5 {
        return Ok(None);
    }
    let Ok(length) = usize::try_from(i32::from_be_bytes([src[1], src[2], src[3], src[4]])) else {
        return Ok(None);
    };
    if src.len() < 1 + length {
        return Ok(None);
    }
    // The length counts itself and the NUL that ends the text.
    let body = &src[5.min(1 + length)..1 + length];
    if body.is_empty() || memchr::memchr(0, body) != Some(body.len() - 1) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "invalid Query message: its text must end with the message's only NUL byte",
        ));
    }
    let text_len = body.len() - 1;
    src.advance(5);
    let text = src.split_to(text_len);
    src.advance(1);
    let query = match String::from_utf8(Vec::from(text)) {
        Ok(query) => query,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    };
    Ok(Some(Query::new(query)))
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;
    use pgwire::api::DefaultClient;
    use pgwire::messages::DecodeContext;

    use super::*;

    fn query_message(body: &[u8], length: i32) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.put_u8(b'Q');
        buf.put_i32(length);
        buf.put_slice(body);
        buf
    }

    /// What pgwire's own decoder makes of the same bytes.
    fn pgwire_decode(mut buf: BytesMut) -> (Option<String>, BytesMut) {
        let mut ctx = DecodeContext::default();
        ctx.awaiting_frontend_ssl = false;
        ctx.awaiting_frontend_startup = false;
        let query = PgWireFrontendMessage::decode(&mut buf, &ctx)
            .ok()
            .flatten()
            .map(|m| match m {
                PgWireFrontendMessage::Query(q) => q.query,
                other => panic!("not a query: {other:?}"),
            });
        (query, buf)
    }

    #[test]
    fn decodes_queries_as_pgwire_does() {
        let texts: Vec<Vec<u8>> = vec![
            b"SELECT 1".to_vec(),
            "INSERT INTO t VALUES ('é', '✓')".as_bytes().to_vec(),
            b"x".repeat(100_000),
            // Invalid UTF-8 is replaced, as pgwire replaces it.
            b"SELECT '\xff\xfe'".to_vec(),
            Vec::new(),
        ];
        for text in texts {
            let mut body = text.clone();
            body.push(0);
            let mut buf = query_message(&body, body.len() as i32 + 4);
            buf.put_slice(b"S\0\0\0\x04");
            let (expected, rest) = pgwire_decode(buf.clone());
            assert!(expected.is_some());
            let decoded = decode_query(&mut buf).unwrap().map(|q| q.query);
            assert_eq!(decoded, expected);
            assert_eq!(buf, rest, "the next message stays in the buffer");
        }
    }

    #[test]
    fn leaves_incomplete_messages_and_other_lengths_to_pgwire() {
        let whole = query_message(b"SELECT 1\0", 13);
        for cut in 0..whole.len() {
            let mut part = BytesMut::from(&whole[..cut]);
            assert!(decode_query(&mut part).unwrap().is_none(), "cut at {cut}");
            assert_eq!(&part[..], &whole[..cut]);
        }
        let mut negative = query_message(b"\0", -1);
        assert!(decode_query(&mut negative).unwrap().is_none());
        let mut other = BytesMut::from(&b"S\0\0\0\x04"[..]);
        assert!(decode_query(&mut other).unwrap().is_none());
    }

    #[test]
    fn refuses_a_query_whose_text_does_not_end_the_message() {
        let malformed = [
            // A NUL before the end of the message.
            query_message(b"SELECT\0 1\0", 14),
            // No NUL at all, though the next message has one.
            query_message(b"SELECT 12S\0\0\0\x04", 13),
            // No room for a NUL, or a length shorter than its own header.
            query_message(b"", 4),
            query_message(b"\0", 3),
        ];
        for message in malformed {
            let mut buf = message.clone();
            assert!(decode_query(&mut buf).is_err(), "{message:?}");
        }
    }

    #[test]
    fn only_decodes_queries_once_the_connection_is_typed() {
        let client = DefaultClient::<()>::new("127.0.0.1:5432".parse().unwrap(), false);
        let mut codec = QueryCodec::new(PgWireMessageServerCodec::new(client));
        let message = query_message(b"SELECT 1\0", 13);
        // Before startup the same bytes are an untyped packet for pgwire.
        let mut buf = message.clone();
        let startup = codec.decode(&mut buf).unwrap();
        assert!(!matches!(startup, Some(PgWireFrontendMessage::Query(_))));
        codec.0.client_info.state = PgWireConnectionState::ReadyForQuery;
        let mut buf = message;
        match codec.decode(&mut buf).unwrap() {
            Some(PgWireFrontendMessage::Query(q)) => assert_eq!(q.query, "SELECT 1"),
            other => panic!("expected a query, got {other:?}"),
        }
        assert!(buf.is_empty());
    }
}
