// Socket.IO long-polling across the nodes of a cluster, through a real nginx. Started by
// `cargo test` (tests/api/cluster.rs), which passes:
//   SY_URL     nginx routing each request by the node name at the front of its `sid`
//              (docs/cluster.md, "Socket.IO long-polling across nodes"), handshakes round-robin
//   SY_RR_URL  the same nginx and nodes, plain round-robin (what the docs warn against)
//   SY_SECRET  the cluster's JWT secret
//   SY_NODES   the node names, comma-separated
// Every wait has a timeout; nothing sleeps.
import { test } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { io } from "socket.io-client";

const { SY_URL: URL, SY_RR_URL: RR_URL, SY_SECRET: SECRET, SY_NODES } = process.env;
assert.ok(URL && RR_URL && SECRET && SY_NODES, "SY_URL, SY_RR_URL, SY_SECRET and SY_NODES must be set");
const NODES = SY_NODES.split(",");

function within(promise, what, ms = 10_000) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

function token(sub) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ sub, rooms: ["*"], publish: ["*"], exp: Math.floor(Date.now() / 1000) + 600 });
  const sig = crypto.createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
}

function connect(url, user, transports) {
  return io(url, { reconnection: false, forceNew: true, transports, auth: { token: token(user) } });
}

function connected(socket) {
  return within(
    new Promise((resolve, reject) => {
      socket.once("connect", () => resolve(socket));
      socket.once("connect_error", reject);
    }),
    "connect",
  );
}

test("polling clients on every node share a room through a proxy that routes by sid", async () => {
  const room = `poll-${crypto.randomBytes(4).toString("hex")}`;
  // Handshakes go round-robin, so these land on every node.
  const sockets = await Promise.all(
    Array.from({ length: 2 * NODES.length }, (_, i) => connected(connect(URL, `u${i}`, ["polling"]))),
  );
  try {
    const holders = new Set(sockets.map((s) => s.io.engine.id.split(".")[0]));
    assert.deepEqual([...holders].sort(), [...NODES].sort(), "sessions on every node");
    for (const s of sockets) {
      const joined = await within(s.emitWithAck("join", { room }), "join");
      assert.equal(joined.ok, true, JSON.stringify(joined));
    }
    const N = 30;
    const received = sockets.map(
      (s) =>
        new Promise((resolve) => {
          const got = [];
          s.on("tick", (data) => {
            got.push(data.i);
            if (got.length === N) resolve(got);
          });
        }),
    );
    // Publishers on two different nodes, alternating.
    for (let i = 0; i < N; i++) {
      const from = sockets[i % 2];
      const ack = await within(from.emitWithAck("publish", { room, event: "tick", data: { i } }), "publish");
      assert.equal(ack.ok, true, JSON.stringify(ack));
    }
    const expected = Array.from({ length: N }, (_, i) => i);
    for (const got of await within(Promise.all(received), "every tick on every socket")) {
      assert.deepEqual(got, expected);
    }
    // Each session stayed on its polling transport, held by the node that made it.
    for (const s of sockets) assert.equal(s.io.engine.transport.name, "polling");
  } finally {
    for (const s of sockets) s.close();
  }
});

test("the default client (polling, then the upgrade) upgrades through the proxy", async () => {
  const sockets = await Promise.all(
    Array.from({ length: NODES.length }, (_, i) => connected(connect(URL, `up${i}`, undefined))),
  );
  try {
    for (const s of sockets) {
      const engine = s.io.engine;
      if (engine.transport.name !== "websocket") {
        await within(new Promise((r) => engine.once("upgrade", r)), "upgrade");
      }
      assert.equal(engine.transport.name, "websocket");
      const room = `up-${crypto.randomBytes(4).toString("hex")}`;
      const joined = await within(s.emitWithAck("join", { room }), "join after upgrade");
      assert.equal(joined.ok, true);
    }
  } finally {
    for (const s of sockets) s.close();
  }
});

test("without routing by sid, a polling session breaks on the next request (why the docs say so)", async () => {
  const socket = connect(RR_URL, "rr", ["polling"]);
  try {
    // The handshake lands on one node, the CONNECT packet on the other: "Session ID unknown".
    await assert.rejects(connected(socket));
  } finally {
    socket.close();
  }
});
