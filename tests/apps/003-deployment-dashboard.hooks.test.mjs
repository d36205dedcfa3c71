// Seed 003's three requests that need the Flask app's own data: `request_stats` (broadcast to
// all), `request_deployments` (→ `deployments_refresh` to the asker) and
// `request_system_status` (→ `system_status` to the asker): rpc hooks answered by the
// example's `backend` stand-in, which tests/api/profiles.rs starts as a real process and
// names in BACKEND_URL (with the SWITCHYARD_HOOK_SECRET it shares with the server). The
// client is the same one (003-deployment-dashboard.client.mjs); nothing here sleeps.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { createDashboardClient, within } from "./003-deployment-dashboard.client.mjs";

const URL = process.env.SY_URL;
assert.ok(URL, "SY_URL must be set");

const next = (socket, event) => within(new Promise((r) => socket.once(event, r)), event);

async function dashboard() {
  const d = createDashboardClient(URL, { forceNew: true });
  await next(d.socket, "connect");
  return d;
}

test("request_deployments: the asker gets deployments_refresh from the Flask app", async () => {
  const d = await dashboard();
  try {
    const refresh = next(d.socket, "deployments_refresh");
    d.requestDeployments();
    const got = await refresh;
    assert.ok(Array.isArray(got.deployments));
    for (const row of got.deployments) assert.equal(typeof row.hostname, "string");
    // The Flask app's rows (the stand-in's), not something Switchyard made up.
    assert.ok(got.deployments.some((d) => d.hostname === "KXP2-CORO-001"), JSON.stringify(got));
    assert.equal(d.ui.deployments.size, got.deployments.length);
  } finally {
    d.socket.close();
  }
});

test("request_system_status: the asker gets system_status", async () => {
  const d = await dashboard();
  try {
    const status = next(d.socket, "system_status");
    d.requestSystemStatus();
    const got = await status;
    assert.equal(typeof got.dnsmasq.running, "boolean");
    assert.equal(typeof got.database.accessible, "boolean");
    assert.equal(typeof got.disk_space.percent_used, "number");
    assert.deepEqual(d.ui.systemStatus, got);
  } finally {
    d.socket.close();
  }
});

test("request_stats: fresh stats broadcast to every dashboard", async () => {
  const a = await dashboard();
  const b = await dashboard();
  try {
    // Whatever retained stats arrived with the connect are not the answer: wait for a newer one.
    const since = Date.now();
    const fresh = (s) => within(new Promise((r) => s.on("stats_update", (x) => Date.parse(x.timestamp) >= since - 1000 && r(x))), "stats_update");
    const seen = [fresh(a.socket), fresh(b.socket)];
    a.requestStats();
    const [sa, sb] = await Promise.all(seen);
    assert.equal(typeof sa.total_venues, "number");
    assert.deepEqual(sa, sb);
  } finally {
    a.socket.close();
    b.socket.close();
  }
});

test("the backend trusts only Switchyard: an unsigned or wrongly signed rpc call is refused 401", async () => {
  const BACKEND = process.env.BACKEND_URL;
  const SECRET = process.env.SWITCHYARD_HOOK_SECRET;
  assert.ok(BACKEND && SECRET, "BACKEND_URL and SWITCHYARD_HOOK_SECRET must be set");
  const body = JSON.stringify({ user: "x", name: null, namespace: "/", session: "1", method: "deployments", data: null });
  const ts = String(Math.floor(Date.now() / 1000));
  const sign = (key) => "sha256=" + createHmac("sha256", key).update(`${ts}.${body}`).digest("hex");
  const call = (headers) => fetch(BACKEND + "/switchyard/rpc", { method: "POST", headers: { "content-type": "application/json", ...headers }, body });
  assert.equal((await call({})).status, 401);
  assert.equal((await call({ "x-switchyard-timestamp": ts, "x-switchyard-signature": sign("not-the-secret") })).status, 401);
  // The same call signed with the shared secret is answered: the signature is what decides.
  const ok = await call({ "x-switchyard-timestamp": ts, "x-switchyard-signature": sign(SECRET) });
  assert.equal(ok.status, 200);
  assert.ok(Array.isArray((await ok.json()).deployments));
});
