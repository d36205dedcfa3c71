// Watch tickets in a real browser (docs/operations.md, "Browsers: watch tickets"): a page that
// holds a token asks for a ticket, then follows the operation with the two things a browser
// cannot give a header, `EventSource` and `WebSocket`, passing the ticket in the URL.
//
// Started by tests/api/tickets.rs, which passes in:
//   SY_TICKET_URL      a server with a JWT secret and an external kind `convert`
//   SY_TICKET_VIEWER   a token that may see project 1's operations (the page's)
//   SY_TICKET_SERVICE  a service token (this script starts the operation and reports for it)

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { env, launch, openPage, WAIT } from './lib/harness.mjs';

let browser, base, viewer, service;

before(async () => {
  base = env('SY_TICKET_URL');
  viewer = env('SY_TICKET_VIEWER');
  service = env('SY_TICKET_SERVICE');
  browser = await launch();
});

after(async () => {
  await browser?.close();
});

/** A REST call as the service (from Node, not the page). */
async function asService(method, path, body) {
  const res = await fetch(`${base}${path}`, {
    method,
    headers: { authorization: `Bearer ${service}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = await res.json();
  assert.ok(res.ok, `${method} ${path}: ${res.status} ${JSON.stringify(json)}`);
  return json;
}

test('a page follows an operation over EventSource and WebSocket with a ticket', async () => {
  const op = await asService('POST', '/api/operations', { kind: 'convert', target: 'browser', project: '1' });
  await asService('POST', `/api/operations/${op.id}/progress`, { progress: 10 });

  const { page, console } = await openPage(browser, `${base}/health`);
  // The page: asks for a ticket with its token, opens both streams with it, and records what
  // they deliver until each sees the end.
  await page.evaluate(async ({ id, token }) => {
    const res = await fetch(`/api/operations/${id}/ticket`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}` },
    });
    const { ticket, expires_at } = await res.json();
    window.__ticket = { status: res.status, ticket, expires_at };
    window.__sse = { open: false, events: [], done: false, error: null };
    const es = new EventSource(`/api/operations/${id}/events?ticket=${encodeURIComponent(ticket)}`);
    es.onopen = () => { window.__sse.open = true; };
    for (const name of ['operation.progress', 'operation.log', 'operation.completed']) {
      es.addEventListener(name, (e) => {
        window.__sse.events.push({ event: name, data: JSON.parse(e.data) });
        if (name === 'operation.completed') { window.__sse.done = true; es.close(); }
      });
    }
    es.onerror = () => { if (!window.__sse.done) window.__sse.error = es.readyState; };
    window.__ws = { open: false, statuses: [], close: null };
    const url = new URL(`/api/operations/${id}/ws?ticket=${encodeURIComponent(ticket)}`, location.href);
    url.protocol = url.protocol.replace('http', 'ws');
    const ws = new WebSocket(url);
    ws.onopen = () => { window.__ws.open = true; };
    ws.onmessage = (m) => window.__ws.statuses.push(JSON.parse(m.data));
    ws.onclose = (e) => { window.__ws.close = e.code; };
  }, { id: op.id, token: viewer });

  const ticket = await page.evaluate(() => window.__ticket);
  assert.equal(ticket.status, 200);
  assert.match(ticket.ticket, /^[\w-]+\.[\w-]+\.[\w-]+$/);
  // Both are open and have the status now before the worker goes on.
  await page.waitForFunction(() => window.__sse.events.length > 0 && window.__ws.statuses.length > 0, null, { timeout: WAIT });
  await asService('POST', `/api/operations/${op.id}/logs`, { lines: ['converting page 1'] });
  await asService('POST', `/api/operations/${op.id}/progress`, { progress: 60 });
  await asService('POST', `/api/operations/${op.id}/complete`, { result: { url: '/files/browser.pdf' } });
  await page.waitForFunction(() => window.__sse.done && window.__ws.close !== null, null, { timeout: WAIT });

  const sse = await page.evaluate(() => window.__sse);
  assert.equal(sse.open, true);
  assert.equal(sse.error, null);
  assert.deepEqual(sse.events.filter((e) => e.event === 'operation.log').map((e) => e.data.line), ['converting page 1']);
  assert.equal(sse.events.at(-1).data.result.url, '/files/browser.pdf');
  assert.ok(sse.events.some((e) => e.event === 'operation.progress' && e.data.progress === 60));

  const ws = await page.evaluate(() => window.__ws);
  assert.equal(ws.open, true);
  assert.equal(ws.close, 1000, 'closed normally after the terminal status');
  assert.equal(ws.statuses[0].progress, 10);
  assert.equal(ws.statuses.at(-1).status, 'completed');
  assert.equal(ws.statuses.filter((s) => s.status === 'completed').length, 1);
  // The page is `/health` (JSON on the server's origin): the browser asks it for a favicon.
  console.allow(/favicon\.ico/);
  console.assertClean();
  await page.close();
});

test('without a ticket, or with one for another operation, the browser is refused', async () => {
  const a = await asService('POST', '/api/operations', { kind: 'convert', target: 'browser-a', project: '1' });
  const b = await asService('POST', '/api/operations', { kind: 'convert', target: 'browser-b', project: '1' });
  const { page, console } = await openPage(browser, `${base}/health`);
  const outcome = await page.evaluate(async ({ a, b, token }) => {
    const res = await fetch(`/api/operations/${a}/ticket`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}` },
    });
    const { ticket } = await res.json();
    // EventSource gives up (readyState CLOSED) on a non-200 answer; a refused WebSocket never
    // opens and closes with 1006.
    const sse = (url) => new Promise((resolve) => {
      const es = new EventSource(url);
      es.onopen = () => { es.close(); resolve('open'); };
      es.onerror = () => { const s = es.readyState; es.close(); resolve(s === EventSource.CLOSED ? 'refused' : 'retrying'); };
    });
    const ws = (path) => new Promise((resolve) => {
      const url = new URL(path, location.href);
      url.protocol = url.protocol.replace('http', 'ws');
      const s = new WebSocket(url);
      s.onopen = () => { s.close(); resolve('open'); };
      s.onclose = (e) => resolve(`closed ${e.code}`);
    });
    const status = async (url) => {
      const r = await fetch(url);
      return [r.status, (await r.json()).error];
    };
    return {
      sseNone: await sse(`/api/operations/${a}/events`),
      sseOther: await sse(`/api/operations/${b}/events?ticket=${ticket}`),
      sseOwn: await sse(`/api/operations/${a}/events?ticket=${ticket}`),
      wsNone: await ws(`/api/operations/${a}/ws`),
      wsOther: await ws(`/api/operations/${b}/ws?ticket=${ticket}`),
      statusOther: await status(`/api/operations/${b}?ticket=${ticket}`),
    };
  }, { a: a.id, b: b.id, token: viewer });
  assert.deepEqual(outcome, {
    sseNone: 'refused',
    sseOther: 'refused',
    sseOwn: 'open',
    wsNone: 'closed 1006',
    wsOther: 'closed 1006',
    statusOther: [401, 'invalid_ticket'],
  });
  // The refusals are what the browser logs about them, nothing else.
  console.allow(/status of 401|WebSocket connection to .* failed|favicon\.ico/);
  console.assertClean();
  await page.close();
});
