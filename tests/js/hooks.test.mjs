// Backend hooks (docs/profiles.md, "Backend hooks") with a real socket.io-client@4: seed 003's
// dashboard asks for its deployments (`request_deployments`) and gets the app's backend's
// answer in its ack. Started by `cargo test` (tests/api/hooks.rs), which runs the backend and
// a server whose profile calls it; SY_URL is the server's address. Nothing sleeps.
import { test } from "node:test";
import assert from "node:assert/strict";
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

// The dashboard is a browser app authenticated by its cookie: the connect hook reads it (Node's
// client sets it through extraHeaders, as a browser sends it with the handshake).
async function dashboard() {
  const socket = io(URL, {
    forceNew: true,
    transports: ["websocket"],
    extraHeaders: { cookie: "session=abc" },
  });
  await within(new Promise((r, j) => {
    socket.once("connect", r);
    socket.once("connect_error", j);
  }), "connect");
  return socket;
}

test("request_deployments is answered by the backend into the ack", async () => {
  const socket = await dashboard();
  try {
    const answer = await within(socket.emitWithAck("request_deployments"), "ack");
    assert.equal(answer.deployments[0].hostname, "KXP2-CORO-001");
    assert.equal(answer.asked_by, "dash-1");
  } finally {
    socket.close();
  }
});

test("request_system_status's answer arrives as the event the app listens for", async () => {
  const socket = await dashboard();
  try {
    const refreshed = within(new Promise((r) => socket.once("deployments_refresh", r)), "deployments_refresh");
    socket.emit("request_system_status");
    const data = await refreshed;
    assert.equal(data.deployments[0].status, "completed");
  } finally {
    socket.close();
  }
});

test("a slow backend is a clear error in the ack, and the socket goes on", async () => {
  const socket = await dashboard();
  try {
    const slow = await within(socket.emitWithAck("slow"), "ack of slow");
    assert.equal(slow.ok, false);
    assert.equal(slow.error.code, "backend_unavailable");
    const answer = await within(socket.emitWithAck("request_deployments"), "ack");
    assert.equal(answer.deployments.length, 1);
  } finally {
    socket.close();
  }
});
