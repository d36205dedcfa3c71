// Seed 001, the API gateway's real-time layer: its clients written from the app's write-up
// (/work/shared/seeds/001 — ActivityFeed.tsx: join/leave a project's room and the global feed,
// `activity-created`, `new-activity`; the workflow editor's `step-updated` / `step-completed`;
// websocket.service.ts: `connect(projectId)`, auto-reconnect with exponential backoff (at most
// 5 attempts), `agent_status`, `progress_update`, `generation_complete`, `error` into the
// generation store), run unchanged against Switchyard started with
// examples/001-api-gateway/switchyard.toml. Started by `cargo test` (tests/api/profiles.rs),
// which passes SY_URL. Every wait has a timeout; nothing sleeps.
//
// Played here, not part of the client: the gateway's backend storing an activity
// (POST /api/activities) and the AI orchestrator publishing a project's generation updates
// (POST /api/rooms/project:<id>/publish) — what its `manager.send_agent_update` /
// `send_progress_update` become.
import { test } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";

const URL = process.env.SY_URL;
assert.ok(URL, "SY_URL must be set");
const WAIT = 15_000;

function within(promise, what, ms = WAIT) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

// ---- the app's clients, as its write-up describes them -------------------------------------

/** ActivityFeed.tsx and the workflow editor, on one gateway socket. */
function createGatewayClient(url) {
  const socket = io(url, { forceNew: true });
  const feed = { activities: [], steps: [] };
  const joined = new Set();
  let onFeed = false;
  socket.on("activity-created", (activity) => feed.activities.unshift(activity));
  socket.on("step-updated", (d) => feed.steps.push({ kind: "updated", ...d }));
  socket.on("step-completed", (d) => feed.steps.push({ kind: "completed", ...d }));
  // After a reconnect the server has forgotten the rooms: join them again.
  socket.on("connect", () => {
    for (const p of joined) socket.emit("join-project", p);
    if (onFeed) socket.emit("join-activity-feed");
  });
  return {
    socket,
    feed,
    joinProject(projectId) {
      joined.add(projectId);
      socket.emit("join-project", projectId);
    },
    leaveProject(projectId) {
      joined.delete(projectId);
      socket.emit("leave-project", projectId);
    },
    joinFeed() {
      onFeed = true;
      socket.emit("join-activity-feed");
    },
    leaveFeed() {
      onFeed = false;
      socket.emit("leave-activity-feed");
    },
    newActivity: (a) => socket.emit("new-activity", a),
    stepUpdated: (d) => socket.emit("step-updated", d),
    stepCompleted: (d) => socket.emit("step-completed", d),
  };
}

/** websocket.service.ts with the Zustand generation store reduced to a plain object. */
function createWebsocketService(url) {
  const store = { agents: {}, progress: {}, complete: false, errors: [], connected: false };
  let socket = null;
  return {
    store,
    connect(projectId) {
      socket = io(url, { forceNew: true, reconnection: true, reconnectionAttempts: 5, reconnectionDelay: 1000 });
      socket.on("connect", () => {
        store.connected = true;
        socket.emit("subscribe", { project_id: projectId });
      });
      socket.on("disconnect", () => (store.connected = false));
      socket.on("agent_status", (a) => (store.agents[a.id] = a.status));
      socket.on("progress_update", (p) => (store.progress[p.agent_id] = p.progress));
      socket.on("generation_complete", () => (store.complete = true));
      socket.on("error", (e) => store.errors.push(e));
      return socket;
    },
    isConnected: () => !!socket && socket.connected,
    disconnect() {
      socket?.close();
      socket = null;
    },
  };
}

// ---- the test -------------------------------------------------------------------------------

const rnd = () => Math.random().toString(36).slice(2, 8);
const next = (socket, event, pred = () => true) =>
  within(
    new Promise((r) => {
      const f = (d) => {
        if (pred(d)) {
          socket.off(event, f);
          r(d);
        }
      };
      socket.on(event, f);
    }),
    event,
  );

async function gateway() {
  const c = createGatewayClient(URL);
  await next(c.socket, "connect");
  return c;
}

// Test-only barrier, not part of the app: a session handles its packets in order, so the
// (refused) ack of an unknown event comes after everything emitted before it was handled.
const settled = (c) => within(c.socket.emitWithAck("test-barrier"), "barrier");

async function post(path, body) {
  const res = await fetch(URL + path, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  return [res.status, await res.json()];
}

test("project rooms: step-updated and step-completed reach the project's other members only", async () => {
  const project = rnd();
  const alice = await gateway();
  const bob = await gateway();
  const carol = await gateway(); // on another project
  try {
    alice.joinProject(project);
    bob.joinProject(project);
    carol.joinProject(rnd());
    await Promise.all([alice, bob, carol].map(settled));
    const bobGets = next(bob.socket, "step-completed");
    alice.stepUpdated({ projectId: project, stepId: "s1", status: "in_progress", updatedBy: "alice" });
    alice.stepCompleted({ projectId: project, stepId: "s1", completedBy: "alice" });
    await bobGets;
    await settled(alice);
    await settled(carol);
    assert.deepEqual(bob.feed.steps, [
      { kind: "updated", projectId: project, stepId: "s1", status: "in_progress", updatedBy: "alice" },
      { kind: "completed", projectId: project, stepId: "s1", completedBy: "alice" },
    ]);
    assert.deepEqual(alice.feed.steps, [], "not echoed to the sender");
    assert.deepEqual(carol.feed.steps, [], "not to another project");
    // After leave-project, bob no longer hears the project (carol, who joined it, does).
    bob.leaveProject(project);
    carol.joinProject(project);
    await Promise.all([settled(bob), settled(carol)]);
    const carolGets = next(carol.socket, "step-updated", (d) => d.stepId === "s2");
    alice.stepUpdated({ projectId: project, stepId: "s2", status: "done" });
    await carolGets;
    await settled(bob);
    assert.equal(bob.feed.steps.length, 2);
  } finally {
    for (const c of [alice, bob, carol]) c.socket.close();
  }
});

test("activity feed: new-activity to every feed member, stored activities as activity-created", async () => {
  const a = await gateway();
  const b = await gateway();
  const outsider = await gateway();
  try {
    a.joinFeed();
    b.joinFeed();
    await Promise.all([settled(a), settled(b)]);
    const activity = { id: rnd(), type: "workflow", priority: "high", message: "Deployment approved", user: "alice" };
    const bGets = next(b.socket, "activity-created", (x) => x.id === activity.id);
    const aGets = next(a.socket, "activity-created", (x) => x.id === activity.id);
    a.newActivity(activity);
    assert.deepEqual(await bGets, activity);
    assert.deepEqual(await aGets, activity, "the sender's feed shows it too");
    // The gateway's backend stores one: it reaches the feed under the app's name.
    const stored = next(b.socket, "activity-created", (x) => x.verb === "deployed");
    const [s, body] = await post("/api/activities", { actor: "ci", verb: "deployed", object: "api@1.2", project: "7" });
    assert.equal(s, 201, JSON.stringify(body));
    const got = await stored;
    assert.equal(got.object, "api@1.2");
    assert.equal(b.feed.activities[0].verb, "deployed");
    await settled(outsider);
    assert.deepEqual(outsider.feed.activities, [], "not on the feed: nothing");
    // Leaving the feed stops it.
    b.leaveFeed();
    await settled(b);
    const count = b.feed.activities.length;
    const aGets2 = next(a.socket, "activity-created", (x) => x.id === "after-leave");
    a.newActivity({ id: "after-leave", type: "note" });
    await aGets2;
    await settled(b);
    assert.equal(b.feed.activities.length, count);
  } finally {
    for (const c of [a, b, outsider]) c.socket.close();
  }
});

test("generation updates: the orchestrator's agent_status, progress_update, generation_complete", async () => {
  const project = `project-${rnd()}`;
  const service = createWebsocketService(URL);
  const socket = service.connect(project);
  try {
    await next(socket, "connect");
    await within(socket.emitWithAck("test-barrier"), "barrier"); // test-only, as above
    assert.equal(service.isConnected(), true);
    const publish = (event, data) => post(`/api/rooms/project:${project}/publish`, { event, data });
    const done = next(socket, "generation_complete");
    assert.equal((await publish("agent_status", { id: "agent-1", status: "running" }))[0], 200);
    assert.equal((await publish("progress_update", { agent_id: "agent-1", progress: 0.75 }))[0], 200);
    assert.equal((await publish("generation_complete", { project_id: project, artifacts: 3 }))[0], 200);
    await done;
    assert.deepEqual(service.store.agents, { "agent-1": "running" });
    assert.deepEqual(service.store.progress, { "agent-1": 0.75 });
    assert.equal(service.store.complete, true);
    assert.deepEqual(service.store.errors, []);
  } finally {
    service.disconnect();
  }
});

test("reconnect: the dropped socket reconnects and its rooms are joined again", async () => {
  const project = rnd();
  const alice = await gateway();
  const bob = await gateway();
  try {
    bob.joinProject(project);
    bob.joinFeed();
    alice.joinProject(project);
    alice.joinFeed();
    await Promise.all([settled(alice), settled(bob)]);
    // The socket's own `connect` (not the manager's `reconnect`, which comes before the
    // namespace is connected): the app's connect handler has re-emitted its joins by then, so
    // the barrier below comes after them.
    const back = within(new Promise((r) => bob.socket.once("connect", r)), "the reconnect");
    bob.socket.io.engine.close();
    await back;
    await settled(bob);
    const step = next(bob.socket, "step-updated");
    const act = next(bob.socket, "activity-created", (x) => x.id === "after-reconnect");
    alice.stepUpdated({ projectId: project, stepId: "s9" });
    alice.newActivity({ id: "after-reconnect" });
    assert.equal((await step).stepId, "s9");
    await act;
  } finally {
    alice.socket.close();
    bob.socket.close();
  }
});
