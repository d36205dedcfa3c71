// The dashboard read at a glance: the overview's charts of the last 15 minutes follow real load
// and survive a reload; the rooms page shows a room's recent messages live and gives admins a
// publish console (and nobody else).
//
// Servers (started by tests/api/dashboard.rs): SY_URL (open mode: every caller may manage),
// SY_AUTH_URL with SY_AUTH_TOKEN (role admin) and SY_AUTH_VIEWER_TOKEN (may join every room,
// no role). Their stats tick every 500 ms (the test settings), so every wait below is short.

import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { WAIT, env, launch, openPage, restClient, eventually, screenshot, waitForBadge } from './lib/harness.mjs';

let browser, base;

before(async () => {
  base = env('SY_URL');
  browser = await launch();
});

afterEach(async () => {
  for (const p of browser.context.pages()) await p.close();
});

after(async () => {
  await browser?.close();
});

/** What a chart's line shows: the latest value, the highest and the sum over the window. */
function series(page, chart, key) {
  return page.evaluate(([chart, key]) => {
    const path = document.querySelector(`[data-chart="${chart}"] path[data-series="${key}"]`);
    if (!path) return null;
    const n = (v) => (v === '' || v === undefined ? null : Number(v));
    return { latest: n(path.dataset.latest), max: n(path.dataset.max), total: n(path.dataset.total), d: path.getAttribute('d') };
  }, [chart, key]);
}

/**
 * Waits until a chart's line shows `field` (latest, max or total) above `floor`. (A condition
 * is data, not a function: the page's CSP allows no eval.)
 */
async function waitForSeries(page, chart, key, field, floor) {
  await page.waitForFunction(([chart, key, field, floor]) => {
    const path = document.querySelector(`[data-chart="${chart}"] path[data-series="${key}"]`);
    const v = path && path.dataset[field];
    return v !== undefined && v !== '' && Number(v) > floor;
  }, [chart, key, field, floor], { timeout: WAIT });
}

const points = (page) => page.evaluate(() => Number(document.querySelector('[data-chart="connections"]')?.dataset.points || 0));
const firstAt = (page) => page.evaluate(() => Number(document.querySelector('[data-chart="connections"]')?.dataset.firstAt || 0));

/**
 * Real load from a page of the server's origin: `n` WebSockets that join `room` and publish
 * into it every 200 ms. Resolves once every socket is in the room.
 */
async function startLoad(page, room, n) {
  await page.evaluate(({ room, n }) => new Promise((resolve, reject) => {
    window.__load = [];
    let joined = 0;
    for (let i = 0; i < n; i++) {
      const ws = new WebSocket(`${location.origin.replace(/^http/, 'ws')}/ws`);
      ws.onmessage = (ev) => {
        const f = JSON.parse(ev.data);
        if (f.type === 'welcome') ws.send(JSON.stringify({ type: 'join', room, id: `j${i}` }));
        if (f.type === 'joined' && ++joined === n) resolve();
      };
      ws.onerror = () => reject(new Error('a load socket failed'));
      window.__load.push(ws);
    }
    window.__loadTimer = setInterval(() => {
      for (const ws of window.__load) {
        if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'publish', room, event: 'load', data: { at: Date.now() } }));
      }
    }, 200);
  }), { room, n });
}

test('the overview charts connections, messages, operations and evictions, and they follow load', async () => {
  const rest = restClient(base);
  const { page, console } = await openPage(browser, `${base}/`);
  await waitForBadge(page, 'connected');

  // Every chart is there, an image with a name that says its latest value, and a text
  // alternative for those who do not see it.
  for (const [chart, keys] of [
    ['connections', ['connections']],
    ['messages', ['messages_in_per_sec', 'messages_out_per_sec']],
    ['operations', ['operations_started', 'operations_finished', 'operations_failed']],
    ['evictions', ['slow_consumer_evictions']],
  ]) {
    for (const key of keys) await waitForSeries(page, chart, key, 'latest', -1);
    const svg = page.locator(`[data-chart="${chart}"] svg[role="img"]`);
    assert.match(await svg.getAttribute('aria-label'), /, last \d+ (s|min) \(\d+ samples\): .* now, lowest/, `${chart} is named with its values`);
    assert.notEqual((await page.textContent(`[data-chart="${chart}"] [data-role="summary"]`)).trim(), '');
  }
  // The axes are labelled: the window and the scale.
  const ticks = await page.$$eval('[data-chart="connections"] text', (ts) => ts.map((t) => t.textContent));
  assert.match(ticks.join(' '), /^0 \S+ \S+ −\d+ (s|min) −\d+ (s|min) −\d+ (s|min) now$/, `axis labels: ${ticks}`);

  const before = {
    connections: (await series(page, 'connections', 'connections')).latest,
    started: (await series(page, 'operations', 'operations_started')).total,
    finished: (await series(page, 'operations', 'operations_finished')).total,
    failed: (await series(page, 'operations', 'operations_failed')).total,
    points: await points(page),
  };

  // Load: six more connections publishing into a room, two quick demos (one told to fail).
  // A dashboard page of the same origin, so its sockets pass the origin check.
  const load = await openPage(browser, `${base}/activity`);
  await startLoad(load.page, 'charts-load', 6);
  const ok = await rest.post('/api/operations', { kind: 'demo', target: 'charts-ok', params: { step_ms: 20 } });
  assert.equal(ok.status, 202, JSON.stringify(ok.body));
  const bad = await rest.post('/api/operations', { kind: 'demo', target: 'charts-bad', params: { step_ms: 20, fail_at: 'pull' } });
  assert.equal(bad.status, 202, JSON.stringify(bad.body));

  // The charts follow, tick by tick (some connections of earlier tests may still be leaving,
  // hence four of the six).
  await waitForSeries(page, 'connections', 'connections', 'latest', before.connections + 3);
  await waitForSeries(page, 'messages', 'messages_in_per_sec', 'latest', 0);
  await waitForSeries(page, 'messages', 'messages_out_per_sec', 'latest', 0);
  await waitForSeries(page, 'operations', 'operations_started', 'total', before.started + 1);
  await waitForSeries(page, 'operations', 'operations_finished', 'total', before.finished + 1);
  await waitForSeries(page, 'operations', 'operations_failed', 'total', before.failed);
  assert.ok(await points(page) > before.points, 'points were added as stats arrived');
  const conns = await series(page, 'connections', 'connections');
  assert.match(conns.d, /^M[\d.]+ [\d.]+(L[\d.]+ [\d.]+)+/, 'the connections line is drawn');
  assert.match(await page.getAttribute('[data-chart="connections"] svg', 'aria-label'), new RegExp(`open ${conns.latest} now`));
  assert.equal(await page.textContent('[data-chart="connections"] .chart-value'), String(conns.latest));
  // Nothing evicted here; the chart says so rather than nothing.
  assert.equal((await series(page, 'evictions', 'slow_consumer_evictions')).max, 0);
  await screenshot(page, 'overview-charts', { fullPage: false });

  await load.page.evaluate(() => clearInterval(window.__loadTimer));
  load.console.assertClean();
  console.assertClean();
  await page.close();
  await load.page.close();
});

test('the charts survive a reload and a new tab: the last 15 minutes come from the server', async () => {
  const rest = restClient(base);
  const { page, console } = await openPage(browser, `${base}/`);
  await waitForBadge(page, 'connected');
  await page.waitForFunction(() => Number(document.querySelector('[data-chart="connections"]')?.dataset.points) >= 5, null, { timeout: WAIT });
  const first = await firstAt(page);
  const count = await points(page);

  // The server keeps them: what a fresh page fetches.
  const recent = await rest.get('/api/stats/recent');
  assert.equal(recent.status, 200, JSON.stringify(recent.body));
  assert.equal(recent.body.window_seconds, 900);
  assert.ok(recent.body.samples.length >= count, `${recent.body.samples.length} samples kept, ${count} shown`);
  assert.ok(recent.body.samples.every((s, i, a) => i === 0 || a[i - 1].at_ms < s.at_ms), 'oldest first');

  // A reload shows the same past at once (a page that only listened would start from the
  // retained latest tick, later than `first`).
  await page.reload();
  await page.waitForFunction(([first, count]) => {
    const fig = document.querySelector('[data-chart="connections"]');
    return fig && Number(fig.dataset.points) >= count && Number(fig.dataset.firstAt) <= first;
  }, [first, count], { timeout: WAIT });

  const other = await openPage(browser, `${base}/`);
  await other.page.waitForFunction((first) => {
    const fig = document.querySelector('[data-chart="connections"]');
    return fig && Number(fig.dataset.firstAt) <= first && Number(fig.dataset.points) >= 5;
  }, first, { timeout: WAIT });
  other.console.assertClean();
  console.assertClean();
  await page.close();
  await other.page.close();
});

/** A page of the secured server holding `token` (as if typed into the token dialog). */
async function securedPage(path, token) {
  const opened = await openPage(browser);
  await opened.page.addInitScript((t) => sessionStorage.setItem('switchyard.token', t), token);
  await opened.page.goto(`${env('SY_AUTH_URL')}${path}`);
  return opened;
}

test('an admin opens a room, sees its recent messages live and publishes from the console', async () => {
  const admin = env('SY_AUTH_TOKEN');
  const rest = restClient(env('SY_AUTH_URL'), admin);
  const room = 'console-room';
  for (const n of [1, 2, 3]) {
    const r = await rest.post(`/api/rooms/${room}/publish`, { event: 'seeded', data: { n } });
    assert.equal(r.status, 200, JSON.stringify(r.body));
  }
  const { page, console } = await securedPage('/rooms', admin);
  await waitForBadge(page, 'connected');
  const panel = page.locator('#room-panel');
  assert.equal(await panel.isVisible(), false, 'no room is open before one is chosen');
  await page.locator(`#rooms-body tr[data-room="${room}"] button`).click();
  await page.getByRole('heading', { name: `Room ${room}` }).waitFor();
  const history = page.getByRole('log', { name: 'Recent messages' });
  await page.waitForFunction(() => document.querySelectorAll('#room-history li').length === 3, null, { timeout: WAIT });
  assert.deepEqual(await history.locator('.event').allTextContents(), ['seeded', 'seeded', 'seeded']);
  assert.match(await history.locator('li').first().textContent(), /"n":3/, 'newest first');
  assert.match(page.url(), /#room=console-room$/);

  // Live: a message published elsewhere shows up without a reload.
  const live = await rest.post(`/api/rooms/${room}/publish`, { event: 'from-backend', data: { live: true } });
  assert.equal(live.status, 200);
  await history.locator(`li[data-offset="${live.body.offset}"]`, { hasText: 'from-backend' }).waitFor();

  // The console: bad JSON is refused in the page, with a reason, and nothing is published.
  const form = page.locator('#room-console');
  assert.equal(await form.isVisible(), true);
  await page.getByLabel('Event').fill('console.test');
  await page.getByLabel('Data (JSON)').fill('{"hello": ');
  await form.getByRole('button', { name: 'Publish' }).click();
  await page.locator('#console-error', { hasText: 'not valid JSON' }).waitFor();
  assert.equal(await page.getAttribute('#console-data', 'aria-invalid'), 'true');
  const kept = (await rest.get(`/api/rooms/${room}/history`)).body.messages.length;
  assert.equal(kept, 4, 'the bad JSON was not published');

  // Good JSON is published, said so, and appears in the room's history (the server's too).
  await page.getByLabel('Data (JSON)').fill('{"hello": "world"}');
  await form.getByRole('button', { name: 'Publish' }).click();
  await page.locator('#console-result', { hasText: /Published .console\.test. to console-room at offset \d+/ }).waitFor();
  assert.equal(await page.isVisible('#console-error'), false);
  await history.locator('li', { hasText: 'console.test' }).filter({ hasText: '"hello":"world"' }).waitFor();
  await eventually('the server keeps the console message', async () => {
    const h = await rest.get(`/api/rooms/${room}/history`);
    return h.body.messages.some((m) => m.event === 'console.test' && m.data && m.data.hello === 'world' && m.from && m.from.user === 'admin');
  });
  await screenshot(page, 'rooms-console');
  console.assertClean();
  await page.close();
});

test('a token that may not manage rooms sees a room\'s messages but no publish console', async () => {
  const room = 'console-room';
  const viewer = env('SY_AUTH_VIEWER_TOKEN');
  const { page, console } = await securedPage(`/rooms#room=${room}`, viewer);
  await waitForBadge(page, 'connected');
  // It may not list rooms (that needs admin) ...
  await page.locator('#rooms-error', { hasText: 'may not list rooms' }).waitFor();
  // ... but may see a room it may join, by its link: the messages, and no console.
  await page.getByRole('heading', { name: `Room ${room}` }).waitFor();
  await page.waitForFunction(() => document.querySelectorAll('#room-history li').length >= 3, null, { timeout: WAIT });
  assert.equal(await page.isVisible('#room-console'), false, 'no publish console for a non-admin');
  assert.equal(await page.getByRole('button', { name: 'Publish' }).count(), 0);

  // The same link with an admin token has the console: the difference is the role.
  const admin = await securedPage(`/rooms#room=${room}`, env('SY_AUTH_TOKEN'));
  await admin.page.locator('#room-console').waitFor({ state: 'visible', timeout: WAIT });
  console.allow(/status of 403/);
  console.assertClean();
  admin.console.assertClean();
  await page.close();
  await admin.page.close();
});
