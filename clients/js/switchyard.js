// Switchyard client: one ES module, no dependencies, no build step. Served by the server at
// `/client.js` and packaged as `@switchyard/client` (clients/js/). Types: switchyard.d.ts.
//
//   const sy = new Switchyard({ url: 'http://localhost:8080', token });
//   sy.on('state', (s) => (badge.dataset.state = s));
//   const room = sy.join('project:42', { onMessage: (m) => show(m) });
//   await room.publish('step-updated', { step: 3 });
//   sy.watchOperation(id, { onProgress, onLog, onDone });
//
// What it keeps for the app, across reconnects, fallbacks and (optionally) page reloads:
//   - rooms joined again with `since` {epoch, offset}: the server replays what was missed, each
//     message once; when it cannot, `onReset` says so and the app reloads (docs/protocol.md);
//   - operations watched with `log_offset`: the status snapshot, then exactly the log lines after
//     the last one delivered, each once, in order (docs/operations.md, "Watching");
//   - the fallback chain: WebSocket; after `fallbackAfter` failed attempts in a row, operations
//     over Server-Sent Events and rooms by polling their history over REST, while the WebSocket
//     is retried in the background with backoff; back to it as soon as it works;
//   - one connection state for a status badge: connecting, connected, reconnecting, polling,
//     offline, closed.

const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
const TERMINAL_EVENTS = new Set(['operation.completed', 'operation.failed', 'operation.cancelled']);

/** Every option and its default (README.md, "Options"). */
export const DEFAULTS = Object.freeze({
  url: null,
  token: null,
  getToken: null,
  user: null,
  autoConnect: true,
  backoff: Object.freeze({ baseMs: 500, maxMs: 10000, factor: 2, jitter: 0.5 }),
  fallbackAfter: 3,
  sse: true,
  pollMs: 3000,
  pingMs: 15000,
  silenceMs: 40000,
  connectTimeoutMs: 20000,
  requestTimeoutMs: 10000,
  logPageLines: 1000,
  dedupeWindow: 128,
  storage: null,
  storagePrefix: 'switchyard:',
  credentials: 'same-origin',
  wsPath: '/ws',
});

/** A refusal from the server (its stable `code`) or a failure of the client (`network`, `timeout`, `disconnected`, `closed`). */
export class SwitchyardError extends Error {
  constructor(code, message, extra = {}) {
    super(message || code);
    this.name = 'SwitchyardError';
    this.code = code;
    this.status = extra.status;
    this.body = extra.body;
    this.frame = extra.frame;
  }
}

const isTerminal = (op) => Boolean(op && TERMINAL.has(op.status));

/**
 * Calls the app's handler `opts[name]` if it has one. A handler that throws does not break the
 * client's own bookkeeping: its error is rethrown on its own task, where the page sees it.
 */
function callHandler(opts, name, args) {
  const fn = opts[name];
  if (typeof fn !== 'function') return;
  try {
    fn(...args);
  } catch (e) {
    setTimeout(() => { throw e; });
  }
}

function defaultUrl() {
  // Served by the server itself (`<script type="module" src="…/client.js">`): its origin.
  try {
    const here = new URL(import.meta.url);
    if (here.protocol === 'http:' || here.protocol === 'https:') return here.origin;
  } catch { /* not loaded from a URL */ }
  if (typeof location !== 'undefined') return location.origin;
  throw new TypeError('Switchyard: `url` is required outside a browser page');
}

function defaultStorage() {
  try {
    return typeof sessionStorage !== 'undefined' ? sessionStorage : null;
  } catch {
    return null; // storage disabled (private mode, sandboxed frame)
  }
}

function readStored(storage, key) {
  if (!storage) return null;
  try {
    const v = storage.getItem(key);
    return v ? JSON.parse(v) : null;
  } catch {
    return null;
  }
}

function writeStored(storage, key, value) {
  if (!storage) return;
  try {
    storage.setItem(key, JSON.stringify(value));
  } catch { /* full or disabled: the offset then lives as long as the page */ }
}

/**
 * The client. One per page is enough: every room and every watched operation shares its one
 * WebSocket (or its fallbacks).
 */
export class Switchyard {
  /** @param {import('./switchyard').SwitchyardOptions} [options] */
  constructor(options = {}) {
    this.options = { ...DEFAULTS, ...options, backoff: { ...DEFAULTS.backoff, ...(options.backoff || {}) } };
    const o = this.options;
    this.url = String(o.url || defaultUrl()).replace(/\/+$/, '');
    this.storage = o.storage === null ? defaultStorage() : o.storage || null;
    /** connecting | connected | reconnecting | polling | offline | closed ('idle' before connect()). */
    this.state = 'idle';
    /** The `session` of the current WebSocket's welcome (`from.session` of this connection's publishes). */
    this.session = null;
    /** The identity the server answered (`authenticated` / `welcome`), when it said. */
    this.user = null;
    this._listeners = new Map();
    /** room name → Subscription; each is joined again on every connect. */
    this._subs = new Map();
    /** request id → { resolve, reject, timer, room } for frames that wait for a reply. */
    this._pending = new Map();
    this._nextId = 1;
    this._ws = null;
    this._opening = false;
    this._authed = false;
    this._ready = false;
    this._everReady = false;
    /** Consecutive failed WebSocket attempts; back to 0 once every room is joined. */
    this._failures = 0;
    this._retryTimer = 0;
    this._fallback = false;
    this._pollTimer = 0;
    this._pollers = new Set();
    this._lastFrameAt = 0;
    this._openedAt = 0;
    this._refused = null;
    this._token = null;
    this._closed = false;
    this._behind = false;
    /** Ids of multi-room messages delivered lately: such a message reaches the app once. */
    this._seenIds = new Set();
    this._keepAlive = setInterval(() => this._tick(), o.pingMs);
    if (typeof window !== 'undefined' && window.addEventListener) {
      this._onOnline = () => this.retryNow();
      this._onOffline = () => {
        if (!this._ready) this._setState('offline');
      };
      this._onVisible = () => {
        if (typeof document !== 'undefined' && !document.hidden) this.retryNow();
      };
      window.addEventListener('online', this._onOnline);
      window.addEventListener('offline', this._onOffline);
      if (typeof document !== 'undefined') document.addEventListener('visibilitychange', this._onVisible);
    }
    if (o.autoConnect) queueMicrotask(() => this.connect());
  }

  // ---- events -------------------------------------------------------------------------------

  /**
   * Listens to `state` (state, previous), `ready` (every room joined, after each connect),
   * `error` (SwitchyardError), `welcome` (frame). Returns a function that stops listening.
   */
  on(event, fn) {
    if (!this._listeners.has(event)) this._listeners.set(event, new Set());
    this._listeners.get(event).add(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    this._listeners.get(event)?.delete(fn);
  }

  _emit(event, ...args) {
    for (const fn of [...(this._listeners.get(event) || [])]) {
      try {
        fn(...args);
      } catch (e) {
        // An app's handler that throws must not break the connection's bookkeeping.
        setTimeout(() => { throw e; });
      }
    }
  }

  _setState(state) {
    if (this.state === state || (this._closed && state !== 'closed')) return;
    const prev = this.state;
    this.state = state;
    this._emit('state', state, prev);
  }

  /** The transport carrying data now: `websocket`, `fallback` (SSE and REST polling) or null. */
  get transport() {
    if (this._ready) return 'websocket';
    return this._fallback ? 'fallback' : null;
  }

  // ---- the WebSocket ------------------------------------------------------------------------

  /** Opens the connection (called by the constructor unless `autoConnect: false`). */
  async connect() {
    if (this._closed || this._ws || this._opening) return;
    clearTimeout(this._retryTimer);
    this._retryTimer = 0;
    if (!this._fallback) this._setState(this._everReady ? 'reconnecting' : 'connecting');
    this._opening = true;
    try {
      // A token the app has to fetch (or ask for) is fetched before the socket opens, so a
      // server that wants one is not kept waiting past its auth timeout.
      this._token = await this._getToken();
    } catch (e) {
      this._opening = false;
      this._emit('error', e instanceof SwitchyardError ? e : new SwitchyardError('unauthenticated', String(e && e.message)));
      this._lost(null);
      return;
    }
    this._opening = false;
    if (this._closed || this._ws) return;
    let ws;
    try {
      ws = new WebSocket(this.url.replace(/^http/, 'ws') + this.options.wsPath);
    } catch {
      this._lost(null);
      return;
    }
    this._ws = ws;
    this._openedAt = Date.now();
    this._lastFrameAt = 0;
    this._authed = false;
    ws.onmessage = (ev) => {
      if (this._ws === ws) this._onFrame(ev.data);
    };
    ws.onclose = (ev) => {
      if (this._ws === ws) this._lost(ev);
    };
  }

  /** Skips the backoff wait and tries the WebSocket now (browsers call it when back online). */
  retryNow() {
    if (this._closed || this._ws || this._opening) return;
    this.connect();
  }

  /** Closes everything for good: the socket, streams, timers. The state becomes `closed`. */
  close() {
    if (this._closed) return;
    this._setState('closed');
    this._closed = true;
    clearInterval(this._keepAlive);
    clearTimeout(this._retryTimer);
    this._stopFallback();
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      ws.onclose = null;
      ws.onmessage = null;
      try { ws.close(1000); } catch { /* already closed */ }
    }
    this._failPending(new SwitchyardError('closed', 'the client was closed'));
    for (const sub of this._subs.values()) sub._stop();
    this._subs.clear();
    if (this._onOnline) {
      window.removeEventListener('online', this._onOnline);
      window.removeEventListener('offline', this._onOffline);
      if (typeof document !== 'undefined') document.removeEventListener('visibilitychange', this._onVisible);
    }
  }

  async _getToken() {
    const o = this.options;
    if (typeof o.getToken === 'function') {
      const refused = this._refused;
      this._refused = null;
      return (await o.getToken(refused ? { refused } : {})) || null;
    }
    return o.token || null;
  }

  /** Gives up on a socket that stopped answering, without waiting for a close handshake. */
  _drop() {
    const ws = this._ws;
    if (!ws) return;
    ws.onclose = null;
    ws.onmessage = null;
    try { ws.close(4000, 'no answer'); } catch { /* already closing */ }
    this._lost({ code: 4000 });
  }

  _tick() {
    const ws = this._ws;
    if (!ws) return;
    const o = this.options;
    if (ws.readyState === 0 /* CONNECTING */ || !this._ready) {
      if (Date.now() - this._openedAt > o.connectTimeoutMs) this._drop();
      return;
    }
    if (ws.readyState !== 1 /* OPEN */) return;
    if (Date.now() - Math.max(this._lastFrameAt, this._openedAt) > o.silenceMs) {
      this._drop();
      return;
    }
    this._send({ type: 'ping' });
  }

  _lost(ev) {
    const wasReady = this._ready;
    this._ws = null;
    this._ready = false;
    this._authed = false;
    this.session = null;
    this._failPending(new SwitchyardError('disconnected', 'the connection dropped before the answer; the request may or may not have been applied'));
    for (const sub of this._subs.values()) sub._answered = false;
    if (this._closed) return;
    // 4008: dropped as a slow consumer. Joins say so (`behind`) to whoever supplies offsets.
    if (ev && ev.code === 4008) this._behind = true;
    this._failures = wasReady ? 1 : this._failures + 1;
    const { fallbackAfter } = this.options;
    if (fallbackAfter > 0 && this._failures >= fallbackAfter) this._startFallback();
    else if (!this._fallback) {
      this._setState(typeof navigator !== 'undefined' && navigator.onLine === false ? 'offline' : 'reconnecting');
    }
    this._retryTimer = setTimeout(() => this.connect(), this.backoffDelay(this._failures));
  }

  /** The wait before attempt `n` (1, 2, …): base · factor^(n-1), capped, minus up to `jitter` of it at random. */
  backoffDelay(n) {
    const { baseMs, maxMs, factor, jitter } = this.options.backoff;
    const step = Math.min(maxMs, baseMs * factor ** Math.max(0, n - 1));
    return Math.round(step * (1 - Math.min(1, Math.max(0, jitter)) * Math.random()));
  }

  _send(frame) {
    const ws = this._ws;
    if (ws && ws.readyState === 1) {
      ws.send(JSON.stringify(frame));
      return true;
    }
    return false;
  }

  /** Sends `frame` with an id and resolves with the reply (rejects with the `error` frame). */
  _request(frame, room) {
    const id = this._nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._pending.delete(id);
        reject(new SwitchyardError('timeout', `no answer to ${frame.type} within ${this.options.requestTimeoutMs} ms`));
      }, this.options.requestTimeoutMs);
      this._pending.set(id, { resolve, reject, timer, room });
      if (!this._send({ ...frame, id })) {
        clearTimeout(timer);
        this._pending.delete(id);
        reject(new SwitchyardError('disconnected', 'not connected'));
      }
    });
  }

  _failPending(err) {
    const pending = [...this._pending.values()];
    this._pending.clear();
    for (const p of pending) {
      clearTimeout(p.timer);
      p.reject(err);
    }
  }

  _onFrame(text) {
    this._lastFrameAt = Date.now();
    let f;
    try { f = JSON.parse(text); } catch { return; }
    if (!f || typeof f !== 'object') return;
    switch (f.type) {
      case 'welcome': this._onWelcome(f); break;
      case 'authenticated':
        this.user = f.user || null;
        this._onAuthed();
        break;
      case 'joined': this._subs.get(f.room)?._onJoined(f); this._settle(f, true); break;
      case 'message': this._onMessage(f); break;
      case 'backfill': this._subs.get(f.room)?._onBackfill(f); break;
      case 'presence': this._subs.get(f.room)?._onPresence(f); break;
      case 'reset': this._subs.get(f.room)?._onReset(f); break;
      case 'left': if (f.id === undefined) this._subs.get(f.room)?._onRemoved(f); this._settle(f, true); break;
      case 'published':
      case 'operation': this._settle(f, true); break;
      case 'error': this._onError(f); break;
      default: break;
    }
  }

  _settle(f, ok) {
    if (f.id === undefined || !this._pending.has(f.id)) return false;
    const p = this._pending.get(f.id);
    this._pending.delete(f.id);
    clearTimeout(p.timer);
    if (ok) p.resolve(f);
    else p.reject(new SwitchyardError(f.code, f.message, { frame: f }));
    return true;
  }

  _onWelcome(f) {
    this.session = f.session || null;
    this._emit('welcome', f);
    if (f.auth === 'required') {
      if (!this._token) {
        this._emit('error', new SwitchyardError('unauthenticated', 'the server needs a token: pass `token` or `getToken`'));
        return; // the server closes the session after its auth timeout; the retry asks again
      }
      this._send({ type: 'auth', token: this._token });
    } else if (f.auth === 'open' && this.options.user) {
      // Open mode: declare who we are, so presence lists and `from` read well.
      const u = typeof this.options.user === 'string' ? { user: this.options.user } : this.options.user;
      this._send({ type: 'auth', ...u });
    } else {
      // `ok`: the upgrade carried the identity (a header token, or the app's `connect` hook
      // from its cookies); `open` without a declared user: anonymous.
      this.user = f.user || null;
      this._onAuthed();
    }
  }

  _onAuthed() {
    this._authed = true;
    const behind = this._behind;
    this._behind = false;
    for (const sub of this._subs.values()) sub._join({ behind });
    this._checkReady();
  }

  _onMessage(f) {
    const sub = this._subs.get(f.room);
    if (!sub) return;
    if (f.message_id) {
      // One message published into several rooms: delivered once, from the first room.
      const first = !this._seenIds.has(f.message_id);
      if (first) {
        this._seenIds.add(f.message_id);
        if (this._seenIds.size > this.options.dedupeWindow) this._seenIds.delete(this._seenIds.values().next().value);
      }
      sub._onMessage(f, !first);
      return;
    }
    sub._onMessage(f, false);
  }

  _onError(f) {
    if (f.code === 'invalid_token' || f.code === 'token_expired') {
      // The server closes the session next; the reconnect asks `getToken` again, saying why.
      this._refused = f.message || f.code;
    }
    if (this._settle(f, false)) return;
    this._emit('error', new SwitchyardError(f.code, f.message, { frame: f }));
  }

  _checkReady() {
    if (this._ready || !this._ws || !this._authed) return;
    for (const sub of this._subs.values()) if (!sub._answered) return;
    this._ready = true;
    this._everReady = true;
    this._failures = 0;
    this._stopFallback();
    this._setState('connected');
    for (const sub of this._subs.values()) sub._flush();
    this._emit('ready');
  }

  // ---- the fallback chain ---------------------------------------------------------------------

  _startFallback() {
    if (this._fallback || this._closed) return;
    this._fallback = true;
    this._setState('polling');
    for (const sub of this._subs.values()) sub._startFallback();
    this._pollOnce();
  }

  _stopFallback() {
    if (!this._fallback) return;
    this._fallback = false;
    clearTimeout(this._pollTimer);
    for (const sub of this._subs.values()) sub._stopFallback();
  }

  /**
   * `fn` refreshes something over REST on every poll while the WebSocket is down (the app's
   * own view of what rooms cannot replay). A network error from it shows as `offline`.
   */
  onPoll(fn) {
    this._pollers.add(fn);
    return () => this._pollers.delete(fn);
  }

  async _pollOnce() {
    if (!this._fallback) return;
    let problem = null;
    const work = [...this._subs.values()].filter((s) => s._polling).map((s) => s._poll());
    for (const fn of this._pollers) work.push((async () => fn())());
    for (const r of await Promise.allSettled(work)) {
      if (r.status === 'rejected') problem = problem || r.reason;
    }
    this._fallbackHealth(problem);
    if (this._fallback) this._pollTimer = setTimeout(() => this._pollOnce(), this.options.pollMs);
  }

  /** While in fallback: `polling` when it reaches the server, `offline` when it does not. */
  _fallbackHealth(problem) {
    if (!this._fallback) return;
    const offline = (typeof navigator !== 'undefined' && navigator.onLine === false)
      || Boolean(problem && problem.code === 'network');
    this._setState(offline ? 'offline' : 'polling');
  }

  // ---- REST ---------------------------------------------------------------------------------

  /**
   * A REST call to the server with the client's token: resolves with the JSON body, rejects
   * with a SwitchyardError (`network` when the server could not be reached).
   */
  async fetchJson(path, { method = 'GET', body, headers: extra } = {}) {
    const headers = { accept: 'application/json', ...(extra || {}) };
    const token = this._token || (await this._getToken());
    if (token) {
      this._token = token;
      headers.authorization = `Bearer ${token}`;
    }
    if (body !== undefined) headers['content-type'] = 'application/json';
    let res, text;
    try {
      res = await fetch(this.url + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
        credentials: this.options.credentials,
      });
      text = await res.text();
    } catch (e) {
      throw new SwitchyardError('network', (e && e.message) || 'network error');
    }
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch { data = null; }
    }
    if (!res.ok) {
      if (res.status === 401) {
        this._token = null;
        this._refused = (data && data.message) || 'the server refused the token';
      }
      throw new SwitchyardError((data && data.error) || `http_${res.status}`, (data && data.message) || `HTTP ${res.status}`, { status: res.status, body: data });
    }
    return data;
  }

  // ---- rooms ----------------------------------------------------------------------------------

  /**
   * Joins `room` and keeps it joined across reconnects, resuming from the last message
   * delivered. Returns its handle (`publish`, `leave`, `ready`, `position`, `presence`).
   * @param {string} room
   * @param {import('./switchyard').JoinOptions} [opts]
   */
  join(room, opts = {}) {
    const prev = this._subs.get(room);
    if (prev) prev._stop();
    const sub = new Subscription(this, room, opts);
    this._subs.set(room, sub);
    if (this._authed) sub._join({});
    else if (this._fallback) sub._startFallback();
    return sub.handle;
  }

  _leave(sub) {
    if (this._subs.get(sub.room) !== sub) return;
    this._subs.delete(sub.room);
    sub._stop();
    // With an id, so its answer is not taken for the server removing a later join of the room.
    if (this._authed) this._request({ type: 'leave', room: sub.room }).catch(() => {});
    this._checkReady();
  }

  // ---- operations ---------------------------------------------------------------------------

  /**
   * Follows operation `id`: its status (snapshot, then every change), its log lines after
   * `after` exactly once and in order, and its end once — whatever the transport.
   * @param {string} id
   * @param {import('./switchyard').WatchOptions} [opts]
   */
  watchOperation(id, opts = {}) {
    const watch = new OperationWatch(this, id, opts);
    watch._start();
    return watch.handle;
  }

  /**
   * Starts an operation of `kind` on `opts.target`. Resolves `{operation, duplicate}`:
   * `duplicate` when one of that kind on that target was active already (the server never
   * runs two; this is the one to watch).
   */
  async startOperation(kind, params = {}, opts = {}) {
    if (!opts.target) throw new TypeError('startOperation: `target` is required');
    const key = opts.idempotencyKey ? `${this.options.storagePrefix}start:${opts.idempotencyKey}` : null;
    const earlier = key && readStored(this.storage, key);
    if (earlier && earlier.id) {
      // Started already by this key (this page, or before a reload): the same operation.
      const operation = await this.fetchJson(`/api/operations/${encodeURIComponent(earlier.id)}`);
      return { operation, duplicate: true };
    }
    const body = { kind, target: opts.target, params };
    if (opts.project !== undefined && opts.project !== null) body.project = String(opts.project);
    let result;
    if (this._ready) {
      try {
        const f = await this._request({ type: 'operation.start', ...body });
        result = { operation: f.operation, duplicate: false };
      } catch (e) {
        if (e.code === 'duplicate_operation' && e.frame && e.frame.operation) result = { operation: e.frame.operation, duplicate: true };
        else if (e.code !== 'disconnected' && e.code !== 'timeout') throw e;
      }
    }
    if (!result) {
      try {
        result = { operation: await this.fetchJson('/api/operations', { method: 'POST', body }), duplicate: false };
      } catch (e) {
        if (e.code === 'duplicate_operation' && e.body && e.body.operation) result = { operation: e.body.operation, duplicate: true };
        else throw e;
      }
    }
    if (key) writeStored(this.storage, key, { id: result.operation.id });
    return result;
  }

  /** Asks for operation `id` to be cancelled; resolves with its status (`cancelling`). */
  async cancelOperation(id) {
    if (this._ready) {
      try {
        const f = await this._request({ type: 'operation.cancel', operation: id });
        return f.operation;
      } catch (e) {
        if (e.code !== 'disconnected' && e.code !== 'timeout') throw e;
      }
    }
    return this.fetchJson(`/api/operations/${encodeURIComponent(id)}/cancel`, { method: 'POST' });
  }
}

/**
 * One joined room: its position, its presence, its fallback, its handlers. The app sees its
 * `handle`.
 */
class Subscription {
  constructor(sy, room, opts) {
    this.sy = sy;
    this.room = room;
    this.opts = opts;
    /** {epoch, offset} of the last message delivered (what the next join resumes from). */
    this.position = opts.since ? { ...opts.since } : null;
    this._persistKey = opts.persist ? `${sy.options.storagePrefix}room:${room}` : null;
    if (this._persistKey) {
      const stored = readStored(sy.storage, this._persistKey);
      if (stored && typeof stored.offset === 'number' && (!this.position || stored.epoch !== this.position.epoch || stored.offset > this.position.offset)) {
        this.position = { epoch: stored.epoch, offset: stored.offset };
      }
    }
    /** Operation rooms resume by log offset, not by `since` (the watch or the app supplies it). */
    this.logOffset = opts.logOffset;
    this._answered = false;
    this._sinceSent = null;
    /** After a join that did not resume: the retained messages that follow have offsets up to this. */
    this._retainedUpTo = null;
    this._polling = false;
    this._stopped = false;
    /** Publishes waiting for the room to be joined. */
    this._queue = [];
    /** user id → user, as the server announced them. */
    this.presence = new Map();
    this.presenceCount = 0;
    let resolveReady, rejectReady;
    this._readyPromise = new Promise((res, rej) => { resolveReady = res; rejectReady = rej; });
    this._readyPromise.catch(() => {}); // an unobserved refusal is reported to onError instead
    this._resolveReady = resolveReady;
    this._rejectReady = rejectReady;
    const sub = this;
    this.handle = {
      room,
      get position() { return sub.position ? { ...sub.position } : null; },
      get presence() { return [...sub.presence.values()]; },
      get presenceCount() { return sub.presenceCount; },
      ready: this._readyPromise,
      publish: (event, data, o) => sub._publish(event, data, o),
      leave: () => sy._leave(sub),
    };
  }

  _call(name, ...args) {
    callHandler(this.opts, name, args);
  }

  async _join({ behind = false }) {
    if (this._stopped) return;
    const sy = this.sy;
    const ws = sy._ws;
    this._answered = false;
    const frame = { type: 'join', room: this.room };
    if (this.logOffset !== undefined) {
      const v = typeof this.logOffset === 'function' ? await this.logOffset({ behind }) : this.logOffset;
      // The connection changed meanwhile: the next one joins again.
      if (sy._ws !== ws || this._stopped) return;
      frame.log_offset = Math.max(0, Number(v) || 0);
      this._sinceSent = null;
    } else if (this.position && this.position.epoch) {
      frame.since = { epoch: this.position.epoch, offset: this.position.offset };
      this._sinceSent = frame.since;
    } else {
      this._sinceSent = null;
    }
    sy._request(frame, this.room).catch((e) => {
      if (this._stopped || sy._ws !== ws) return;
      if (e.code === 'disconnected' || e.code === 'closed') return;
      if (e.code === 'timeout') {
        sy._drop();
        return;
      }
      // Refused (forbidden, not_found, …): answered all the same, so the others go live.
      this._answered = true;
      this._rejectReady(e);
      this._call('onError', e);
      sy._checkReady();
    });
  }

  _onJoined(f) {
    if (this._stopped) return;
    const since = this._sinceSent;
    const resumed = Boolean(since);
    const recovered = resumed && f.recovered === true && since.epoch === f.epoch;
    if (this.logOffset === undefined) {
      if (!recovered) {
        // A fresh join, or the room could not replay what was missed: continue from here.
        this.position = { epoch: f.epoch, offset: f.offset };
        this._retainedUpTo = f.offset;
        this._persist();
        if (resumed) this._call('onReset', { reason: 'not_recovered', epoch: f.epoch, offset: f.offset });
      } else {
        this._retainedUpTo = null;
      }
    }
    this.presence = new Map((f.presence || []).map((u) => [u.user, u]));
    this.presenceCount = typeof f.presence_count === 'number' ? f.presence_count : this.presence.size;
    this._answered = true;
    this._resolveReady(f);
    this._call('onJoined', f, { resumed, recovered });
    if (this.sy._ready) this._flush();
    if (f.presence) this._call('onPresence', { room: this.room, presence: [...this.presence.values()], count: this.presenceCount, joined: [], left: [] });
    this.sy._checkReady();
  }

  /** A room message (live, replayed or retained), or one from a history poll. */
  _onMessage(f, duplicate) {
    if (this._stopped) return;
    const pos = this.position;
    const offset = typeof f.offset === 'number' ? f.offset : null;
    let retained = false;
    if (this.logOffset === undefined && pos && offset !== null) {
      if (offset <= pos.offset) {
        // Seen already, unless it is a retained message right after a join that did not resume.
        if (this._retainedUpTo === null || offset > this._retainedUpTo) return;
        retained = true;
      } else {
        this._retainedUpTo = null;
        pos.offset = offset;
        this._persist();
      }
    }
    if (duplicate) return;
    this._call('onMessage', {
      room: this.room, event: f.event, data: f.data, offset, from: f.from || null,
      messageId: f.message_id || null, retained, backfill: false, frame: f,
    });
  }

  _onBackfill(f) {
    if (this._stopped) return;
    this._call('onMessage', {
      room: this.room, event: f.event, data: f.data, offset: null, from: null,
      messageId: null, retained: false, backfill: true, seq: f.seq, frame: f,
    });
  }

  _onPresence(f) {
    if (this._stopped) return;
    for (const u of f.joined || []) {
      if (!this.presence.has(u.user)) this.presenceCount++;
      this.presence.set(u.user, u);
    }
    for (const u of f.left || []) {
      if (this.presence.delete(u.user)) this.presenceCount = Math.max(0, this.presenceCount - 1);
    }
    this._call('onPresence', { room: this.room, presence: [...this.presence.values()], count: this.presenceCount, joined: f.joined || [], left: f.left || [] });
  }

  _onReset(f) {
    if (this._stopped) return;
    this.position = { epoch: f.epoch, offset: f.offset };
    this._retainedUpTo = null;
    this._persist();
    this._call('onReset', { reason: f.reason || 'gap', epoch: f.epoch, offset: f.offset });
  }

  /** Taken out of the room by the server (a refreshed token no longer grants it). */
  _onRemoved(f) {
    this.sy._subs.delete(this.room);
    this._stop();
    this._call('onError', new SwitchyardError('forbidden', `no longer allowed in ${this.room}`, { frame: f }));
  }

  _persist() {
    if (this._persistKey && this.position) writeStored(this.sy.storage, this._persistKey, this.position);
  }

  // Publishing: over the socket when joined (the ack is `published`), over REST while the
  // fallback runs, queued while (re)connecting.
  _publish(event, data, o = {}) {
    if (this._stopped) return Promise.reject(new SwitchyardError('not_member', `left ${this.room}`));
    const sy = this.sy;
    const frame = { type: 'publish', room: this.room, event, data };
    if (o.retain !== undefined) frame.retain = o.retain;
    if (o.echo !== undefined) frame.echo = o.echo;
    if (sy._ready && this._answered) {
      return sy._request(frame, this.room).then((f) => ({ room: f.room, offset: f.offset }));
    }
    if (sy._fallback) {
      const body = { event, data };
      if (o.retain !== undefined) body.retain = o.retain;
      return sy.fetchJson(`/api/rooms/${encodeURIComponent(this.room)}/publish`, { method: 'POST', body });
    }
    return new Promise((resolve, reject) => {
      const item = { frame, resolve, reject };
      item.timer = setTimeout(() => {
        this._queue = this._queue.filter((q) => q !== item);
        reject(new SwitchyardError('timeout', `not connected within ${sy.options.requestTimeoutMs} ms`));
      }, sy.options.requestTimeoutMs);
      this._queue.push(item);
    });
  }

  _flush() {
    const queue = this._queue;
    this._queue = [];
    for (const item of queue) {
      clearTimeout(item.timer);
      this.sy._request(item.frame, this.room).then((f) => item.resolve({ room: f.room, offset: f.offset }), item.reject);
    }
  }

  _startFallback() {
    if (this._stopped) return;
    // Publishes waiting for the socket go over REST now.
    const queue = this._queue;
    this._queue = [];
    for (const item of queue) {
      clearTimeout(item.timer);
      const { event, data, retain } = item.frame;
      const body = retain === undefined ? { event, data } : { event, data, retain };
      this.sy.fetchJson(`/api/rooms/${encodeURIComponent(this.room)}/publish`, { method: 'POST', body }).then(item.resolve, item.reject);
    }
    if (this.opts.poll === false) return;
    this._polling = true;
    if (this.opts._fallback) this.opts._fallback.start();
  }

  _stopFallback() {
    this._polling = false;
    if (this.opts._fallback) this.opts._fallback.stop();
  }

  /** One history poll: the messages after the last one delivered, or a reset. */
  async _poll() {
    if (this.opts._fallback) return this.opts._fallback.poll();
    const after = this.position ? this.position.offset : 0;
    const page = await this.sy.fetchJson(`/api/rooms/${encodeURIComponent(this.room)}/history?after=${after}`);
    if (!this._polling || this._stopped) return;
    const pos = this.position;
    if (!pos || !pos.epoch) {
      // Never joined: start from now, as a fresh join would.
      this.position = { epoch: page.epoch, offset: page.offset };
      this._persist();
      return;
    }
    if (page.epoch && page.epoch !== pos.epoch) {
      this._onReset({ epoch: page.epoch, offset: page.offset, reason: 'new_epoch' });
      return;
    }
    if (!page.complete) {
      this._onReset({ epoch: pos.epoch, offset: page.offset, reason: 'gap' });
      return;
    }
    for (const m of page.messages || []) this.sy._onMessage({ ...m, room: this.room });
  }

  _stop() {
    this._stopped = true;
    this._polling = false;
    if (this.opts._fallback) this.opts._fallback.stop();
    for (const item of this._queue) {
      clearTimeout(item.timer);
      item.reject(new SwitchyardError('not_member', `left ${this.room}`));
    }
    this._queue = [];
  }
}

/**
 * One watched operation: the status, the log lines by offset (exactly once, in order, gaps
 * filled over REST), the end once; over the socket, SSE or REST polling.
 */
class OperationWatch {
  constructor(sy, id, opts) {
    this.sy = sy;
    this.id = id;
    this.opts = opts;
    this.status = null;
    this._persistKey = opts.persist ? `${typeof opts.persist === 'string' ? opts.persist : `${sy.options.storagePrefix}op:`}${id}` : null;
    const stored = this._persistKey ? readStored(sy.storage, this._persistKey) : null;
    /** The last log line delivered: every line up to it was given to onLog, once. */
    this.logOffset = Math.max(Number(opts.after) || 0, (stored && Number(stored.log_offset)) || 0);
    /** The status a reloaded page had: shown at once, before the server's snapshot. */
    this._storedStatus = stored && stored.status && stored.status.id === id ? stored.status : null;
    /** Lines that arrived past a gap, waiting for the gap to be filled over REST. */
    this._ahead = new Map();
    this._filling = false;
    this._done = false;
    this._stopped = false;
    this._es = null;
    this._sseFailures = 0;
    this._mode = null; // 'sse' | 'poll' while the fallback runs
    let resolveDone;
    this._donePromise = new Promise((res) => { resolveDone = res; });
    this._resolveDone = resolveDone;
    const w = this;
    this.handle = {
      id,
      get status() { return w.status; },
      get logOffset() { return w.logOffset; },
      get transport() { return w.sy._ready ? 'websocket' : w._mode; },
      done: this._donePromise,
      stop: () => w._stopAll(),
      cancel: () => sy.cancelOperation(id),
    };
  }

  _call(name, ...args) {
    callHandler(this.opts, name, args);
  }

  _start() {
    const w = this;
    this.sub = this.sy.join(`operation:${this.id}`, {
      logOffset: () => w.logOffset,
      onMessage: (m) => w._onEvent(m.event, m.data),
      onError: (e) => w._call('onError', e),
      _fallback: {
        start: () => w._startFallback(),
        stop: () => w._stopFallback(),
        poll: () => w._poll(),
      },
    });
    const last = this._storedStatus;
    if (last) queueMicrotask(() => this._status(last, 'stored'));
  }

  _onEvent(name, data) {
    if (this._stopped || !data) return;
    if (name === 'operation.log') this._line(data);
    else if (data.id === this.id && data.status) this._status(data, name);
  }

  _line(line) {
    if (typeof line.offset !== 'number' || line.offset <= this.logOffset) return; // delivered already
    if (line.offset !== this.logOffset + 1) {
      this._ahead.set(line.offset, line);
      this._fill(line.offset - 1);
      return;
    }
    this._deliver(line);
    this._drain();
  }

  _deliver(line) {
    this.logOffset = line.offset;
    this._call('onLog', line);
    this._persist();
  }

  _drain() {
    for (;;) {
      const next = this._ahead.get(this.logOffset + 1);
      if (!next) break;
      this._ahead.delete(next.offset);
      this._deliver(next);
    }
    for (const k of this._ahead.keys()) if (k <= this.logOffset) this._ahead.delete(k);
    this._maybeDone();
  }

  /** Pages the lines up to `upto` in over REST (a gap, or the lines an ended operation has). */
  async _fill(upto) {
    if (this._filling) return;
    this._filling = true;
    let idle = 0;
    try {
      while (!this._stopped && (this.logOffset < upto || this._ahead.size)) {
        const target = Math.max(upto, ...this._ahead.keys()) ;
        if (this._ahead.has(this.logOffset + 1)) {
          this._drain();
          continue;
        }
        const got = await this._fetchLines();
        this._drain();
        if (this.logOffset >= target) break;
        // Lines reach the database in batches: the newest may need a moment.
        if (got) idle = 0;
        else await new Promise((r) => setTimeout(r, Math.min(5000, 250 * 2 ** Math.min(5, idle++))));
      }
    } catch (e) {
      if (!this._stopped) setTimeout(() => { this._filling = false; this._fill(upto); }, 2000);
      this._call('onError', e);
      return;
    }
    this._filling = false;
    this._maybeDone();
  }

  async _fetchLines() {
    const limit = this.sy.options.logPageLines;
    const page = await this.sy.fetchJson(`/api/operations/${encodeURIComponent(this.id)}/logs?after=${this.logOffset}&limit=${limit}`);
    let got = 0;
    for (const line of page.lines || []) {
      if (this._stopped) break;
      if (line.offset === this.logOffset + 1) {
        this._deliver(line);
        got++;
      }
    }
    return got;
  }

  _status(op, name) {
    const cur = this.status;
    if (cur) {
      if (isTerminal(cur) && !isTerminal(op)) return; // nothing leaves a terminal state
      if (op.updated_at && cur.updated_at && op.updated_at < cur.updated_at) return;
      // The same status again (a poll, or the terminal event after its snapshot): no news.
      const same = op.updated_at === cur.updated_at && op.status === cur.status
        && op.progress === cur.progress && op.log_offset === cur.log_offset;
      if (same) return;
    }
    this.status = op;
    if (this._persistKey) this._persist();
    if (name !== 'operation.log') this._call('onProgress', op);
    if (!cur || cur.status !== op.status) this._call('onStatus', op);
    if (isTerminal(op)) {
      const missing = () => !this._stopped && (op.log_offset || 0) > this.logOffset;
      // Over the socket or SSE the lines follow the snapshot: REST only for what does not come.
      if (missing()) {
        if (this._mode === 'poll') this._fill(op.log_offset);
        else setTimeout(() => { if (missing()) this._fill(op.log_offset); }, 1500);
      }
      this._maybeDone();
    }
  }

  _maybeDone() {
    const op = this.status;
    if (this._done || !isTerminal(op) || (op.log_offset || 0) > this.logOffset) return;
    this._done = true;
    this._call('onDone', op);
    this._resolveDone(op);
    this._stopAll();
  }

  _persist() {
    if (this._persistKey) writeStored(this.sy.storage, this._persistKey, { log_offset: this.logOffset, status: this.status });
  }

  // The fallback: SSE first (resumes exactly by `Last-Event-ID`/`after`), REST polling when
  // SSE is unavailable or keeps failing.
  _startFallback() {
    if (this._stopped || this._mode) return;
    if (this.sy.options.sse && typeof EventSource !== 'undefined') this._openSse();
    else this._mode = 'poll';
  }

  _stopFallback() {
    this._mode = null;
    this._closeSse();
  }

  async _openSse() {
    this._mode = 'sse';
    let query = `after=${this.logOffset}`;
    const sy = this.sy;
    try {
      const token = sy._token || (await sy._getToken());
      if (token) {
        // A browser cannot give an EventSource a header: a watch ticket for this operation.
        const t = await sy.fetchJson(`/api/operations/${encodeURIComponent(this.id)}/ticket`, { method: 'POST' });
        query += `&ticket=${encodeURIComponent(t.ticket)}`;
      }
    } catch (e) {
      if (this._mode === 'sse') this._sseFailed(e);
      return;
    }
    if (this._mode !== 'sse' || this._stopped) return;
    const es = new EventSource(`${sy.url}/api/operations/${encodeURIComponent(this.id)}/events?${query}`, { withCredentials: sy.options.credentials === 'include' });
    this._es = es;
    const on = (name) => es.addEventListener(name, (ev) => {
      if (this._es !== es) return;
      let data;
      try { data = JSON.parse(ev.data); } catch { return; }
      this._onEvent(name, data);
    });
    for (const name of ['operation.progress', 'operation.log', 'operation.cancel', ...TERMINAL_EVENTS]) on(name);
    es.onopen = () => {
      if (this._es !== es) return;
      this._sseFailures = 0;
      sy._fallbackHealth(null);
    };
    es.onerror = () => {
      if (this._es !== es) return;
      if (es.readyState === 2 /* CLOSED: refused, or ended */) {
        this._closeSse();
        if (!this._done) this._sseFailed(new SwitchyardError('sse_closed', 'the event stream was refused or ended'));
      } else {
        // The browser reconnects by itself, resuming with Last-Event-ID.
        sy._fallbackHealth(new SwitchyardError('network', 'the event stream dropped'));
      }
    };
  }

  _sseFailed() {
    this._sseFailures++;
    if (this._sseFailures >= 2) {
      this._mode = 'poll'; // the chain's last link: REST
      return;
    }
    setTimeout(() => {
      if (this._mode === 'sse' && !this._es && !this._stopped) this._openSse();
    }, this.sy.backoffDelay(this._sseFailures));
  }

  _closeSse() {
    const es = this._es;
    this._es = null;
    if (es) es.close();
  }

  /** One REST poll (when SSE is not carrying this operation): new lines, then the status. */
  async _poll() {
    if (this._mode !== 'poll' || this._stopped) return;
    for (let i = 0; i < 5; i++) {
      const got = await this._fetchLines();
      this._drain();
      if (got < this.sy.options.logPageLines) break;
    }
    const op = await this.sy.fetchJson(`/api/operations/${encodeURIComponent(this.id)}`);
    this._status(op, 'poll');
  }

  _stopAll() {
    if (this._stopped) return;
    this._stopped = true;
    this._closeSse();
    this._mode = null;
    if (this.sub) this.sub.leave();
  }
}

export default Switchyard;
