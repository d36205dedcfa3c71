// Seed 004's authentication: "WebSocket inherits authentication from parent HTTP connection …
// uses same cookies/tokens as REST API". A browser's WebSocket cannot send `Authorization`;
// it sends the app's session cookie, and Switchyard asks the app's backend whose it is (the
// profile's connect hook; the example's `backend` stand-in, started by tests/api/profiles.rs,
// knows one session: `valid-session`, user alice). The server has a JWT secret here (not open
// mode). The client is the same one (004-conversion-progress.client.mjs), with the cookie the
// browser would attach. SY_SERVICE_TOKEN is the app backend's `service` token; BACKEND_URL and
// SWITCHYARD_HOOK_SECRET let this test call the stand-in directly.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import WebSocket from "ws";
import { createProgress, memoryStorage } from "./004-conversion-progress.client.mjs";

const URL = process.env.SY_URL;
const SERVICE = process.env.SY_SERVICE_TOKEN;
const BACKEND = process.env.BACKEND_URL;
const HOOK_SECRET = process.env.SWITCHYARD_HOOK_SECRET;
assert.ok(URL && SERVICE && BACKEND && HOOK_SECRET, "SY_URL, SY_SERVICE_TOKEN, BACKEND_URL and SWITCHYARD_HOOK_SECRET must be set");

function within(promise, what, ms = 15_000) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** The app's backend starts a conversion for `user` (project = the user). */
async function startConversion(user = "alice") {
  const res = await fetch(URL + "/api/operations", {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${SERVICE}` },
    body: JSON.stringify({ kind: "convert", target: `job-${Math.random().toString(36).slice(2)}`, project: user }),
  });
  assert.equal(res.status, 202);
  return (await res.json()).id;
}

const alice = { cookie: "session=valid-session" };

test("the app's session cookie opens the job's WebSocket and its status path", async () => {
  const jobId = await startConversion();
  const progress = createProgress(URL, { storage: memoryStorage(), wsOptions: { headers: alice } });
  try {
    progress.actions.connectToJob(jobId);
    const first = await within(new Promise((r) => progress.onUpdate(r)), "the status on connect");
    assert.equal(first.job_id, jobId);
    assert.ok(["queued", "processing"].includes(first.status), first.status);
    assert.equal(progress.state.usingWebSocket, true);
    const res = await fetch(URL + `/api/v1/conversions/${jobId}/status`, { headers: alice });
    assert.equal(res.status, 200);
    assert.equal((await res.json()).job_id, jobId);
    const sse = await fetch(URL + `/api/v1/conversions/${jobId}/events`, { headers: alice });
    assert.equal(sse.status, 200);
    await sse.body.cancel();
  } finally {
    progress.actions.disconnectFromJob();
  }
});

test("without a valid session cookie: 403 forbidden, on the status path and the WebSocket", async () => {
  const jobId = await startConversion();
  for (const headers of [{ cookie: "session=forged" }, {}]) {
    const res = await fetch(URL + `/api/v1/conversions/${jobId}/status`, { headers });
    assert.equal(res.status, 403);
    const body = await res.json();
    assert.equal(body.error, "forbidden");
    assert.match(body.message, /not signed in/);
  }
  const ws = new WebSocket(URL.replace(/^http/, "ws") + `/api/v1/conversions/${jobId}/ws`, { headers: { cookie: "session=forged" } });
  // Ending a socket whose upgrade was refused is reported as an error: expected here.
  ws.on("error", () => {});
  const status = await within(
    new Promise((resolve) => {
      ws.on("unexpected-response", (_req, res) => resolve(res.statusCode));
      ws.on("open", () => resolve("opened"));
    }),
    "the refused upgrade",
  );
  assert.equal(status, 403);
  ws.terminate();
});

test("alice does not see another user's conversion", async () => {
  const jobId = await startConversion("bob");
  const res = await fetch(URL + `/api/v1/conversions/${jobId}/status`, { headers: alice });
  assert.equal(res.status, 404);
});

test("the backend trusts only signed calls: a forged connect call is refused 401", async () => {
  const body = JSON.stringify({ hook: "connect", transport: "websocket", namespace: null, auth: null });
  const call = (headers) =>
    fetch(BACKEND + "/switchyard/connect", { method: "POST", headers: { "content-type": "application/json", ...alice, ...headers }, body });
  const ts = String(Math.floor(Date.now() / 1000));
  const sign = (secret) => "sha256=" + createHmac("sha256", secret).update(`${ts}.${body}`).digest("hex");
  // Unsigned, and signed with another key: 401, whoever's cookie it carries.
  assert.equal((await call({})).status, 401);
  assert.equal((await call({ "x-switchyard-timestamp": ts, "x-switchyard-signature": sign("not-the-secret") })).status, 401);
  // A replay of an old call: 401.
  const old = String(Number(ts) - 3600);
  const oldSig = "sha256=" + createHmac("sha256", HOOK_SECRET).update(`${old}.${body}`).digest("hex");
  assert.equal((await call({ "x-switchyard-timestamp": old, "x-switchyard-signature": oldSig })).status, 401);
  // Signed with the shared secret, as Switchyard signs: the identity.
  const ok = await call({ "x-switchyard-timestamp": ts, "x-switchyard-signature": sign(HOOK_SECRET) });
  assert.equal(ok.status, 200);
  assert.equal((await ok.json()).user, "alice");
});
