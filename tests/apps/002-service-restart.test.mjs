// Seed 002, the SSH service restart: its client written from the app's write-up
// (/work/shared/seeds/002 — WebSocketContext.tsx: one socket, automatic reconnection with
// backoff, subscribe/unsubscribe per connection (deduplicated), operation state by
// connection; ServiceRestartButton.jsx: "Restart Service" → "Starting..." → "Restarting...
// (X%)" → a success or error toast, no second restart while one runs), run unchanged against
// Switchyard started with examples/002-service-restart/switchyard.toml. Started by
// `cargo test` (tests/api/profiles.rs), which passes SY_URL. Every wait has a timeout;
// nothing sleeps.
//
// The write-up names no Socket.IO events: `subscribe`/`unsubscribe` (a connection id) and
// `operation-update` (an `active_operations` row) are this test's reading of it; the real
// app puts its own names in the profile. The Express backend keeps its REST route
// `POST /api/data/:id/restart-service`; `expressBackend()` below plays it: it now asks
// Switchyard to start the operation instead of running ssh itself.
import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
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

// ---- the app's client, as its write-up describes it ----------------------------------------

/** WebSocketContext, without React: the socket, subscriptions, operations by connection. */
function createWebSocketContext(url) {
  const socket = io(url, { forceNew: true, reconnection: true, reconnectionDelay: 1000, reconnectionDelayMax: 10_000 });
  const subscriptions = new Map(); // connectionId -> subscriber count (no duplicate subscribe)
  const operations = new Map(); // connectionId -> latest operation row
  const listeners = new Set();
  socket.on("operation-update", (op) => {
    operations.set(String(op.connection_id), op);
    for (const f of listeners) f(op);
  });
  // After a reconnect, the rooms are gone with the old connection: subscribe again.
  socket.on("connect", () => {
    if (socket.recovered) return;
    for (const id of subscriptions.keys()) socket.emit("subscribe", id);
  });
  return {
    socket,
    operations,
    onOperation: (f) => (listeners.add(f), () => listeners.delete(f)),
    subscribe(connectionId) {
      const n = subscriptions.get(connectionId) ?? 0;
      subscriptions.set(connectionId, n + 1);
      if (n === 0) socket.emit("subscribe", connectionId);
    },
    unsubscribe(connectionId) {
      const n = subscriptions.get(connectionId) ?? 0;
      if (n <= 1) {
        subscriptions.delete(connectionId);
        socket.emit("unsubscribe", connectionId);
      } else subscriptions.set(connectionId, n - 1);
    },
  };
}

/** ServiceRestartButton.jsx: its label, its toasts, and the click. */
function createServiceRestartButton(ctx, apiBase, connectionId) {
  const ui = { label: "Restart Service", disabled: false, toasts: [], operationId: null };
  ctx.subscribe(connectionId);
  const render = (op) => {
    if (String(op.connection_id) !== String(connectionId)) return;
    if (ui.operationId && op.id !== ui.operationId) return;
    ui.operationId = op.id;
    if (op.status === "pending" || op.status === "running") {
      ui.label = `Restarting... (${Math.round(op.progress)}%)`;
      ui.disabled = true;
    } else {
      ui.label = "Restart Service";
      ui.disabled = false;
      ui.operationId = null;
      if (op.status === "completed") ui.toasts.push({ type: "success", text: op.message || "Service restarted" });
      else ui.toasts.push({ type: "error", text: op.error || `Restart ${op.status}` });
    }
  };
  const off = ctx.onOperation(render);
  return {
    ui,
    async click() {
      if (ui.disabled) return; // prevents duplicate restart attempts
      ui.label = "Starting...";
      ui.disabled = true;
      const res = await fetch(`${apiBase}/api/data/${connectionId}/restart-service`, { method: "POST" });
      const body = await res.json();
      if (res.status === 409) {
        // Already restarting (another tab, another user): follow that one.
        ui.operationId = body.operationId;
        ui.label = "Restarting...";
        return body;
      }
      if (!res.ok) {
        ui.label = "Restart Service";
        ui.disabled = false;
        ui.toasts.push({ type: "error", text: body.message });
        return body;
      }
      ui.operationId ??= body.operationId;
      return body;
    },
    unmount() {
      off();
      ctx.unsubscribe(connectionId);
    },
  };
}

// ---- the Express backend's route, as the migration leaves it -------------------------------

/** `POST /api/data/:id/restart-service` → Switchyard `POST /api/operations`; 202 with the
 * operation id, or 409 with the running one. Connections: id → {host, service}. */
async function expressBackend(connections) {
  const server = http.createServer(async (req, res) => {
    const m = req.url.match(/^\/api\/data\/([^/]+)\/restart-service$/);
    const conn = m && connections[m[1]];
    const reply = (status, body) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(body));
    };
    if (req.method !== "POST" || !conn) return reply(404, { message: "no such connection" });
    const r = await fetch(URL + "/api/operations", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ kind: "restart-service", target: conn.host, project: m[1], params: { service: conn.service } }),
    });
    const body = await r.json();
    if (r.status === 202) return reply(202, { operationId: body.id, status: body.status });
    if (r.status === 409) return reply(409, { message: body.message, operationId: body.operation.id });
    return reply(r.status, { message: body.message });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${server.address().port}`, close: () => server.close() };
}

// ---- the test -------------------------------------------------------------------------------

const rnd = () => Math.random().toString(36).slice(2, 8);

async function page(url) {
  const ctx = createWebSocketContext(url);
  await within(new Promise((r) => ctx.socket.once("connect", r)), "connect");
  return ctx;
}

/** Resolves on the first `operation-update` for `connectionId` that satisfies `pred`. */
const opUpdate = (ctx, connectionId, pred, what) =>
  within(
    new Promise((r) => {
      const off = ctx.onOperation((op) => {
        if (String(op.connection_id) === String(connectionId) && pred(op)) {
          off();
          r(op);
        }
      });
    }),
    what,
  );

/** The subscription is in place once the server has answered something after it. */
async function subscribed(ctx) {
  // Test-only barrier, not part of the app: a session handles its packets in order, so the
  // (refused) ack of an unknown event comes after the subscribe before it was handled.
  await within(ctx.socket.emitWithAck("test-barrier"), "barrier");
}

test("restart: Starting..., Restarting... (X%), then the success toast; two tabs show the same", async () => {
  const connectionId = rnd();
  const backend = await expressBackend({ [connectionId]: { host: `vos-${connectionId}`, service: "nginx" } });
  const tab1 = await page(URL);
  const tab2 = await page(URL);
  try {
    const b1 = createServiceRestartButton(tab1, backend.url, connectionId);
    const b2 = createServiceRestartButton(tab2, backend.url, connectionId);
    await Promise.all([subscribed(tab1), subscribed(tab2)]);
    const done1 = opUpdate(tab1, connectionId, (o) => o.status === "completed", "completed in tab 1");
    const done2 = opUpdate(tab2, connectionId, (o) => o.status === "completed", "completed in tab 2");
    const running = opUpdate(tab2, connectionId, (o) => o.status === "running", "running in tab 2");
    const labels = [];
    tab2.onOperation(() => labels.push(b2.ui.label));
    const started = await b1.click();
    assert.ok(started.operationId);
    const r = await running;
    assert.equal(r.id, started.operationId);
    assert.equal(r.operation_type, "restart-service");
    assert.match(b2.ui.label, /^Restarting\.\.\. \(\d+%\)$/);
    assert.equal(b2.ui.disabled, true, "the other tab's button is disabled too");
    const [d1] = await Promise.all([done1, done2]);
    // The steps' percentages, as the button showed them in the other tab, only growing.
    const shown = labels.map((l) => l.match(/\((\d+)%\)/)).filter(Boolean).map((m) => Number(m[1]));
    assert.ok(shown.includes(50) && shown.includes(90), `labels: ${labels}`);
    assert.deepEqual(shown, [...shown].sort((a, b) => a - b));
    assert.equal(d1.progress, 100);
    assert.equal(d1.message, "Service nginx restarted");
    assert.ok(!Number.isNaN(Date.parse(d1.completed_at)));
    for (const b of [b1, b2]) {
      assert.equal(b.ui.label, "Restart Service");
      assert.equal(b.ui.disabled, false);
      assert.deepEqual(b.ui.toasts, [{ type: "success", text: "Service nginx restarted" }]);
    }
  } finally {
    tab1.socket.close();
    tab2.socket.close();
    backend.close();
  }
});

test("no duplicate restart: a second click elsewhere follows the running one", async () => {
  const connectionId = rnd();
  const backend = await expressBackend({ [connectionId]: { host: `vos-${connectionId}`, service: "postgresql" } });
  const tab1 = await page(URL);
  const tab2 = await page(URL);
  try {
    const b1 = createServiceRestartButton(tab1, backend.url, connectionId);
    const b2 = createServiceRestartButton(tab2, backend.url, connectionId);
    await Promise.all([subscribed(tab1), subscribed(tab2)]);
    const done = opUpdate(tab2, connectionId, (o) => o.status === "completed", "completed");
    const first = await b1.click();
    // tab 2 clicks before its update arrived (its button still enabled): the backend says 409.
    b2.ui.disabled = false;
    const second = await b2.click();
    assert.equal(second.operationId, first.operationId, "the running restart, not a new one");
    assert.equal((await done).id, first.operationId);
    assert.deepEqual(b2.ui.toasts, [{ type: "success", text: "Service postgresql restarted" }]);
  } finally {
    tab1.socket.close();
    tab2.socket.close();
    backend.close();
  }
});

test("failure: the error toast says what ssh said", async () => {
  const connectionId = rnd();
  const backend = await expressBackend({ [connectionId]: { host: `vos-${connectionId}`, service: "missing" } });
  const tab = await page(URL);
  try {
    const b = createServiceRestartButton(tab, backend.url, connectionId);
    await subscribed(tab);
    const failed = opUpdate(tab, connectionId, (o) => o.status === "failed", "failed");
    await b.click();
    const f = await failed;
    assert.match(f.error, /Unit missing\.service not found/);
    assert.equal(b.ui.label, "Restart Service");
    assert.equal(b.ui.toasts.length, 1);
    assert.equal(b.ui.toasts[0].type, "error");
    assert.match(b.ui.toasts[0].text, /not found/);
  } finally {
    tab.socket.close();
    backend.close();
  }
});

test("unsubscribe: a connection's updates stop; reconnect: subscriptions come back", async () => {
  const a = rnd();
  const b = rnd();
  const backend = await expressBackend({ [a]: { host: `vos-${a}`, service: "nginx" }, [b]: { host: `vos-${b}`, service: "nginx" } });
  const tab = await page(URL);
  try {
    const ba = createServiceRestartButton(tab, backend.url, a);
    const bb = createServiceRestartButton(tab, backend.url, b);
    await subscribed(tab);
    ba.unmount();
    await subscribed(tab);
    const seen = new Set();
    tab.onOperation((op) => seen.add(String(op.connection_id)));
    // The network drops; Socket.IO reconnects and the context subscribes again.
    // The socket's own `connect` (not the manager's `reconnect`, which comes before the
    // namespace is connected): the app's connect handler has re-emitted its joins by then, so
    // the barrier below comes after them.
    const back = within(new Promise((r) => tab.socket.once("connect", r)), "the reconnect");
    tab.socket.io.engine.close();
    await back;
    await subscribed(tab);
    const doneB = opUpdate(tab, b, (o) => o.status === "completed", "b completed after the reconnect");
    // a restarts too (clicked elsewhere): this tab no longer listens to it.
    const other = await page(URL);
    const otherA = createServiceRestartButton(other, backend.url, a);
    await subscribed(other);
    const doneA = opUpdate(other, a, (o) => o.status === "completed", "a completed");
    await otherA.click();
    await bb.click();
    await Promise.all([doneA, doneB]);
    assert.equal(seen.has(b), true);
    assert.equal(seen.has(a), false, "no updates for an unsubscribed connection");
    other.socket.close();
  } finally {
    tab.socket.close();
    backend.close();
  }
});

test("reload mid-restart: the new page shows the running restart at once, then its end, one toast", async () => {
  // The write-up: "Persistent State: Refresh page and still see ongoing operations" — "Try
  // refreshing during restart - progress should persist".
  const connectionId = rnd();
  const backend = await expressBackend({ [connectionId]: { host: `vos-${connectionId}`, service: "nginx" } });
  const tab = await page(URL);
  const pages = [tab];
  try {
    const b = createServiceRestartButton(tab, backend.url, connectionId);
    await subscribed(tab);
    const midway = opUpdate(tab, connectionId, (o) => o.status === "running" && o.progress >= 30, "30 %");
    await b.click();
    const seen = await midway;
    // The page reloads: its socket goes, a new page connects and renders the button again.
    tab.socket.close();
    const reloaded = await page(URL);
    pages.push(reloaded);
    const done = opUpdate(reloaded, connectionId, (o) => o.status === "completed", "completed after the reload");
    const again = createServiceRestartButton(reloaded, backend.url, connectionId);
    // With the join, not at the next change (a step is 0.8 s here): by the time the
    // subscribe is answered, the page knows the running restart.
    await subscribed(reloaded);
    const now = reloaded.operations.get(String(connectionId));
    assert.ok(now, "the running restart arrived with the subscribe");
    assert.equal(now.id, seen.id);
    assert.equal(now.status, "running");
    assert.ok(now.progress >= seen.progress, `${now.progress} after ${seen.progress}`);
    assert.match(again.ui.label, /^Restarting\.\.\. \(\d+%\)$/);
    assert.equal(again.ui.disabled, true, "no second restart from the reloaded page");
    await done;
    assert.deepEqual(again.ui.toasts, [{ type: "success", text: "Service nginx restarted" }]);
    // A page loaded after the end shows no restart, and no toast for the old one.
    const later = await page(URL);
    pages.push(later);
    const fresh = createServiceRestartButton(later, backend.url, connectionId);
    await subscribed(later);
    assert.equal(fresh.ui.label, "Restart Service");
    assert.deepEqual(fresh.ui.toasts, []);
  } finally {
    for (const p of pages) p.socket.close();
    backend.close();
  }
});
