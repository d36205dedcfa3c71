// Big data: 1,000 operations in the list and a 100,000-line log. The pages must render
// incrementally, keep the DOM capped and never block the main thread for long — checked by
// counting, not timing: the most rows or lines the page inserts in one task is bounded by its
// own settings, however much data there is. (Durations are reported as diagnostics; speed is
// the benchmarks' business, a timed assertion here would only measure the machine.)
// Uses the `import` kind (runner = external): a test plays the worker over REST.

import { test, before, after, afterEach } from 'node:test';
import assert from 'node:assert/strict';
import { WAIT, env, eventually, launch, openPage, restClient, shownLog, waitForBadge } from './lib/harness.mjs';

/** The page's own bounds (templates/assets/switchyard.js, CONFIG): rows rendered per frame. */
const ROWS_PER_FRAME = 150;
/** ... and log lines kept in the DOM, the most one render can insert. */
const LOG_MAX_LINES = 5000;

let browser, rest, base;
/** Targets are unique per run, so the tests also run again against the same server. */
const run = Math.random().toString(36).slice(2, 7);

before(async () => {
  base = env('SY_PERF_URL');
  rest = restClient(base);
  browser = await launch();
});

afterEach(async () => {
  for (const p of browser.context.pages()) await p.close();
});

after(async () => {
  await browser?.close();
});

async function longestTask(page) {
  return page.evaluate(() => Math.max(0, ...window.__longTasks));
}

/** The most operation rows and log lines the page inserted in one task (harness.mjs). */
async function mostInserted(page) {
  return page.evaluate(() => window.__mostInserted);
}

test('the operations list stays fast with 1,000 operations', async (t) => {
  const ids = [];
  for (let i = 0; i < 1000; i += 25) {
    const batch = await Promise.all(Array.from({ length: 25 }, (_, j) =>
      rest.post('/api/operations', { kind: 'import', target: `job-${run}-${String(i + j).padStart(4, '0')}` })));
    for (const r of batch) {
      assert.equal(r.status, 202, JSON.stringify(r.body));
      ids.push(r.body.id);
    }
  }

  const { page, console } = await openPage(browser);
  const t0 = Date.now();
  await page.goto(`${base}/operations?kind=import`);
  await waitForBadge(page, 'connected');
  const rows = () => page.locator('#ops-body tr').count();
  await page.waitForFunction(() => document.querySelectorAll('#ops-body tr').length === 200);
  const more = page.getByRole('button', { name: 'Load older operations' });
  for (let n = 400; n <= 1000; n += 200) {
    await more.click();
    await page.waitForFunction((n) => document.querySelectorAll('#ops-body tr').length === n, n);
  }
  const loaded = Date.now() - t0;
  assert.equal(await rows(), 1000);
  // The server cannot know a full page was the last one: one more click finds nothing older.
  await more.click();
  await more.waitFor({ state: 'hidden' });
  assert.equal(await rows(), 1000);

  // A burst of live changes to 200 rows at once.
  const t1 = Date.now();
  await Promise.all(ids.slice(0, 200).map((id) => rest.post(`/api/operations/${id}/progress`, { progress: 40, stage: 'copy' })));
  await page.waitForFunction(() => [...document.querySelectorAll('#ops-body [role=progressbar]')]
    .filter((b) => b.getAttribute('aria-valuenow') === '40').length === 200, null, { timeout: WAIT });
  const burst = Date.now() - t1;
  // And new ones arriving live at the top.
  const fresh = await rest.post('/api/operations', { kind: 'import', target: `job-${run}-new` });
  await page.locator('#ops-body tr:first-child', { hasText: `job-${run}-new` }).waitFor();
  assert.equal(await rows(), 1001);

  const longest = await longestTask(page);
  const most = await mostInserted(page);
  t.diagnostic(`1,000 rows in ${loaded} ms; 200 live updates shown in ${burst} ms; longest task ${longest} ms; at most ${most.rows} rows inserted in one task`);
  // A page of 200 rows arrives at once; it is rendered over two frames, never in one task.
  assert.equal(most.rows, ROWS_PER_FRAME, 'rows inserted in one task');
  await rest.post(`/api/operations/${fresh.body.id}/complete`, {});
  console.assertClean();
  await page.close();
});

test('a 100,000-line log opens at its tail, pages back, streams on with a capped DOM', async (t) => {
  const created = await rest.post('/api/operations', { kind: 'import', target: `big-log-${run}` });
  assert.equal(created.status, 202);
  const id = created.body.id;
  const line = (n) => `[${String(n).padStart(6, '0')}] copied chunk ${n} of the import`;
  async function append(from, count) {
    for (let start = from; start < from + count; start += 1000) {
      const lines = Array.from({ length: 1000 }, (_, i) => line(start + i));
      const r = await rest.post(`/api/operations/${id}/logs`, { lines });
      assert.equal(r.status, 200, JSON.stringify(r.body));
    }
  }
  await append(1, 100000);
  await rest.post(`/api/operations/${id}/progress`, { progress: 50, stage: 'copy', message: 'Copying' });
  // A log already written, as when someone opens a long-running job's page.
  await eventually('100,000 lines stored', async () => (await rest.get(`/api/operations/${id}/logs?after=99999`)).body.lines.length === 1);

  const { page, console } = await openPage(browser);
  const t0 = Date.now();
  await page.goto(`${base}/operations/${id}`);
  await page.locator('#log .ln[data-offset="100000"]').waitFor();
  const opened = Date.now() - t0;
  await waitForBadge(page, 'connected');
  let shown = await shownLog(page);
  assert.equal(shown.length, 500, 'the tail only');
  assert.deepEqual(shown[0], [99501, line(99501)]);
  assert.match(await page.textContent('#log-earlier'), /99,500 earlier lines not shown/);

  // Earlier lines, a page at a time.
  await page.getByRole('button', { name: 'Load earlier lines' }).click();
  await page.waitForFunction(() => document.querySelectorAll('#log .ln').length === 1500);
  shown = await shownLog(page);
  assert.deepEqual(shown.map(([o]) => o), Array.from({ length: 1500 }, (_, i) => 98501 + i));

  // 10,000 more lines stream in: the DOM keeps the newest 5,000, contiguous, scrolled down.
  await append(100001, 10000);
  await page.locator('#log .ln[data-offset="110000"]').waitFor({ timeout: WAIT });
  shown = await shownLog(page);
  assert.deepEqual(shown.map(([o]) => o), Array.from({ length: 5000 }, (_, i) => 105001 + i));
  assert.deepEqual(shown[shown.length - 1], [110000, line(110000)]);
  await page.waitForFunction(() => {
    const log = document.querySelector('#log');
    return log.scrollHeight - log.clientHeight - log.scrollTop < 4;
  });
  assert.match(await page.textContent('#log-earlier'), /105,000 earlier lines not shown\. The view keeps the newest 5,000\./);

  // Pausing auto-scroll keeps the reader's place while lines arrive (and old ones leave).
  await page.getByLabel('Auto-scroll').uncheck();
  const topLine = () => page.$eval('#log', (log) => {
    const r = log.getBoundingClientRect();
    return Number(document.elementFromPoint(r.left + 30, r.top + 12)?.closest('.ln')?.dataset.offset);
  });
  await page.$eval('#log', (log) => { log.scrollTop = Math.round(log.scrollHeight / 2); });
  const reading = await topLine();
  assert.ok(reading > 106000 && reading < 110000, `reading line ${reading}`);
  await append(110001, 1000);
  await page.locator('#log .ln[data-offset="111000"]').waitFor();
  assert.equal(await page.$eval('#log .ln', (first) => Number(first.dataset.offset)), 106001);
  assert.equal(await topLine(), reading, 'the line being read stays in place');
  // Hiding the log and showing it again.
  await page.getByLabel('Show log').uncheck();
  assert.equal(await page.isVisible('#log'), false);
  await append(111001, 1000);
  await page.getByLabel('Show log').check();
  await page.locator('#log .ln[data-offset="112000"]').waitFor();
  assert.equal(await page.locator('#log .ln').count(), 5000);

  const done = await rest.post(`/api/operations/${id}/complete`, { result: { lines: 112000 } });
  assert.equal(done.status, 200);
  await page.locator('#op-status[data-status="completed"]').waitFor();
  assert.match(await page.textContent('#op-result'), /"lines": 112000/);

  const longest = await longestTask(page);
  const most = await mostInserted(page);
  t.diagnostic(`opened at line 100,000 in ${opened} ms; longest task ${longest} ms; at most ${most.lines} lines inserted in one task`);
  // 112,000 lines went by (10,000 of them in one burst while the page watched); no task
  // inserted more than the view keeps.
  assert.ok(most.lines > 0 && most.lines <= LOG_MAX_LINES, `${most.lines} lines inserted in one task`);
  console.assertClean();
  await page.close();
});
