// Socket.IO connection-state recovery in cluster mode (docs/socketio.md, docs/cluster.md) with
// the real socket.io-client@4: a socket dropped on one node recovers on another, and on its
// own node restarted. Started by `cargo test` (tests/api/cluster_recovery.rs), one test per
// case, chosen with --test-name-pattern. SY_URL_A and SY_URL_B are two nodes of one cluster;
// SY_TOKEN (user "reader"), SY_TOKEN_OTHER (user "mallory") and SY_TOKEN_PUB (may publish
// anywhere) are tokens for it. Every wait has a timeout; nothing sleeps.
import { test } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { io } from "socket.io-client";

const A = process.env.SY_URL_A;
const B = process.env.SY_URL_B;
const { SY_TOKEN: TOKEN, SY_TOKEN_OTHER: OTHER, SY_TOKEN_PUB: PUB } = process.env;
assert.ok(A && B && TOKEN && OTHER && PUB, "SY_URL_A, SY_URL_B and the tokens must be set");
const WAIT = 10_000;

function within(promise, what, ms = WAIT) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

const next = (socket, event) => within(new Promise((r) => socket.once(event, (...a) => r(a))), event);
const ack = (socket, event, ...args) => within(socket.emitWithAck(event, ...args), `ack of ${event}`);
const id = () => crypto.randomBytes(4).toString("hex");

function connect(url, opts = {}) {
  return io(url, {
    forceNew: true,
    transports: ["websocket"],
    reconnectionDelay: 1_000,
    randomizationFactor: 0,
    ...opts,
  });
}

async function publish(url, room, event, data) {
  const res = await fetch(`${url}/api/rooms/${room}/publish`, {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${PUB}` },
    body: JSON.stringify({ event, data }),
  });
  assert.equal(res.status, 200, `publish into ${room}: ${await res.text()}`);
}

// Resolves once `pred(list)` holds, checking after every event `socket` receives.
function until(socket, list, pred, what, ms = WAIT) {
  let listener;
  return within(
    new Promise((resolve) => {
      const check = () => {
        if (pred(list)) resolve();
      };
      listener = () => queueMicrotask(check);
      socket.onAny(listener);
      check();
    }),
    what,
    ms,
  ).finally(() => socket.offAny(listener));
}

// Closes the transport the way a network drop does.
async function dropTransport(socket) {
  const gone = next(socket, "disconnect");
  socket.io.engine.transport.ws.close();
  const [reason] = await gone;
  assert.equal(reason, "transport close");
}

test("another-node: dropped on A, recovered on B with exactly what it missed, not by another user", async () => {
  const a = `cr-a-${id()}`;
  const b = `cr-b-${id()}`;
  const socket = connect(A, { auth: { token: TOKEN } });
  let thief;
  try {
    await next(socket, "connect");
    assert.equal(socket.recovered, false);
    assert.equal((await ack(socket, "join", { room: a })).ok, true);
    assert.equal((await ack(socket, "join", { room: b })).ok, true);
    const got = [];
    socket.on("m", (data, meta) => got.push(`${meta.room === a ? "a" : "b"}${data.n}`));
    await publish(A, a, "m", { n: 0 });
    await publish(A, b, "m", { n: 0 });
    await until(socket, got, (g) => g.length === 2, "the live messages");

    // The next connection goes to node B (the Manager's address: a load balancer that sends
    // the reconnect elsewhere).
    socket.io.uri = B;
    await dropTransport(socket);
    for (let n = 1; n <= 3; n++) {
      await publish(B, a, "m", { n });
      if (n < 3) await publish(B, b, "m", { n });
    }

    // Another user presenting the pid on B gets a socket of its own, and the record stays.
    thief = connect(B, {
      auth: { token: OTHER, pid: socket._pid, offset: socket._lastOffset },
      reconnection: false,
    });
    await next(thief, "connect");
    assert.notEqual(thief._pid, socket._pid, "a pid is not a credential");

    await within(next(socket, "connect"), "the reconnect through node B");
    assert.equal(socket.recovered, true, "recovered on another node");
    await until(socket, got, (g) => g.length === 7, "the missed messages");
    // Back in both rooms, on B: live messages come after the missed ones.
    await publish(A, b, "m", { n: 9 });
    await publish(B, a, "m", { n: 9 });
    await until(socket, got, (g) => g.length === 9, "live messages after the recovery");
    const of = (room) => got.filter((m) => m.startsWith(room));
    assert.deepEqual(of("a"), ["a0", "a1", "a2", "a3", "a9"]);
    assert.deepEqual(of("b"), ["b0", "b1", "b2", "b9"]);

    // Dropped again on B, back to A: recovered again (a pid recovers once; this is B's).
    socket.io.uri = A;
    await dropTransport(socket);
    await publish(B, a, "m", { n: 10 });
    await within(next(socket, "connect"), "the reconnect through node A");
    assert.equal(socket.recovered, true, "recovered again on the first node");
    await until(socket, got, (g) => g.length === 10, "the message missed the second time");
    assert.deepEqual(of("a"), ["a0", "a1", "a2", "a3", "a9", "a10"]);
  } finally {
    socket.disconnect();
    thief?.disconnect();
  }
});

// Driven step by step by tests/api/cluster_recovery.rs: it restarts node A (same port, same
// Redis and database) when this prints RESTART; this publishes on B meanwhile.
test("restart: dropped by its node's restart, recovered on the node restarted", async () => {
  const a = `cr-restart-${id()}`;
  const socket = connect(A, {
    auth: { token: TOKEN },
    reconnectionDelay: 100,
    reconnectionDelayMax: 200,
  });
  try {
    await next(socket, "connect");
    assert.equal((await ack(socket, "join", { room: a })).ok, true);
    const got = [];
    socket.on("m", (data) => got.push(data.n));
    await publish(A, a, "m", { n: 1 });
    await until(socket, got, (g) => g.length === 1, "the live message");
    const gone = next(socket, "disconnect");
    console.log("SY:RESTART");
    await gone;
    await publish(B, a, "m", { n: 2 });
    await publish(B, a, "m", { n: 3 });
    await within(next(socket, "connect"), "the reconnect after the restart", 30_000);
    assert.equal(socket.recovered, true, "recovered after its node restarted");
    await until(socket, got, (g) => g.length === 3, "the messages missed during the restart");
    await publish(A, a, "m", { n: 4 });
    await until(socket, got, (g) => g.length === 4, "a live message after the restart");
    assert.deepEqual(got, [1, 2, 3, 4]);
  } finally {
    socket.disconnect();
  }
});
