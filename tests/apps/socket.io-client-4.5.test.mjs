// An app on socket.io-client 4.5 (seed 003 loads 4.5.4 from a CDN) against Switchyard with an
// app profile (examples/002-service-restart's, run by tests/api/profiles.rs): everything a
// 4.x client does works unchanged — connect, the app's own events joining rooms, messages in
// those rooms, acks through callbacks, the automatic reconnect — except `emitWithAck`, which
// 4.5 does not have (it came in 4.6): an app written for 4.5 never calls it. docs/migrating.md
// says so. Every wait has a timeout; nothing sleeps.
import { test } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client-454";

const URL = process.env.SY_URL;
assert.ok(URL, "SY_URL must be set");

function within(promise, what, ms = 15_000) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** The 4.5 way to get an ack: a callback as the last argument. */
const ack = (socket, event, ...args) => within(new Promise((r) => socket.emit(event, ...args, r)), `the ack of ${event}`);

async function connected() {
  const socket = io(URL, { forceNew: true, reconnectionDelay: 100, reconnectionDelayMax: 500 });
  await within(new Promise((r) => socket.once("connect", r)), "connect");
  return socket;
}

async function publish(room, event, data) {
  const res = await fetch(`${URL}/api/rooms/${room}/publish`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ event, data }),
  });
  assert.equal(res.status, 200, await res.text());
}

test("this is 4.5: no emitWithAck", () => {
  const socket = io(URL, { autoConnect: false });
  assert.equal(typeof socket.emitWithAck, "undefined");
  assert.equal(typeof socket.emit, "function");
});

test("connect, an app event joining a room with its ack by callback, a message in the room", async () => {
  const socket = await connected();
  try {
    const id = `c${Math.random().toString(36).slice(2, 8)}`;
    const joined = await ack(socket, "subscribe", id);
    assert.equal(joined.ok, true, JSON.stringify(joined));
    assert.equal(joined.room, `project:${id}`);
    const got = within(new Promise((r) => socket.once("note", r)), "the room's message");
    await publish(`project:${id}`, "note", { text: "hello" });
    assert.deepEqual(await got, { text: "hello" });
    // A refusal comes back through the callback too (an event no profile maps).
    const refused = await ack(socket, "no-such-event", 1);
    assert.equal(refused.ok, false);
    assert.equal(refused.error.code, "unknown_type");
    assert.equal(socket.connected, true);
  } finally {
    socket.close();
  }
});

test("the automatic reconnect: the app's connect handler joins again and messages flow", async () => {
  const socket = await connected();
  const id = `c${Math.random().toString(36).slice(2, 8)}`;
  // The app's pattern: (re)subscribe in its connect handler, with an ack callback (added
  // after the first connect, so it runs for the reconnect).
  let resubscribed;
  const again = within(new Promise((r) => (resubscribed = r)), "the subscribe after the reconnect");
  try {
    assert.equal((await ack(socket, "subscribe", id)).ok, true);
    socket.on("connect", () => socket.emit("subscribe", id, resubscribed));
    const back = within(new Promise((r) => socket.io.once("reconnect", r)), "the reconnect");
    socket.io.engine.close();
    await back;
    assert.equal((await again).ok, true);
    const got = within(new Promise((r) => socket.once("note", r)), "a message after the reconnect");
    await publish(`project:${id}`, "note", { n: 2 });
    assert.deepEqual(await got, { n: 2 });
  } finally {
    socket.close();
  }
});
