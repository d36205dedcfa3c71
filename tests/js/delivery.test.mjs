// Delivery primitives with real socket.io-client@4 (docs/protocol.md): the sending socket's id
// in `from.session`, one copy of a message published into several rooms a socket is in, and a
// profile's `retain = "event"`. Started by `cargo test` (tests/api/delivery.rs) against a
// server configured with tests/js/profiles.toml; SY_URL is its address. Every wait has a
// timeout; nothing sleeps.
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

async function connect(path = "", opts = {}) {
  const socket = io(URL + path, { forceNew: true, reconnection: false, ...opts });
  await next(socket, "connect");
  return socket;
}

const ack = (socket, event, ...args) => within(socket.emitWithAck(event, ...args), `ack of ${event}`);
const id = () => crypto.randomBytes(4).toString("hex");

/** Resolves once `socket` got `n` events named `event`. */
function count(socket, event, n) {
  return within(
    new Promise((resolve) => {
      let seen = 0;
      const h = () => {
        seen += 1;
        if (seen === n) {
          socket.off(event, h);
          resolve();
        }
      };
      socket.on(event, h);
    }),
    `${n} × ${event}`,
  );
}

test("a message carries the sending socket's id: its own echo and its other tab's are told apart", async () => {
  const tab1 = await connect("", { auth: { user: "ada" } });
  const tab2 = await connect("", { auth: { user: "ada" } });
  try {
    const project = id();
    for (const s of [tab1, tab2]) assert.equal((await ack(s, "join-project", project)).ok, true);
    const echo = next(tab1, "step-completed");
    const other = next(tab2, "step-completed");
    // step-completed publishes with echo = true: the sender hears itself.
    tab1.emit("step-completed", { projectId: project, step: 1 });
    const [, mine] = await echo;
    const [, theirs] = await other;
    assert.equal(mine.from.session, tab1.id);
    assert.equal(theirs.from.session, tab1.id);
    assert.equal(theirs.from.user, "ada");
    assert.notEqual(theirs.from.session, tab2.id);
  } finally {
    tab1.close();
    tab2.close();
  }
});

test("publish_to_joined into several rooms: a socket in two of them gets it once", async () => {
  const sender = await connect("", { auth: { user: "s" } });
  const both = await connect("", { auth: { user: "b" } });
  const one = await connect("", { auth: { user: "o" } });
  try {
    const [x, y] = [id(), id()];
    for (const p of [x, y]) {
      assert.equal((await ack(sender, "join-project", p)).ok, true);
      assert.equal((await ack(both, "join-project", p)).ok, true);
    }
    assert.equal((await ack(one, "join-project", y)).ok, true);

    const updates = [];
    both.on("step-updated", (data, meta) => updates.push(meta));
    const oneGets = next(one, "step-updated");
    // Into project:x and project:y, everyone but the sender (socket.to(rooms).emit).
    sender.emit("step-updated", { step: 7 });
    // Then one echoed publish into each room: when both reached `both`, each room delivered
    // everything before it, so a second copy of step-updated would be in `updates`.
    const barriers = count(both, "step-completed", 2);
    sender.emit("step-completed", { projectId: x });
    sender.emit("step-completed", { projectId: y });
    await barriers;
    assert.equal(updates.length, 1, JSON.stringify(updates));
    assert.ok(updates[0].message_id, "a multi-room message carries its shared id");
    const [data, meta] = await oneGets;
    assert.deepEqual(data, { step: 7 });
    assert.equal(meta.message_id, updates[0].message_id);
  } finally {
    sender.close();
    both.close();
    one.close();
  }
});

test("Socket.IO's own publish can retain per event name; a later joiner gets each name's last", async () => {
  const pub = await connect("", { auth: { user: "backend" } });
  try {
    const room = `dash:${id()}`;
    assert.equal((await ack(pub, "join", { room })).ok, true);
    for (const [event, data] of [["stats", 1], ["status", "up"], ["stats", 2]]) {
      const r = await ack(pub, "publish", { room, event, data, retain: "event" });
      assert.equal(r.ok, true, JSON.stringify(r));
    }
    const bad = await ack(pub, "publish", { room, event: "x", retain: "yes" });
    assert.equal(bad.error.code, "invalid_field");

    const viewer = await connect("", { auth: { user: "viewer" } });
    try {
      const got = [];
      viewer.on("stats", (d) => got.push(["stats", d]));
      viewer.on("status", (d) => got.push(["status", d]));
      const both = Promise.all([next(viewer, "stats"), next(viewer, "status")]);
      assert.equal((await ack(viewer, "join", { room })).ok, true);
      await both;
      assert.deepEqual(got, [["status", "up"], ["stats", 2]]);
    } finally {
      viewer.close();
    }
  } finally {
    pub.close();
  }
});
