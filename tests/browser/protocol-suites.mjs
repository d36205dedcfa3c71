// Runs one of the official protocol test suites (socketio/engine.io-protocol or
// socketio/socket.io-protocol, their `test-suite/` directory, fetched and `npm ci`-ed outside
// this repository) in headless Chromium against `switchyard conformance` on localhost:3000.
// The page is served from http://127.0.0.1:<any port>, another origin, so every request the
// suite makes is a cross-origin one, preflights included: what a browser app on its own origin
// does. Not part of `cargo test` (the suites are not in this repository); docs/socketio.md
// records what it gives.
//
//   node tests/browser/protocol-suites.mjs /path/to/engine.io-protocol/test-suite
//
// The suites' own index.html loads mocha and chai from a CDN; this page loads the copies their
// `npm ci` installed, and imports the suite before it starts mocha.

import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const dir = path.resolve(process.argv[2] ?? '');
for (const need of ['test-suite.js', 'node_modules/mocha/mocha.js', 'node_modules/chai/chai.js']) {
  if (!fs.existsSync(path.join(dir, need))) {
    console.error(`usage: node protocol-suites.mjs <test-suite dir, after npm ci> (no ${need} in ${dir})`);
    process.exit(2);
  }
}

const page = `<!DOCTYPE html><html><head><meta charset="utf-8"><title>protocol suite</title>
<link rel="icon" href="data:,"></head><body><div id="mocha"></div>
<script src="node_modules/mocha/mocha.js"></script>
<script src="node_modules/chai/chai.js"></script>
<script src="node_modules/chai-string/chai-string.js"></script>
<script>mocha.setup("bdd"); mocha.checkLeaks();</script>
<script type="module">
import "./test-suite.js";
window.__results = [];
const runner = mocha.run(() => { window.__done = true; });
runner.on("pass", (t) => window.__results.push({ ok: true, title: t.fullTitle() }));
runner.on("fail", (t, err) => window.__results.push({ ok: false, title: t.fullTitle(), err: String(err && err.message) }));
</script></body></html>`;

const types = { '.js': 'text/javascript', '.html': 'text/html' };
const server = http.createServer((req, res) => {
  const { pathname } = new URL(req.url, 'http://page');
  if (pathname === '/') {
    res.writeHead(200, { 'content-type': 'text/html' });
    res.end(page);
    return;
  }
  const file = path.join(dir, path.normalize(decodeURIComponent(pathname)));
  if (!file.startsWith(dir + path.sep) || !fs.existsSync(file) || !fs.statSync(file).isFile()) {
    res.writeHead(404);
    res.end();
    return;
  }
  res.writeHead(200, { 'content-type': types[path.extname(file)] ?? 'application/octet-stream' });
  fs.createReadStream(file).pipe(res);
});
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const origin = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: process.env.SY_CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu'],
});
try {
  const tab = await browser.newPage();
  await tab.goto(`${origin}/`);
  await tab.waitForFunction(() => window.__done === true, null, { timeout: 180_000 });
  const results = await tab.evaluate(() => window.__results);
  const failed = results.filter((r) => !r.ok);
  console.log(`page on ${origin}, suite against http://localhost:3000`);
  for (const f of failed) console.log(`FAIL ${f.title}: ${f.err}`);
  console.log(`${results.length - failed.length} passing, ${failed.length} failing`);
  process.exitCode = failed.length || !results.length ? 1 : 0;
} finally {
  await browser.close();
  server.close();
}
