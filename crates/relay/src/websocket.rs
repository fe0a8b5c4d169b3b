//! The server side of RFC 6455 over an upgraded HTTP/1.1 connection, written for the memory of
//! idle connections: between messages it holds no buffer at all.
//!
//! - A frame's header is read into a 14-byte array (the largest header a client sends); the
//!   payload of a message is allocated once its size has passed the limit, and grows as its
//!   bytes arrive (at most 16 KiB ahead of them, so a header alone reserves little), and is
//!   handed to the session when the message is complete, so an idle connection keeps no read
//!   buffer, however large the largest message it ever sent.
//! - Outgoing frames are written into a buffer that is freed once flushed.
//!
//! Fragmented messages are reassembled; ping is answered with pong; a close is echoed and ends
//! the reading. A client that breaks the protocol gets a close frame with the RFC's code (1002
//! protocol, 1007 invalid UTF-8 in a text message, 1009 a message over the size limit) and its
//! reading ends. No extensions (permessage-deflate) and no subprotocols are negotiated.
//!
//! The upgrade itself ([`upgrade_request`], [`accept_key`]) is checked and answered in
//! `http::root`; docs/PERFORMANCE.md, "Memory per connection", has the measurements.

use axum::http::{header, HeaderMap, Method, Version};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The largest frame header a client sends: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEAD: usize = 14;

/// Output held before `poll_ready` writes it out (and waits for the socket) before taking
/// more: a burst of small messages goes out in one write, a large backlog in chunks.
const WRITE_CHUNK: usize = 64 * 1024;

/// The largest payload of a control frame.
const MAX_CONTROL: usize = 125;

/// Most bytes reserved for a frame's payload before they arrive.
const UPFRONT: usize = 16 * 1024;

const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Close codes sent by the relay.
pub mod code {
    /// The endpoint is going away (shutdown, a slow reader, the connection's age).
    pub const GOING_AWAY: u16 = 1001;
    /// A protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// A text message that is not UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// A message larger than the limit.
    pub const TOO_BIG: u16 = 1009;
}

/// A message from the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A text message (valid UTF-8).
    Text(String),
    /// A binary message, dropped: its size.
    Binary(usize),
    /// The client's close frame (already echoed): nothing more is read.
    Close,
}

/// Why reading ended other than by the close handshake.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The client broke the protocol; a close frame with `code` was queued.
    #[error("protocol error ({code}): {reason}")]
    Protocol { code: u16, reason: &'static str },
    /// A close frame was sent already: nothing more may be sent.
    #[error("the connection is closing")]
    Closing,
}

impl Error {
    fn protocol(reason: &'static str) -> Self {
        Error::Protocol {
            code: code::PROTOCOL,
            reason,
        }
    }
}

/// The frame whose payload is being read.
#[derive(Debug, Clone, Copy)]
struct Frame {
    opcode: u8,
    fin: bool,
    mask: [u8; 4],
    /// Where its payload starts in `message` (a control frame's goes after the data read so
    /// far). 32 bits: the size limit is at most `u32::MAX`.
    start: u32,
    len: u32,
}

impl Frame {
    fn range(&self) -> std::ops::Range<usize> {
        self.start as usize..self.start as usize + self.len as usize
    }
}

/// A session's WebSocket: over the connection hyper upgraded.
pub type Upgraded = WebSocket<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>>;

/// One server-side WebSocket connection over `S`.
pub struct WebSocket<S> {
    io: S,
    /// The largest message accepted (the sum of its frames).
    max_message: u32,
    /// Bytes read past the last frame: the next frame's header, or part of it.
    head: [u8; MAX_HEAD],
    head_len: u8,
    /// The opcode of the data message being reassembled (0: none).
    message_opcode: u8,
    /// The frame being read, once its header is.
    frame: Option<Frame>,
    /// The data message being read, then a control frame's payload while it is read: empty,
    /// without allocation, between messages.
    message: Vec<u8>,
    /// Frames to send; freed once written.
    out: Vec<u8>,
    written: usize,
    /// A close frame was queued: nothing more is sent.
    close_sent: bool,
    /// Reading is over (the client's close, an error or the end of the stream).
    read_done: bool,
}

impl<S> WebSocket<S> {
    /// `io` is the upgraded connection (the handshake's response already sent);
    /// `max_message` is capped at `u32::MAX`.
    pub fn new(io: S, max_message: usize) -> Self {
        WebSocket {
            io,
            max_message: u32::try_from(max_message).unwrap_or(u32::MAX),
            head: [0; MAX_HEAD],
            head_len: 0,
            message_opcode: 0,
            frame: None,
            message: Vec::new(),
            out: Vec::new(),
            written: 0,
            close_sent: false,
            read_done: false,
        }
    }

    /// Queues a text message; Err once a close frame was sent.
    pub fn feed_text(&mut self, text: &str) -> Result<(), Error> {
        if self.close_sent {
            return Err(Error::Closing);
        }
        self.queue(TEXT, &[text.as_bytes()]);
        Ok(())
    }

    /// Queues a close frame (with a code and reason, or empty), unless one was sent.
    pub fn feed_close(&mut self, close: Option<(u16, &str)>) {
        if self.close_sent {
            return;
        }
        self.close_sent = true;
        match close {
            Some((code, reason)) => {
                // A close frame's payload is at most 125 bytes: the reason is cut on a char
                // boundary if it is longer (the relay's reasons are short).
                let mut end = reason.len().min(MAX_CONTROL - 2);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                self.queue(CLOSE, &[&code.to_be_bytes(), &reason.as_bytes()[..end]]);
            }
            None => self.queue(CLOSE, &[]),
        }
    }

    /// Frames `parts` (concatenated) as one unmasked final frame.
    fn queue(&mut self, opcode: u8, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        self.out.reserve(len + 10);
        self.out.push(0x80 | opcode);
        if len < 126 {
            self.out.push(len as u8);
        } else if let Ok(short) = u16::try_from(len) {
            self.out.push(126);
            self.out.extend_from_slice(&short.to_be_bytes());
        } else {
            self.out.push(127);
            self.out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        for part in parts {
            self.out.extend_from_slice(part);
        }
    }

    /// Bytes queued and not yet written.
    pub fn pending(&self) -> usize {
        self.out.len() - self.written
    }

    /// The client broke the protocol: a close frame with the code, and reading ends.
    fn fail(&mut self, error: Error) -> Error {
        if let Error::Protocol { code, reason } = error {
            self.feed_close(Some((code, reason)));
        }
        self.end_reading();
        error
    }

    fn end_reading(&mut self) {
        self.read_done = true;
        self.frame = None;
        self.message = Vec::new();
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// Writes what is queued once more than [`WRITE_CHUNK`] is: Ready when more may be fed.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending() >= WRITE_CHUNK {
            ready!(self.poll_write_out(cx))?;
        }
        Poll::Ready(Ok(()))
    }

    /// Writes everything queued and flushes the connection.
    pub fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_out(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        // Written: the buffer is freed, an idle connection holds none.
        self.out = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }

    /// Sends a text message and flushes.
    pub async fn send_text(&mut self, text: &str) -> Result<(), Error> {
        self.feed_text(text)?;
        std::future::poll_fn(|cx| self.poll_flush(cx)).await?;
        Ok(())
    }

    /// Sends a close frame (unless one was sent) and flushes.
    pub async fn send_close(&mut self, close: Option<(u16, &str)>) -> io::Result<()> {
        self.feed_close(close);
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    /// Ends the connection: a close frame unless one was sent (the echo of the client's, or
    /// the relay's), what is queued written out, and the sending side shut down.
    pub async fn close(&mut self) -> io::Result<()> {
        self.feed_close(None);
        std::future::poll_fn(|cx| self.poll_flush(cx)).await?;
        std::future::poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await
    }

    /// The client's next message; None once reading is over (after [`Incoming::Close`] or an
    /// error). Pings are answered here (the pong is written as soon as the socket takes it).
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Incoming, Error>>> {
        if self.read_done {
            return Poll::Ready(None);
        }
        let result = self.poll_message(cx);
        if let Poll::Ready(Err(_)) = &result {
            // The close frame of a protocol error goes out if the socket takes it now;
            // `close` writes it otherwise.
            let _ = self.poll_write_out(cx);
        }
        result.map(Some)
    }

    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Result<Incoming, Error>> {
        loop {
            let frame = match self.frame {
                Some(frame) => frame,
                None => match self.parse_head() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => {
                        let len = self.head_len as usize;
                        let mut buf = ReadBuf::new(&mut self.head[len..]);
                        if let Err(e) = ready!(Pin::new(&mut self.io).poll_read(cx, &mut buf)) {
                            return Poll::Ready(Err(self.fail(e.into())));
                        }
                        let n = buf.filled().len();
                        if n == 0 {
                            let eof = io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "connection closed without a close frame",
                            );
                            return Poll::Ready(Err(self.fail(eof.into())));
                        }
                        self.head_len += n as u8;
                        continue;
                    }
                    Err(e) => return Poll::Ready(Err(self.fail(e))),
                },
            };
            if let Err(e) = ready!(self.poll_payload(cx, frame)) {
                return Poll::Ready(Err(self.fail(e)));
            }
            self.frame = None;
            if let Some(message) = self.complete(frame, cx) {
                return Poll::Ready(message.map_err(|e| self.fail(e)));
            }
        }
    }

    /// Parses and checks the header in `head`, if it is all there: the frame it starts, with
    /// its buffer allocated and the payload bytes already read moved into it.
    fn parse_head(&mut self) -> Result<Option<Frame>, Error> {
        let head = &self.head[..self.head_len as usize];
        if head.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (head[0], head[1]);
        let extra = match b1 & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let masked = b1 & 0x80 != 0;
        let size = 2 + extra + if masked { 4 } else { 0 };
        // The first two bytes are enough for most checks: a client that breaks the protocol
        // learns it before sending the rest.
        check_start(b0, masked, self.message_opcode)?;
        if head.len() < size {
            return Ok(None);
        }
        let len = match extra {
            0 => u64::from(b1 & 0x7F),
            2 => u64::from(u16::from_be_bytes([head[2], head[3]])),
            _ => u64::from_be_bytes(head[2..10].try_into().expect("8 bytes")),
        };
        if len >> 63 != 0 {
            return Err(Error::protocol(
                "payload length with its most significant bit set",
            ));
        }
        let mut mask = [0; 4];
        mask.copy_from_slice(&head[size - 4..size]);
        let opcode = b0 & 0x0F;
        let control = opcode & 0x8 != 0;
        if control && len > MAX_CONTROL as u64 {
            return Err(Error::protocol("control frame longer than 125 bytes"));
        }
        if !control {
            // Checked before anything is allocated.
            let total = (self.message.len() as u64).saturating_add(len);
            if total > u64::from(self.max_message) {
                return Err(Error::Protocol {
                    code: code::TOO_BIG,
                    reason: "message too big",
                });
            }
            if opcode != CONTINUATION {
                self.message_opcode = opcode;
            }
        }
        let buf = &mut self.message;
        // Both fit: the message (with a control frame's 125 bytes) is within the u32 limit.
        let frame = Frame {
            opcode,
            fin: b0 & 0x80 != 0,
            mask,
            start: buf.len() as u32,
            len: len as u32,
        };
        let len = len as usize;
        // The bytes read past the header: this frame's payload, then what follows it.
        let after = &self.head[size..self.head_len as usize];
        if after.len() < len {
            // Room for the payload and for the next frame's header, read along with its end;
            // at most UPFRONT before the bytes arrive (the buffer grows with them), so a header
            // alone claiming a large frame reserves little.
            buf.reserve_exact(len.min(UPFRONT) + MAX_HEAD);
        }
        let take = after.len().min(len);
        buf.extend_from_slice(&after[..take]);
        let rest = size + take..self.head_len as usize;
        self.head_len = rest.len() as u8;
        self.head.copy_within(rest, 0);
        self.frame = Some(frame);
        Ok(Some(frame))
    }

    /// Reads the rest of `frame`'s payload (and, when the socket has it, the next header).
    fn poll_payload(&mut self, cx: &mut Context<'_>, frame: Frame) -> Poll<Result<(), Error>> {
        use bytes::BufMut;
        use tokio::io::AsyncReadExt;
        let buf = &mut self.message;
        let end = frame.range().end;
        while buf.len() < end {
            // The header after this frame may come along: at most MAX_HEAD past its end (the
            // room `parse_head` reserved; read into without zeroing it first).
            let want = end + MAX_HEAD - buf.len();
            let mut limited = (&mut *buf).limit(want);
            let mut read = std::pin::pin!(self.io.read_buf(&mut limited));
            match ready!(read.as_mut().poll(cx)) {
                Err(e) => return Poll::Ready(Err(e.into())),
                Ok(0) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed in the middle of a frame",
                    )
                    .into()))
                }
                Ok(_) => {}
            }
        }
        if buf.len() > end {
            let past = buf.len() - end;
            self.head[..past].copy_from_slice(&buf[end..]);
            self.head_len = past as u8;
            buf.truncate(end);
        }
        unmask(&mut buf[frame.range()], frame.mask);
        Poll::Ready(Ok(()))
    }

    /// Acts on a frame read in full: the message it completes, if any.
    fn complete(&mut self, frame: Frame, cx: &mut Context<'_>) -> Option<Result<Incoming, Error>> {
        match frame.opcode {
            TEXT | BINARY | CONTINUATION => {
                if !frame.fin {
                    return None;
                }
                let payload = std::mem::take(&mut self.message);
                let opcode = std::mem::replace(&mut self.message_opcode, 0);
                Some(if opcode == TEXT {
                    String::from_utf8(payload)
                        .map(Incoming::Text)
                        .map_err(|_| Error::Protocol {
                            code: code::INVALID_DATA,
                            reason: "text message is not UTF-8",
                        })
                } else {
                    Ok(Incoming::Binary(payload.len()))
                })
            }
            control => {
                // The payload leaves the message buffer, which is freed unless a fragmented
                // message is in it.
                let mut payload = [0; MAX_CONTROL];
                let payload = &mut payload[..frame.len as usize];
                payload.copy_from_slice(&self.message[frame.range()]);
                self.message.truncate(frame.start as usize);
                if self.message.is_empty() {
                    self.message = Vec::new();
                }
                match control {
                    // A client that pings without reading gets no more pongs once a chunk
                    // waits for it, so what waits stays bounded (RFC 6455 5.5.3 lets an
                    // endpoint answer only the latest of several pings).
                    PING if !self.close_sent && self.pending() < WRITE_CHUNK => {
                        self.queue(PONG, &[payload]);
                        // Out as soon as the socket takes it; else the socket's next write
                        // sends it (the waker is registered for that).
                        let _ = self.poll_write_out(cx);
                        None
                    }
                    CLOSE => Some(self.on_close(payload)),
                    _ => None,
                }
            }
        }
    }

    /// The client's close frame: checked, echoed (its code), and reading ends.
    fn on_close(&mut self, payload: &[u8]) -> Result<Incoming, Error> {
        match payload.len() {
            0 => self.feed_close(None),
            1 => return Err(Error::protocol("close frame with a 1-byte payload")),
            _ => {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                if !valid_close_code(code) {
                    return Err(Error::protocol("invalid close code"));
                }
                if std::str::from_utf8(&payload[2..]).is_err() {
                    return Err(Error::Protocol {
                        code: code::INVALID_DATA,
                        reason: "close reason is not UTF-8",
                    });
                }
                self.feed_close(Some((code, "")));
            }
        }
        self.end_reading();
        Ok(Incoming::Close)
    }
}

/// The checks the first header byte allows (with whether the frame is masked).
fn check_start(b0: u8, masked: bool, message_opcode: u8) -> Result<(), Error> {
    if b0 & 0x70 != 0 {
        return Err(Error::protocol(
            "reserved bits set (no extension was negotiated)",
        ));
    }
    if !masked {
        return Err(Error::protocol("client frame not masked"));
    }
    let fin = b0 & 0x80 != 0;
    match b0 & 0x0F {
        CONTINUATION if message_opcode == 0 => Err(Error::protocol(
            "continuation frame without a message to continue",
        )),
        TEXT | BINARY if message_opcode != 0 => Err(Error::protocol(
            "new message before the fragmented one was finished",
        )),
        CONTINUATION | TEXT | BINARY => Ok(()),
        CLOSE | PING | PONG if !fin => Err(Error::protocol("fragmented control frame")),
        CLOSE | PING | PONG => Ok(()),
        _ => Err(Error::protocol("unknown opcode")),
    }
}

/// Close codes a client may send (RFC 6455 7.4; 1004–1006 and 1015 are never sent in a frame).
fn valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// XORs `payload` with the 4-byte mask, eight bytes at a time.
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let word = u64::from_ne_bytes(chunk.try_into().expect("8 bytes")) ^ wide;
        chunk.copy_from_slice(&word.to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

/// The `Sec-WebSocket-Key` of an HTTP/1.1 WebSocket upgrade request, if `method` and
/// `headers` are one (the checks axum's `WebSocketUpgrade` makes): GET, `Connection` with
/// `upgrade`, `Upgrade: websocket`, `Sec-WebSocket-Version: 13` and a key.
pub fn upgrade_request<'h>(
    method: &Method,
    version: Version,
    headers: &'h HeaderMap,
) -> Option<&'h [u8]> {
    let eq = |name, value: &str| {
        headers
            .get(name)
            .is_some_and(|h| h.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
    };
    let connection_upgrade = headers.get_all(header::CONNECTION).iter().any(|h| {
        h.as_bytes()
            .split(|&b| b == b',')
            .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    (*method == Method::GET
        && version <= Version::HTTP_11
        && connection_upgrade
        && eq(header::UPGRADE, "websocket")
        && eq(header::SEC_WEBSOCKET_VERSION, "13"))
    .then(|| headers.get(header::SEC_WEBSOCKET_KEY))
    .flatten()
    .map(|key| key.as_bytes())
}

/// `Sec-WebSocket-Accept` for a request's key (RFC 6455 4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    use base64::Engine;
    use sha1::Digest;
    let mut sha1 = sha1::Sha1::new();
    sha1.update(key);
    sha1.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha1.finalize())
}

#[cfg(test)]
#[path = "websocket_tests.rs"]
mod tests;
