//! A deadline on every request head, not only a connection's first.
//!
//! actix-http's `client_request_timeout` is armed once per connection, for its first request;
//! after a response, its keep-alive timer is cleared by the first byte of the next request, and
//! nothing then bounds how long the rest of that head may take: a client could hold a
//! kept-alive connection forever by sending the next head a byte at a time. [`HeadGuarded`]
//! wraps the connection's socket: bytes that arrive while no request is being handled start the
//! head's deadline, a request reaching the application ([`HeadWatch::request_started`], called by
//! the middleware in [`super::deadline`]) clears it, and a socket read that would wait past it
//! fails instead, which ends the connection. While a request is being handled, its body has its
//! own deadline ([`super::deadline`]).

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Shared by a connection's socket wrapper and the requests read from it (through the
/// connection data actix-http merges into each request).
#[derive(Clone, Default)]
pub struct HeadWatch(Rc<WatchState>);

#[derive(Default)]
struct WatchState {
    /// Heads that reached the application on this connection.
    heads: Cell<u64>,
    /// A request is being handled (its head is in, its response not produced yet).
    busy: Cell<bool>,
}

impl HeadWatch {
    /// A request's head was parsed and it reached the application.
    pub fn request_started(&self) {
        self.0.heads.set(self.0.heads.get() + 1);
        self.0.busy.set(true);
    }

    /// The application produced the request's response (its body may still be streaming).
    pub fn request_answered(&self) {
        self.0.busy.set(false);
    }
}

/// A connection's socket with a deadline on each request head.
pub struct HeadGuarded {
    io: TcpStream,
    watch: HeadWatch,
    timeout: Duration,
    /// The deadline's timer, allocated once per connection and reset for each head.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Set while a head is arriving (armed by its first bytes): the head count then.
    armed: Option<u64>,
}

impl HeadGuarded {
    pub fn new(io: TcpStream, timeout: Duration) -> Self {
        Self {
            io,
            watch: HeadWatch::default(),
            timeout,
            timer: None,
            armed: None,
        }
    }

    /// The watch the connection's requests carry.
    pub fn watch(&self) -> HeadWatch {
        self.watch.clone()
    }

    pub fn get_ref(&self) -> &TcpStream {
        &self.io
    }

    /// The socket itself, for a connection taken over after a WebSocket upgrade.
    pub fn into_inner(self) -> TcpStream {
        self.io
    }
}

impl AsyncRead for HeadGuarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        let state = &this.watch.0;
        let heads = state.heads.get();
        // A head completed since the deadline was armed, or a request is being handled.
        if state.busy.get() || this.armed.is_some_and(|at| at != heads) {
            this.armed = None;
        }
        let got_bytes = matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before;
        if got_bytes && !state.busy.get() && this.armed.is_none() {
            let deadline = tokio::time::Instant::now() + this.timeout;
            match this.timer.as_mut() {
                Some(timer) => timer.as_mut().reset(deadline),
                None => this.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
            this.armed = Some(heads);
        }
        if res.is_pending() && this.armed.is_some() {
            if let Some(timer) = this.timer.as_mut() {
                if timer.as_mut().poll(cx).is_ready() {
                    log::debug!(
                        "request head not received within {} ms, closing the connection",
                        this.timeout.as_millis()
                    );
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "request head not received in time",
                    )));
                }
            }
        }
        res
    }
}

impl AsyncWrite for HeadGuarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}
