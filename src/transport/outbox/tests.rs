//! The outbox's bounds, control frames, journal and drains; and the server-wide budget.

use super::*;
use futures_util::StreamExt;

#[test]
fn bounds_refuse_a_backlog_but_not_a_single_large_message() {
    let ob = Outbox::new(2, 10);
    assert_eq!(ob.push_text(Bytes::from(vec![b'x'; 100])), Ok(()));
    assert_eq!(ob.push_text(Bytes::from_static(b"a")), Err(PushError::Full));
    let ob = Outbox::new(2, 100);
    ob.push_text(Bytes::from_static(b"a")).unwrap();
    ob.push_text(Bytes::from_static(b"b")).unwrap();
    assert_eq!(ob.push_text(Bytes::from_static(b"c")), Err(PushError::Full));
    // A ping does not wait behind the full data queue, but only one is ever pending.
    ob.ping();
    ob.ping();
    assert_eq!(ob.backlog().0, 3);
}

#[actix_web::test]
async fn a_ping_flood_leaves_one_pong_pending_answering_the_latest_ping() {
    let ob = Outbox::new(2, 100);
    ob.push_text(Bytes::from_static(b"a")).unwrap();
    for i in 0..10_000u32 {
        ob.pong(Bytes::from(i.to_be_bytes().to_vec()));
    }
    ob.ping();
    // One data frame, one ping, one pong: whatever the client sent.
    assert_eq!(ob.backlog(), (3, 1));
    let mut s = OutboxStream::new(ob.clone());
    let chunk = s.next().await.unwrap().unwrap();
    // ping (2), pong with the last ping's 4 bytes (2 + 4), then the data frame (2 + 1).
    assert_eq!(&chunk[..], b"\x89\x00\x8a\x04\x00\x00\x27\x0f\x81\x01a");
    assert_eq!(ob.backlog(), (0, 0));
}

#[test]
fn a_newer_latest_value_replaces_the_queued_one_even_when_full() {
    let ob = Outbox::new(2, 1024);
    ob.push_latest(Bytes::from_static(b"p1"), 7).unwrap();
    ob.push_text(Bytes::from_static(b"log")).unwrap();
    // Full, but p2 replaces p1 (and goes after the log line).
    ob.push_latest(Bytes::from_static(b"p2"), 7).unwrap();
    assert_eq!(ob.backlog(), (2, 5));
    assert_eq!(ob.push_text(Bytes::from_static(b"x")), Err(PushError::Full));
    assert_eq!(
        ob.push_latest(Bytes::from_static(b"q"), 8),
        Err(PushError::Full)
    );
    let mut cx = std::task::Context::from_waker(futures_util::task::noop_waker_ref());
    match ob.poll_take(&mut cx) {
        Poll::Ready(Taken::Frames(f)) => assert_eq!(
            f,
            vec![
                Frame::Text(Bytes::from_static(b"log")),
                Frame::Text(Bytes::from_static(b"p2"))
            ]
        ),
        other => panic!("{other:?}"),
    }
}

fn tag(p: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(p).ok()?;
    let (stream, offset) = s.split_once('@')?;
    Some((stream.parse().ok()?, offset.parse().ok()?))
}

#[test]
fn a_journal_keeps_the_push_order_of_tagged_payloads_and_folds_the_oldest() {
    let ob = Outbox::new(64, 1 << 20);
    ob.push_text(Bytes::from_static(b"1@1")).unwrap();
    ob.keep_journal(tag, 3);
    ob.push_text(Bytes::from_static(b"untagged")).unwrap();
    ob.push_text(Bytes::from_static(b"1@2")).unwrap();
    ob.push_all([Bytes::from_static(b"2@7"), Bytes::from_static(b"1@3")])
        .unwrap();
    ob.push_latest(Bytes::from_static(b"2@8"), 1).unwrap();
    let j = ob.journal().unwrap();
    assert_eq!(Vec::from(j.entries), vec![(2, 7), (1, 3), (2, 8)]);
    assert_eq!(j.base.get(&1), Some(&2));
    assert!(!j.base_lost);
    // More streams fall out than `cap`: what they held is known to be unknown.
    for stream in 10..20 {
        ob.push_text(Bytes::from(format!("{stream}@1"))).unwrap();
    }
    assert!(ob.journal().unwrap().base_lost);
}

#[actix_web::test]
async fn the_upgrade_answer_goes_first_in_one_chunk_with_what_was_queued_behind_it() {
    let ob = Outbox::new(16, 1024);
    ob.ping();
    ob.answer_first(Bytes::from_static(b"HTTP/1.1 101 \r\n\r\n"));
    ob.push_text(Bytes::from_static(b"welcome")).unwrap();
    let mut s = OutboxStream::new(ob.clone());
    let chunk = s.next().await.unwrap().unwrap();
    // The answer, then the ping (control frames go ahead of data, never of the answer),
    // then the text frame.
    assert_eq!(&chunk[..], b"HTTP/1.1 101 \r\n\r\n\x89\x00\x81\x07welcome");
    assert_eq!(ob.backlog(), (0, 0));
}

#[actix_web::test]
async fn over_the_server_wide_budget_the_largest_queues_are_refused_first() {
    // Per-queue bounds far above what the test pushes: only the budget refuses.
    let budget = Budget::new(1000);
    let ob = |_| Outbox::bounded(1000, 1 << 20, Framing::WebSocket, &budget);
    let (big, small, empty) = (ob(0), ob(1), ob(2));
    let payload = |n: usize| Bytes::from(vec![b'x'; n]);
    for _ in 0..6 {
        big.push_text(payload(100)).unwrap();
    }
    small.push_text(payload(100)).unwrap();
    small.push_text(payload(100)).unwrap();
    assert_eq!(budget.usage(), (800, 1000));
    // Within the budget, any queue grows.
    big.push_text(payload(100)).unwrap();
    // Over it (900 + 200 > 1000): the queue above the average (900 / 2 = 450) is refused,
    // the one below it still takes what it is sent; an empty queue always takes one.
    assert_eq!(big.push_text(payload(200)), Err(PushError::Full));
    small.push_text(payload(200)).unwrap();
    empty.push_text(payload(200)).unwrap();
    assert_eq!(budget.usage(), (1300, 1000));
    // The same for a batch (push_frames), and conflated values.
    assert_eq!(big.push_all([payload(1)]), Err(PushError::Full));
    assert_eq!(big.push_latest(payload(1), 1), Err(PushError::Full));
    // Draining gives the bytes back: the big queue may grow again.
    let mut s = OutboxStream::new(big.clone());
    let chunk = s.next().await.unwrap().unwrap();
    assert_eq!(chunk.len(), 7 * 102);
    assert_eq!(budget.usage(), (600, 1000));
    big.push_text(payload(100)).unwrap();
    // A connection that goes away (its stream dropped) or an outbox dropped undrained
    // takes its bytes with it.
    drop(s);
    assert_eq!(budget.usage(), (600, 1000));
    drop(small);
    drop(empty);
    assert_eq!(budget.usage(), (0, 1000));
}

#[test]
fn over_the_budget_a_queue_past_a_sixteenth_of_its_bound_is_refused_even_below_average() {
    let budget = Budget::new(1000);
    let a = Outbox::bounded(1000, 1600, Framing::WebSocket, &budget);
    let b = Outbox::bounded(1000, 1600, Framing::WebSocket, &budget);
    a.push_text(Bytes::from(vec![b'x'; 900])).unwrap();
    b.push_text(Bytes::from(vec![b'x'; 100])).unwrap();
    // b holds 100 (a sixteenth of 1,600), under the average (500): still refused, so
    // queues under the average cannot grow the total far past the budget.
    assert_eq!(b.push_text(Bytes::from_static(b"y")), Err(PushError::Full));
    // Without a budget (0), nothing is refused for it.
    let off = Budget::new(0);
    let c = Outbox::bounded(1000, 1 << 20, Framing::WebSocket, &off);
    for _ in 0..100 {
        c.push_text(Bytes::from(vec![b'x'; 100])).unwrap();
    }
    assert_eq!(c.budget_usage(), None);
}

#[actix_web::test]
async fn drains_everything_queued_into_one_chunk_then_closes() {
    let ob = Outbox::new(16, 1024);
    ob.push_text(Bytes::from_static(b"one")).unwrap();
    ob.push_text(Bytes::from_static(b"two")).unwrap();
    ob.close(CloseCode::Away, "bye");
    assert_eq!(
        ob.push_text(Bytes::from_static(b"late")),
        Err(PushError::Closed)
    );
    let mut s = OutboxStream::new(ob.clone());
    let chunk = s.next().await.unwrap().unwrap();
    // two text frames (2-byte header + payload) and a close frame (2 + 2 code + "bye")
    assert_eq!(chunk.len(), 5 + 5 + 7);
    assert_eq!(&chunk[..5], b"\x81\x03one");
    assert!(s.next().await.is_none());
}
