// Seed 004, the conversion-progress front end: its client (004-conversion-progress.client.mjs,
// written from the write-up: ConversionWebSocket + ProgressContext) run unchanged against
// Switchyard started with examples/004-conversion-progress/switchyard.toml. Started by
// `cargo test` (tests/api/profiles.rs), which passes SY_URL. Every wait has a timeout;
// nothing sleeps.
//
// Played here, not part of the client: the app's backend creating the job
// (POST /api/operations, kind `convert`) and its worker reporting (REST, with the job's
// worker token); and, for reconnect and fallback, a reverse proxy in front of Switchyard
// (the app's nginx) that can cut WebSockets or refuse them. The example's `backend` stand-in
// (started by tests/api/profiles.rs) answers the profile's connect hook: the browser attaches
// the app's session cookie to the WebSocket and the status polls, `BROWSER` below does the
// same for node. The app's backend starts each conversion for its user (project = the user),
// so alice follows her own conversions.
import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import { createProgress, memoryStorage } from "./004-conversion-progress.client.mjs";

const URL = process.env.SY_URL;
assert.ok(URL, "SY_URL must be set");
const WAIT = 15_000;
/** What the browser sends with every request to the app's origin: alice's session cookie. */
const BROWSER = { headers: { cookie: "session=valid-session" } };

function within(promise, what, ms = WAIT) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

/** Resolves with the first status update that satisfies `pred`. */
const update = (progress, pred, what) =>
  within(
    new Promise((r) => {
      if (progress.state.status && pred(progress.state.status)) return r(progress.state.status);
      progress.onUpdate((s) => pred(s) && r(s));
    }),
    what,
  );

// ---- the app's backend and worker (kept by the app; they talk to Switchyard's REST API) -----

async function startConversion() {
  const res = await fetch(URL + "/api/operations", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ kind: "convert", target: `job-${Math.random().toString(36).slice(2)}`, project: "alice" }),
  });
  assert.equal(res.status, 202);
  const op = await res.json();
  const report = async (what, body) => {
    const r = await fetch(URL + `/api/operations/${op.id}/${what}`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-worker-token": op.worker_token },
      body: JSON.stringify(body),
    });
    assert.equal(r.status, 200, await r.text());
  };
  return { jobId: op.id, report };
}

// ---- the app's reverse proxy ------------------------------------------------------------------

/** HTTP and WebSocket upgrades forwarded to Switchyard; `refuseUpgrades` answers them 502
 * (a proxy without WebSocket support), `cut()` drops every open WebSocket. */
async function proxy() {
  const upstream = new globalThis.URL(URL);
  const tunnels = new Set();
  const p = { refuseUpgrades: false, upgrades: 0 };
  const server = http.createServer((req, res) => {
    const fwd = http.request(
      { host: upstream.hostname, port: upstream.port, path: req.url, method: req.method, headers: req.headers },
      (up) => {
        res.writeHead(up.statusCode, up.headers);
        up.pipe(res);
      },
    );
    fwd.on("error", () => res.destroy());
    req.pipe(fwd);
  });
  server.on("upgrade", (req, socket, head) => {
    p.upgrades += 1;
    if (p.refuseUpgrades) {
      socket.end("HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
      return;
    }
    const up = net.connect(Number(upstream.port), upstream.hostname, () => {
      let head_ = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) head_ += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      up.write(head_ + "\r\n");
      if (head.length) up.write(head);
      socket.pipe(up).pipe(socket);
    });
    const pair = { socket, up };
    tunnels.add(pair);
    const end = () => {
      tunnels.delete(pair);
      socket.destroy();
      up.destroy();
    };
    socket.on("error", end);
    up.on("error", end);
    socket.on("close", end);
    up.on("close", end);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  p.url = `http://127.0.0.1:${server.address().port}`;
  p.cut = () => {
    for (const { socket, up } of tunnels) {
      socket.destroy();
      up.destroy();
    }
  };
  p.close = () => {
    p.cut();
    server.close();
  };
  return p;
}

const FIELDS = ["job_id", "status", "progress", "message", "stage", "estimated_time_remaining", "result_url", "error", "created_at", "agents", "current_agent"];

test("live: status on connect, every change in the app's shape, agents, then the close after completed", async () => {
  const storage = memoryStorage();
  const { jobId, report } = await startConversion();
  const progress = createProgress(URL, { storage, persistenceKey: "live", wsOptions: BROWSER });
  try {
    progress.actions.connectToJob(jobId);
    const first = await update(progress, () => true, "the status on connect");
    assert.equal(first.job_id, jobId);
    assert.equal(first.status, "queued");
    assert.equal(first.progress, 0);
    assert.ok(!Number.isNaN(Date.parse(first.created_at)));
    assert.equal(progress.state.connectionStatus, "connected");

    const agents = [
      { name: "java_analyzer", status: "running", progress: 40 },
      { name: "bedrock_builder", status: "pending", progress: 0 },
    ];
    await report("progress", { progress: 30, stage: "analyzing", message: "Analyzing Java code", eta_seconds: 90, details: { current_agent: "java_analyzer", agents } });
    const mid = await update(progress, (s) => s.progress === 30, "progress 30");
    assert.equal(mid.status, "processing");
    assert.equal(mid.stage, "analyzing");
    assert.equal(mid.message, "Analyzing Java code");
    assert.equal(mid.estimated_time_remaining, 90);
    assert.equal(mid.current_agent, "java_analyzer");
    assert.deepEqual(mid.agents, agents);

    await report("complete", { result: { url: "/api/v1/conversions/x/download" } });
    const done = await update(progress, (s) => s.status === "completed", "completed");
    assert.equal(done.result_url, "/api/v1/conversions/x/download");
    assert.equal(done.progress, 100);
    await within(
      new Promise((r) => {
        const check = () => (progress.state.connectionStatus === "disconnected" ? r() : setTimeout(check, 20));
        check();
      }),
      "the client to disconnect after the terminal status",
    );
    assert.equal(progress.socket().ws, null, "no reconnect after the terminal status");
    for (const s of progress.state.history) {
      assert.deepEqual(Object.keys(s).filter((k) => !FIELDS.includes(k)), [], "only ConversionStatus fields");
    }
    // Persisted: a reload of the page shows the last status and the history.
    const reloaded = createProgress(URL, { storage, persistenceKey: "live", wsOptions: BROWSER });
    assert.equal(reloaded.state.status.status, "completed");
    assert.deepEqual(reloaded.state.history, progress.state.history);
    assert.ok(progress.state.history.length >= 3 && progress.state.history.length <= 50);
  } finally {
    progress.actions.disconnectFromJob();
  }
});

test("failure: the terminal status carries the error as a string", async () => {
  const { jobId, report } = await startConversion();
  const progress = createProgress(URL, { storage: memoryStorage(), wsOptions: BROWSER });
  try {
    progress.actions.connectToJob(jobId);
    await update(progress, () => true, "the status on connect");
    await report("fail", { error: { code: "bad_input", message: "not a Java mod" } });
    const failed = await update(progress, (s) => s.status === "failed", "failed");
    assert.equal(failed.error, "not a Java mod");
    assert.equal(failed.result_url, undefined);
  } finally {
    progress.actions.disconnectFromJob();
  }
});

test("reconnect: a dropped WebSocket reconnects after 1 s and gets the whole current status", async () => {
  const p = await proxy();
  const { jobId, report } = await startConversion();
  const progress = createProgress(p.url, { storage: memoryStorage(), wsOptions: BROWSER });
  try {
    progress.actions.connectToJob(jobId);
    await update(progress, (s) => s.status === "queued", "the status on connect");
    await report("progress", { progress: 10, stage: "analyzing", message: "Analyzing" });
    await update(progress, (s) => s.progress === 10, "progress 10");
    const upgrades = p.upgrades;
    p.cut();
    // Reported while the client is away: it comes with the reconnect's first message.
    await report("progress", { progress: 55, stage: "building", message: "Building add-on" });
    const back = await update(progress, (s) => s.progress === 55, "the status after the reconnect");
    assert.equal(back.stage, "building");
    assert.equal(p.upgrades, upgrades + 1, "one reconnect");
    assert.equal(progress.state.usingWebSocket, true);
    await report("complete", { result: { url: "/out.mcaddon" } });
    assert.equal((await update(progress, (s) => s.status === "completed", "completed")).result_url, "/out.mcaddon");
  } finally {
    progress.actions.disconnectFromJob();
    p.close();
  }
});

test("fallback: no WebSocket after 5 attempts, then polling the status path to the end", async () => {
  const p = await proxy();
  p.refuseUpgrades = true;
  const { jobId, report } = await startConversion();
  // The app's backoff, scaled down (1 s → 20 ms) so the five attempts take 0.6 s, not 31 s;
  // the poll interval likewise (3 s → 100 ms). The logic is the write-up's.
  const progress = createProgress(p.url, { storage: memoryStorage(), wsOptions: { ...BROWSER, baseDelay: 20, pollInterval: 100 } });
  try {
    progress.actions.connectToJob(jobId);
    const first = await update(progress, (s) => s.job_id === jobId, "a polled status");
    assert.equal(progress.state.usingWebSocket, false);
    assert.equal(progress.state.connectionError, "Using fallback polling");
    assert.equal(p.upgrades, 6, "the first try and 5 reconnects");
    assert.equal(first.status, "queued");
    await report("progress", { progress: 70, stage: "packaging", message: "Packaging", details: { current_agent: "packager", agents: [] } });
    const mid = await update(progress, (s) => s.progress === 70, "polled progress 70");
    assert.equal(mid.status, "processing");
    assert.equal(mid.current_agent, "packager");
    await report("complete", { result: { url: "/out.mcaddon" } });
    const done = await update(progress, (s) => s.status === "completed", "polled completed");
    assert.equal(done.result_url, "/out.mcaddon");
    assert.equal(progress.socket().finished, true, "polling stops at the terminal status");
  } finally {
    progress.actions.disconnectFromJob();
    p.close();
  }
});

test("an unknown job: the status path says 404 not_found", async () => {
  const res = await fetch(URL + "/api/v1/conversions/0190aaaa-0000-7000-8000-000000000000/status", BROWSER);
  assert.equal(res.status, 404);
  const body = await res.json();
  assert.equal(body.error, "not_found");
});
