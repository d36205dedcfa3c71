// Socket.IO connection-state recovery (docs/socketio.md) with the real socket.io-client@4: a
// client whose transport closes reconnects by itself and gets every room message it missed.
// Started by `cargo test` (tests/api/recovery.rs), one test per server configuration, chosen
// with --test-name-pattern; SY_URL is the server's address. Every wait has a timeout; nothing
// sleeps.
import { test } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { io } from "socket.io-client";

const URL = process.env.SY_URL;
assert.ok(URL, "SY_URL must be set");
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

// Reconnects by itself, after a second: the server has long noticed the closed transport.
async function connect(path = "", opts = {}) {
  const socket = io(URL + path, {
    forceNew: true,
    transports: ["websocket"],
    reconnectionDelay: 1_000,
    randomizationFactor: 0,
    ...opts,
  });
  await next(socket, "connect");
  return socket;
}

async function publish(room, event, data) {
  const res = await fetch(`${URL}/api/rooms/${room}/publish`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ event, data }),
  });
  assert.equal(res.status, 200, `publish into ${room}: ${await res.text()}`);
}

// Resolves once `pred(list)` holds, checking after every event `socket` receives.
// (Any-listeners run before an event's own handlers: the check waits for those.)
function until(socket, list, pred, what) {
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
  ).finally(() => socket.offAny(listener));
}

// Closes the transport the way a network drop does (not socket.disconnect(), after which a
// client does not reconnect and nothing is recovered, as with the reference server).
async function dropTransport(socket) {
  const gone = next(socket, "disconnect");
  socket.io.engine.transport.ws.close();
  const [reason] = await gone;
  assert.equal(reason, "transport close");
}

test("recovery: every missed message of every room, in order, once, after a transport close", async () => {
  const a = `room-a-${id()}`;
  const b = `room-b-${id()}`;
  const socket = await connect("", { auth: { user: "reader" } });
  try {
    assert.equal(socket.recovered, false);
    assert.equal((await ack(socket, "join", { room: a })).ok, true);
    assert.equal((await ack(socket, "join", { room: b })).ok, true);
    const got = [];
    const args = [];
    socket.on("m", (data, meta, offset) => {
      got.push(`${meta.room === a ? "a" : "b"}${data.n}`);
      args.push(offset);
    });
    await publish(a, "m", { n: 0 });
    await publish(b, "m", { n: 0 });
    await until(socket, got, (g) => g.length === 2, "the live messages");
    // The offset string is the last argument, as with Node's connectionStateRecovery.
    assert.deepEqual(args, [`${a}@1`, `${b}@1`]);

    const firstId = socket.id;
    await dropTransport(socket);
    for (let n = 1; n <= 3; n++) {
      await publish(a, "m", { n });
      if (n < 3) await publish(b, "m", { n });
    }
    await next(socket, "connect");
    assert.equal(socket.recovered, true, "recovered");
    await until(socket, got, (g) => g.length === 7, "the missed messages");
    // The rooms are back: live messages keep coming, after the missed ones.
    await publish(b, "m", { n: 9 });
    await publish(a, "m", { n: 9 });
    await until(socket, got, (g) => g.length === 9, "live messages after the recovery");
    const of = (room) => got.filter((m) => m.startsWith(room));
    assert.deepEqual(of("a"), ["a0", "a1", "a2", "a3", "a9"]);
    assert.deepEqual(of("b"), ["b0", "b1", "b2", "b9"]);
    assert.notEqual(socket.id, firstId);

    // A second drop recovers again, from the recovered socket's own journal.
    await dropTransport(socket);
    await publish(a, "m", { n: 10 });
    await next(socket, "connect");
    assert.equal(socket.recovered, true, "recovered twice");
    await until(socket, got, (g) => g.length === 10, "the message missed the second time");
    assert.deepEqual(of("a"), ["a0", "a1", "a2", "a3", "a9", "a10"]);
  } finally {
    socket.disconnect();
  }
});

// An external operation this script reports for, as its worker (open mode: no token).
async function report(opId, what, body) {
  const res = await fetch(`${URL}/api/operations/${opId}/${what}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  assert.equal(res.status, 200, `${what} for ${opId}: ${await res.text()}`);
}

async function startOperation() {
  const res = await fetch(`${URL}/api/operations`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ kind: "convert", target: `t-${id()}` }),
  });
  const body = await res.text();
  assert.equal(res.status, 202, body);
  return JSON.parse(body).id;
}

// Everything an operation's room delivers, in arrival order: log lines by text, progress by
// percentage, terminal events by name.
function followOperation(socket) {
  const got = [];
  socket.on("operation.log", (line) => got.push(`log:${line.line}`));
  socket.on("operation.progress", (status) => got.push(`progress:${status.progress}`));
  socket.on("operation.completed", () => got.push("completed"));
  return got;
}

const lines = (got) => got.filter((e) => e.startsWith("log:"));

test("recovery: a watched operation's missed lines, progress and end, once and in order", async () => {
  const op = await startOperation();
  await report(op, "logs", { lines: ["one"] });
  const socket = await connect("", { auth: { user: "watcher" } });
  try {
    const got = followOperation(socket);
    assert.equal((await ack(socket, "join", { room: `operation:${op}` })).ok, true);
    await until(socket, got, (g) => g.includes("log:one"), "the backfill");
    await report(op, "progress", { progress: 20 });
    await report(op, "logs", { lines: ["two"] });
    await until(socket, got, (g) => g.includes("log:two"), "the live events");

    await dropTransport(socket);
    await report(op, "progress", { progress: 50 });
    await report(op, "logs", { lines: ["three", "four"] });
    await report(op, "complete", { result: { ok: true } });
    await next(socket, "connect");
    assert.equal(socket.recovered, true, "recovered");
    await until(socket, got, (g) => g.includes("completed"), "the missed end");
    assert.deepEqual(lines(got), ["log:one", "log:two", "log:three", "log:four"]);
    // The missed progress came, after what was seen before the drop, and the end once, last.
    const at = (e) => got.indexOf(e);
    assert.ok(at("progress:20") < at("log:two") && at("log:two") < at("progress:50"), got.join());
    assert.ok(at("progress:50") < at("log:three"), got.join());
    assert.equal(got.filter((e) => e === "completed").length, 1);
    assert.equal(got.at(-1), "completed");
  } finally {
    socket.disconnect();
  }
});

test("recovery: an operation watched through a start, dropped before any live event, is watched again without repeats", async () => {
  // Already running, with two lines: a second `operation:start` with `watch` follows it (as a
  // second wizard tab does), and its backfill brings the status and both lines.
  const target = `s-${id()}`;
  const res = await fetch(`${URL}/api/operations`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ kind: "convert", target }),
  });
  const body = await res.text();
  assert.equal(res.status, 202, body);
  const op = JSON.parse(body).id;
  await report(op, "logs", { lines: ["a", "b"] });
  const socket = await connect("", { auth: { user: "starter" } });
  try {
    const got = followOperation(socket);
    const dup = await ack(socket, "operation:start", { kind: "convert", target, watch: true });
    assert.equal(dup.error.code, "duplicate_operation", JSON.stringify(dup));
    assert.equal(dup.operation.id, op);
    await until(socket, got, (g) => g.includes("log:b"), "the watch's backfill");
    // The connection drops before any live event of the operation arrived.
    await dropTransport(socket);
    await report(op, "progress", { progress: 40 });
    await report(op, "logs", { lines: ["c"] });
    await next(socket, "connect");
    assert.equal(socket.recovered, true, "recovered");
    await until(socket, got, (g) => g.includes("log:c"), "the missed line");
    await report(op, "complete", {});
    await until(socket, got, (g) => g.includes("completed"), "the end, live");
    // Watched again from the last line it got: no line twice, none lost.
    assert.deepEqual(lines(got), ["log:a", "log:b", "log:c"]);
    assert.equal(got.filter((e) => e === "completed").length, 1);
    assert.ok(got.includes("progress:40"), got.join());
  } finally {
    socket.disconnect();
  }
});

test("recovery: a drop before any message arrived resumes where the rooms were joined", async () => {
  const a = `room-quiet-${id()}`;
  const socket = await connect("", { auth: { user: "quiet" } });
  try {
    assert.equal((await ack(socket, "join", { room: a })).ok, true);
    const got = [];
    socket.on("m", (data) => got.push(data.n));
    await dropTransport(socket);
    await publish(a, "m", { n: 1 });
    await next(socket, "connect");
    assert.equal(socket.recovered, true);
    await until(socket, got, (g) => g.length === 1, "the missed message");
    assert.deepEqual(got, [1]);
  } finally {
    socket.disconnect();
  }
});

test("recovery: an app profile's renames, its events and its connect rooms keep working", async () => {
  const project = id();
  const user = `app-${id()}`;
  const socket = await connect("/app", { auth: { user } });
  try {
    const statuses = [];
    socket.on("status", (s) => statuses.push(s.message));
    assert.equal((await ack(socket, "join-project", project)).room, `project:${project}`);
    const got = [];
    socket.on("step-updated", (data, meta) => got.push(`${meta.room}:${data.step}`));
    await publish(`board:${user}`, "step", { n: 1 });
    await until(socket, got, (g) => g.length === 1, "the first board message");
    await dropTransport(socket);
    await publish(`project:${project}`, "step", { n: 2 });
    await publish(`board:${user}`, "step", { n: 3 });
    const status = next(socket, "status");
    await next(socket, "connect");
    assert.equal(socket.recovered, true);
    // The connect events come again (as a Node app's connection handler runs again); the
    // connect rooms are not joined twice.
    assert.equal((await status)[0].message, "welcome");
    await until(socket, got, (g) => g.length === 3, "the missed renamed messages");
    // Each room in its order (rooms have separate orders: none is promised across them).
    const of = (room) => got.filter((m) => m.startsWith(room));
    assert.deepEqual(of("board:"), [`board:${user}:1`, `board:${user}:3`]);
    assert.deepEqual(of("project:"), [`project:${project}:2`]);
  } finally {
    socket.disconnect();
  }
});

test("recovery: over long-polling too, after the client closed its Engine.IO session", async () => {
  const a = `room-poll-${id()}`;
  const socket = await connect("", { auth: { user: "poller" }, transports: ["polling"] });
  try {
    assert.equal((await ack(socket, "join", { room: a })).ok, true);
    const got = [];
    socket.on("m", (data) => got.push(data.n));
    await publish(a, "m", { n: 1 });
    await until(socket, got, (g) => g.length === 1, "the live message");
    const gone = next(socket, "disconnect");
    socket.io.engine.close();
    assert.equal((await gone)[0], "forced close");
    await publish(a, "m", { n: 2 });
    await publish(a, "m", { n: 3 });
    await next(socket, "connect");
    assert.equal(socket.recovered, true);
    await until(socket, got, (g) => g.length === 3, "the missed messages");
    assert.deepEqual(got, [1, 2, 3]);
  } finally {
    socket.disconnect();
  }
});

test("recovery: a pid recovers only its own user's socket, and only once", async () => {
  const a = `room-own-${id()}`;
  const socket = await connect("", { auth: { user: "owner" } });
  try {
    assert.equal((await ack(socket, "join", { room: a })).ok, true);
    const got = [];
    socket.on("m", (data) => got.push(data.n));
    await publish(a, "m", { n: 1 });
    await until(socket, got, (g) => g.length === 1, "the live message");
    const pid = socket._pid;
    const offset = `${a}@1`;
    // Off the network, the owner cannot reconnect until the thief has tried.
    socket.io.reconnection(false);
    await dropTransport(socket);
    const thief = await connect("", { auth: { user: "thief", pid, offset }, reconnection: false });
    assert.equal(thief.recovered, false);
    assert.notEqual(thief._pid, pid);
    const stolen = [];
    thief.on("m", (data) => stolen.push(data.n));
    thief.disconnect();
    socket.io.reconnection(true);
    socket.connect();
    await next(socket, "connect");
    assert.equal(socket.recovered, true, "the owner still recovers");
    assert.deepEqual(stolen, []);
    // Used once: a second client with the same pid and offset starts afresh.
    const again = await connect("", { auth: { user: "owner", pid, offset }, reconnection: false });
    assert.equal(again.recovered, false);
    again.disconnect();
  } finally {
    socket.disconnect();
  }
});

test("trimmed: history no longer holds what was missed, so the socket starts afresh", async () => {
  const a = `room-trim-${id()}`;
  const socket = await connect("", { auth: { user: "late" } });
  try {
    assert.equal((await ack(socket, "join", { room: a })).ok, true);
    const got = [];
    socket.on("m", (data) => got.push(data.n));
    await publish(a, "m", { n: 0 });
    await until(socket, got, (g) => g.length === 1, "the live message");
    await dropTransport(socket);
    // The server keeps 2 messages of history: 1 and 2 are gone by the time it reconnects.
    for (let n = 1; n <= 5; n++) await publish(a, "m", { n });
    await next(socket, "connect");
    assert.equal(socket.recovered, false, "not recovered");
    // A fresh socket is in no room (the app joins again, resuming with `since` if it likes).
    assert.equal((await ack(socket, "join", { room: a })).ok, true);
    // The fresh socket recovers in turn, though its client still holds the old socket's
    // offset (it got nothing from the new one).
    await dropTransport(socket);
    await publish(a, "m", { n: 6 });
    await next(socket, "connect");
    assert.equal(socket.recovered, true, "the fresh socket recovered");
    await until(socket, got, (g) => g.includes(6), "the message missed by the fresh socket");
    assert.deepEqual(got, [0, 6]);
  } finally {
    socket.disconnect();
  }
});

test("off: no pid, no extra argument, no recovery", async () => {
  const a = `room-off-${id()}`;
  const socket = await connect("", { auth: { user: "plain" } });
  try {
    assert.equal((await ack(socket, "join", { room: a })).ok, true);
    const args = [];
    socket.on("m", (...rest) => args.push(rest));
    await publish(a, "m", { n: 1 });
    await until(socket, args, (g) => g.length === 1, "the message");
    assert.equal(args[0].length, 2, "data and meta only");
    assert.equal(socket._pid, undefined);
    await dropTransport(socket);
    await next(socket, "connect");
    assert.ok(!socket.recovered, "not recovered");
  } finally {
    socket.disconnect();
  }
});

// Driven step by step by tests/api/recovery.rs: it restarts the server (same port, same
// database) when this prints RESTART, and publishes nothing; this publishes over REST.
test("restart: a restart loses the history, so recovery fails cleanly", async () => {
  const a = `room-restart-${id()}`;
  const socket = await connect("", {
    auth: { user: "survivor" },
    reconnectionDelay: 100,
    reconnectionDelayMax: 200,
  });
  try {
    assert.equal((await ack(socket, "join", { room: a })).ok, true);
    const got = [];
    socket.on("m", (data) => got.push(data.n));
    await publish(a, "m", { n: 1 });
    await until(socket, got, (g) => g.length === 1, "the live message");
    assert.ok(socket._pid, "a pid");
    const gone = next(socket, "disconnect");
    console.log("SY:RESTART");
    await gone;
    await within(next(socket, "connect"), "the reconnect after the restart", 30_000);
    assert.equal(socket.recovered, false, "nothing to recover after a restart");
    assert.equal((await ack(socket, "join", { room: a })).ok, true);
    await publish(a, "m", { n: 2 });
    await until(socket, got, (g) => g.length === 2, "a live message after the restart");
    assert.deepEqual(got, [1, 2]);
  } finally {
    socket.disconnect();
  }
});
