// Real socket.io-client@4 (and the `ws` package for the native protocol) against a running
// Switchyard. Started by `cargo test` (tests/api/socketio.rs), which passes:
//   SY_URL         an open-mode server (maxPayload 100000, extra namespace /admin)
//   SY_SECURE_URL  a server with SY_SECRET as its JWT secret, at most 3 connections per user
// Every wait has a timeout; nothing sleeps.
import { test } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { io } from "socket.io-client";
import WebSocket from "ws";

const URL = process.env.SY_URL;
const SECURE_URL = process.env.SY_SECURE_URL;
const SECRET = process.env.SY_SECRET;
assert.ok(URL && SECURE_URL && SECRET, "SY_URL, SY_SECURE_URL and SY_SECRET must be set");

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

function once(emitter, event) {
  return within(new Promise((resolve) => emitter.once(event, (...args) => resolve(args))), event);
}

/** Resolves with the args of the first `event` whose args satisfy `pred`. */
function waitFor(socket, event, pred = () => true) {
  return within(
    new Promise((resolve) => {
      const handler = (...args) => {
        if (pred(...args)) {
          socket.off(event, handler);
          resolve(args);
        }
      };
      socket.on(event, handler);
    }),
    event,
  );
}

function connect(opts = {}, url = URL) {
  const socket = io(url, { reconnection: false, forceNew: true, ...opts });
  return socket;
}

async function connected(socket) {
  if (!socket.connected) await once(socket, "connect");
  return socket;
}

const ack = (socket, event, body) => within(socket.emitWithAck(event, body), `ack of ${event}`);

function token(claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64(claims);
  const sig = crypto.createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

const room = (name) => `${name}-${crypto.randomBytes(4).toString("hex")}`;

for (const [mode, transports] of [
  ["default (polling, then upgrade)", undefined],
  ["websocket only", ["websocket"]],
  ["polling only", ["polling"]],
]) {
  test(`transport mode: ${mode}`, async () => {
    const socket = await connected(connect({ transports, auth: { user: "alice", name: "Alice" } }));
    try {
      const r = room("modes");
      const joined = await ack(socket, "join", { room: r });
      assert.equal(joined.ok, true);
      assert.equal(joined.room, r);
      assert.deepEqual(joined.presence, [{ user: "alice", name: "Alice" }]);
      const got = waitFor(socket, "step-updated");
      const published = await ack(socket, "publish", { room: r, event: "step-updated", data: { step: 3 } });
      assert.deepEqual(published, { ok: true, room: r, offset: 1 });
      const [data, meta] = await got;
      assert.deepEqual(data, { step: 3 });
      assert.equal(meta.room, r);
      assert.equal(meta.offset, 1);
      assert.equal(meta.from.user, "alice");
      const engine = socket.io.engine;
      if (transports === undefined) {
        if (engine.transport.name !== "websocket") await once(engine, "upgrade");
        assert.equal(engine.transport.name, "websocket");
        // Traffic after the upgrade still flows.
        const again = waitFor(socket, "after-upgrade");
        await ack(socket, "publish", { room: r, event: "after-upgrade", data: 2 });
        assert.deepEqual((await again)[0], 2);
      } else {
        assert.equal(engine.transport.name, transports[0]);
      }
    } finally {
      socket.close();
    }
  });
}

test("acks carry results and refusals; binary payloads travel both ways", async () => {
  const a = await connected(connect({ auth: { user: "a" } }));
  const b = await connected(connect({ transports: ["polling"], auth: { user: "b" } }));
  try {
    const r = room("bin");
    await ack(a, "join", { room: r });
    await ack(b, "join", { room: r });
    const refused = await ack(a, "publish", { room: "not joined", event: "e" });
    assert.equal(refused.ok, false);
    assert.equal(refused.error.code, "invalid_room");
    const unknown = await ack(a, "dance", {});
    assert.deepEqual(unknown.ok, false);
    assert.equal(unknown.error.code, "unknown_type");
    const notMember = await ack(a, "publish", { room: room("elsewhere"), event: "e" });
    assert.equal(notMember.error.code, "not_member");

    const blob = crypto.randomBytes(3000);
    const gotB = waitFor(b, "file");
    const gotA = waitFor(a, "file");
    const res = await ack(a, "publish", { room: r, event: "file", data: { name: "x.bin", bytes: blob } });
    assert.equal(res.ok, true);
    for (const [data, meta] of [await gotB, await gotA]) {
      assert.equal(data.name, "x.bin");
      assert.ok(Buffer.isBuffer(data.bytes) || data.bytes instanceof ArrayBuffer, "binary arrives as binary");
      assert.ok(Buffer.from(data.bytes).equals(blob));
      assert.equal(meta.offset, res.offset);
    }
    // Without an ack callback, a refusal arrives as an `error` event.
    const err = waitFor(a, "error");
    a.emit("publish", { room: "bad room", event: "e" });
    assert.equal((await err)[0].code, "invalid_room");
  } finally {
    a.close();
    b.close();
  }
});

test("an unknown namespace is refused; configured ones work", async () => {
  const bad = connect({}, `${URL}/nope`);
  const [err] = await once(bad, "connect_error");
  assert.equal(err.message, "Invalid namespace");
  bad.close();
  const admin = await connected(connect({ auth: { user: "root" } }, `${URL}/admin`));
  const joined = await ack(admin, "join", { room: "system" });
  assert.equal(joined.ok, true);
  admin.close();
});

test("a refused token gets connect_error; a good one connects with its permissions", async () => {
  const bad = connect({ auth: { token: "not-a-token" } }, SECURE_URL);
  const [err] = await once(bad, "connect_error");
  assert.match(err.message, /token/);
  bad.close();
  const none = connect({}, SECURE_URL);
  const [err2] = await once(none, "connect_error");
  assert.match(err2.message, /token is required/);
  none.close();

  const t = token({ sub: "carol", rooms: ["project:*"], publish: ["project:1"], exp: Math.floor(Date.now() / 1000) + 600 });
  const ok = await connected(connect({ auth: { token: t } }, SECURE_URL));
  try {
    assert.equal((await ack(ok, "join", { room: "project:1" })).ok, true);
    const forbidden = await ack(ok, "join", { room: "system" });
    assert.equal(forbidden.ok, false);
    assert.equal(forbidden.error.code, "forbidden");
    const p = await ack(ok, "publish", { room: "project:1", event: "e", data: 1 });
    assert.equal(p.ok, true);
  } finally {
    ok.close();
  }
});

test("a user's fourth connection gets connect_error too_many_connections; a closed one frees its place", async () => {
  const t = token({ sub: "dora", rooms: ["*"], exp: Math.floor(Date.now() / 1000) + 600 });
  // Over WebSocket and over long-polling alike: each counts once its CONNECT is accepted.
  const open = [];
  try {
    for (const transports of [["websocket"], ["polling"], ["websocket"]]) {
      open.push(await connected(connect({ transports, auth: { token: t } }, SECURE_URL)));
    }
    const fourth = connect({ transports: ["polling"], auth: { token: t } }, SECURE_URL);
    const [err] = await once(fourth, "connect_error");
    assert.match(err.message, /open connections/);
    assert.equal(err.data?.code, "too_many_connections");
    fourth.close();
    // Another user is not affected.
    const other = token({ sub: "ed", rooms: ["*"], exp: Math.floor(Date.now() / 1000) + 600 });
    const ed = await connected(connect({ auth: { token: other } }, SECURE_URL));
    ed.close();
    // Closing one frees its place once the server has seen it go.
    open.shift().close();
    const deadline = Date.now() + WAIT;
    for (;;) {
      const again = connect({ auth: { token: t } }, SECURE_URL);
      const outcome = await within(
        new Promise((resolve) => {
          again.once("connect", () => resolve("connected"));
          again.once("connect_error", (e) => resolve(e.data?.code ?? e.message));
        }),
        "an answer to the CONNECT",
      );
      if (outcome === "connected") {
        open.push(again);
        break;
      }
      again.close();
      assert.equal(outcome, "too_many_connections");
      assert.ok(Date.now() < deadline, "the closed connection's place was never freed");
      await new Promise((resolve) => setImmediate(resolve));
    }
  } finally {
    for (const s of open) s.close();
  }
});

for (const transports of [["websocket"], ["polling"]]) {
  test(`a message over maxPayload ends the connection (${transports[0]})`, async () => {
    const socket = await connected(connect({ transports, auth: { user: "big" } }));
    const r = room("big");
    await ack(socket, "join", { room: r });
    const gone = once(socket, "disconnect");
    socket.emit("publish", { room: r, event: "huge", data: "x".repeat(200_000) });
    const [reason] = await gone;
    assert.match(reason, /transport (close|error)/);
    socket.close();
  });
}

test("after a reconnection the client resumes its rooms without losing a message", async () => {
  const r = room("resume");
  const publisher = await connected(connect({ auth: { user: "pub" } }));
  const reader = io(URL, { forceNew: true, auth: { user: "reader" }, reconnectionDelay: 50, reconnectionDelayMax: 100 });
  await connected(reader);
  try {
    await ack(publisher, "join", { room: r });
    const joined = await ack(reader, "join", { room: r });
    const position = { epoch: joined.epoch, offset: joined.offset };
    reader.on("tick", (_data, meta) => {
      position.offset = meta.offset;
    });
    const seen = [];
    reader.on("tick", (data) => seen.push(data));
    // Every waiter is set up before the action that triggers it.
    const first = waitFor(reader, "tick", (d) => d === 1);
    await ack(publisher, "publish", { room: r, event: "tick", data: 1 });
    await first;

    // Cut the connection under the client; it reconnects by itself.
    const down = once(reader, "disconnect");
    reader.io.engine.close();
    await down;
    const back = once(reader, "connect");
    for (const n of [2, 3, 4]) await ack(publisher, "publish", { room: r, event: "tick", data: n });
    await back;
    const replayed = waitFor(reader, "tick", (d) => d === 4);
    const rejoined = await ack(reader, "join", { room: r, since: { ...position } });
    assert.equal(rejoined.recovered, true);
    await replayed;
    const live = waitFor(reader, "tick", (d) => d === 5);
    await ack(publisher, "publish", { room: r, event: "tick", data: 5 });
    await live;
    assert.deepEqual(seen, [1, 2, 3, 4, 5]);
  } finally {
    publisher.close();
    reader.close();
  }
});

test("a room shared with a native /ws client: same messages, same order", async () => {
  const r = room("shared");
  const native = new WebSocket(`${URL.replace("http", "ws")}/ws`);
  const frames = [];
  const waiters = [];
  native.on("message", (raw) => {
    const f = JSON.parse(raw.toString());
    frames.push(f);
    for (const w of waiters.splice(0)) w();
  });
  const nativeFrame = (pred) =>
    within(
      new Promise((resolve) => {
        const check = () => {
          const f = frames.find(pred);
          if (f) resolve(f);
          else waiters.push(check);
        };
        check();
      }),
      "a native frame",
    );
  await nativeFrame((f) => f.type === "welcome");
  native.send(JSON.stringify({ type: "join", room: r, id: "j" }));
  await nativeFrame((f) => f.type === "joined");

  const sio = await connected(connect({ auth: { user: "sio" } }));
  const sioSeen = [];
  sio.on("chat", (data, meta) => sioSeen.push([meta.offset, data]));
  try {
    await ack(sio, "join", { room: r });
    for (let i = 0; i < 10; i++) {
      if (i % 2 === 0) native.send(JSON.stringify({ type: "publish", room: r, event: "chat", data: `ws-${i}` }));
      else sio.emit("publish", { room: r, event: "chat", data: `sio-${i}` });
    }
    await nativeFrame((f) => f.type === "message" && f.offset === 10);
    await within(
      new Promise((resolve) => {
        const check = () => (sioSeen.length === 10 ? resolve() : setImmediate(check));
        check();
      }),
      "ten messages over socket.io",
    );
    const nativeSeen = frames.filter((f) => f.type === "message").map((f) => [f.offset, f.data]);
    assert.deepEqual(sioSeen, nativeSeen);
    assert.deepEqual(sioSeen.map(([o]) => o), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  } finally {
    sio.close();
    native.close();
  }
});

test("a socket.io client starts an operation and watches it to its terminal event", async () => {
  const socket = await connected(connect({ auth: { user: "ops" } }));
  try {
    const started = await ack(socket, "operation:start", {
      kind: "demo",
      target: room("box"),
      params: { step_ms: 10 },
    });
    assert.equal(started.ok, true);
    const id = started.operation.id;
    const logs = [];
    const statuses = [];
    socket.on("operation.log", (line, meta) => {
      assert.equal(meta.room, `operation:${id}`);
      logs.push(line.offset);
    });
    socket.on("operation.progress", (status) => statuses.push(status));
    const done = waitFor(socket, "operation.completed");
    const joined = await ack(socket, "join", { room: `operation:${id}` });
    assert.equal(joined.ok, true);
    const [final] = await done;
    assert.equal(final.status, "completed");
    assert.ok(statuses.length > 0 && statuses[0].id === id, "the snapshot comes first");
    assert.deepEqual(logs, Array.from({ length: final.log_offset }, (_, i) => i + 1));
    // A second start on the same target while active is a duplicate; after the end it is not.
    const again = await ack(socket, "operation:start", { kind: "demo", target: started.operation.target, params: { step_ms: 10 } });
    assert.equal(again.ok, true);
    const dup = await ack(socket, "operation:start", { kind: "demo", target: started.operation.target });
    assert.equal(dup.ok, false);
    assert.equal(dup.error.code, "duplicate_operation");
    assert.equal(dup.operation.id, again.operation.id);
    const cancelled = await ack(socket, "operation:cancel", { operation: again.operation.id });
    assert.equal(cancelled.ok, true);
  } finally {
    socket.close();
  }
});

test("a socket that floods the server with refused requests is disconnected for good", async () => {
  const socket = await connected(connect({ auth: { user: "noisy" } }));
  const gone = once(socket, "disconnect");
  for (let i = 0; i < 30; i++) socket.emit("publish", { room: "bad room", event: "e" });
  const [reason] = await gone;
  assert.equal(reason, "io server disconnect", "no automatic reconnection into the same refusal");
  socket.close();
});
