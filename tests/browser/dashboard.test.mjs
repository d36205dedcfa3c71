// The dashboard used as a person would: open pages in headless Chromium, click, watch.
// The browser reaches the server through a TCP proxy the tests can cut.

import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import {
  WAIT, env, launch, openPage, startProxy, restClient, eventually, screenshot, shownLog,
  waitForBadge, waitForBadgeSequence, restartServer,
} from './lib/harness.mjs';

let browser, proxy, rest, base;

before(async () => {
  base = env('SY_URL');
  rest = restClient(base);
  proxy = await startProxy(base);
  browser = await launch();
});

// A failed test leaves its pages behind; they must not disturb the next one.
afterEach(async () => {
  proxy.restore();
  for (const p of browser.context.pages()) await p.close();
});

after(async () => {
  await browser?.close();
  await proxy?.close();
});

/** The operations-list row of the operation on `target`. */
const rowOf = (page, target) => page.locator('#ops-body tr', { has: page.getByRole('link', { name: target, exact: true }) });

async function startDemoFromPage(page, target, { pace, failAt } = {}) {
  await page.getByLabel('Target').fill(target);
  if (pace) await page.getByLabel('Pace').selectOption(pace);
  if (failAt) await page.getByLabel('Fail at stage').selectOption(failAt);
  await page.getByRole('button', { name: 'Start demo' }).click();
  const row = rowOf(page, target);
  await row.waitFor();
  return row;
}

test('the overview shows the connection, live stats, health and active operations with progress', async () => {
  const started = await rest.post('/api/operations', { kind: 'demo', target: 'overview-box', params: { step_ms: 300 } });
  assert.equal(started.status, 202, JSON.stringify(started.body));
  const id = started.body.id;

  const { page, console } = await openPage(browser, `${proxy.url}/`);
  await waitForBadgeSequence(page, ['connecting', 'connected']);
  await page.getByRole('heading', { name: 'Overview' }).waitFor();

  // Stats from the `system` room: figures at once (retained), then live ticks.
  await page.waitForFunction(() => Number(document.querySelector('[data-stat="connections"]').textContent) >= 1);
  const uptime = await page.textContent('[data-stat="uptime_seconds"]');
  await page.waitForFunction((u) => document.querySelector('[data-stat="uptime_seconds"]').textContent !== u, uptime);

  // The node list (one node here; tests/api/cluster.rs covers several): live, with its figures.
  await page.waitForFunction(() => {
    const rows = document.querySelectorAll('#nodes tbody tr');
    return rows.length === 1 && rows[0].dataset.state === 'live' && Number(rows[0].children[1].textContent) >= 1
      && /ago$/.test(rows[0].querySelector('.heartbeat').textContent);
  }, null, { timeout: WAIT });

  // Health of the database (and the broker).
  await page.locator('#health [data-component="database"] .pill[data-state="ok"]').waitFor();
  await page.locator('#health [data-component="broker"] .pill[data-state="ok"]').waitFor();

  // The running operation, with a progress bar that moves.
  const card = page.locator(`#active li[data-id="${id}"]`);
  await card.waitFor();
  const bar = card.getByRole('progressbar', { name: 'Progress of demo on overview-box' });
  await page.waitForFunction(
    (id) => Number(document.querySelector(`#active li[data-id="${id}"] [role=progressbar]`).getAttribute('aria-valuenow')) >= 15,
    id, { timeout: WAIT });
  assert.equal(await page.isVisible('#active-empty'), false);
  await screenshot(page, 'overview');

  // Dark theme follows the system setting.
  const light = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  await page.emulateMedia({ colorScheme: 'dark' });
  const dark = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  assert.notEqual(light, dark, 'the dark theme changes the background');
  await screenshot(page, 'overview-dark');
  await page.emulateMedia({ colorScheme: 'light' });

  // Its Cancel button works from here too.
  await card.getByRole('button', { name: 'Cancel' }).click();
  await card.locator('.status[data-status="cancelled"]').waitFor();
  await page.locator('.toast[data-tone="warn"]', { hasText: 'overview-box' }).waitFor();
  assert.equal(await bar.getAttribute('data-status'), 'cancelled');
  console.assertClean();
  await page.close();
});

test('clicking "Start demo" runs a demo whose progress climbs to 100%, then a success toast', async () => {
  const { page, console } = await openPage(browser, `${proxy.url}/operations`);
  await waitForBadge(page, 'connected');
  // The default pace is the normal ~10 s demo.
  assert.equal(await page.getByLabel('Pace').inputValue(), '300');
  const row = await startDemoFromPage(page, 'e2e-install');

  // Every value the row's progress bar shows, until 100.
  const seen = await page.evaluate(() => new Promise((resolve) => {
    const values = [];
    const deadline = Date.now() + 30000;
    (function look() {
      const tr = [...document.querySelectorAll('#ops-body tr')].find((r) => r.querySelector('a')?.textContent === 'e2e-install');
      const v = Number(tr?.querySelector('[role=progressbar]')?.getAttribute('aria-valuenow'));
      if (tr && values[values.length - 1] !== v) values.push(v);
      if (v === 100 || Date.now() > deadline) resolve(values);
      else requestAnimationFrame(look);
    })();
  }));
  assert.equal(seen[seen.length - 1], 100, `progress reached 100%: ${seen}`);
  assert.ok(seen.length >= 6, `progress moved in steps, saw ${seen}`);
  assert.deepEqual([...seen].sort((a, b) => a - b), seen, `progress never went back: ${seen}`);

  await page.locator('.toast[data-tone="success"]', { hasText: 'Completed: demo on e2e-install' }).waitFor();
  await row.locator('.status[data-status="completed"]').waitFor();
  assert.equal(await row.locator('.pct').textContent(), '100%');

  // Its page: every stage done, the whole log, the result.
  await row.getByRole('link', { name: 'e2e-install' }).click();
  await page.locator('#op-status[data-status="completed"]').waitFor();
  const id = page.url().split('/').pop();
  await page.getByRole('heading', { name: 'demo on e2e-install' }).waitFor();
  const states = await page.$$eval('#op-stages li', (lis) => lis.map((li) => [li.firstChild.textContent, li.dataset.state]));
  assert.deepEqual(states, ['init', 'config', 'pull', 'build', 'deploy', 'validate'].map((s) => [s, 'done']));
  const stored = await rest.logs(id);
  await page.waitForFunction((n) => document.querySelectorAll('#log .ln').length === n, stored.length);
  assert.deepEqual(await shownLog(page), stored.map((l) => [l.offset, l.line]));
  assert.match(await page.textContent('#op-result'), /"url": "http:\/\/localhost:3000"/);
  assert.equal(await page.isVisible('#op-again'), true);
  assert.equal(await page.isVisible('#op-cancel'), false);
  await screenshot(page, 'operation-completed');
  console.assertClean();
  await page.close();
});

test('a demo told to fail shows the failed stage, the error and a failure toast; "Run again" starts it anew', async () => {
  const { page, console } = await openPage(browser, `${proxy.url}/operations`);
  await waitForBadge(page, 'connected');
  const row = await startDemoFromPage(page, 'e2e-fail', { pace: '30', failAt: 'build' });
  await page.locator('.toast[data-tone="error"]', { hasText: 'Failed: demo on e2e-fail' }).waitFor();
  await row.locator('.status[data-status="failed"]').waitFor();

  await row.getByRole('link', { name: 'e2e-fail' }).click();
  await page.locator('#op-status[data-status="failed"]').waitFor();
  const first = page.url();
  const states = await page.$$eval('#op-stages li', (lis) => Object.fromEntries(lis.map((li) => [li.firstChild.textContent, li.dataset.state])));
  assert.deepEqual(states, { init: 'done', config: 'done', pull: 'done', build: 'failed', deploy: 'pending', validate: 'pending' });
  assert.match(await page.textContent('#op-error'), /simulated failure in stage build/);
  await page.locator('#log .ln.stderr', { hasText: 'error: simulated failure during build' }).waitFor();
  await screenshot(page, 'operation-failed');

  await page.getByRole('button', { name: 'Run again' }).click();
  await page.waitForURL((u) => u.toString() !== first && u.pathname.startsWith('/operations/'));
  await page.locator('#op-status[data-status="failed"]').waitFor();
  await page.getByRole('heading', { name: 'demo on e2e-fail' }).waitFor();
  assert.notEqual(page.url(), first);
  console.assertClean();
  await page.close();
});

test('Cancel on a running operation cancels it, with a toast', async () => {
  const { page, console } = await openPage(browser, `${proxy.url}/operations`);
  await waitForBadge(page, 'connected');
  const row = await startDemoFromPage(page, 'e2e-cancel', { pace: '1000' });
  await row.locator('.status[data-status="running"]').waitFor();
  await row.getByRole('button', { name: 'Cancel demo on e2e-cancel' }).click();
  await row.locator('.status[data-status="cancelled"]').waitFor();
  await page.locator('.toast[data-tone="warn"]', { hasText: 'Cancelled: demo on e2e-cancel' }).waitFor();
  assert.equal(await row.getByRole('button', { name: 'Cancel demo on e2e-cancel' }).isVisible(), false);
  const id = await row.getAttribute('data-id');
  const stored = await rest.get(`/api/operations/${id}`);
  assert.equal(stored.body.status, 'cancelled');

  // Filters: status and kind, reflected in the URL.
  await page.getByLabel('Status').selectOption('cancelled');
  await rowOf(page, 'e2e-cancel').waitFor();
  await page.waitForFunction(() => [...document.querySelectorAll('#ops-body .status')].every((s) => s.dataset.status === 'cancelled'));
  assert.equal(await rowOf(page, 'e2e-install').count(), 0);
  assert.match(page.url(), /status=cancelled/);
  await page.getByLabel('Status').selectOption('');
  await rowOf(page, 'e2e-install').waitFor();
  console.assertClean();
  await page.close();
});

test('cutting the connection: the badge goes to reconnecting and back to connected, and the log stays exact', async () => {
  const { page, console } = await openPage(browser, `${proxy.url}/operations`);
  await waitForBadge(page, 'connected');
  const row = await startDemoFromPage(page, 'e2e-reconnect', { pace: '300' });
  await row.getByRole('link', { name: 'e2e-reconnect' }).click();
  await page.locator('#op-status[data-status="running"]').waitFor();
  await waitForBadge(page, 'connected');
  const id = page.url().split('/').pop();
  await page.waitForFunction(() => document.querySelectorAll('#log .ln').length >= 8, null, { timeout: WAIT });
  await screenshot(page, 'operation');

  console.expectNetworkErrors(true);
  proxy.cut();
  await waitForBadge(page, 'reconnecting');
  const shownWhileCut = (await shownLog(page)).length;
  // The operation goes on meanwhile: wait until the server has lines the page cannot have.
  await eventually('the server to log lines while the page is cut off', async () => {
    const r = await rest.get(`/api/operations/${id}`);
    return r.body.log_offset >= shownWhileCut + 3;
  });
  assert.equal((await shownLog(page)).length, shownWhileCut, 'nothing arrives while cut off');
  proxy.restore();
  await waitForBadgeSequence(page, ['connected', 'reconnecting', 'connected']);
  console.expectNetworkErrors(false);

  await page.locator('#op-status[data-status="completed"]').waitFor({ timeout: 30000 });
  await page.locator('.toast[data-tone="success"]', { hasText: 'e2e-reconnect' }).waitFor();
  const stored = await rest.logs(id);
  await page.waitForFunction((n) => document.querySelectorAll('#log .ln').length >= n, stored.length);
  const shown = await shownLog(page);
  assert.deepEqual(shown, stored.map((l) => [l.offset, l.line]), 'every line exactly once, in order');
  assert.deepEqual(shown.map(([o]) => o), stored.map((_, i) => i + 1));
  console.assertClean();
  await page.close();
});

test('when the socket keeps failing the page polls the REST API (badge "polling") until the socket is back', async () => {
  const started = await rest.post('/api/operations', { kind: 'demo', target: 'e2e-poll', params: { step_ms: 500 } });
  assert.equal(started.status, 202);
  const id = started.body.id;
  const { page, console } = await openPage(browser, `${proxy.url}/operations/${id}`);
  await waitForBadge(page, 'connected');
  await page.waitForFunction(() => document.querySelectorAll('#log .ln').length >= 2, null, { timeout: WAIT });

  console.expectNetworkErrors(true);
  proxy.blockWebSockets();
  await waitForBadge(page, 'polling');
  // Polling keeps the page moving: progress and log still advance without a socket.
  const progress = Number(await page.getAttribute('#op-progress', 'aria-valuenow'));
  const lines = (await shownLog(page)).length;
  await page.waitForFunction(([p, n]) => Number(document.querySelector('#op-progress').getAttribute('aria-valuenow')) > p
    && document.querySelectorAll('#log .ln').length > n, [progress, lines], { timeout: WAIT });
  assert.equal(await page.getAttribute('#conn', 'data-state'), 'polling');
  assert.equal(await page.textContent('#conn-label'), 'Polling');

  proxy.restore();
  await waitForBadgeSequence(page, ['connected', 'polling', 'connected'], 30000);
  console.expectNetworkErrors(false);
  await page.locator('#op-status[data-status="completed"]').waitFor({ timeout: 30000 });
  const stored = await rest.logs(id);
  await page.waitForFunction((n) => document.querySelectorAll('#log .ln').length >= n, stored.length);
  assert.deepEqual(await shownLog(page), stored.map((l) => [l.offset, l.line]), 'polling and rejoining lose and double nothing');
  console.assertClean();
  await page.close();
});

test('a server restart: pages reconnect to the new server, reload what they missed, and show the interrupted operation', async () => {
  const started = await rest.post('/api/operations', { kind: 'demo', target: 'e2e-restart', params: { step_ms: 1000 } });
  assert.equal(started.status, 202);
  const id = started.body.id;
  // Straight to the server this time: it is the server that goes away.
  const list = await openPage(browser, `${base}/operations`);
  const detail = await openPage(browser, `${base}/operations/${id}`);
  await waitForBadge(list.page, 'connected');
  await waitForBadge(detail.page, 'connected');
  await rowOf(list.page, 'e2e-restart').locator('.status[data-status="running"]').waitFor();
  await detail.page.waitForFunction(() => document.querySelectorAll('#log .ln').length >= 2, null, { timeout: WAIT });
  // The server writes lines in batches; restart once what the page shows is stored.
  const seen = (await shownLog(detail.page)).length;
  await eventually('the lines shown to be stored', async () => (await rest.logs(id)).length >= seen);

  list.console.expectNetworkErrors(true);
  detail.console.expectNetworkErrors(true);
  await restartServer();
  for (const { page } of [list, detail]) await waitForBadgeSequence(page, ['connected', 'reconnecting', 'connected'], 30000);
  list.console.expectNetworkErrors(false);
  detail.console.expectNetworkErrors(false);

  // The new server marked the operation interrupted; both pages learn it.
  await rowOf(list.page, 'e2e-restart').locator('.status[data-status="failed"]').waitFor();
  await list.page.locator('.toast[data-tone="error"]', { hasText: 'Failed: demo on e2e-restart' }).waitFor();
  await detail.page.locator('#op-status[data-status="failed"]').waitFor();
  assert.match(await detail.page.textContent('#op-error'), /interrupted/);
  const stored = await rest.logs(id);
  await detail.page.waitForFunction((n) => document.querySelectorAll('#log .ln').length >= n, stored.length);
  assert.deepEqual(await shownLog(detail.page), stored.map((l) => [l.offset, l.line]));

  // Live again: a demo started from the list after the restart runs to the end.
  await startDemoFromPage(list.page, 'e2e-after-restart', { pace: '30' });
  await list.page.locator('.toast[data-tone="success"]', { hasText: 'e2e-after-restart' }).waitFor();
  list.console.assertClean();
  detail.console.assertClean();
});

test('the activity feed is newest first, pages back through history and shows new items live', async () => {
  for (let i = 1; i <= 60; i++) {
    const r = await rest.post('/api/activities', {
      project: String(i % 3), actor: ['alice', 'bob', 'carol'][i % 3], verb: ['completed', 'reviewed', 'reopened', 'commented on'][i % 4], object: `step ${i}`,
    });
    assert.equal(r.status, 201);
  }
  const { page, console } = await openPage(browser, `${proxy.url}/activity`);
  await waitForBadge(page, 'connected');
  const items = page.locator('#feed li');
  await page.waitForFunction(() => document.querySelectorAll('#feed li').length === 50);
  assert.equal(await items.first().locator('.object').textContent(), 'step 60');
  await page.getByRole('button', { name: 'Load older activity' }).click();
  await page.waitForFunction(() => document.querySelectorAll('#feed li').length === 60);
  assert.equal(await items.last().locator('.object').textContent(), 'step 1');
  assert.equal(await page.getByRole('button', { name: 'Load older activity' }).isVisible(), false);
  const ids = await page.$$eval('#feed li', (lis) => lis.map((li) => Number(li.dataset.id)));
  assert.deepEqual(ids, [...ids].sort((a, b) => b - a), 'newest first');

  const r = await rest.post('/api/activities', { project: '42', actor: 'dave', verb: 'deployed', object: 'api 1.4.2', data: { version: '1.4.2' } });
  assert.equal(r.status, 201);
  await page.waitForFunction(() => document.querySelector('#feed li')?.textContent.includes('deployed api 1.4.2'));
  assert.equal(await items.count(), 61);
  await page.evaluate(() => window.scrollTo(0, 0));
  await screenshot(page, 'activity', { fullPage: false });

  // Cut off while more happens than the room keeps for a resume (100 messages): the page
  // rejoins, is told it cannot be replayed, and pages back over REST to what it had.
  console.expectNetworkErrors(true);
  proxy.cut();
  await waitForBadge(page, 'reconnecting');
  for (let i = 1; i <= 120; i++) {
    const r = await rest.post('/api/activities', { actor: 'erin', verb: 'imported', object: `batch ${i}` });
    assert.equal(r.status, 201);
  }
  proxy.restore();
  await waitForBadgeSequence(page, ['reconnecting', 'connected'], 30000);
  console.expectNetworkErrors(false);
  await page.waitForFunction(() => document.querySelectorAll('#feed li').length === 181, null, { timeout: WAIT });
  assert.equal(await items.first().locator('.object').textContent(), 'batch 120');
  const all = await page.$$eval('#feed li', (lis) => lis.map((li) => Number(li.dataset.id)));
  assert.deepEqual(all, [...new Set(all)].sort((a, b) => b - a), 'newest first, each once');
  console.assertClean();
  await page.close();
});

test('the rooms page lists rooms with member counts and who is present, and follows changes', async () => {
  const other = await openPage(browser, `${proxy.url}/activity`);
  await waitForBadge(other.page, 'connected');
  const { page, console } = await openPage(browser, `${proxy.url}/rooms`);
  await waitForBadge(page, 'connected');
  const activity = page.locator('#rooms-body tr[data-room="activity"]');
  await activity.waitFor();
  await page.waitForFunction(() => {
    const tr = document.querySelector('#rooms-body tr[data-room="activity"]');
    return tr && Number(tr.children[1].textContent) >= 1 && tr.children[4].textContent.includes('Dashboard');
  });
  await page.locator('#rooms-body tr[data-room="system"]').waitFor();
  await screenshot(page, 'rooms');

  // The other tab leaves: the count follows on a later refresh.
  await other.page.close();
  await page.waitForFunction(() => {
    const tr = document.querySelector('#rooms-body tr[data-room="activity"]');
    return tr && Number(tr.children[1].textContent) === 0 && tr.children[4].textContent === 'nobody';
  });
  other.console.assertClean();
  console.assertClean();
  await page.close();
});

test('at phone width every page fits the screen and stays usable', async () => {
  const running = await rest.post('/api/operations', { kind: 'demo', target: 'phone-box', params: { step_ms: 1000 } });
  assert.equal(running.status, 202);
  const { page, console } = await openPage(browser);
  await page.goto(`${proxy.url}/operations`);
  await waitForBadge(page, 'connected');
  await rowOf(page, 'phone-box').locator('.status[data-status="running"]').waitFor();
  await screenshot(page, 'operations', { fullPage: false });

  await page.setViewportSize({ width: 390, height: 844 });
  for (const path of ['/', '/operations', `/operations/${running.body.id}`, '/activity', '/rooms']) {
    await page.goto(`${proxy.url}${path}`);
    await waitForBadge(page, 'connected');
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `${path} scrolls sideways by ${overflow}px at phone width`);
    for (const name of ['Overview', 'Operations', 'Activity', 'Rooms']) {
      assert.ok(await page.getByRole('navigation', { name: 'Dashboard' }).getByRole('link', { name }).isVisible(), `${name} link on ${path}`);
    }
    if (path === '/operations') {
      await rowOf(page, 'phone-box').waitFor();
      assert.ok(await page.getByRole('button', { name: 'Start demo' }).isVisible());
      await screenshot(page, 'operations-phone');
    } else if (path.startsWith('/operations/')) {
      await page.waitForFunction(() => document.querySelectorAll('#log .ln').length >= 1, null, { timeout: WAIT });
      await screenshot(page, 'operation-phone');
    } else if (path === '/') {
      await screenshot(page, 'overview-phone');
    }
  }
  await rest.post(`/api/operations/${running.body.id}/cancel`);
  console.assertClean();
  await page.close();
});

test('every page has labelled controls, live regions and one heading to start from', async () => {
  const some = (await rest.get('/api/operations?limit=1')).body.operations[0];
  const { page, console } = await openPage(browser);
  for (const path of ['/', '/operations', `/operations/${some.id}`, '/activity', '/rooms']) {
    await page.goto(`${proxy.url}${path}`);
    await waitForBadge(page, 'connected');
    const report = await page.evaluate(() => {
      const problems = [];
      const visible = (e) => e.getClientRects().length > 0;
      for (const c of document.querySelectorAll('input, select, textarea')) {
        if (c.type === 'hidden') continue;
        if (!c.labels?.length && !c.getAttribute('aria-label')) problems.push(`unlabelled ${c.tagName} #${c.id}`);
      }
      for (const b of document.querySelectorAll('button')) {
        if (visible(b) && !(b.getAttribute('aria-label') || b.textContent.trim())) problems.push(`nameless button ${b.outerHTML}`);
      }
      for (const p of document.querySelectorAll('[role=progressbar]')) {
        if (!p.getAttribute('aria-label') || p.getAttribute('aria-valuenow') === null) problems.push(`progressbar without name or value ${p.outerHTML}`);
      }
      if (document.querySelectorAll('h1').length !== 1) problems.push('not exactly one h1');
      if (document.documentElement.lang !== 'en') problems.push('no lang');
      if (document.querySelector('#conn')?.getAttribute('role') !== 'status') problems.push('badge is not a status');
      if (document.querySelector('#toasts')?.getAttribute('aria-live') !== 'polite') problems.push('toasts are not a live region');
      if (!document.querySelector('nav a[aria-current="page"]')) problems.push('no current page in the nav');
      return problems;
    });
    assert.deepEqual(report, [], `${path}: ${report.join('; ')}`);
  }
  // The detail page announces progress politely.
  assert.equal(await page.goto(`${proxy.url}/operations/${some.id}`).then(() => page.getAttribute('#op-announce', 'aria-live')), 'polite');
  console.assertClean();
  await page.close();
});
