//! A bound on the size of incoming protocol messages.
//!
//! pgwire accepts messages up to 1 GiB and buffers a message whole before
//! decoding it, so one client could make the server allocate that much by
//! announcing a large length. [`LimitedIo`] follows the message framing of
//! the bytes it reads and fails the read as soon as a header announces more
//! than the limit; the connection then ends without buffering the body.
//!
//! Framing: until the startup packet, messages are untyped (4-byte length,
//! 4-byte code); SSLRequest and GSSENCRequest keep the stream untyped, any
//! other code (startup, cancel) switches it to typed messages (1-byte type,
//! 4-byte length). Lengths include themselves.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const SSL_REQUEST_CODE: u32 = 80_877_103;
const GSSENC_REQUEST_CODE: u32 = 80_877_104;

pub(crate) struct LimitedIo<S> {
    inner: S,
    framing: Framing,
}

/// The framing tracker, apart from the I/O so that it can be tested alone.
struct Framing {
    max: usize,
    typed: bool,
    header: [u8; 8],
    header_len: usize,
    /// Body bytes of the current message not seen yet.
    body_left: usize,
}

impl<S> LimitedIo<S> {
    pub(crate) fn new(inner: S, max_message_bytes: usize) -> Self {
        Self {
            inner,
            framing: Framing::new(max_message_bytes),
        }
    }
}

impl Framing {
    fn new(max: usize) -> Self {
        Self {
            max,
            typed: false,
            header: [0; 8],
            header_len: 0,
            body_left: 0,
        }
    }

    /// Follows `data`, the next bytes of the stream.
    fn observe(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            if self.body_left > 0 {
                let skip = self.body_left.min(data.len());
                self.body_left -= skip;
                data = &data[skip..];
                continue;
            }
            let header_size = if self.typed { 5 } else { 8 };
            let take = (header_size - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&data[..take]);
            self.header_len += take;
            data = &data[take..];
            if self.header_len == header_size {
                self.header_len = 0;
                self.start_message()?;
            }
        }
        Ok(())
    }

    fn start_message(&mut self) -> io::Result<()> {
        let len_at = usize::from(self.typed);
        let len_bytes = [
            self.header[len_at],
            self.header[len_at + 1],
            self.header[len_at + 2],
            self.header[len_at + 3],
        ];
        let len = u32::from_be_bytes(len_bytes) as usize;
        // `len` counts itself; untyped headers also hold the 4-byte code.
        let header_body = if self.typed { 4 } else { 8 };
        if len < header_body {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("invalid message length {len}"),
            ));
        }
        if len > self.max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "message of {len} bytes exceeds the limit of {} bytes",
                    self.max
                ),
            ));
        }
        if !self.typed {
            let code = u32::from_be_bytes([
                self.header[4],
                self.header[5],
                self.header[6],
                self.header[7],
            ]);
            if code != SSL_REQUEST_CODE && code != GSSENC_REQUEST_CODE {
                self.typed = true;
            }
        }
        self.body_left = len - header_body;
        Ok(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for LimitedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => Poll::Ready(this.framing.observe(&buf.filled()[before..])),
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for LimitedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn untyped(code: u32, body: &[u8]) -> Vec<u8> {
        let mut out = ((8 + body.len()) as u32).to_be_bytes().to_vec();
        out.extend_from_slice(&code.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn typed(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![kind];
        out.extend_from_slice(&((4 + body.len()) as u32).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    fn stream() -> Vec<u8> {
        let mut data = untyped(SSL_REQUEST_CODE, b"");
        data.extend(untyped(196_608, b"user\0me\0\0"));
        data.extend(typed(b'Q', b"select 1\0"));
        data.extend(typed(b'Q', &[b'x'; 90]));
        data
    }

    #[test]
    fn follows_a_session_in_any_chunking() {
        let data = stream();
        for chunk in [1, 2, 3, 7, 64, data.len()] {
            let mut framing = Framing::new(100);
            for piece in data.chunks(chunk) {
                framing.observe(piece).expect("within limits");
            }
            assert_eq!(
                (framing.body_left, framing.header_len),
                (0, 0),
                "chunk {chunk}"
            );
            assert!(framing.typed);
        }
    }

    #[test]
    fn oversized_message_fails_at_its_header() {
        let mut data = stream();
        data.extend(typed(b'Q', &[b'y'; 200])[..5].iter());
        let mut framing = Framing::new(100);
        let err = framing.observe(&data).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("exceeds the limit"), "{err}");
    }

    #[test]
    fn garbage_is_refused() {
        // An HTTP request sent to the SQL port reads as a 1 GiB startup packet.
        let mut framing = Framing::new(1 << 20);
        assert!(framing.observe(b"GET / HTTP/1.1\r\n\r\n").is_err());
        let mut framing = Framing::new(1 << 20);
        assert!(framing.observe(&[0, 0, 0, 2, 0, 0, 0, 0]).is_err());
    }
}
