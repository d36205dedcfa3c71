//! The per-session outbound queue.
//!
//! Producers (the session itself and every room it is in, on any thread) push already-encoded
//! payloads; a `Bytes` clone is a reference count, so a broadcast shares one buffer among all
//! members. The consumer is the connection's response body ([`OutboxStream`]), which drains
//! everything queued into one chunk per poll, framing each payload as it goes. Once the
//! connection's socket is attached, [`Outbox::push_text_now`] skips the queue when it is empty
//! and the writer idle, writing the frame on the producer's thread (`transport::socket`); under
//! this outbox's lock, so the one byte order is kept.
//!
//! Bounds: `max_messages` and `max_bytes` cap what a client that does not read can pin in
//! memory. A push past them fails with [`PushError::Full`]; the caller decides what that means
//! (for a room member: disconnect as a slow consumer, the client resumes through offsets).
//! Across all outboxes, a [`Budget`] (`SWITCHYARD_OUTBOX_TOTAL_BYTES`) bounds what every
//! connection together can pin: while the total is over it, pushes to the largest queues are
//! refused the same way, so the clients that read least are evicted first.
//! Control frames never wait behind that bound, and never pile up either: at most one ping and
//! one pong are pending at a time. A newer pong replaces a pending one (RFC 6455 §5.5.3 allows
//! answering only the most recent ping), so a client that floods pings and never reads makes
//! the server hold one pong's 125 bytes, not one per ping; they go out ahead of queued data.
//!
//! A [`Journal`] (Socket.IO connection-state recovery only, docs/socketio.md) remembers, under
//! the same lock as the queue, the order in which tagged payloads were pushed: the one order
//! the client receives them in, whichever rooms pushed them from whichever threads. It is the
//! only place that order exists, which is why it lives here rather than in a room or session.
//!
//! Why this file is one piece (about 700 lines; its tests in `outbox/tests.rs`, the budget's
//! sum in `budget.rs`): the queue, its bounds, the control frames, the journal and both ways of
//! draining it share one lock and one state, and each invariant (bounded, control frames never
//! behind data, the journal in push order, the budget told of every change) is kept by every
//! push and every drain together.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use actix_http::ws::{CloseCode, CloseReason, OpCode, Parser};
use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use futures_util::Stream;

use super::budget::Budget;
use super::socket::{Tried, WriteSocket};

/// Why a push was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue is at its bound: the client is not keeping up.
    Full,
    /// The session is closing or its connection is gone.
    Closed,
}

enum Out {
    Text(Bytes),
    /// A text payload that a newer one with the same key replaces while it is still queued
    /// (conflation: only the latest progress of an operation matters).
    Latest(Bytes, u64),
    Binary(Bytes),
    /// The rest of a frame a direct write (`Outbox::push_text_now`) only partly wrote: bytes
    /// already framed, which go out first and as they are.
    Framed(Bytes),
}

/// A drain of at most this many frames frees the queue's memory (its first allocation holds
/// four): idle connections hold none, busy ones keep theirs between bursts.
const RELEASE_QUEUE_AT: usize = 4;

/// A data frame to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(Bytes),
    Binary(Bytes),
}

impl Frame {
    fn len(&self) -> usize {
        match self {
            Frame::Text(b) | Frame::Binary(b) => b.len(),
        }
    }
}

/// What a long-polling request takes from the outbox.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Everything that was queued (never empty).
    Frames(Vec<Frame>),
    /// The waiting request was released (the session upgraded or the client closed).
    Released,
    /// The session is closed.
    Closed,
    /// The session moved to another transport while this request waited.
    Refused,
}

/// Reads a pushed text payload's tag: a number naming the stream it belongs to (e.g. a hash of
/// its namespace and room) and its offset there; `None` for an untagged payload. Supplied by
/// the layer that knows the payload's format, so this module stays format-agnostic.
pub type Tagger = fn(&[u8]) -> Option<(u64, u64)>;

/// The order of the last tagged payloads pushed into an outbox, bounded to `cap` entries of 16
/// bytes (and as many streams in `base`).
#[derive(Debug, Clone, Default)]
pub struct Journal {
    /// The latest entries (stream, offset), in push order (at most `cap`).
    pub entries: VecDeque<(u64, u64)>,
    /// For each stream, the highest offset among entries that fell out of `entries` (all of
    /// them pushed before every entry still there); at most `cap` streams.
    pub base: std::collections::HashMap<u64, u64>,
    /// `base` overflowed and was cleared: positions older than `entries` are unknown.
    pub base_lost: bool,
    cap: usize,
    tagger: Option<Tagger>,
}

impl Journal {
    fn record(&mut self, payload: &[u8]) {
        let Some(tag) = self.tagger.and_then(|t| t(payload)) else {
            return;
        };
        if self.entries.len() >= self.cap {
            if let Some((old, off)) = self.entries.pop_front() {
                if self.base.len() >= self.cap && !self.base.contains_key(&old) {
                    self.base.clear();
                    self.base_lost = true;
                }
                let e = self.base.entry(old).or_insert(off);
                *e = (*e).max(off);
            }
        }
        self.entries.push_back(tag);
    }
}

#[derive(Default)]
struct State {
    queue: VecDeque<Out>,
    /// Set by [`Outbox::keep_journal`]: every tagged payload pushed is recorded here.
    /// Boxed: most outboxes keep none, and an inline `Journal` would cost each of them ~100
    /// bytes.
    journal: Option<Box<Journal>>,
    /// Payload bytes in `queue`.
    bytes: usize,
    /// A server ping is due (at most one pending, whatever the heartbeat does meanwhile).
    ping: bool,
    /// The pong answering the client's latest ping (at most one pending: a newer ping's pong
    /// replaces it). Its payload is a copy, at most 125 bytes, so it pins no read buffer.
    pong: Option<Bytes>,
    /// Set once: the close frame to send after the queue drains.
    /// Boxed: set once, at the end, and every idle connection's outbox would carry its size.
    close: Option<Box<CloseReason>>,
    /// The connection is gone (the body stream was dropped) or the close frame was written.
    finished: bool,
    /// A long-polling request waiting on this outbox must return at once.
    release: bool,
    /// ... and be refused.
    refuse: bool,
    /// The connection's socket, once taken over (`attach`): pushes through `push_text_now`
    /// write straight to it while nothing is queued and the writer is idle.
    direct: Option<Arc<WriteSocket>>,
    /// The writer took a chunk and has not finished writing it (`written`): a direct write
    /// now would overtake it.
    writing: bool,
    /// The size of that chunk: held until written, so counted against the [`Budget`].
    in_flight: usize,
}

/// How queued payloads go on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Each payload is a WebSocket text frame; control frames and the close frame are written.
    WebSocket,
    /// Payloads are written as they are (Server-Sent Events); control frames are dropped and
    /// closing just ends the stream.
    Raw,
}

pub struct Outbox {
    state: Mutex<State>,
    waker: AtomicWaker,
    max_messages: usize,
    max_bytes: usize,
    framing: Framing,
    budget: Option<Arc<Budget>>,
}

/// The outbox's state, locked; when it is let go, what the queue holds now is told to the
/// [`Budget`] (one place for every push, drain and clear to keep the total right).
struct Locked<'a> {
    st: MutexGuard<'a, State>,
    budget: Option<&'a Budget>,
    held: usize,
}

impl Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.st
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.st
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.budget {
            let now = self.st.held();
            if now != self.held {
                b.moved(self.held, now);
            }
        }
    }
}

impl State {
    /// Bytes this outbox holds: queued, and the chunk its writer has yet to finish.
    fn held(&self) -> usize {
        self.bytes + self.in_flight
    }

    /// Whether a payload of `len` bytes fits the bounds: a single payload always fits an empty
    /// queue, so one large message is never refused by the bound meant for backlogs.
    fn fits(&self, len: usize, ob: &Outbox) -> bool {
        self.queue.is_empty()
            || (self.queue.len() < ob.max_messages
                && self.bytes + len <= ob.max_bytes
                && !ob
                    .budget
                    .as_deref()
                    .is_some_and(|b| b.refuses(self.held(), len, ob.max_bytes)))
    }

    /// Queues a text payload (`out` carries it), counting its bytes and recording it in the
    /// journal.
    fn enqueue(&mut self, payload_len: usize, out: Out) {
        self.bytes += payload_len;
        if let (Some(j), Out::Text(p) | Out::Latest(p, _)) = (&mut self.journal, &out) {
            j.record(p);
        }
        self.queue.push_back(out);
    }

    /// The end a waiting poll was told to take (refused wins over released), once.
    fn take_poll_end(&mut self) -> Option<Taken> {
        if std::mem::take(&mut self.refuse) {
            return Some(Taken::Refused);
        }
        if std::mem::take(&mut self.release) {
            return Some(Taken::Released);
        }
        None
    }
}

impl Outbox {
    pub fn new(max_messages: usize, max_bytes: usize) -> Arc<Self> {
        Self::with_framing(max_messages, max_bytes, Framing::WebSocket)
    }

    pub fn with_framing(max_messages: usize, max_bytes: usize, framing: Framing) -> Arc<Self> {
        Self::make(max_messages, max_bytes, framing, None)
    }

    /// A client connection's outbox: its own bounds, and the server-wide [`Budget`].
    pub fn bounded(
        max_messages: usize,
        max_bytes: usize,
        framing: Framing,
        budget: &Arc<Budget>,
    ) -> Arc<Self> {
        let budget = (budget.limit > 0).then(|| budget.clone());
        Self::make(max_messages, max_bytes, framing, budget)
    }

    fn make(
        max_messages: usize,
        max_bytes: usize,
        framing: Framing,
        budget: Option<Arc<Budget>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State::default()),
            waker: AtomicWaker::new(),
            max_messages,
            max_bytes,
            framing,
            budget,
        })
    }

    fn lock(&self) -> Locked<'_> {
        // A panic while holding this lock cannot leave the queue half-updated (every mutation is
        // a single push/pop), so a poisoned lock is still safe to use.
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let held = st.held();
        Locked {
            st,
            budget: self.budget.as_deref(),
            held,
        }
    }

    /// Bytes held by all client connections' queues now, and the budget (0: none); `None` for
    /// an outbox outside the budget.
    pub fn budget_usage(&self) -> Option<(usize, usize)> {
        self.budget.as_deref().map(Budget::usage)
    }

    /// Queues a text payload. A single payload larger than `max_bytes` is accepted when the
    /// queue is empty, so one large message is never refused by the bound meant for backlogs.
    pub fn push_text(&self, payload: Bytes) -> Result<(), PushError> {
        self.push(payload, false)
    }

    /// [`push_text`](Self::push_text), but when nothing is queued or being written and the
    /// connection's socket is attached, the frame is written at once on this thread instead
    /// of waking the writer (`transport::socket` says when that pays). For a producer with
    /// nothing else to send right behind it: frames that pile up are written together by the
    /// writer, one write each here.
    pub fn push_text_now(&self, payload: Bytes) -> Result<(), PushError> {
        self.push(payload, true)
    }

    fn push(&self, payload: Bytes, now: bool) -> Result<(), PushError> {
        {
            let mut guard = self.lock();
            // Reborrowed so the socket is borrowed from the state, not cloned (per delivery).
            let st = &mut *guard;
            if st.finished || st.close.is_some() {
                return Err(PushError::Closed);
            }
            let idle = st.queue.is_empty() && !st.writing && !st.ping && st.pong.is_none();
            let written = match st.direct.as_deref() {
                Some(socket) if now && idle => socket.try_text(&payload),
                _ => Tried::Nothing,
            };
            if !matches!(written, Tried::Nothing) {
                if let Some(j) = &mut st.journal {
                    j.record(&payload);
                }
            }
            match written {
                Tried::All => return Ok(()),
                Tried::Rest(rest) => {
                    st.bytes += rest.len();
                    st.queue.push_back(Out::Framed(rest));
                }
                Tried::Nothing => {
                    if !st.fits(payload.len(), self) {
                        return Err(PushError::Full);
                    }
                    st.enqueue(payload.len(), Out::Text(payload));
                }
            }
        }
        self.waker.wake();
        Ok(())
    }

    /// The connection's socket was taken over: [`push_text_now`](Self::push_text_now) may
    /// write to it. The writer must report each chunk it finished with [`written`](Self::written).
    pub fn attach(&self, socket: Arc<WriteSocket>) {
        let mut st = self.lock();
        if !st.finished {
            st.direct = Some(socket);
        }
    }

    /// Queues `answer` (bytes already on the wire's format: the upgrade's 101 response) ahead
    /// of everything, to be written with what is queued behind it by the writer's first chunk.
    /// Until then nothing is written directly (the queue is not empty).
    pub fn answer_first(&self, answer: Bytes) {
        let mut st = self.lock();
        st.bytes += answer.len();
        st.queue.push_front(Out::Framed(answer));
    }

    /// The writer finished writing the chunk it last took.
    pub fn written(&self) {
        let mut st = self.lock();
        st.writing = false;
        st.in_flight = 0;
    }

    /// Queues a conflatable payload: a queued one with the same `key` is dropped and this one
    /// goes to the end, so a client that cannot keep up gets the latest value instead of every
    /// value — and is not evicted for falling behind on values that would be stale anyway.
    pub fn push_latest(&self, payload: Bytes, key: u64) -> Result<(), PushError> {
        {
            let mut st = self.lock();
            if st.finished || st.close.is_some() {
                return Err(PushError::Closed);
            }
            let stale = st
                .queue
                .iter()
                .position(|o| matches!(o, Out::Latest(_, k) if *k == key));
            if let Some(i) = stale {
                if let Some(Out::Latest(old, _)) = st.queue.remove(i) {
                    st.bytes -= old.len();
                }
            } else if !st.fits(payload.len(), self) {
                return Err(PushError::Full);
            }
            st.enqueue(payload.len(), Out::Latest(payload, key));
        }
        self.waker.wake();
        Ok(())
    }

    /// Queues several text payloads atomically (all or none), e.g. a `joined` reply and its
    /// replay, so no live message can slip in between them.
    pub fn push_all(&self, payloads: impl IntoIterator<Item = Bytes>) -> Result<(), PushError> {
        self.push_frames(payloads.into_iter().map(Frame::Text))
    }

    /// Queues frames atomically (all or none): a message with binary attachments is one text
    /// frame and its binary frames, which must not be interleaved with anything else.
    pub fn push_frames(&self, frames: impl IntoIterator<Item = Frame>) -> Result<(), PushError> {
        {
            let mut st = self.lock();
            if st.finished || st.close.is_some() {
                return Err(PushError::Closed);
            }
            let frames: Vec<Frame> = frames.into_iter().collect();
            let add: usize = frames.iter().map(Frame::len).sum();
            let over_budget = || {
                self.budget
                    .as_deref()
                    .is_some_and(|b| b.refuses(st.held(), add, self.max_bytes))
            };
            if !st.queue.is_empty()
                && (st.queue.len() + frames.len() > self.max_messages
                    || st.bytes + add > self.max_bytes
                    || over_budget())
            {
                return Err(PushError::Full);
            }
            st.bytes += add;
            if let Some(j) = &mut st.journal {
                for f in &frames {
                    if let Frame::Text(b) = f {
                        j.record(b);
                    }
                }
            }
            st.queue.extend(frames.into_iter().map(|f| match f {
                Frame::Text(b) => Out::Text(b),
                Frame::Binary(b) => Out::Binary(b),
            }));
        }
        self.waker.wake();
        Ok(())
    }

    /// From now on, records the order of tagged payloads (read by `tagger`), the latest `cap`
    /// of them (see [`Journal`]).
    pub fn keep_journal(&self, tagger: Tagger, cap: usize) {
        self.lock().journal = Some(Box::new(Journal {
            cap: cap.max(1),
            tagger: Some(tagger),
            ..Journal::default()
        }));
    }

    /// A copy of the journal, when one is kept.
    pub fn journal(&self) -> Option<Journal> {
        self.lock().journal.as_deref().cloned()
    }

    /// Long-polling: takes everything queued, or waits. Control frames are WebSocket-only and
    /// are dropped here.
    pub fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Taken> {
        // A poll that is refused or released registers nothing: the outbox has one waker, and
        // mid-upgrade the WebSocket may already have registered its own there. A refused poll
        // that replaced it left the upgraded socket asleep — its pings and messages queued and
        // never written — until the ping timeout closed the session.
        if let Some(done) = self.lock().take_poll_end() {
            return Poll::Ready(done);
        }
        self.waker.register(cx.waker());
        let mut st = self.lock();
        if let Some(done) = st.take_poll_end() {
            return Poll::Ready(done);
        }
        let mut frames = Vec::with_capacity(st.queue.len());
        let release = st.queue.len() <= RELEASE_QUEUE_AT;
        while let Some(out) = st.queue.pop_front() {
            match out {
                Out::Text(b) | Out::Latest(b, _) => {
                    st.bytes -= b.len();
                    frames.push(Frame::Text(b));
                }
                Out::Binary(b) => {
                    st.bytes -= b.len();
                    frames.push(Frame::Binary(b));
                }
                // Only a taken-over socket's outbox holds these, and nothing polls that one.
                Out::Framed(b) => st.bytes -= b.len(),
            }
        }
        if release {
            st.queue = VecDeque::new();
        }
        st.ping = false;
        st.pong = None;
        if !frames.is_empty() {
            return Poll::Ready(Taken::Frames(frames));
        }
        if st.finished || st.close.is_some() {
            return Poll::Ready(Taken::Closed);
        }
        Poll::Pending
    }

    /// Makes a waiting (or the next) long-polling request return `Released`.
    pub fn release_poll(&self) {
        self.lock().release = true;
        self.waker.wake();
    }

    /// Makes a waiting long-polling request fail (the session left long-polling).
    pub fn refuse_poll(&self) {
        self.lock().refuse = true;
        self.waker.wake();
    }

    /// Wakes whoever drains this outbox (used when the drain should re-check its source).
    pub fn wake(&self) {
        self.waker.wake();
    }

    /// Queues a ping, unless one is already pending.
    pub fn ping(&self) {
        self.push_control(|st| st.ping = true);
    }

    /// Queues the answer to a client's ping; a pong still pending is replaced (its ping is
    /// answered by this one).
    pub fn pong(&self, payload: Bytes) {
        // A copy: the payload is a slice of the connection's read buffer.
        let payload = Bytes::copy_from_slice(&payload);
        self.push_control(move |st| st.pong = Some(payload));
    }

    fn push_control(&self, set: impl FnOnce(&mut State)) {
        if self.framing == Framing::Raw {
            return;
        }
        {
            let mut st = self.lock();
            if st.finished || st.close.is_some() {
                return;
            }
            set(&mut st);
        }
        self.waker.wake();
    }

    /// Sends a close frame after what is already queued; later pushes are refused. Only the
    /// first close counts.
    pub fn close(&self, code: CloseCode, reason: &str) {
        {
            let mut st = self.lock();
            if st.close.is_some() || st.finished {
                return;
            }
            st.close = Some(Box::new(CloseReason {
                code,
                description: Some(reason.to_string()),
            }));
        }
        self.waker.wake();
    }

    /// True once a close was requested or the connection is gone.
    pub fn is_closed(&self) -> bool {
        let st = self.lock();
        st.finished || st.close.is_some()
    }

    /// Messages (control frames included) and payload bytes waiting to be written.
    pub fn backlog(&self) -> (usize, usize) {
        let st = self.lock();
        let control = usize::from(st.ping) + usize::from(st.pong.is_some());
        (st.queue.len() + control, st.bytes)
    }
}

/// The response body of a WebSocket connection: drains its outbox, one chunk per wake-up.
pub struct OutboxStream {
    outbox: Arc<Outbox>,
}

impl OutboxStream {
    pub fn new(outbox: Arc<Outbox>) -> Self {
        Self { outbox }
    }
}

impl Stream for OutboxStream {
    type Item = Result<Bytes, actix_web::Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let outbox = &self.outbox;
        // Register before looking, so a push between the look and the return still wakes us.
        outbox.waker.register(cx.waker());
        let mut st = outbox.lock();
        if st.finished {
            return Poll::Ready(None);
        }
        if st.queue.is_empty() && st.close.is_none() && !st.ping && st.pong.is_none() {
            return Poll::Pending;
        }
        // Size the chunk once; a fresh buffer per chunk means an idle connection holds none.
        let need: usize = st.bytes + st.queue.len() * 10 + 2 * 128;
        let mut buf = BytesMut::with_capacity(need);
        let raw = outbox.framing == Framing::Raw;
        // The rest of a frame a direct write began goes before anything, control frames too.
        if let Some(Out::Framed(p)) = st.queue.front() {
            let p = p.clone();
            st.queue.pop_front();
            st.bytes -= p.len();
            buf.extend_from_slice(&p);
        }
        // Control frames first: they must not wait behind a backlog.
        if std::mem::take(&mut st.ping) {
            Parser::write_message(&mut buf, b"", OpCode::Ping, true, false);
        }
        if let Some(p) = st.pong.take() {
            Parser::write_message(&mut buf, &p, OpCode::Pong, true, false);
        }
        // A connection that queues a few frames at a time (an idle one, a quiet room's member
        // whose frames mostly go straight to its socket) gives the queue's memory back; a busy
        // one keeps it for the next burst.
        let release = st.queue.len() <= RELEASE_QUEUE_AT;
        while let Some(out) = st.queue.pop_front() {
            match out {
                Out::Text(p) | Out::Latest(p, _) if raw => {
                    st.bytes -= p.len();
                    buf.extend_from_slice(&p);
                }
                Out::Text(p) | Out::Latest(p, _) => {
                    st.bytes -= p.len();
                    Parser::write_message(&mut buf, &p, OpCode::Text, true, false);
                }
                Out::Binary(p) if raw => st.bytes -= p.len(),
                Out::Binary(p) => {
                    st.bytes -= p.len();
                    Parser::write_message(&mut buf, &p, OpCode::Binary, true, false);
                }
                Out::Framed(p) => {
                    st.bytes -= p.len();
                    buf.extend_from_slice(&p);
                }
            }
        }
        if release {
            st.queue = VecDeque::new();
        }
        if let Some(reason) = st.close.clone() {
            if !raw {
                Parser::write_close(&mut buf, Some(*reason), false);
            }
            st.finished = true;
            st.direct = None;
        }
        // Until the writer reports it written, a direct write would overtake this chunk (and
        // the chunk is held: counted against the budget until then).
        st.writing = st.direct.is_some();
        st.in_flight = if st.writing { buf.len() } else { 0 };
        Poll::Ready(Some(Ok(buf.freeze())))
    }
}

impl Drop for OutboxStream {
    fn drop(&mut self) {
        // The connection is gone: refuse further pushes instead of queueing into the void.
        let mut st = self.outbox.lock();
        st.finished = true;
        st.direct = None;
        st.queue.clear();
        st.bytes = 0;
        st.in_flight = 0;
        st.ping = false;
        st.pong = None;
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        // What an outbox never drained (a long-polling session's, say) leaves the total with it.
        if let Some(b) = &self.budget {
            let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
            if st.held() > 0 {
                b.moved(st.held(), 0);
            }
        }
    }
}

#[cfg(test)]
mod tests;
