//! WebSocket plumbing: the upgrade handshake, the hand-over of the socket from actix-http to the
//! connection (see [`crate::transport::conn`]), and a reader that turns the socket's bytes into
//! whole messages (continuations reassembled, with the size bound applied to the whole message).
//!
//! The size bound is applied at each frame's header, before any of its payload is buffered:
//! actix-http's codec compares a frame's announced length with its limit only once the whole
//! frame has arrived, so a client announcing 2^40 bytes could make it buffer gigabytes. Here
//! [`FrameReader`] reads the header first ([`FrameHeader::parse`], [`admit`]) and refuses the
//! frame there; the codec only ever sees whole, admitted frames, and the read buffer never
//! grows past the current frame (header + `max_size`) or one read chunk, whichever is larger.
//!
//! Why the socket is taken over: while actix-http's HTTP/1 dispatcher drives an upgraded
//! connection it keeps an 8 KiB read and an 8 KiB write buffer for the connection's whole life,
//! more than everything else an idle connection holds (docs/benchmarks.md, "idle"). Here an idle
//! connection holds no buffer at all: the reader allocates when bytes arrive and lets go once
//! they are decoded, and the writer writes the outbox's chunks straight to the socket.
//!
//! Why this file is one piece (about 800 lines, a fifth of them tests): the frame header parser,
//! its admission rule, the sans-I/O reader and the socket-driven reader are one mechanism whose
//! memory bound (one admitted frame or one read chunk) only holds if they agree; the upgrade
//! hand-over beside them is the only place a reader is made.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_http::ws::{Codec, Frame, HandshakeError, Item, ProtocolError};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use futures_util::Stream;
use tokio::net::tcp::OwnedReadHalf;

use super::outbox::{Outbox, OutboxStream};
use super::socket::WriteSocket;

/// A whole message from the client.
#[derive(Debug)]
pub enum WsMessage {
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    Close,
}

/// Why the read side failed. Each maps to a close code.
#[derive(Debug)]
pub enum ReadError {
    /// A message over the limit (close 1009).
    TooLarge { limit: usize },
    /// Anything else the framing layer refused (close 1002).
    Protocol(String),
}

/// Why an upgrade was refused (the caller answers 400).
#[derive(Debug)]
pub enum UpgradeError {
    Handshake(HandshakeError),
    /// A valid handshake that did not come through the upgrade service (e.g. `Upgrade:
    /// websocket, h2c`, which actix-http does not treat as an upgrade), so there is no socket
    /// to hand over.
    NotUpgradable,
}

impl std::fmt::Display for UpgradeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpgradeError::Handshake(e) => write!(f, "{e}"),
            UpgradeError::NotUpgradable => f.write_str("the Upgrade header must be `websocket`"),
        }
    }
}

// Here rather than in `error`: the transport may name the HTTP edge's error type, the error
// type never names the transport (one-way arrows).
impl From<UpgradeError> for crate::error::AppError {
    fn from(e: UpgradeError) -> Self {
        Self::new(
            crate::error::ErrorCode::BadRequest,
            format!("not a WebSocket upgrade: {e}"),
        )
    }
}

/// How a taken-over socket is shared for direct writes (`transport::socket`).
pub struct Direct {
    /// Given the socket once the connection runs; it attaches it to the outbox that may write
    /// directly (at once for a plain WebSocket, at the switch for an Engine.IO upgrade).
    pub attach: Box<dyn FnOnce(Arc<WriteSocket>)>,
    /// The outbox whose chunks the writer reports written (`Outbox::written`).
    pub written: Arc<Outbox>,
    /// `written` is also the body's outbox from the start (a plain WebSocket): the 101 answer
    /// is queued at its front instead of written on its own, so it goes out in one write with
    /// what the connection's actor queues as it starts (a welcome, an Engine.IO open packet).
    pub answer_in_outbox: bool,
}

impl Direct {
    /// Direct writes into `outbox` from the start.
    pub fn to(outbox: Arc<Outbox>) -> Self {
        let target = outbox.clone();
        Self {
            attach: Box::new(move |socket| target.attach(socket)),
            written: outbox,
            answer_in_outbox: true,
        }
    }
}

/// Put on a request by the upgrade service: its socket can be taken over.
pub(crate) struct Upgradable;

/// The outbound side of a taken-over connection: WebSocket frames, already encoded.
pub type Body = Pin<Box<dyn Stream<Item = Result<Bytes, actix_web::Error>>>>;

/// Left on a 101 response by a handler that accepted an upgrade; the upgrade service takes it
/// off, writes the 101, and runs the connection: `body` is written to the socket, and `open`
/// gets the reader of the client's messages (usually to start the connection's actor).
pub(crate) struct Takeover {
    pub body: Body,
    /// Direct writes (`transport::socket`): who gets the socket, and which outbox the writer
    /// tells when it finished a chunk.
    pub direct: Option<Direct>,
    pub limit: FrameLimit,
    pub open: Box<dyn FnOnce(WsReader)>,
}

/// The bound on a connection's messages, shared by its reader and whoever decides it: a session
/// starts an unauthenticated client on a small bound
/// (`SWITCHYARD_MAX_UNAUTHENTICATED_FRAME_BYTES`) and raises it once the client authenticated.
/// The reader applies the current value to the next frame header it reads.
#[derive(Debug, Clone)]
pub struct FrameLimit(Arc<AtomicUsize>);

impl FrameLimit {
    pub fn new(max_size: usize) -> Self {
        Self(Arc::new(AtomicUsize::new(max_size)))
    }

    pub fn get(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    pub fn set(&self, max_size: usize) {
        self.0.store(max_size, Ordering::Relaxed);
    }
}

impl From<usize> for FrameLimit {
    fn from(max_size: usize) -> Self {
        Self::new(max_size)
    }
}

/// A one-way signal between a connection's reader and writer: raised once, seen or awaited by
/// the other side. Atomics only: the writer checks it on every wake-up.
#[derive(Default)]
pub(crate) struct Signal {
    raised: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    pub fn raise(&self) {
        self.raised.store(true, Ordering::Release);
        self.waker.wake();
    }

    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::Acquire)
    }

    /// Ready once raised; otherwise `cx` is woken when it is.
    pub fn poll_raised(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_raised() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // Raised between the look and the registration: the wake may have missed us.
        if self.is_raised() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    pub async fn raised(&self) {
        std::future::poll_fn(|cx| self.poll_raised(cx)).await
    }
}

/// Shared by a connection's reader and writer.
#[derive(Default)]
pub(crate) struct Ending {
    /// The writer is done (close frame written or the socket failed): the reader ends too, as
    /// the whole connection did when actix-http drove it.
    pub writer_done: Signal,
    /// The reader was dropped (the connection's actor is gone).
    pub reader_gone: Signal,
    /// What a dropped reader hands back for the lingering close (see
    /// [`crate::transport::conn`]): closing a socket with unread input makes the kernel answer
    /// with a reset, which throws away the frames still in the send buffer.
    pub returned: std::sync::Mutex<Option<Returned>>,
}

/// The read side of a connection whose reader was dropped.
pub(crate) struct Returned {
    pub socket: OwnedReadHalf,
    /// Bytes read but not decoded; they start at a frame boundary.
    pub buf: BytesMut,
    /// The client's close frame was read: nothing legitimate follows it.
    pub client_closed: bool,
}

/// Follows the frames of a client's byte stream without keeping them, to spot its close frame.
/// Used while draining a closed connection: a client that sent its close frame sends nothing
/// more, so the connection can be closed without waiting for the client's end of stream.
#[derive(Default)]
pub(crate) struct FrameSkipper {
    /// The current frame's header so far (at most 14 bytes).
    head: Vec<u8>,
    /// Payload bytes of the current frame still to skip.
    skip: u64,
}

impl FrameSkipper {
    /// Consumes `data`; true once a close frame's header went by.
    pub fn feed(&mut self, mut data: &[u8]) -> bool {
        while !data.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(data.len() as u64);
                self.skip -= n;
                data = &data[n as usize..];
                continue;
            }
            self.head.push(data[0]);
            data = &data[1..];
            if let Some(header) = FrameHeader::parse(&self.head) {
                self.head.clear();
                if header.opcode == OPCODE_CLOSE {
                    return true;
                }
                self.skip = header.len;
            }
        }
        false
    }
}

/// The close frame's opcode (RFC 6455 §5.5.1).
const OPCODE_CLOSE: u8 = 0x8;

/// The largest payload a control frame may have (RFC 6455 §5.5).
const MAX_CONTROL_PAYLOAD: u64 = 125;

/// The longest frame header: 2 bytes, an 8-byte extended length and a 4-byte mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// A frame's header as the client sent it (RFC 6455 §5.2): enough to decide, before any of its
/// payload is buffered, whether the frame may be read at all. The one header parser of the
/// transport: the reader uses it to refuse frames, the lingering close to skip them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// The FIN bit: the last frame of its message.
    pub fin: bool,
    pub opcode: u8,
    /// The payload length as announced (up to 2^64 - 1; refusing it is [`admit`]'s job).
    pub len: u64,
    /// The header's own length, mask key included (2 to [`MAX_HEADER_LEN`] bytes).
    pub header_len: usize,
}

impl FrameHeader {
    /// The header at the start of `buf`, once all of it is there.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let (&first, &second) = (buf.first()?, buf.get(1)?);
        let ext = match second & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if second & 0x80 != 0 { 4 } else { 0 };
        let header_len = 2 + ext + mask;
        if buf.len() < header_len {
            return None;
        }
        let len = match ext {
            0 => u64::from(second & 0x7f),
            _ => buf[2..2 + ext]
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
        };
        Some(Self {
            fin: first & 0x80 != 0,
            opcode: first & 0x0f,
            len,
            header_len,
        })
    }

    /// Ping, pong and close (and the reserved opcodes 0xB-0xF).
    pub fn is_control(&self) -> bool {
        self.opcode & 0x8 != 0
    }

    /// The whole frame's length, header included (saturating: [`admit`] refuses such frames).
    pub fn frame_len(&self) -> usize {
        usize::try_from(self.len)
            .unwrap_or(usize::MAX)
            .saturating_add(self.header_len)
    }
}

/// Decides from its header alone whether a frame may be read: `partial` is what the message
/// being reassembled already holds (a continuation adds to it), `max_size` the bound on a whole
/// message. A data frame or continuation that would take the message over `max_size` is
/// refused as too large (close 1009); a control frame over 125 bytes or fragmented is a
/// protocol error (close 1002). Everything else about the frame (mask, reserved bits, opcode,
/// continuation order) is left to the codec, which sees it once it is whole.
pub fn admit(header: &FrameHeader, partial: usize, max_size: usize) -> Result<(), ReadError> {
    if header.is_control() {
        if !header.fin {
            return Err(ReadError::Protocol("fragmented control frame".into()));
        }
        if header.len > MAX_CONTROL_PAYLOAD {
            return Err(ReadError::Protocol(format!(
                "control frame announces {} bytes (at most {MAX_CONTROL_PAYLOAD})",
                header.len
            )));
        }
        return Ok(());
    }
    let message = if header.opcode == 0 {
        header.len.saturating_add(partial as u64)
    } else {
        header.len
    };
    if message > max_size as u64 {
        return Err(ReadError::TooLarge { limit: max_size });
    }
    Ok(())
}

/// Read buffers get this much room per read; one that is empty after decoding is released, so
/// an idle connection holds none and one large message does not pin memory afterwards.
pub const READ_CHUNK: usize = 4 * 1024;

/// The sans-I/O half of a connection's reader: bytes in ([`FrameReader::buffer`]), whole
/// messages out ([`FrameReader::next_message`]). Each frame's header is admitted before its
/// payload is read, and [`FrameReader::prepare_read`] says how much the next read may take, so
/// the buffer holds at most one admitted frame (or one read chunk while a header is incomplete).
pub struct FrameReader {
    /// Bytes read and not yet decoded; they start at a frame boundary.
    buf: BytesMut,
    codec: Codec,
    max_size: usize,
    /// A fragmented message being reassembled: (is_text, bytes so far).
    /// Boxed: rare, and every idle connection's reader would carry its size.
    partial: Option<Box<(bool, BytesMut)>>,
    /// The client's close frame was read.
    client_closed: bool,
}

impl FrameReader {
    /// `buf`: bytes already read (they start at a frame boundary).
    pub fn new(buf: BytesMut, max_size: usize) -> Self {
        Self {
            buf,
            codec: Codec::new().max_size(max_size),
            max_size,
            partial: None,
            client_closed: false,
        }
    }

    /// The bound on a whole message from now on (e.g. raised once the client authenticated).
    pub fn set_max_size(&mut self, max_size: usize) {
        if max_size != self.max_size {
            self.max_size = max_size;
            self.codec = self.codec.clone().max_size(max_size);
        }
    }

    pub fn max_size(&self) -> usize {
        self.max_size
    }

    /// Bytes buffered and not decoded yet (the current frame's, at a frame boundary).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// What the next read may add: the rest of the current frame once its header is whole,
    /// otherwise up to a read chunk. Makes sure the buffer has that much room without growing
    /// past it (a fresh buffer of the needed size, not a doubling). Call it after
    /// [`FrameReader::next_message`] returned `Ok(None)`: the buffer then holds an incomplete
    /// frame, whose header, if whole, was admitted. Never 0.
    pub fn prepare_read(&mut self) -> usize {
        let spare = self.buf.capacity() - self.buf.len();
        let want = match FrameHeader::parse(&self.buf) {
            // Admitted, so at most `max_size` + header (the min only guards misuse).
            Some(h) => h
                .frame_len()
                .min(self.max_size.saturating_add(MAX_HEADER_LEN))
                .saturating_sub(self.buf.len()),
            None if spare >= READ_CHUNK / 4 => spare.min(READ_CHUNK),
            None => READ_CHUNK,
        }
        .max(1);
        if spare < want {
            let mut fresh = BytesMut::with_capacity(self.buf.len() + want);
            fresh.extend_from_slice(&self.buf);
            self.buf = fresh;
        }
        want
    }

    /// Where a read puts its bytes: take at most [`FrameReader::prepare_read`] bytes.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// What a socket read would do with `bytes` arriving: takes as many as
    /// [`FrameReader::prepare_read`] allows and returns how many (a sync driver for tests and
    /// the `ws_frame_reader` fuzz target).
    pub fn fill_from(&mut self, bytes: &[u8]) -> usize {
        let n = self.prepare_read().min(bytes.len());
        self.buf.extend_from_slice(&bytes[..n]);
        n
    }

    /// The most the read buffer ever holds or reserves once reads go through
    /// [`FrameReader::prepare_read`]: one admitted frame, or a read chunk while a header is
    /// incomplete (plus a partial message of at most `max_size` in reassembly).
    pub fn buffer_bound(&self) -> usize {
        self.max_size.max(READ_CHUNK) + MAX_HEADER_LEN
    }

    /// The read buffer's allocated capacity.
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The next whole message buffered, `Ok(None)` if more bytes are needed. After an error
    /// the connection must be closed (the error says with which code).
    pub fn next_message(&mut self) -> Result<Option<WsMessage>, ReadError> {
        loop {
            let Some(header) = FrameHeader::parse(&self.buf) else {
                return Ok(None);
            };
            let partial = self.partial.as_ref().map_or(0, |p| p.1.len());
            admit(&header, partial, self.max_size)?;
            if self.buf.len() < header.frame_len() {
                return Ok(None);
            }
            // The whole frame is here: the codec decodes it without reserving anything.
            match actix_codec::Decoder::decode(&mut self.codec, &mut self.buf) {
                Ok(Some(frame)) => {
                    if let Some(msg) = self.on_frame(frame)? {
                        return Ok(Some(msg));
                    }
                }
                Ok(None) => return Ok(None),
                Err(ProtocolError::Overflow) => {
                    return Err(ReadError::TooLarge {
                        limit: self.max_size,
                    })
                }
                Err(other) => return Err(ReadError::Protocol(other.to_string())),
            }
        }
    }

    /// The client's close frame was read.
    pub fn client_closed(&self) -> bool {
        self.client_closed
    }

    fn on_frame(&mut self, frame: Frame) -> Result<Option<WsMessage>, ReadError> {
        Ok(match frame {
            Frame::Text(b) => Some(WsMessage::Text(b)),
            Frame::Binary(b) => Some(WsMessage::Binary(b)),
            Frame::Ping(b) => Some(WsMessage::Ping(b)),
            Frame::Pong(_) => Some(WsMessage::Pong),
            Frame::Close(_) => {
                self.client_closed = true;
                Some(WsMessage::Close)
            }
            Frame::Continuation(item) => {
                let (first, text, last, chunk) = match item {
                    Item::FirstText(b) => (true, true, false, b),
                    Item::FirstBinary(b) => (true, false, false, b),
                    Item::Continue(b) => (false, false, false, b),
                    Item::Last(b) => (false, false, true, b),
                };
                if first {
                    let mut acc = BytesMut::with_capacity(chunk.len());
                    acc.extend_from_slice(&chunk);
                    self.partial = Some(Box::new((text, acc)));
                    None
                } else {
                    let Some(partial) = self.partial.take() else {
                        return Err(ReadError::Protocol("continuation without a start".into()));
                    };
                    let (is_text, mut acc) = *partial;
                    // Admitted at the header already; kept as the invariant's last line.
                    if acc.len() + chunk.len() > self.max_size {
                        return Err(ReadError::TooLarge {
                            limit: self.max_size,
                        });
                    }
                    acc.extend_from_slice(&chunk);
                    if last {
                        let b = acc.freeze();
                        Some(if is_text {
                            WsMessage::Text(b)
                        } else {
                            WsMessage::Binary(b)
                        })
                    } else {
                        self.partial = Some(Box::new((is_text, acc)));
                        None
                    }
                }
            }
        })
    }
}

/// A connection's reader: the client's messages, read from the taken-over socket through a
/// [`FrameReader`].
pub struct WsReader {
    socket: Option<OwnedReadHalf>,
    ending: Arc<Ending>,
    frames: FrameReader,
    /// The bound applied to the next frame (it may change while the connection lives).
    limit: FrameLimit,
    done: bool,
}

impl WsReader {
    /// `buf`: bytes the client sent right after its handshake, read along with it.
    pub(crate) fn new(
        socket: Option<OwnedReadHalf>,
        buf: BytesMut,
        ending: Arc<Ending>,
        limit: FrameLimit,
    ) -> Self {
        Self {
            socket,
            ending,
            frames: FrameReader::new(buf, limit.get()),
            limit,
            done: false,
        }
    }

    /// The bound on this connection's messages, to change it later (e.g. after
    /// authentication).
    pub fn limit(&self) -> FrameLimit {
        self.limit.clone()
    }
}

impl Drop for WsReader {
    fn drop(&mut self) {
        if let Some(socket) = self.socket.take() {
            if let Ok(mut slot) = self.ending.returned.lock() {
                *slot = Some(Returned {
                    socket,
                    buf: std::mem::take(&mut self.frames.buf),
                    client_closed: self.frames.client_closed,
                });
            }
        }
        self.ending.reader_gone.raise();
    }
}

impl Stream for WsReader {
    type Item = Result<WsMessage, ReadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.ending.writer_done.is_raised() {
            this.done = true;
            return Poll::Ready(None);
        }
        this.frames.set_max_size(this.limit.get());
        loop {
            // Decode whatever is buffered first.
            match this.frames.next_message() {
                Ok(Some(msg)) => return Poll::Ready(Some(Ok(msg))),
                Ok(None) => {}
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            let Some(socket) = this.socket.as_mut() else {
                this.done = true;
                return Poll::Ready(None);
            };
            // Never more than the current frame may still need (or a chunk between frames).
            let want = this.frames.prepare_read();
            let mut limited = this.frames.buffer().limit(want);
            match tokio_util::io::poll_read_buf(Pin::new(socket), cx, &mut limited) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => {
                    if this.frames.buf.is_empty() {
                        // Idle: hold no buffer (decoded messages keep only their own bytes).
                        this.frames.buf = BytesMut::new();
                    }
                    // Only a reader about to wait needs to hear that the writer finished.
                    if this.ending.writer_done.poll_raised(cx).is_ready() {
                        this.done = true;
                        return Poll::Ready(None);
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Checks that `req` is a WebSocket handshake whose socket can be taken over.
pub fn check(req: &HttpRequest) -> Result<(), UpgradeError> {
    actix_http::ws::verify_handshake(req.head()).map_err(UpgradeError::Handshake)?;
    if !req.extensions().contains::<Upgradable>() {
        return Err(UpgradeError::NotUpgradable);
    }
    Ok(())
}

/// Accepts the upgrade: returns the 101 response, after which the connection drains `outbox`
/// and `open` gets the reader of the client's messages, bounded by `limit` (a size, or a
/// [`FrameLimit`] to change later).
pub fn upgrade(
    req: &HttpRequest,
    outbox: Arc<Outbox>,
    limit: impl Into<FrameLimit>,
    open: impl FnOnce(WsReader) + 'static,
) -> Result<HttpResponse, UpgradeError> {
    let body = OutboxStream::new(outbox.clone());
    upgrade_with(req, body, Some(Direct::to(outbox)), limit, open)
}

/// [`upgrade`] with any body stream (the Engine.IO upgrade switches outboxes mid-stream) and
/// its own direct-write arrangement, if any.
pub fn upgrade_with<S>(
    req: &HttpRequest,
    body: S,
    direct: Option<Direct>,
    limit: impl Into<FrameLimit>,
    open: impl FnOnce(WsReader) + 'static,
) -> Result<HttpResponse, UpgradeError>
where
    S: Stream<Item = Result<Bytes, actix_web::Error>> + 'static,
{
    check(req)?;
    // verify_handshake checked the key is present.
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| actix_http::ws::hash_key(k.as_ref()))
        .ok_or(UpgradeError::Handshake(HandshakeError::BadWebsocketKey))?;
    let accept = HeaderValue::from_bytes(&key)
        .map_err(|_| UpgradeError::Handshake(HandshakeError::BadWebsocketKey))?;
    let mut response = HttpResponse::build(StatusCode::SWITCHING_PROTOCOLS)
        .upgrade("websocket")
        .insert_header((header::SEC_WEBSOCKET_ACCEPT, accept))
        .finish();
    response.extensions_mut().insert(Takeover {
        body: Box::pin(body),
        direct,
        limit: limit.into(),
        open: Box::new(open),
    });
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A whole masked client frame with `len` payload bytes (the payload is zeros).
    fn frame(opcode: u8, len: usize) -> Vec<u8> {
        let mut f = header(true, opcode, len as u64);
        f.extend(std::iter::repeat_n(0, len));
        f
    }

    #[test]
    fn the_skipper_finds_the_close_frame_behind_frames_of_every_length_form() {
        let mut stream = Vec::new();
        for len in [0, 5, 125, 126, 300, 70_000] {
            stream.extend(frame(0x1, len));
        }
        let before = stream.len();
        stream.extend(frame(0x8, 2));
        // Whole, and one byte at a time (headers split across reads).
        assert!(FrameSkipper::default().feed(&stream));
        let mut skipper = FrameSkipper::default();
        let seen: Vec<bool> = stream.iter().map(|b| skipper.feed(&[*b])).collect();
        assert_eq!(seen.iter().position(|s| *s), Some(before + 5));
        // Without the close frame: never.
        assert!(!FrameSkipper::default().feed(&stream[..before]));
    }

    #[test]
    fn a_close_opcode_inside_a_payload_is_not_a_close_frame() {
        let mut f = frame(0x2, 10);
        f[6..].fill(0x88);
        assert!(!FrameSkipper::default().feed(&f));
    }

    /// A masked client frame header: `fin`, `opcode`, announcing `len` bytes.
    fn header(fin: bool, opcode: u8, len: u64) -> Vec<u8> {
        let mut h = vec![if fin { 0x80 } else { 0 } | opcode];
        match len {
            0..=125 => h.push(0x80 | len as u8),
            126..=0xffff => {
                h.push(0x80 | 126);
                h.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                h.push(0x80 | 127);
                h.extend_from_slice(&len.to_be_bytes());
            }
        }
        h.extend_from_slice(&[0, 0, 0, 0]);
        h
    }

    fn reader(bytes: &[u8], max: usize) -> FrameReader {
        FrameReader::new(BytesMut::from(bytes), max)
    }

    #[test]
    fn a_data_frame_announcing_more_than_the_limit_is_refused_at_its_header() {
        let mut r = reader(&header(true, 0x2, 1 << 40), 1024);
        assert!(matches!(
            r.next_message(),
            Err(ReadError::TooLarge { limit: 1024 })
        ));
        // Exactly the limit is fine (it waits for the payload, and only that much room).
        let mut r = reader(&header(true, 0x1, 1024), 1024);
        assert!(matches!(r.next_message(), Ok(None)));
        assert_eq!(r.prepare_read(), 1024);
        assert!(r.buf.capacity() < 1024 + MAX_HEADER_LEN + 64);
    }

    #[test]
    fn a_continuation_that_would_take_the_message_over_the_limit_is_refused_at_its_header() {
        let mut bytes = header(false, 0x1, 600);
        bytes.extend(std::iter::repeat_n(b'a', 600));
        bytes.extend(header(false, 0x0, 400));
        bytes.extend(std::iter::repeat_n(b'b', 400));
        bytes.extend(header(true, 0x0, 25));
        let mut r = reader(&bytes, 1024);
        assert!(matches!(
            r.next_message(),
            Err(ReadError::TooLarge { limit: 1024 })
        ));
        // One byte less fits: the whole message comes out.
        let mut bytes = header(false, 0x1, 600);
        bytes.extend(std::iter::repeat_n(b'a', 600));
        bytes.extend(header(true, 0x0, 424));
        bytes.extend(std::iter::repeat_n(b'b', 424));
        match reader(&bytes, 1024).next_message() {
            Ok(Some(WsMessage::Text(t))) => assert_eq!(t.len(), 1024),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_large_or_fragmented_control_frame_is_a_protocol_error() {
        for h in [
            header(true, 0x9, 126),
            header(false, 0x9, 4),
            header(true, 0x8, 1 << 40),
        ] {
            assert!(
                matches!(
                    reader(&h, 1 << 20).next_message(),
                    Err(ReadError::Protocol(_))
                ),
                "{h:?}"
            );
        }
        // A control frame between fragments is fine.
        let mut bytes = header(false, 0x2, 3);
        bytes.extend_from_slice(b"abc");
        bytes.extend(header(true, 0x9, 2));
        bytes.extend_from_slice(b"hi");
        bytes.extend(header(true, 0x0, 1));
        bytes.extend_from_slice(b"d");
        let mut r = reader(&bytes, 4);
        assert!(matches!(r.next_message(), Ok(Some(WsMessage::Ping(p))) if &p[..] == b"hi"));
        assert!(matches!(r.next_message(), Ok(Some(WsMessage::Binary(b))) if &b[..] == b"abcd"));
    }

    #[test]
    fn reads_never_take_more_than_the_current_frame_needs() {
        // Between frames: one chunk. Inside one: the rest of it, in a buffer of its size.
        let mut r = reader(&[], 1 << 20);
        assert_eq!(r.prepare_read(), READ_CHUNK);
        let mut bytes = header(true, 0x2, 100_000);
        bytes.extend(std::iter::repeat_n(7, 1000));
        let mut r = reader(&bytes, 1 << 20);
        assert!(matches!(r.next_message(), Ok(None)));
        assert_eq!(r.prepare_read(), 100_000 + 14 - bytes.len());
        assert_eq!(r.buf.capacity(), 100_000 + 14);
    }

    #[test]
    fn the_limit_can_be_raised_for_the_next_frames() {
        let mut r = reader(&header(true, 0x1, 5000), 1024);
        assert!(matches!(r.next_message(), Err(ReadError::TooLarge { .. })));
        let mut r = reader(&header(true, 0x1, 5000), 1024);
        r.set_max_size(8192);
        assert!(matches!(r.next_message(), Ok(None)));
    }
}
