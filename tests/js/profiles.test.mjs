// App profiles (docs/profiles.md) with real clients: socket.io-client@4 emitting the apps' own
// events, and the `ws` package on an app's per-operation path. Started by `cargo test`
// (tests/api/profiles.rs) against a server configured with tests/js/profiles.toml; SY_URL is
// its address. Every wait has a timeout; nothing sleeps.
import { test } from "node:test";
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { io } from "socket.io-client";
import WebSocket from "ws";

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
  const socket = io(URL + path, { forceNew: true, ...opts });
  await next(socket, "connect");
  return socket;
}

const ack = (socket, event, ...args) => within(socket.emitWithAck(event, ...args), `ack of ${event}`);
const id = () => crypto.randomBytes(4).toString("hex");

async function rest(method, path, body) {
  const res = await fetch(URL + path, {
    method,
    headers: { "content-type": "application/json" },
    body: body && JSON.stringify(body),
  });
  return [res.status, await res.json().catch(() => null)];
}

test("app events join, leave and publish: socket.to(room).emit by default, echo when asked", async () => {
  const a = await connect("", { auth: { user: "a" } });
  const b = await connect("", { auth: { user: "b" } });
  try {
    const project = id();
    const joined = await ack(a, "join-project", project);
    assert.equal(joined.ok, true);
    assert.equal(joined.room, `project:${project}`);
    assert.equal((await ack(b, "join-project", { projectId: project })).ok, true);

    const seenByA = [];
    a.on("step-updated", (d) => seenByA.push(d));
    const bGets = next(b, "step-updated");
    const aGetsEcho = next(a, "step-completed");
    a.emit("step-updated", { projectId: project, step: 3 });
    a.emit("step-completed", { projectId: project, step: 3 });
    const [data, meta] = await bGets;
    assert.deepEqual(data, { projectId: project, step: 3 });
    assert.equal(meta.room, `project:${project}`);
    assert.equal(meta.from.user, "a");
    // Same room, same publisher: had step-updated come back to its sender, it would be here
    // before the echoed step-completed.
    assert.deepEqual((await aGetsEcho)[0], { projectId: project, step: 3 });
    assert.deepEqual(seenByA, []);

    const left = await ack(a, "leave-project", project);
    assert.deepEqual(left, { ok: true, room: `project:${project}` });
    const refused = await ack(a, "step-updated", { step: 4 });
    assert.equal(refused.ok, false);
    assert.equal(refused.error.code, "not_member");
    // Switchyard's own events still work beside the app's.
    assert.equal((await ack(a, "join", { room: `project:${project}` })).ok, true);
  } finally {
    a.close();
    b.close();
  }
});

test("Switchyard's events reach the app under its names: activity.created is activity-created", async () => {
  const s = await connect();
  try {
    assert.equal((await ack(s, "join-activity-feed")).ok, true);
    const got = next(s, "activity-created");
    const [status] = await rest("POST", "/api/activities", { actor: "ci", verb: "deployed", object: "v1.4.2" });
    assert.equal(status, 201);
    const [activity] = await got;
    assert.equal(activity.object, "v1.4.2");
    assert.equal(activity.verb, "deployed");
  } finally {
    s.close();
  }
});

test("an unchanged client emitting 100 unknown events is refused each time and stays connected", async () => {
  const s = await connect();
  try {
    let disconnected = false;
    s.on("disconnect", () => (disconnected = true));
    const errors = [];
    const all = within(
      new Promise((resolve) =>
        s.on("error", (e) => {
          errors.push(e);
          if (errors.length === 100) resolve();
        }),
      ),
      "100 refusals",
    );
    for (let i = 0; i < 100; i++) s.emit("request_system_status");
    await all;
    assert.ok(errors.every((e) => e.code === "unknown_type" && e.message.includes("request_system_status")));
    // Still connected, still served.
    assert.equal((await ack(s, "join-project", id())).ok, true);
    assert.equal(s.connected, true);
    assert.equal(disconnected, false);
  } finally {
    s.close();
  }
});

test("on connect: the app's status event first, then the room's retained stats at once", async () => {
  const [status] = await rest("POST", "/api/rooms/dashboard/publish", {
    event: "stats_update",
    data: { total_venues: 3 },
    retain: true,
  });
  assert.equal(status, 200);
  const s = io(URL + "/dash", { forceNew: true });
  try {
    const order = [];
    const statusEvent = within(new Promise((r) => s.once("status", (d) => (order.push("status"), r(d)))), "status");
    const stats = within(new Promise((r) => s.once("stats_update", (d) => (order.push("stats"), r(d)))), "stats_update");
    const st = await statusEvent;
    assert.equal(st.message, "Connected to deployment server");
    assert.ok(!Number.isNaN(Date.parse(st.timestamp)));
    assert.deepEqual(await stats, { total_venues: 3 });
    assert.deepEqual(order, ["status", "stats"]);
    // request_stats reaches whoever computes stats (here: another member of the room).
    const other = await connect("/dash", { auth: { user: "backend" } });
    const asked = next(other, "stats_requested");
    assert.equal((await ack(s, "request_stats")).ok, true);
    assert.equal((await asked)[0].by.startsWith("anon-"), true);
    other.close();
  } finally {
    s.close();
  }
});

test("an app's per-operation paths: its WebSocket, SSE and status, in its own shape", async () => {
  const [s, op] = await rest("POST", "/api/operations", { kind: "convert", target: `job-${id()}` });
  assert.equal(s, 202);
  const ws = new WebSocket(URL.replace("http", "ws") + `/api/v1/conversions/${op.id}/ws`);
  const messages = [];
  const closed = within(
    new Promise((resolve) => ws.on("close", (code) => resolve(code))),
    "close after the terminal status",
  );
  const first = within(new Promise((r) => ws.once("message", r)), "first message");
  ws.on("message", (m) => messages.push(JSON.parse(m.toString())));
  await first;
  assert.equal(messages[0].job_id, op.id, "the status on connect");
  assert.equal(messages[0].status, "queued");
  const progressed = within(
    new Promise((r) => ws.on("message", (m) => JSON.parse(m.toString()).progress === 40 && r())),
    "progress 40",
  );
  assert.equal((await rest("POST", `/api/operations/${op.id}/progress`, { progress: 40, stage: "convert", message: "half way" }))[0], 200);
  await progressed;
  const [, now] = await rest("GET", `/api/v1/conversions/${op.id}/status`);
  assert.equal(now.status, "processing");
  assert.equal(now.progress, 40);
  assert.equal(now.job_id, op.id);
  assert.equal((await rest("POST", `/api/operations/${op.id}/complete`, { result: { url: "/files/x.zip" } }))[0], 200);
  assert.equal(await closed, 1000);
  const last = messages[messages.length - 1];
  assert.equal(last.status, "completed");
  assert.equal(last.result_url, "/files/x.zip");
  assert.ok(messages.some((m) => m.status === "processing" && m.stage === "convert" && m.message === "half way"));
  for (const m of messages) assert.deepEqual(Object.keys(m).filter((k) => !["job_id", "status", "progress", "message", "stage", "estimated_time_remaining", "result_url", "error", "created_at"].includes(k)), []);
  // SSE: the finished operation's status and its end, in the same shape.
  const res = await within(fetch(URL + `/api/v1/conversions/${op.id}/events`), "SSE");
  const text = await within(res.text(), "SSE body");
  assert.match(text, /"job_id":"[^"]+"/);
  assert.match(text, /event: operation\.completed/);
  assert.match(text, /"result_url":"\/files\/x\.zip"/);
  const [missing] = await rest("GET", `/api/v1/conversions/nope/status`);
  assert.equal(missing, 404);
});
