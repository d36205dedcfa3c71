// Seed 000, the install wizard: its client written from the app's own write-up
// (/work/shared/seeds/000 — `install.js`: initializeWebSocket, startInstallation,
// updateInstallationUI, handleInstallationComplete, handleInstallationError,
// cancelInstallation), run unchanged against Switchyard started with
// examples/000-install-wizard/switchyard.toml. Started by `cargo test`
// (tests/api/profiles.rs), which passes SY_URL. Every wait has a timeout; nothing sleeps.
import { test } from "node:test";
import assert from "node:assert/strict";
import { io } from "socket.io-client";

const URL = process.env.SY_URL;
assert.ok(URL, "SY_URL must be set");
const WAIT = 15_000;

// ---- the app's client, as its write-up describes it ----------------------------------------

/** The wizard's state manager (only what install.js stores). */
function createStateManager() {
  const state = {};
  return { set: (k, v) => (state[k] = v), get: (k) => state[k] };
}

/** install.js, with the DOM updates reduced to the state they show. */
function createInstallModule(stateManager) {
  let wsManager = null;
  const ui = { progress: 0, title: "", stages: [], logs: [], done: false, error: null };
  const listeners = { complete: [], error: [] };

  function initializeWebSocket(manager) {
    wsManager = manager;
    wsManager.on("install:progress", updateInstallationUI);
    wsManager.on("install:complete", handleInstallationComplete);
    wsManager.on("install:error", handleInstallationError);
  }

  function startInstallation(config, profiles) {
    wsManager.emit("install:start", { config, profiles });
  }

  function updateInstallationUI(data) {
    ui.progress = data.progress;
    ui.title = data.stage;
    if (ui.stages[ui.stages.length - 1] !== data.stage) ui.stages.push(data.stage);
    if (data.message) ui.logs.push(data.message);
    stateManager.set("installationProgress", { ...data, timestamp: new Date().toISOString() });
  }

  function handleInstallationComplete(data) {
    ui.done = true;
    stateManager.set("installationComplete", { timestamp: new Date().toISOString(), validation: data.validation });
    listeners.complete.forEach((f) => f(data));
  }

  function handleInstallationError(data) {
    ui.error = data;
    ui.logs.push(`ERROR: ${data.message}`);
    stateManager.set("installationError", {
      stage: data.stage,
      message: data.message,
      error: data.error,
      timestamp: new Date().toISOString(),
    });
    listeners.error.forEach((f) => f(data));
  }

  function cancelInstallation() {
    wsManager.emit("install:cancel");
  }

  return { initializeWebSocket, startInstallation, cancelInstallation, ui, listeners };
}

// ---- the test -------------------------------------------------------------------------------

function within(promise, what, ms = WAIT) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

async function wizard() {
  // The wizard's own connection: automatic reconnection on, as it ships.
  const socket = io(URL, { forceNew: true });
  await within(new Promise((r) => socket.once("connect", r)), "connect");
  const state = createStateManager();
  const install = createInstallModule(state);
  install.initializeWebSocket(socket);
  return { socket, state, install };
}

const STAGES = ["init", "config", "pull", "build", "deploy", "validate"];

test("normal flow: progress through the six stages, then install:complete", async () => {
  const { socket, state, install } = await wizard();
  try {
    const progress = [];
    socket.on("install:progress", (d) => progress.push(d));
    let errors = 0;
    install.listeners.error.push(() => errors++);
    const complete = within(new Promise((r) => install.listeners.complete.push(r)), "install:complete");
    install.startInstallation({ network: "mainnet" }, ["core", "explorer"]);
    const done = await complete;
    assert.equal(errors, 0);
    assert.deepEqual(install.ui.stages, STAGES, "every stage, in order");
    for (const p of progress) {
      assert.ok(STAGES.includes(p.stage), `stage ${p.stage}`);
      assert.equal(typeof p.progress, "number");
      assert.equal(typeof p.message, "string");
      assert.equal(typeof p.details, "object");
    }
    const values = progress.map((p) => p.progress);
    assert.deepEqual(values, [...values].sort((a, b) => a - b), "progress only grows");
    assert.equal(install.ui.done, true);
    assert.equal(done.message, "Installation complete");
    assert.equal(typeof done.validation, "object");
    assert.deepEqual(state.get("installationComplete").validation, done.validation);
    assert.equal(state.get("installationProgress").stage, "validate");
  } finally {
    socket.close();
  }
});

test("error flow: install:error names the failing stage, as strings", async () => {
  const { socket, state, install } = await wizard();
  try {
    const failed = within(new Promise((r) => install.listeners.error.push(r)), "install:error");
    install.startInstallation({ network: "mainnet", fail_at: "pull" }, ["core"]);
    const err = await failed;
    assert.equal(err.stage, "pull");
    assert.equal(typeof err.message, "string");
    assert.match(err.message, /pull/);
    assert.equal(typeof err.error, "string");
    assert.equal(install.ui.done, false);
    assert.deepEqual(install.ui.stages, ["init", "config", "pull"]);
    assert.equal(state.get("installationError").stage, "pull");
  } finally {
    socket.close();
  }
});

test("cancel flow: install:cancel stops the install this wizard started", async () => {
  const { socket, install } = await wizard();
  try {
    const first = within(new Promise((r) => socket.once("install:progress", r)), "first install:progress");
    let completed = false;
    install.listeners.complete.push(() => (completed = true));
    // Not part of the wizard: how the test sees the end (the wizard just goes back a step).
    const cancelled = within(new Promise((r) => socket.once("operation.cancelled", r)), "operation.cancelled");
    install.startInstallation({ network: "mainnet" }, ["core"]);
    await first;
    install.cancelInstallation();
    const status = await cancelled;
    assert.equal(status.status, "cancelled");
    assert.equal(completed, false);
  } finally {
    socket.close();
  }
});

test("a second wizard's install:start while one runs follows the running install", async () => {
  const first = await wizard();
  const second = await wizard();
  try {
    const running = within(new Promise((r) => first.socket.once("install:progress", r)), "the first install's progress");
    const firstDone = within(new Promise((r) => first.install.listeners.complete.push(r)), "install:complete (first)");
    first.install.startInstallation({ network: "mainnet" }, ["core"]);
    await running;
    // Not part of the wizard: the refusal the second tab gets (as an `error` event, since the
    // wizard asks for no ack), carrying the running install.
    const refused = within(new Promise((r) => second.socket.once("error", r)), "the duplicate refusal");
    const secondDone = within(new Promise((r) => second.install.listeners.complete.push(r)), "install:complete (second)");
    second.install.startInstallation({ network: "mainnet" }, ["core"]);
    const err = await refused;
    assert.equal(err.code, "duplicate_operation");
    assert.equal(typeof err.operation.id, "string");
    // The second wizard shows the install already running, to its end.
    const [a, b] = await Promise.all([firstDone, secondDone]);
    assert.deepEqual(a, b);
    assert.equal(second.install.ui.done, true);
    assert.equal(second.install.ui.stages.at(-1), "validate");
  } finally {
    first.socket.close();
    second.socket.close();
  }
});
