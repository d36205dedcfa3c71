// Shared pieces of the browser tests: launching Debian's headless Chromium, watching the console,
// a TCP proxy that can cut the browser off the server, REST helpers and screenshots.
//
// The servers are started by tests/api/dashboard.rs, which passes their URLs in:
//   SY_URL        open-mode server (the person-like flows)
//   SY_PERF_URL   open-mode server with an `import` kind (runner = external) for big data
//   SY_AUTH_URL   server with a JWT secret; SY_AUTH_TOKEN is an admin token for it
//   SY_CONTROL_PORT  where to ask for a restart of the SY_URL server (restartServer)
//   SY_CHROMIUM   the browser binary (default /usr/bin/chromium)
//   SWITCHYARD_SCREENSHOTS  a directory: save screenshots of each page there

import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

/** Upper bound on any single wait for the page. */
export const WAIT = 20_000;

export function env(name) {
  const v = process.env[name];
  assert.ok(v, `${name} is not set: run these tests through \`cargo test\` (tests/api/dashboard.rs)`);
  return v;
}

/** Headless Chromium with a fresh user-data dir, as the issue prescribes. */
export async function launch() {
  const userDataDir = mkdtempSync(path.join(os.tmpdir(), 'switchyard-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.SY_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--no-first-run',
    ],
    viewport: { width: 1280, height: 860 },
    colorScheme: 'light',
    locale: 'en-US',
    reducedMotion: 'reduce',
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/**
 * Records console errors and uncaught exceptions of a page. Network errors the browser logs
 * while the test has deliberately cut the connection are expected; `expectNetworkErrors`
 * brackets that window. Anything else fails `assertClean`.
 */
export function watchConsole(page) {
  const problems = [];
  let cutWindow = false;
  const networkNoise = /^(Failed to load resource: net::ERR_|WebSocket connection to .* failed)/;
  page.on('console', (msg) => {
    if (msg.type() !== 'error') return;
    const text = msg.text();
    if (cutWindow && networkNoise.test(text)) return;
    problems.push(`console.error: ${text} (${msg.location().url || 'no url'})`);
  });
  page.on('pageerror', (err) => problems.push(`uncaught: ${err.stack || err.message}`));
  return {
    problems,
    expectNetworkErrors(on) {
      cutWindow = on;
    },
    /** Lets a test accept a specific console error it provokes on purpose. */
    allow(re) {
      for (let i = problems.length - 1; i >= 0; i--) if (re.test(problems[i])) problems.splice(i, 1);
    },
    assertClean() {
      assert.deepEqual(problems, [], `the page logged errors:\n${problems.join('\n')}`);
    },
  };
}

/**
 * A page with its console watched. In the page, `window.__badge` records every state the
 * connection badge shows, `window.__longTasks` the duration of every long task (> 50 ms; for
 * diagnostics only: durations depend on the machine) and `window.__mostInserted` the most
 * operation rows (`tr`) and log lines (`.ln`) the page inserted in one go — one mutation
 * observer delivery, which runs after each task's script: the page's work per task, counted.
 */
export async function openPage(browser, url) {
  const page = await browser.context.newPage();
  const console_ = watchConsole(page);
  await page.addInitScript(() => {
    window.__badge = [];
    window.__longTasks = [];
    try {
      new PerformanceObserver((list) => {
        for (const e of list.getEntries()) window.__longTasks.push(Math.round(e.duration));
      }).observe({ type: 'longtask', buffered: true });
    } catch { /* not supported: stays empty */ }
    window.__mostInserted = { rows: 0, lines: 0 };
    new MutationObserver((records) => {
      let rows = 0;
      let lines = 0;
      for (const r of records) {
        for (const n of r.addedNodes) {
          if (n.nodeType !== 1) continue;
          if (n.matches('#ops-body tr')) rows++;
          else if (n.matches('#log .ln')) lines++;
        }
      }
      const most = window.__mostInserted;
      most.rows = Math.max(most.rows, rows);
      most.lines = Math.max(most.lines, lines);
    }).observe(document, { childList: true, subtree: true });
    document.addEventListener('DOMContentLoaded', () => {
      const badge = document.getElementById('conn');
      if (!badge) return;
      const record = () => {
        const s = badge.dataset.state;
        if (window.__badge[window.__badge.length - 1] !== s) window.__badge.push(s);
      };
      record();
      new MutationObserver(record).observe(badge, { attributes: true, attributeFilter: ['data-state'] });
    });
  });
  if (url) await page.goto(url);
  return { page, console: console_ };
}

/** Waits until the badge has shown each of `states`, in this order (since the page loaded). */
export async function waitForBadgeSequence(page, states, timeout = WAIT) {
  await page.waitForFunction((want) => {
    let i = 0;
    for (const s of window.__badge) if (s === want[i]) i++;
    return i === want.length;
  }, states, { timeout });
}

export async function waitForBadge(page, state, timeout = WAIT) {
  await page.locator(`#conn[data-state="${state}"]`).waitFor({ timeout });
}

/**
 * A TCP proxy between the browser and a server. `cut()` drops every connection and refuses new
 * ones until `restore()`; `blockWebSockets()` does that for WebSocket upgrades only, so plain
 * HTTP (the polling fallback) still works.
 */
export async function startProxy(targetUrl) {
  const target = new URL(targetUrl);
  const conns = new Set();
  let cut = false;
  let wsBlocked = false;
  const server = net.createServer((client) => {
    if (cut) {
      client.destroy();
      return;
    }
    const upstream = net.connect(Number(target.port), target.hostname);
    const conn = { client, upstream, ws: false };
    conns.add(conn);
    const end = () => {
      conns.delete(conn);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end);
    upstream.on('error', end);
    client.on('close', end);
    upstream.on('close', end);
    client.on('data', (chunk) => {
      if (!conn.ws && /\r\nupgrade:\s*websocket/i.test(chunk.toString('latin1'))) conn.ws = true;
      if (cut || (conn.ws && wsBlocked)) {
        end();
        return;
      }
      upstream.write(chunk);
    });
    upstream.on('data', (chunk) => {
      if (!client.destroyed) client.write(chunk);
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}`,
    cut() {
      cut = true;
      for (const c of [...conns]) {
        c.client.destroy();
        c.upstream.destroy();
      }
    },
    blockWebSockets() {
      wsBlocked = true;
      for (const c of [...conns]) {
        if (c.ws) {
          c.client.destroy();
          c.upstream.destroy();
        }
      }
    },
    restore() {
      cut = false;
      wsBlocked = false;
    },
    async close() {
      this.cut();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/**
 * Asks tests/api/dashboard.rs to restart the SY_URL server (graceful shutdown, then the same
 * port and database file) and resolves once it serves again.
 */
export function restartServer() {
  const port = Number(env('SY_CONTROL_PORT'));
  return new Promise((resolve, reject) => {
    const sock = net.connect(port, '127.0.0.1', () => sock.write('restart\n'));
    let answer = '';
    sock.setEncoding('utf8');
    sock.on('data', (d) => {
      answer += d;
      if (answer.includes('\n')) {
        sock.end();
        if (answer.trim() === 'ok') resolve();
        else reject(new Error(`restart refused: ${answer.trim()}`));
      }
    });
    sock.on('error', reject);
  });
}

/** REST against a server directly (not through the browser), as a backend would. */
export function restClient(base, token) {
  async function call(method, p, body) {
    const headers = { accept: 'application/json' };
    if (token) headers.authorization = `Bearer ${token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(base + p, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await res.text();
    let json = null;
    try { json = text ? JSON.parse(text) : null; } catch { json = text; }
    return { status: res.status, body: json };
  }
  return {
    get: (p) => call('GET', p),
    post: (p, body) => call('POST', p, body ?? {}),
    /** Every stored log line of an operation, in order. */
    async logs(id) {
      const lines = [];
      let after = 0;
      for (;;) {
        const r = await call('GET', `/api/operations/${id}/logs?after=${after}&limit=5000`);
        assert.equal(r.status, 200, JSON.stringify(r.body));
        lines.push(...r.body.lines);
        if (r.body.lines.length < 5000) return lines;
        after = r.body.next_after;
      }
    },
  };
}

/** Polls `check` (an async predicate) until it holds; for state only visible by asking. */
export async function eventually(what, check, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) assert.fail(`timed out waiting for: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Saves a screenshot when SWITCHYARD_SCREENSHOTS names a directory. */
export async function screenshot(page, name, { fullPage = true } = {}) {
  const dir = process.env.SWITCHYARD_SCREENSHOTS;
  if (!dir) return;
  mkdirSync(dir, { recursive: true });
  await page.screenshot({ path: path.join(dir, `${name}.png`), fullPage, animations: 'disabled', caret: 'hide' });
}

/** The log lines shown on an operation page, as [offset, text] pairs. */
export async function shownLog(page) {
  return page.$$eval('#log .ln', (nodes) => nodes.map((n) => [Number(n.dataset.offset), n.textContent]));
}
