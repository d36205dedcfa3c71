// The client library (clients/js/switchyard.js, served at /client.js) in headless Chromium, on
// a page of its own that imports it as an app would. The browser reaches the server through
// the harness's TCP proxy, which cuts it off, refuses WebSocket upgrades, or stays while the
// server restarts. Each test ends with exactly the room messages and log lines the server has,
// each once and in order, and the states a status badge bound to `sy.on('state')` showed.
//
// Started by tests/api/dashboard.rs (the_dashboard_works_in_headless_chromium) with SY_URL and
// SY_CONTROL_PORT (restartServer).

import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { WAIT, env, launch, openPage, startProxy, restClient, eventually, restartServer } from './lib/harness.mjs';

let browser, proxy, rest, base;

before(async () => {
  base = env('SY_URL');
  rest = restClient(base);
  proxy = await startProxy(base);
  browser = await launch();
});

afterEach(async () => {
  proxy.restore();
  for (const p of browser.context.pages()) await p.close();
});

after(async () => {
  await browser?.close();
  await proxy?.close();
});

/**
 * A page on the server's origin (through the proxy) that imports /client.js as an app would.
 * (A page made up by the test instead would be a "public" page to Chromium, which then blocks
 * its WebSocket to 127.0.0.1: local network access checks.)
 */
async function appPage() {
  const opened = await openPage(browser);
  // The page is a JSON document: the browser's favicon request is no error of the client's.
  await opened.page.route('**/favicon.ico', (route) => route.fulfill({ status: 204 }));
  await opened.page.goto(`${proxy.url}/health`);
  await loadClient(opened.page);
  return opened;
}

async function loadClient(page) {
  await page.evaluate(async () => {
    const { Switchyard } = await import('/client.js');
    window.Switchyard = Switchyard;
  });
}

/**
 * Starts the client in the page with `options`, joins `room` and watches operation `opId`,
 * recording everything in `window.rec`.
 */
async function follow(page, { room, opId, options }) {
  await page.evaluate(({ room, opId, options }) => {
    const rec = { states: [], messages: [], resets: [], lines: [], statuses: [], done: [], errors: [] };
    window.rec = rec;
    const sy = new window.Switchyard({ ...options, autoConnect: false });
    window.sy = sy;
    sy.on('state', (s) => rec.states.push(s));
    sy.on('error', (e) => rec.errors.push(`${e.code}: ${e.message}`));
    window.room = sy.join(room, {
      onMessage: (m) => rec.messages.push([m.offset, m.data.n]),
      onReset: (r) => rec.resets.push(r.reason),
    });
    window.watch = sy.watchOperation(opId, {
      onLog: (l) => rec.lines.push([l.offset, l.line]),
      onStatus: (s) => rec.statuses.push(s.status),
      onDone: (s) => rec.done.push(s.status),
    });
    sy.connect();
  }, { room, opId, options });
}

const rec = (page) => page.evaluate(() => window.rec);

async function waitFor(page, what, fn, arg, timeout = WAIT) {
  try {
    await page.waitForFunction(fn, arg, { timeout });
  } catch (e) {
    assert.fail(`timed out waiting for ${what}: ${JSON.stringify(await rec(page))}\n${e.message}`);
  }
}

/** Publishes n into `room` as another client (REST, straight to the server). */
async function publish(room, n) {
  const r = await rest.post(`/api/rooms/${room}/publish`, { event: 'n', data: { n } });
  assert.equal(r.status, 200, JSON.stringify(r.body));
  return r.body.offset;
}

async function startDemo(target, stepMs) {
  const r = await rest.post('/api/operations', { kind: 'demo', target, params: { step_ms: stepMs } });
  assert.equal(r.status, 202, JSON.stringify(r.body));
  return r.body.id;
}

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/** The operation's stored lines as [offset, line], once it has ended. */
async function storedLines(id) {
  return (await rest.logs(id)).map((l) => [l.offset, l.line]);
}

test('a network cut: the client reconnects and has every room message and log line exactly once, in order', async () => {
  const room = `client-cut-${Date.now()}`;
  const opId = await startDemo('client-cut', 300);
  const { page, console } = await appPage();
  await follow(page, {
    room, opId,
    // Stays on the WebSocket however long the cut: this test is about resuming.
    options: { backoff: { baseMs: 100, maxMs: 1000 }, fallbackAfter: 0, requestTimeoutMs: 30000 },
  });
  await waitFor(page, 'connected with log lines', () => window.sy.state === 'connected' && window.rec.lines.length >= 2);

  // Published by the page itself: each resolved by its ack, with the room's offset.
  const acks = [];
  for (const n of range(1, 3)) acks.push(await page.evaluate((n) => window.room.publish('n', { n }), n));
  assert.deepEqual(acks.map((a) => a.offset), [1, 2, 3]);

  console.expectNetworkErrors(true);
  proxy.cut();
  await waitFor(page, 'the reconnecting state', () => window.sy.state === 'reconnecting');
  const linesWhileCut = (await rec(page)).lines.length;
  // What happens meanwhile: others publish, the operation logs on, and the page publishes too
  // (queued until the room is joined again).
  for (const n of range(4, 10)) await publish(room, n);
  await page.evaluate(() => { window.queued = window.room.publish('n', { n: 11 }); });
  await eventually('the server to log lines the page cannot have', async () => {
    const r = await rest.get(`/api/operations/${opId}`);
    return r.body.log_offset >= linesWhileCut + 3;
  });
  assert.equal((await rec(page)).lines.length, linesWhileCut, 'nothing arrives while cut off');
  proxy.restore();
  await waitFor(page, 'connected again', () => window.sy.state === 'connected', null, 30000);
  console.expectNetworkErrors(false);
  assert.equal((await page.evaluate(() => window.queued)).offset, 11, 'the queued publish is acked after the rejoin');
  for (const n of range(12, 14)) await publish(room, n);

  await waitFor(page, 'the end of the operation', () => window.rec.done.length > 0, null, 30000);
  await waitFor(page, 'every message', () => window.rec.messages.length >= 14);
  const r = await rec(page);
  assert.deepEqual(r.messages, range(1, 14).map((n) => [n, n]), 'every room message once, in order');
  assert.deepEqual(r.resets, [], 'the room resumed: no reset');
  assert.deepEqual(r.lines, await storedLines(opId), 'every log line once, in order');
  assert.deepEqual(r.done, ['completed']);
  assert.deepEqual(r.states, ['connecting', 'connected', 'reconnecting', 'connected']);
  assert.deepEqual(r.errors, []);
  console.assertClean();
});

test('a server restart: the client reconnects, resets the room whose history is gone, and has every log line once', async () => {
  const room = `client-restart-${Date.now()}`;
  const opId = await startDemo('client-restart', 1000);
  const { page, console } = await appPage();
  await follow(page, { room, opId, options: { backoff: { baseMs: 100, maxMs: 1000 }, fallbackAfter: 0 } });
  await waitFor(page, 'connected with log lines', () => window.sy.state === 'connected' && window.rec.lines.length >= 2);
  for (const n of range(1, 3)) await publish(room, n);
  await waitFor(page, 'three messages', () => window.rec.messages.length === 3);
  // The server writes lines in batches: restart once what the page has is stored.
  const seen = (await rec(page)).lines.length;
  await eventually('the lines seen to be stored', async () => (await rest.logs(opId)).length >= seen);

  console.expectNetworkErrors(true);
  await restartServer();
  await waitFor(page, 'connected to the new server', () => window.rec.states.filter((s) => s === 'connected').length === 2, null, 30000);
  console.expectNetworkErrors(false);
  // A new server, a new epoch: the page was told to reload the room, then gets what follows.
  for (const n of range(4, 6)) await publish(room, n);
  await waitFor(page, 'the end of the operation', () => window.rec.done.length > 0, null, 30000);
  await waitFor(page, 'every message', () => window.rec.messages.length >= 6);
  const r = await rec(page);
  assert.deepEqual(r.messages.map(([, n]) => n), range(1, 6), 'each message once, in order');
  assert.deepEqual(r.messages.map(([o]) => o), [1, 2, 3, 1, 2, 3], 'offsets start again in the new epoch');
  assert.deepEqual(r.resets, ['not_recovered'], 'one reset, at the rejoin');
  // The new server marked the operation interrupted.
  assert.deepEqual(r.done, ['failed']);
  assert.equal(await page.evaluate(() => window.watch.status.error.code), 'interrupted');
  assert.deepEqual(r.lines, await storedLines(opId), 'every log line once, in order');
  assert.deepEqual(r.states, ['connecting', 'connected', 'reconnecting', 'connected']);
  console.assertClean();
});

/** WebSockets refused, then allowed again; the operation over `link` (sse or poll) meanwhile. */
async function fallbackAndBack(link) {
  const room = `client-fallback-${link}-${Date.now()}`;
  const opId = await startDemo(`client-fallback-${link}`, 300);
  const { page, console } = await appPage();
  await follow(page, {
    room, opId,
    options: { backoff: { baseMs: 200, maxMs: 1500 }, fallbackAfter: 2, pollMs: 300, sse: link === 'sse' },
  });
  await waitFor(page, 'connected with log lines', () => window.sy.state === 'connected' && window.rec.lines.length >= 2);
  for (const n of range(1, 3)) await page.evaluate((n) => window.room.publish('n', { n }), n);

  console.expectNetworkErrors(true);
  proxy.blockWebSockets();
  await waitFor(page, 'the polling state', () => window.sy.state === 'polling');
  assert.equal(await page.evaluate(() => window.sy.transport), 'fallback');
  // Room messages by history polls, the operation over SSE, a publish over REST.
  const linesAtFallback = (await rec(page)).lines.length;
  for (const n of range(4, 7)) await publish(room, n);
  const ack = await page.evaluate(() => window.room.publish('n', { n: 8 }));
  assert.equal(ack.offset, 8);
  await waitFor(page, 'messages while polling', () => window.rec.messages.length === 8);
  await waitFor(page, `log lines over ${link}`, ([link, n]) => window.watch.transport === link && window.rec.lines.length >= n + 2, [link, linesAtFallback]);
  assert.equal(await page.evaluate(() => window.sy.state), 'polling');

  proxy.restore();
  await waitFor(page, 'back on the WebSocket', () => window.sy.state === 'connected', null, 30000);
  console.expectNetworkErrors(false);
  assert.equal(await page.evaluate(() => window.sy.transport), 'websocket');
  for (const n of range(9, 10)) await publish(room, n);
  await waitFor(page, 'the end of the operation', () => window.rec.done.length > 0, null, 30000);
  await waitFor(page, 'every message', () => window.rec.messages.length >= 10);
  const r = await rec(page);
  assert.deepEqual(r.messages, range(1, 10).map((n) => [n, n]), 'every room message once, in order');
  assert.deepEqual(r.resets, []);
  assert.deepEqual(r.lines, await storedLines(opId), `every log line once, in order, across the socket, ${link} and the socket again`);
  assert.deepEqual(r.done, ['completed']);
  assert.deepEqual(r.states, ['connecting', 'connected', 'reconnecting', 'polling', 'connected']);
  console.assertClean();
}

test('WebSockets refused: the client falls back to SSE and history polls, data keeps flowing, and it goes back to the socket', async () => {
  await fallbackAndBack('sse');
});

test('WebSockets refused and SSE off: the operation is polled over REST, and the client goes back to the socket', async () => {
  await fallbackAndBack('poll');
});

test('an operation watched after a reload resumes from the persisted offset: no line twice', async () => {
  const opId = await startDemo('client-reload', 300);
  const { page, console } = await appPage();
  const watch = (id) => page.evaluate((id) => {
    window.rec = { lines: [], done: [], progress: [] };
    window.sy = new window.Switchyard();
    window.watch = window.sy.watchOperation(id, {
      persist: true,
      onProgress: (s) => window.rec.progress.push([window.sy.state, s.updated_at]),
      onLog: (l) => window.rec.lines.push(l.offset),
      onDone: (s) => window.rec.done.push(s.status),
    });
  }, id);
  await watch(opId);
  await waitFor(page, 'a few lines', () => window.rec.lines.length >= 3);
  await page.reload();
  await loadClient(page);
  const kept = await page.evaluate((id) => JSON.parse(sessionStorage.getItem(`switchyard:op:${id}`)), opId);
  const before = kept.log_offset;
  assert.ok(before >= 3, `the offset was kept: ${before}`);
  await watch(opId);
  // The progress the page had is back at once, before the connection is.
  assert.deepEqual((await rec(page)).progress[0], ['connecting', kept.status.updated_at]);
  await waitFor(page, 'the end', () => window.rec.done.length > 0, null, 30000);
  const { lines } = await rec(page);
  const stored = (await rest.logs(opId)).map((l) => l.offset);
  assert.deepEqual(lines, stored.filter((o) => o > before), 'only the lines after the persisted offset, each once');
  console.assertClean();
});

test("the README's quick-start page runs as written: connected, a publish acknowledged, the demo's progress and log to the end", async () => {
  const readme = await import('node:fs').then((fs) => fs.readFileSync(new URL('../../README.md', import.meta.url), 'utf8'));
  const section = readme.split('## Quick start: a web page with the client library')[1];
  assert.ok(section, 'the README has its quick-start section');
  const html = section.split('```html\n')[1]?.split('\n```')[0];
  assert.ok(html?.includes("import { Switchyard }"), 'the quick start imports the client library');
  // As written, on a page of the server's origin (one made up by the test would be a "public"
  // page to Chromium, which then blocks its WebSocket to 127.0.0.1): its elements go into the
  // page, and its module script runs with its one static import turned into `import()` of this
  // test's server (a script evaluated by the test cannot have a static import).
  const [markup, rest] = html.split('<script type="module">');
  const script = rest.split('</script>')[0].replace(
    /import \{ Switchyard \} from '[^']*';/,
    `const { Switchyard } = await import('${proxy.url}/client.js');`,
  );
  assert.ok(script.includes('await import('), 'the import line was found');
  const { page, console: seen } = await openPage(browser);
  const logged = [];
  page.on('console', (msg) => logged.push(msg.text()));
  await page.route('**/favicon.ico', (route) => route.fulfill({ status: 204 }));
  await page.goto(`${proxy.url}/health`);
  // Element ids are globals in a page (`badge`, `bar`, `log`), as the snippet expects.
  await page.evaluate((markup) => { document.body.innerHTML = markup; }, markup);
  await page.evaluate(`(async () => { ${script} })()`);
  await page.waitForFunction(() => document.getElementById('badge').textContent === 'connected', null, { timeout: WAIT });
  // The demo runs through its stages to 100 %, and its log lines reach the page.
  await page.waitForFunction(() => document.getElementById('bar').value === 100, null, { timeout: WAIT });
  await page.waitForFunction(() => document.getElementById('log').textContent.trim().split('\n').length >= 3, null, { timeout: WAIT });
  // `onDone` logs the end, once; the publish's `onMessage` logged the page's own message.
  await eventually('the page logged the end of the demo', () => logged.includes('completed'));
  assert.equal(logged.filter((t) => t === 'completed').length, 1, logged.join('\n'));
  assert.ok(logged.some((t) => t.startsWith('step-updated')), logged.join('\n'));
  const text = await page.evaluate(() => document.getElementById('log').textContent);
  const lines = text.trim().split('\n');
  assert.equal(new Set(lines).size, lines.length, `no log line twice: ${text}`);
  seen.assertClean();
});
