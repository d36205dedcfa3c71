// Seed 003, the Flask deployment dashboard: its client written from the app's write-up
// (/work/shared/seeds/003 — static/js/websocket.js: auto-initialised `io()` with automatic
// reconnection, 10 attempts 3 s apart; a connection badge; handlers for `status`,
// `stats_update`, `deployment_update`, `deployments_refresh`, `system_status`; emits
// `request_stats`, `request_deployments`, `request_system_status`,
// `trigger_deployment_update`), run unchanged against Switchyard started with
// examples/003-deployment-dashboard/switchyard.toml. Started by `cargo test`
// (tests/api/profiles.rs), which passes SY_URL. Every wait has a timeout; nothing sleeps.
//
// What the Flask app keeps doing is played here by `flask`: its 5-second stats thread
// publishing `stats_update` (retained) over Switchyard's REST API. The three `request_*`
// events are answered by the app's backend (rpc hooks): they are in
// 003-deployment-dashboard.hooks.test.mjs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createDashboardClient, within } from "./003-deployment-dashboard.client.mjs";

const URL = process.env.SY_URL;
assert.ok(URL, "SY_URL must be set");

// ---- the test -------------------------------------------------------------------------------

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

/** The Flask app's stats thread: publishes the stats to every dashboard, retained. */
async function flaskPublishesStats(stats) {
  const res = await fetch(URL + "/api/rooms/dashboard/publish", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ event: "stats_update", data: stats, retain: true }),
  });
  assert.equal(res.status, 200, await res.text());
}

const stats = (n) => ({
  total_venues: 3,
  available_kxp2: n,
  available_rxp2: 0,
  assigned_kxp2: 0,
  assigned_rxp2: 0,
  available_hostnames: n,
  assigned_hostnames: 0,
  recent_deployments: [],
  recent_deployments_count: 0,
  successful_deployments: 0,
  timestamp: new Date().toISOString(),
});

async function dashboard() {
  const d = createDashboardClient(URL, { forceNew: true });
  await next(d.socket, "connect");
  return d;
}

test("connect: the badge goes green, `status` first, then the current stats at once", async () => {
  const current = stats(5);
  await flaskPublishesStats(current);
  const d = createDashboardClient(URL, { forceNew: true });
  try {
    const order = [];
    d.socket.once("status", () => order.push("status"));
    d.socket.once("stats_update", () => order.push("stats_update"));
    const got = await next(d.socket, "stats_update");
    assert.equal(d.ui.badge, "Connected");
    assert.deepEqual(order, ["status", "stats_update"]);
    assert.equal(d.ui.statusMessages[0].message, "Connected to deployment server");
    assert.ok(!Number.isNaN(Date.parse(d.ui.statusMessages[0].timestamp)));
    assert.deepEqual(got, current);
    assert.deepEqual(d.ui.stats, current);
  } finally {
    d.socket.close();
  }
});

test("periodic stats: one publish by the Flask app reaches every dashboard", async () => {
  const a = await dashboard();
  const b = await dashboard();
  try {
    const fresh = stats(7);
    const seen = [a, b].map((d) => next(d.socket, "stats_update", (s) => s.available_kxp2 === 7));
    await flaskPublishesStats(fresh);
    for (const s of await Promise.all(seen)) assert.deepEqual(s, fresh);
    assert.deepEqual(a.ui.stats, fresh);
    assert.deepEqual(b.ui.stats, fresh);
  } finally {
    a.socket.close();
    b.socket.close();
  }
});

test("trigger_deployment_update: broadcast to every dashboard, the sender too, with a timestamp", async () => {
  const a = await dashboard();
  const b = await dashboard();
  try {
    const host = `KXP2-CORO-${Math.floor(Math.random() * 1e6)}`;
    const flow = ["downloading", "verifying", "customizing", "success"];
    const bSaw = [];
    b.socket.on("deployment_update", (u) => u.hostname === host && bSaw.push(u.status));
    const aDone = next(a.socket, "deployment_update", (u) => u.hostname === host && u.status === "success");
    const bDone = next(b.socket, "deployment_update", (u) => u.hostname === host && u.status === "success");
    for (const status of flow) {
      a.triggerDeploymentUpdate({ hostname: host, mac_address: "aa:bb:cc:dd:ee:ff", serial_number: "12345678", status });
    }
    const [last] = await Promise.all([aDone, bDone]);
    assert.deepEqual(bSaw, flow, "every status, in order");
    assert.equal(last.mac_address, "aa:bb:cc:dd:ee:ff");
    assert.equal(last.serial_number, "12345678");
    assert.ok(!Number.isNaN(Date.parse(last.timestamp)));
    for (const d of [a, b]) {
      assert.equal(d.ui.deployments.get(host).status, "success");
      assert.equal(d.ui.deployments.get(host).badge, "success");
    }
    // A failure shows a toast on every dashboard.
    const toast = next(b.socket, "deployment_update", (u) => u.hostname === host && u.status === "failed");
    a.triggerDeploymentUpdate({ hostname: host, mac_address: "aa:bb:cc:dd:ee:ff", status: "failed" });
    await toast;
    assert.deepEqual(b.ui.toasts.at(-1), { level: "danger", text: `Deployment failed: ${host}` });
  } finally {
    a.socket.close();
    b.socket.close();
  }
});

test("reconnect: after the connection drops, the client reconnects and is current again", async () => {
  const d = await dashboard();
  try {
    const dropped = next(d.socket, "disconnect");
    const back = within(new Promise((r) => d.socket.io.once("reconnect", r)), "reconnect", 20_000);
    // The network goes away under the client (what a proxy restart does).
    d.socket.io.engine.close();
    await dropped;
    assert.equal(d.ui.badge, "Disconnected");
    // Stats published while it was away.
    const missed = stats(11);
    await flaskPublishesStats(missed);
    const statusAgain = next(d.socket, "status");
    const current = next(d.socket, "stats_update", (s) => s.available_kxp2 === 11);
    await back;
    await statusAgain;
    assert.deepEqual(await current, missed, "the latest stats arrive with the reconnect");
    assert.equal(d.ui.badge, "Connected");
  } finally {
    d.socket.close();
  }
});

test("edge cases: unknown events, malformed data and a burst leave the dashboard connected", async () => {
  const d = await dashboard();
  const other = await dashboard();
  try {
    let disconnected = false;
    d.socket.on("disconnect", () => (disconnected = true));
    for (let i = 0; i < 60; i++) d.socket.emit("no_such_event", { i });
    // Malformed: not an object. websocket.js ignores a row without a hostname.
    d.triggerDeploymentUpdate("not an object");
    d.triggerDeploymentUpdate(null);
    // High frequency: 50 updates at once all arrive, in order.
    const host = `RXP2-BURST-${Math.floor(Math.random() * 1e6)}`;
    const seen = [];
    other.socket.on("deployment_update", (u) => u.hostname === host && seen.push(u.serial_number));
    const last = next(other.socket, "deployment_update", (u) => u.hostname === host && u.serial_number === "49");
    const ownLast = next(d.socket, "deployment_update", (u) => u.hostname === host && u.serial_number === "49");
    for (let i = 0; i < 50; i++) d.triggerDeploymentUpdate({ hostname: host, mac_address: "aa", serial_number: String(i), status: "downloading" });
    await Promise.all([last, ownLast]);
    assert.deepEqual(seen, Array.from({ length: 50 }, (_, i) => String(i)));
    assert.equal(disconnected, false);
    assert.equal(d.socket.connected, true);
    assert.equal(d.ui.deployments.has(host), true);
  } finally {
    d.socket.close();
    other.socket.close();
  }
});
