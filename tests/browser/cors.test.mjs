// A front end on another origin than Switchyard's (app 004's case): socket.io-client@4 and
// fetch() from a page served on one origin against Switchyard on another, so every request
// goes through the browser's CORS checks (preflights included).
//
// Started by tests/api/cors.rs, which serves the page and passes in:
//   SY_CORS_API           Switchyard (JWT secret set, SWITCHYARD_ALLOWED_ORIGINS = the page's origin)
//   SY_CORS_PAGE          the page on the allowed origin
//   SY_CORS_REFUSED_PAGE  the same page on an origin that is not allowed
//   SY_CORS_TOKEN         an admin token for SY_CORS_API
//   SY_CHROMIUM           the browser binary

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { env, launch, openPage, WAIT } from './lib/harness.mjs';

let browser, api, token;

before(async () => {
  api = env('SY_CORS_API');
  token = env('SY_CORS_TOKEN');
  browser = await launch();
});

after(async () => {
  await browser?.close();
});

/** `switchyard_refusals_total{code="forbidden"}`, read by Node (no CORS involved). */
async function forbiddenRefusals() {
  const text = await (await fetch(`${api}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith('switchyard_refusals_total{code="forbidden"}'));
  return line ? Number(line.split(' ').pop()) : 0;
}

test('a page on an allowed origin uses Socket.IO (polling, then WebSocket) and the REST API', async () => {
  const pageUrl = env('SY_CORS_PAGE');
  assert.notEqual(new URL(pageUrl).origin, new URL(api).origin, 'the page must be cross-origin');
  const { page, console } = await openPage(browser, pageUrl);
  const r = await page.evaluate(async ({ api, token, wait }) => {
    const within = (what, p) => Promise.race([
      p,
      new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), wait)),
    ]);
    const out = {};
    const socket = io(api, { auth: { token }, reconnection: false });
    // The transport the session opened with, and the one it upgrades to.
    const upgraded = new Promise((resolve) => {
      socket.io.on('open', () => {
        out.opened = socket.io.engine.transport.name;
        socket.io.engine.on('upgrade', (t) => resolve(t.name));
      });
    });
    await within('connect', new Promise((resolve, reject) => {
      socket.on('connect', resolve);
      socket.on('connect_error', (e) => reject(new Error(`connect_error: ${e.message}`)));
    }));
    out.upgradedTo = await within('upgrade', upgraded);

    const room = 'project:cors';
    const seen = [];
    const arrived = (n) => within(`${n} room messages`, new Promise((resolve) => {
      const check = () => (seen.length >= n ? resolve() : setTimeout(check, 10));
      check();
    }));
    socket.on('step-updated', (data, meta) => seen.push({ data, room: meta && meta.room }));
    out.join = await within('join ack', socket.emitWithAck('join', { room }));
    out.publish = await within('publish ack', socket.emitWithAck('publish', { room, event: 'step-updated', data: { via: 'socket' } }));
    await arrived(1);

    // REST with Authorization and a JSON body: both make the browser send a preflight first.
    const auth = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
    const pub = await fetch(`${api}/api/rooms/${room}/publish`, {
      method: 'POST', headers: auth, body: JSON.stringify({ event: 'step-updated', data: { via: 'rest' } }),
    });
    out.restPublish = pub.status;
    await arrived(2);
    out.seen = seen;

    // Start an operation and poll its status, reading the exposed Location header.
    const started = await fetch(`${api}/api/operations`, {
      method: 'POST', headers: auth, body: JSON.stringify({ kind: 'demo', target: 'cors-box', params: { step_ms: 1 } }),
    });
    out.started = { status: started.status, location: started.headers.get('location') };
    const id = (await started.json()).id;
    for (;;) {
      const res = await fetch(`${api}/api/operations/${id}`, { headers: { authorization: `Bearer ${token}` } });
      const op = await res.json();
      out.polled = { status: res.status, id: op.id, state: op.status };
      if (['completed', 'failed', 'cancelled'].includes(op.status)) break;
      await within('operation end', new Promise((resolve) => setTimeout(resolve, 50)));
    }

    // Refusals are readable by the page too: status and JSON body.
    const missing = await fetch(`${api}/api/operations/00000000-0000-0000-0000-000000000000`, {
      headers: { authorization: `Bearer ${token}` },
    });
    out.missing = { status: missing.status, body: await missing.json() };
    const unauthenticated = await fetch(`${api}/api/operations`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}',
    });
    out.unauthenticated = { status: unauthenticated.status, body: await unauthenticated.json() };
    // The official suites' "invalid request method": a PUT reaches the Engine.IO endpoint
    // (its preflight allows it) and gets the reference's 400.
    const put = await fetch(`${api}/socket.io/?EIO=4&transport=polling`, { method: 'PUT' });
    out.put = { status: put.status, body: await put.json() };
    socket.disconnect();
    return out;
  }, { api, token, wait: WAIT });

  assert.equal(r.opened, 'polling');
  assert.equal(r.upgradedTo, 'websocket');
  assert.equal(r.join.ok, true, JSON.stringify(r.join));
  assert.equal(r.publish.ok, true, JSON.stringify(r.publish));
  assert.equal(r.restPublish, 200);
  assert.deepEqual(r.seen, [
    { data: { via: 'socket' }, room: 'project:cors' },
    { data: { via: 'rest' }, room: 'project:cors' },
  ]);
  assert.equal(r.started.status, 202);
  assert.match(r.started.location, /^\/api\/operations\/[0-9a-f-]+$/);
  assert.equal(r.polled.status, 200);
  assert.equal(r.polled.state, 'completed');
  assert.equal(r.missing.status, 404);
  assert.equal(r.missing.body.error, 'not_found');
  assert.equal(r.unauthenticated.status, 401);
  assert.equal(r.unauthenticated.body.error, 'unauthenticated');
  assert.deepEqual(r.put, { status: 400, body: { code: 2, message: 'Bad handshake method' } });
  // The 401 and 404 above are logged by the browser; nothing else may be.
  console.allow(/status of 40[14]/);
  console.allow(/status of 400/);
  console.assertClean();
  await page.close();
});

test('a page on an origin that is not allowed can neither connect nor call the API', async () => {
  const pageUrl = env('SY_CORS_REFUSED_PAGE');
  const before = await forbiddenRefusals();
  const { page } = await openPage(browser, pageUrl);
  const r = await page.evaluate(async ({ api, token, wait }) => {
    const within = (what, p) => Promise.race([
      p,
      new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), wait)),
    ]);
    const attempt = (transports) => within(`connect over ${transports}`, new Promise((resolve) => {
      const socket = io(api, { auth: { token }, transports, reconnection: false });
      socket.on('connect', () => { socket.disconnect(); resolve('connected'); });
      socket.on('connect_error', (e) => resolve(`connect_error: ${e.message}`));
    }));
    const out = {};
    out.polling = await attempt(['polling']);
    out.websocket = await attempt(['websocket']);
    try {
      const res = await fetch(`${api}/api/operations`, {
        method: 'POST',
        headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ kind: 'demo', target: 'refused-box', params: { step_ms: 1 } }),
      });
      out.rest = `answered ${res.status}`;
    } catch (e) {
      out.rest = `${e.name}: ${e.message}`;
    }
    return out;
  }, { api, token, wait: WAIT });

  assert.match(r.polling, /^connect_error/);
  assert.match(r.websocket, /^connect_error/);
  assert.equal(r.rest, 'TypeError: Failed to fetch');
  // Refused by the server (403), not lost on the way: the polling handshake, the WebSocket
  // upgrade and the REST preflight each count one refusal.
  assert.ok((await forbiddenRefusals()) >= before + 3, 'the server refused the origin');
  // And nothing was started from there.
  const list = await (await fetch(`${api}/api/operations?limit=100`, { headers: { authorization: `Bearer ${token}` } })).json();
  assert.ok(!JSON.stringify(list).includes('refused-box'), 'no operation was started from the refused origin');
  await page.close();
});
