// docs/deploying.md's nginx TLS configuration, from a client's side: run by
// tests/api/deploying.rs, which starts nginx with the documented TLS server (a self-signed
// certificate made for the test) in front of Switchyard.
//
//   SY_TLS_URL   https://127.0.0.1:<port> (nginx, TLS)
//   SY_HTTP_URL  http://127.0.0.1:<port>  (nginx's port-80 server, which redirects)

import { test } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import http from 'node:http';
import WebSocket from 'ws';

const WAIT = 10_000;
const tls = process.env.SY_TLS_URL;
const plain = process.env.SY_HTTP_URL;
// The test's certificate is its own: trust it, as a browser with the real one would.
const insecure = { rejectUnauthorized: false };

function get(url, headers = {}) {
  return new Promise((resolve, reject) => {
    const lib = url.startsWith('https:') ? https : http;
    const req = lib.get(url, { ...insecure, headers }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c) => {
        body += c;
        // Event streams do not end: the first event is enough.
        if (res.headers['content-type']?.startsWith('text/event-stream') && body.includes('data:')) {
          res.destroy();
          resolve({ status: res.statusCode, headers: res.headers, body });
        }
      });
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.setTimeout(WAIT, () => req.destroy(new Error(`no answer from ${url}`)));
  });
}

test('plain HTTP is redirected to HTTPS', async () => {
  assert.ok(tls && plain, 'run through cargo test (tests/api/deploying.rs)');
  const res = await get(`${plain}/health`, { host: 'realtime.example.com' });
  assert.equal(res.status, 301);
  assert.equal(res.headers.location, 'https://realtime.example.com/health');
});

test('REST and SSE over TLS', async () => {
  const health = await get(`${tls}/health`);
  assert.equal(health.status, 200, health.body);
  assert.equal(JSON.parse(health.body).status, 'ok');
  const started = await new Promise((resolve, reject) => {
    const req = https.request(`${tls}/api/operations`, { ...insecure, method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('error', reject);
    req.end(JSON.stringify({ kind: 'demo', target: 'tls', params: { step_ms: 300 } }));
  });
  assert.equal(started.status, 202, started.body);
  const id = JSON.parse(started.body).id;
  const events = await get(`${tls}/api/operations/${id}/events`);
  assert.equal(events.status, 200);
  assert.match(events.body, /data:/);
});

test('a WebSocket over TLS (wss) carries a room round trip', async () => {
  const url = tls.replace('https:', 'wss:') + '/ws';
  const open = () => new Promise((resolve, reject) => {
    const ws = new WebSocket(url, insecure);
    const frames = [];
    const waiters = [];
    ws.on('message', (d) => {
      const f = JSON.parse(d.toString());
      frames.push(f);
      for (const w of waiters.splice(0)) w();
    });
    ws.on('open', () => resolve({
      ws,
      send: (f) => ws.send(JSON.stringify(f)),
      async next(pick) {
        const deadline = Date.now() + WAIT;
        for (;;) {
          const i = frames.findIndex(pick);
          if (i >= 0) return frames.splice(i, 1)[0];
          assert.ok(Date.now() < deadline, 'a frame in time');
          await new Promise((r) => { waiters.push(r); setTimeout(r, 200); });
        }
      },
    }));
    ws.on('error', reject);
  });
  const a = await open();
  const b = await open();
  a.send({ type: 'join', room: 'project:tls', id: 1 });
  await a.next((f) => f.type === 'joined');
  b.send({ type: 'join', room: 'project:tls', id: 1 });
  await b.next((f) => f.type === 'joined');
  b.send({ type: 'publish', room: 'project:tls', event: 'hello', data: { over: 'wss' }, id: 2 });
  const m = await a.next((f) => f.type === 'message' && f.event === 'hello');
  assert.deepEqual(m.data, { over: 'wss' });
  a.ws.close();
  b.ws.close();
});
