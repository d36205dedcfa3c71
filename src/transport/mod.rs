//! Byte transport for client sessions, kept apart from the protocols and the actors.
//!
//! Why not `actix-web-actors`: its `WebsocketContext` runs the session actor *inside* the HTTP
//! response stream, so the actor is only polled while the socket accepts writes (a slow reader
//! freezes its heartbeats and its mailbox), and its outbound buffer is an unbounded `VecDeque`.
//! Here a session is an ordinary actor with its own mailbox, and its socket is fed from an
//! [`outbox::Outbox`]: a queue bounded in messages and bytes that rooms push shared frame bytes
//! into directly, and that the connection drains into one write per wake-up (many queued frames,
//! one syscall) — or, pushed into an idle outbox by a producer with nothing behind it, written at
//! once from the producer's thread ([`socket`]). After the upgrade the connection's socket is taken from actix-http's HTTP/1
//! dispatcher ([`conn`]), so an idle connection holds no read or write buffer. The actix-http
//! pieces used are the WebSocket codec and handshake and the HTTP/1 codec for the 101 answer.
//! [`deadline`] bounds how long an ordinary request's body may take to arrive, [`head`] how long
//! any request's head may.

pub mod budget;
pub mod conn;
pub mod deadline;
pub mod head;
pub mod outbox;
pub mod socket;
pub mod ws;
