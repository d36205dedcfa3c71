// Switchyard dashboard client. Served by the binary from templates/assets/; no build step, no
// dependencies, nothing from another origin. One file, in sections:
//
//   util        small DOM and formatting helpers
//   Auth        the token (asked once, kept in sessionStorage) when the server has a secret
//   api         REST calls with the token; NetworkError vs ApiError
//   Connection  the badge over the client library's connection (/client.js: backoff with jitter,
//               rejoin with offsets, polling fallback)
//   OpStore     operations by id, newest status wins; toasts on terminal states
//   pages       one controller per page, picked by <body data-page>
//
// Every room a page needs is a subscription on the Connection. On every (re)connect the
// Connection joins them again: plain rooms with `since` {epoch, offset} (the server replays what
// was missed, or says `recovered: false` and the page reloads over REST), operation rooms with
// `log_offset` (the server sends exactly the log lines after it). After repeated failures the
// page polls the REST API until the socket is back; the badge says which. The connection itself
// is the Switchyard client library (/client.js, clients/js/): one client for apps and dashboard.

import { Switchyard } from '/client.js';

(() => {
  const CONFIG = {
    backoffBaseMs: 500,
    backoffMaxMs: 10000,
    failuresBeforePolling: 3,
    pollMs: 3000,
    pingMs: 15000,
    silenceMs: 40000,
    // Lines backfilled over the socket on first look; kept well under the server's per-session
    // queue (1,024 messages) so a long log never gets the page evicted as a slow consumer.
    logTailLines: 500,
    logMaxLines: 5000,
    logPageLines: 1000,
    opsPageSize: 200,
    opsMaxRows: 2000,
    rowsPerFrame: 150,
    activeCards: 20,
    feedPageSize: 50,
    feedMaxItems: 1000,
    roomsMax: 500,
    presenceLookups: 25,
  };

  const TERMINAL = new Set(['completed', 'failed', 'cancelled']);
  const ACTIVE = new Set(['queued', 'running', 'cancelling']);

  // ---- util -----------------------------------------------------------------------------

  const $ = (sel, root = document) => root.querySelector(sel);

  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    if (props) {
      for (const [k, v] of Object.entries(props)) {
        if (v === null || v === undefined || v === false) continue;
        if (k === 'class') e.className = v;
        else if (k === 'text') e.textContent = v;
        else if (k.startsWith('on') && typeof v === 'function') e.addEventListener(k.slice(2), v);
        else e.setAttribute(k, v === true ? '' : String(v));
      }
    }
    for (const c of children) if (c !== null && c !== undefined && c !== false) e.append(c);
    return e;
  }

  const numberFormat = new Intl.NumberFormat();
  const fmtNum = (n) => (n === null || n === undefined ? '–' : numberFormat.format(n));
  const fmtRate = (n) => (n === null || n === undefined ? '–' : n < 10 ? n.toFixed(1) : numberFormat.format(Math.round(n)));

  function clampPct(p) {
    const v = Number(p);
    return Number.isFinite(v) ? Math.min(100, Math.max(0, v)) : 0;
  }

  // Floors so 99.6 never reads as done.
  const fmtPct = (p) => `${Math.floor(clampPct(p))}%`;

  function fmtEta(s) {
    if (s === null || s === undefined) return '–';
    if (s < 60) return `${s} s`;
    if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }

  function fmtDuration(s) {
    if (s === null || s === undefined) return '–';
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d) return `${d} d ${h} h`;
    if (h) return `${h} h ${m} min`;
    if (m) return `${m} min`;
    return `${s} s`;
  }

  // Formatters are costly to make: one of each, shared by every row.
  const timeFormat = new Intl.DateTimeFormat(undefined, { hour: 'numeric', minute: '2-digit', second: '2-digit' });
  const dateTimeFormat = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
  const today = () => new Date().toDateString();

  function fmtTime(iso) {
    if (!iso) return '–';
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return d.toDateString() === today() ? timeFormat.format(d) : dateTimeFormat.format(d);
  }

  function timeEl(iso) {
    if (!iso) return document.createTextNode('–');
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return document.createTextNode(String(iso));
    const t = document.createElement('time');
    t.dateTime = iso;
    t.title = dateTimeFormat.format(d);
    t.textContent = d.toDateString() === today() ? timeFormat.format(d) : t.title;
    return t;
  }

  const wait = (ms) => new Promise((r) => setTimeout(r, ms));

  // Calls `flush(set)` once per animation frame with everything scheduled since the last one.
  function frameBatch(flush) {
    let items = new Set();
    let scheduled = false;
    return (item) => {
      items.add(item);
      if (scheduled) return;
      scheduled = true;
      requestAnimationFrame(() => {
        scheduled = false;
        const batch = items;
        items = new Set();
        flush(batch);
      });
    };
  }

  function opName(op) {
    return `${op.kind} on ${op.target}`;
  }

  function randomTarget() {
    const abc = 'abcdefghijkmnpqrstuvwxyz23456789';
    let s = '';
    for (let i = 0; i < 4; i++) s += abc[Math.floor(Math.random() * abc.length)];
    return `box-${s}`;
  }

  // ---- Auth -------------------------------------------------------------------------------

  const Auth = {
    key: 'switchyard.token',
    required: document.body.dataset.auth === 'required',
    asking: null,
    get() {
      try { return sessionStorage.getItem(this.key) || null; } catch { return null; }
    },
    set(t) {
      try { sessionStorage.setItem(this.key, t); } catch { /* private mode: keep it in memory */ this.memory = t; }
    },
    clear() {
      try { sessionStorage.removeItem(this.key); } catch { /* nothing stored */ }
      this.memory = null;
    },
    /** Forgets `token` if it is still the current one (a newer one typed meanwhile stays). */
    drop(token) {
      if (token && (this.get() || this.memory) === token) this.clear();
    },
    // A token to send: the stored one, or one the person types (one dialog, however many ask).
    async token(problem) {
      if (!this.required) return null;
      return this.get() || this.memory || this.ask(problem);
    },
    ask(problem) {
      if (this.asking) return this.asking;
      this.asking = new Promise((resolve) => {
        const dialog = $('#token-dialog');
        const form = $('#token-form');
        const input = $('#token-input');
        const error = $('#token-error');
        error.hidden = !problem;
        error.textContent = problem || '';
        input.value = '';
        const submit = (ev) => {
          ev.preventDefault();
          const value = input.value.trim();
          if (!value) return;
          form.removeEventListener('submit', submit);
          this.set(value);
          dialog.close();
          this.asking = null;
          resolve(value);
        };
        form.addEventListener('submit', submit);
        if (!dialog.open) dialog.showModal();
        input.focus();
      });
      return this.asking;
    },
  };

  // Nothing works without a token: Escape does not dismiss the dialog.
  $('#token-dialog')?.addEventListener('cancel', (ev) => ev.preventDefault());

  // ---- api --------------------------------------------------------------------------------

  class NetworkError extends Error {}

  class ApiError extends Error {
    constructor(status, body) {
      super((body && body.message) || `HTTP ${status}`);
      this.status = status;
      this.code = (body && body.error) || `http_${status}`;
      this.body = body;
    }
  }

  async function api(path, { method = 'GET', body } = {}) {
    for (let attempt = 0; ; attempt++) {
      const headers = { accept: 'application/json' };
      const token = await Auth.token();
      if (token) headers.authorization = `Bearer ${token}`;
      if (body !== undefined) headers['content-type'] = 'application/json';
      let res, text;
      try {
        res = await fetch(path, {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
          cache: 'no-store',
          credentials: 'omit',
        });
        text = await res.text();
      } catch (e) {
        throw new NetworkError(e && e.message ? e.message : 'network error');
      }
      let data = null;
      if (text) {
        try { data = JSON.parse(text); } catch { data = null; }
      }
      if (res.status === 401 && Auth.required && attempt < 2) {
        Auth.drop(token);
        await Auth.token((data && data.message) || 'The server refused the token.');
        continue;
      }
      // The server says "retry" when the database is briefly out of reach: reads try twice more.
      const code = data && data.error;
      if (res.status === 503 && method === 'GET' && attempt < 2 && (code === 'database_unavailable' || code === 'unavailable')) {
        await wait(300 * (attempt + 1));
        continue;
      }
      if (!res.ok) throw new ApiError(res.status, data);
      return data;
    }
  }

  // ---- Connection ---------------------------------------------------------------------------

  // The live connection is the Switchyard client library (clients/js/, served at /client.js),
  // the same one apps use: backoff with jitter, rejoin with offsets, the polling fallback and
  // the connection state all live there. This adapter keeps the page controllers' vocabulary
  // (subscribe, onPoll, onReady) and shows the state in the badge.

  const BADGE_TEXT = {
    connecting: ['Connecting…', 'Opening the live connection'],
    connected: ['Connected', 'Live updates over WebSocket'],
    reconnecting: ['Reconnecting…', 'The live connection dropped; retrying with backoff'],
    polling: ['Polling', 'The live connection keeps failing: refreshing over HTTP every few seconds until it is back'],
    offline: ['Offline', 'The server cannot be reached; retrying'],
  };

  class Connection {
    constructor() {
      /** The token last handed to the client, so a refusal drops that one and not a newer one. */
      this.token = null;
      this.sy = new Switchyard({
        url: location.origin,
        autoConnect: false,
        // Open mode: declare who we are so presence lists read well.
        user: { user: 'dashboard', name: 'Dashboard' },
        getToken: async ({ refused }) => {
          if (refused) Auth.drop(this.token);
          this.token = await Auth.token(refused);
          return this.token;
        },
        backoff: { baseMs: CONFIG.backoffBaseMs, maxMs: CONFIG.backoffMaxMs, factor: 2, jitter: 0.5 },
        fallbackAfter: CONFIG.failuresBeforePolling,
        pollMs: CONFIG.pollMs,
        pingMs: CONFIG.pingMs,
        silenceMs: CONFIG.silenceMs,
      });
      // A server that wants a token although the page said it would not: ask from now on.
      this.sy.on('welcome', (f) => {
        if (f.auth === 'required') Auth.required = true;
      });
      this.sy.on('state', (state) => this.show(state));
      this.show('connecting');
    }

    get state() {
      return this.sy.state;
    }

    show(state) {
      const [text, title] = BADGE_TEXT[state] || BADGE_TEXT[state === 'closed' ? 'offline' : 'connecting'];
      const badge = $('#conn');
      const label = $('#conn-label');
      if (badge) {
        badge.dataset.state = BADGE_TEXT[state] ? state : state === 'closed' ? 'offline' : 'connecting';
        badge.title = title;
      }
      if (label) label.textContent = text;
    }

    /**
     * Keeps `room` joined. handlers: event(name, data, frame), joined(frame, info), reset(),
     * presence(change), error(frame). `logOffset({behind})` (may be async) makes it an operation
     * room joined with `log_offset` instead of `since`; `behind` says the server dropped us as a
     * slow consumer, so the missed lines are better paged over REST than backfilled.
     */
    subscribe(room, handlers, { logOffset } = {}) {
      return this.sy.join(room, {
        logOffset,
        // Pages refresh themselves over REST while polling (onPoll): no history polls.
        poll: false,
        onMessage: (m) => handlers.event?.(m.event, m.data, m.frame),
        onPresence: (p) => handlers.presence?.(p),
        onReset: () => handlers.reset?.(),
        onJoined: (f, info) => handlers.joined?.(f, info),
        onError: (e) => handlers.error?.(e.frame || { code: e.code, message: e.message }),
      });
    }

    /** `fn` refreshes the page over REST while the socket is down (may throw). */
    onPoll(fn) {
      this.sy.onPoll(async () => {
        try {
          await fn();
        } catch (e) {
          // The client shows `offline` for an unreachable server, `polling` otherwise.
          if (e instanceof NetworkError) e.code = 'network';
          throw e;
        }
      });
    }

    /** `fn` runs each time every room is joined (first connect and every reconnect). */
    onReady(fn) {
      this.sy.on('ready', fn);
    }

    start() {
      this.sy.connect();
    }
  }

  // ---- toasts -------------------------------------------------------------------------------

  const toasted = new Set();

  function toast(tone, title, body, href) {
    const box = $('#toasts');
    if (!box) return;
    const close = el('button', { type: 'button', class: 't-close', 'aria-label': 'Dismiss notification' }, '×');
    const node = el(
      'div',
      { class: 'toast', 'data-tone': tone },
      el('div', { class: 't-title' }, href ? el('a', { href }, title) : title),
      close,
      body ? el('div', { class: 't-body', text: body }) : null,
    );
    const remove = () => node.remove();
    close.addEventListener('click', remove);
    box.append(node);
    while (box.children.length > 4) box.firstElementChild.remove();
    setTimeout(remove, tone === 'error' ? 15000 : 8000);
  }

  /** One toast per operation end, however many rooms or polls report it. */
  function toastFor(op) {
    if (!TERMINAL.has(op.status)) return;
    const key = `${op.id}:${op.status}`;
    if (toasted.has(key)) return;
    toasted.add(key);
    const href = `/operations/${encodeURIComponent(op.id)}`;
    if (op.status === 'completed') {
      toast('success', `Completed: ${opName(op)}`, op.message || 'Finished successfully.', href);
    } else if (op.status === 'failed') {
      const err = op.error || {};
      const where = err.stage ? ` (stage ${err.stage})` : '';
      toast('error', `Failed: ${opName(op)}`, `${err.message || 'The operation failed.'}${where}`, href);
    } else {
      toast('warn', `Cancelled: ${opName(op)}`, 'The operation was cancelled.', href);
    }
  }

  // ---- OpStore ------------------------------------------------------------------------------

  class OpStore {
    constructor() {
      this.ops = new Map();
      this.listeners = [];
    }

    get(id) {
      return this.ops.get(id);
    }

    listen(fn) {
      this.listeners.push(fn);
    }

    /**
     * Keeps the newest status of each operation: an older `updated_at` never overwrites a newer
     * one, and nothing leaves a terminal state. `live` reports come from the socket or a poll:
     * a transition to a terminal state seen that way gets a toast.
     */
    put(op, { live = false } = {}) {
      if (!op || !op.id) return false;
      const cur = this.ops.get(op.id);
      if (cur) {
        if (TERMINAL.has(cur.status) && !TERMINAL.has(op.status)) return false;
        if (op.updated_at && cur.updated_at && op.updated_at < cur.updated_at) return false;
      }
      this.ops.set(op.id, op);
      if (live && cur && !TERMINAL.has(cur.status) && TERMINAL.has(op.status)) toastFor(op);
      for (const fn of this.listeners) fn(op, cur);
      return true;
    }
  }

  /** The `operations` room feeds the store (and so toasts) on every page. */
  function operationsRoom(store, reset) {
    return {
      event(name, data) {
        if (!data || !data.id) return;
        store.put(data, { live: true });
        if (name === 'operation.completed' || name === 'operation.failed' || name === 'operation.cancelled') {
          toastFor(data);
        }
      },
      reset,
    };
  }

  async function cancelOperation(store, op, button) {
    if (button) button.disabled = true;
    try {
      store.put(await api(`/api/operations/${encodeURIComponent(op.id)}/cancel`, { method: 'POST' }), { live: true });
    } catch (e) {
      if (button) button.disabled = false;
      toast('error', `Could not cancel ${opName(op)}`, e.message);
    }
  }

  // ---- progress bars ----------------------------------------------------------------------------

  function progressEl(label, big) {
    return el(
      'div',
      {
        class: big ? 'progress big' : 'progress',
        role: 'progressbar',
        'aria-label': label,
        'aria-valuemin': '0',
        'aria-valuemax': '100',
        'aria-valuenow': '0',
      },
      el('div', { class: 'bar' }),
    );
  }

  function setProgress(bar, op) {
    const v = clampPct(op.progress);
    bar.firstElementChild.style.width = `${v}%`;
    bar.setAttribute('aria-valuenow', String(Math.floor(v)));
    bar.setAttribute('aria-valuetext', `${fmtPct(v)}${op.stage ? `, ${op.stage}` : ''}, ${op.status}`);
    bar.dataset.status = op.status;
  }

  function statusEl(status) {
    return el('span', { class: 'status', 'data-status': status }, status);
  }

  function setStatus(node, status) {
    node.dataset.status = status;
    node.textContent = status;
  }

  // ---- pages --------------------------------------------------------------------------------

  // Overview: live stats (`system`), health, active operations with progress bars.
  function overviewPage(conn, store) {
    const statEls = document.querySelectorAll('[data-stat]');
    function showStats(s) {
      for (const dd of statEls) {
        const key = dd.dataset.stat;
        if (s[key] === undefined) continue;
        const v = s[key];
        dd.textContent = key === 'uptime_seconds' ? fmtDuration(v) : key.endsWith('_per_sec') ? `${fmtRate(v)}/s` : fmtNum(v);
      }
    }
    // Nodes: the table from /api/nodes, then each node's own `stats` ticks (every node of a
    // cluster publishes into `system`, each naming itself). The Server card adds up the nodes
    // heard from lately; its uptime is the serving node's.
    const SILENT_MS = 20000;
    const nodes = new Map();
    let myNode = null;
    const nodeRows = $('#nodes tbody');
    function fresh(n) {
      return Date.now() - n.heartbeat_ms < SILENT_MS;
    }
    function showTotals() {
      const live = [...nodes.values()].filter(fresh);
      if (!live.length) return;
      const sum = (k) => live.reduce((a, n) => a + (Number(n[k]) || 0), 0);
      const me = (myNode && nodes.get(myNode)) || live[0];
      showStats({
        connections: sum('connections'),
        rooms: sum('rooms'),
        messages_in_per_sec: sum('messages_in_per_sec'),
        messages_out_per_sec: sum('messages_out_per_sec'),
        uptime_seconds: me.uptime_seconds,
      });
    }
    function renderNodes() {
      const rows = [];
      for (const n of [...nodes.values()].sort((a, b) => (a.node < b.node ? -1 : 1))) {
        const age = Math.max(0, Math.round((Date.now() - n.heartbeat_ms) / 1000));
        const silent = !fresh(n);
        rows.push(el('tr', { 'data-node': n.node, 'data-state': silent ? 'silent' : 'live' },
          el('th', { scope: 'row' }, n.node, n.node === myNode ? el('span', { class: 'muted small' }, ' (this page)') : ''),
          el('td', {}, fmtNum(n.connections)),
          el('td', {}, fmtNum(n.rooms)),
          el('td', {}, fmtNum(n.operations)),
          el('td', { class: 'heartbeat' }, silent ? el('span', { class: 'pill', 'data-state': 'degraded' }, `silent ${fmtDuration(age)}`) : `${fmtDuration(age)} ago`)));
      }
      nodeRows.replaceChildren(...rows);
    }
    function nodeStats(s) {
      if (!s || !s.node || typeof s.heartbeat_ms !== 'number') return false;
      const known = nodes.get(s.node);
      if (!known || known.heartbeat_ms <= s.heartbeat_ms) nodes.set(s.node, s);
      return true;
    }
    async function loadNodes() {
      const body = await api('/api/nodes');
      myNode = body.node;
      for (const n of body.nodes || []) nodeStats(n);
      renderNodes();
      showTotals();
    }
    loadNodes().catch(() => {});
    conn.onReady(() => loadNodes().catch(() => {}));
    setInterval(renderNodes, 1000);
    // Charts of the last 15 minutes (charts.js): the server's recent samples on load and after
    // every reconnect (what the page missed), then a point per `stats` tick.
    const charts = window.SwitchyardCharts?.overviewCharts($('#charts'), { api });
    const backfill = () => charts?.backfill().catch(() => {});
    backfill();
    conn.onReady(backfill);
    conn.subscribe('system', {
      event(name, data) {
        if (name !== 'stats' || !data) return;
        charts?.add(data);
        // Figures from a server that names no node: show them as they are.
        if (!nodeStats(data)) return showStats(data);
        renderNodes();
        showTotals();
      },
    });

    function pill(component, state, text, detail) {
      const li = $(`#health [data-component="${component}"]`);
      if (!li) return;
      const p = $('.pill', li);
      p.dataset.state = state;
      p.textContent = text;
      $('.detail', li).textContent = detail || '';
    }
    async function loadHealth() {
      let body;
      try {
        const res = await fetch('/health', { cache: 'no-store', headers: { accept: 'application/json' } });
        body = await res.json();
      } catch (e) {
        pill('database', 'unknown', 'unknown', 'server unreachable');
        pill('broker', 'unknown', 'unknown', '');
        pill('websocket', 'unknown', 'unknown', '');
        throw new NetworkError(e && e.message ? e.message : 'network error');
      }
      const db = body.database || {};
      pill('database', db.status || 'unknown', db.status || 'unknown',
        `${db.backend || ''}${db.latency_ms !== null && db.latency_ms !== undefined ? ` · ${db.latency_ms} ms` : ''}`);
      const broker = body.broker || {};
      pill('broker', broker.status || 'unknown', broker.status || 'unknown', broker.kind || '');
      const ws = body.websocket || {};
      pill('websocket', ws.status || 'unknown', ws.status || 'unknown', `${fmtNum(ws.connections)} connection${ws.connections === 1 ? '' : 's'}`);
      $('#health-checked').textContent = `Checked ${timeFormat.format(new Date())} · server ${body.version || ''}`;
      return body;
    }
    loadHealth().catch(() => {});
    conn.onReady(() => loadHealth().catch(() => {}));
    setInterval(() => {
      if (conn.state === 'connected') loadHealth().catch(() => {});
    }, 10000);

    const list = $('#active');
    const cards = new Map();
    function card(op) {
      const bar = progressEl(`Progress of ${opName(op)}`);
      const status = statusEl(op.status);
      const line = el('div', { class: 'line' });
      const cancel = el('button', { type: 'button', class: 'danger small' }, 'Cancel');
      cancel.addEventListener('click', () => cancelOperation(store, store.get(op.id) || op, cancel));
      const li = el(
        'li',
        { class: 'op-card', 'data-id': op.id },
        el('div', { class: 'title' }, el('a', { href: `/operations/${encodeURIComponent(op.id)}` }, opName(op)), ' ', status),
        cancel,
        bar,
        line,
      );
      return { li, bar, status, line, cancel };
    }
    function updateCard(c, op) {
      setProgress(c.bar, op);
      setStatus(c.status, op.status);
      const eta = op.status === 'running' && op.eta_seconds !== null && op.eta_seconds !== undefined ? ` · ETA ${fmtEta(op.eta_seconds)}` : '';
      c.line.textContent = `${fmtPct(op.progress)}${op.stage ? ` · ${op.stage}` : ''}${op.message ? ` · ${op.message}` : ''}${eta}`;
      c.cancel.hidden = !ACTIVE.has(op.status) || op.status === 'cancelling';
    }
    const render = frameBatch((ids) => {
      for (const id of ids) {
        const op = store.get(id);
        if (!op) continue;
        let c = cards.get(id);
        if (!c && ACTIVE.has(op.status)) {
          c = card(op);
          cards.set(id, c);
          // Newest first: ids sort by creation time.
          const after = [...list.children].find((li) => li.dataset.id < id);
          list.insertBefore(c.li, after || null);
        }
        if (!c) continue;
        updateCard(c, op);
        if (TERMINAL.has(op.status) && !c.leaving) {
          // Stay a moment in the final state, then leave the list of active ones.
          c.leaving = setTimeout(() => {
            c.li.remove();
            cards.delete(id);
            layout();
          }, 6000);
        }
      }
      layout();
    });
    function layout() {
      const items = [...list.children];
      items.forEach((li, i) => { li.hidden = i >= CONFIG.activeCards; });
      const extra = items.length - CONFIG.activeCards;
      const more = $('#active-more');
      more.hidden = extra <= 0;
      more.textContent = extra > 0 ? `And ${fmtNum(extra)} more on the Operations page.` : '';
      $('#active-empty').hidden = items.length > 0;
    }
    store.listen((op) => render(op.id));

    async function loadActive(live) {
      const pages = await Promise.all(
        ['running', 'queued', 'cancelling'].map((s) => api(`/api/operations?status=${s}&limit=100`)),
      );
      for (const page of pages) for (const op of page.operations) store.put(op, { live });
      // Cards whose operation ended while we were not looking.
      for (const id of cards.keys()) {
        const op = store.get(id);
        if (op && ACTIVE.has(op.status) && !pages.some((p) => p.operations.some((o) => o.id === id))) {
          api(`/api/operations/${encodeURIComponent(id)}`).then((o) => store.put(o, { live })).catch(() => {});
        }
      }
    }
    conn.subscribe('operations', operationsRoom(store, () => loadActive(true).catch(() => {})));
    loadActive(false).catch(() => {});
    conn.onPoll(async () => {
      const h = await loadHealth();
      showStats({ connections: h.websocket && h.websocket.connections, rooms: h.rooms, uptime_seconds: h.uptime_seconds });
      await loadActive(true);
      await backfill();
    });
  }

  // Operations: the live list, filters, start demo, cancel.
  function operationsPage(conn, store) {
    const body = $('#ops-body');
    const more = $('#ops-more');
    const summary = $('#ops-summary');
    const statusSel = $('#filter-status');
    const kindSel = $('#filter-kind');
    const params = new URLSearchParams(location.search);
    const filter = { status: params.get('status') || '', kind: params.get('kind') || '' };
    const rows = new Map();
    /** Ids shown, newest first (UUIDv7 ids sort by creation time). */
    let order = [];
    let nextBefore = null;
    /**
     * The oldest id of the pages loaded so far ('' once the last page is in, null before the
     * first): a live operation older than it shows up when paging instead.
     */
    let floor = null;
    let firstLoaded = false;
    let generation = 0;
    const kinds = new Set(['demo']);

    function addKind(kind) {
      if (!kind || kinds.has(kind)) return;
      kinds.add(kind);
      kindSel.append(el('option', null, kind));
    }
    addKind(filter.kind);
    statusSel.value = filter.status;
    kindSel.value = filter.kind;

    const matches = (op) => (!filter.status || op.status === filter.status) && (!filter.kind || op.kind === filter.kind);

    function row(op) {
      const link = el('a', { href: `/operations/${encodeURIComponent(op.id)}` }, op.target);
      const bar = progressEl(`Progress of ${opName(op)}`);
      const pct = el('span', { class: 'pct' });
      const status = statusEl(op.status);
      const stage = el('td', { 'data-label': 'Stage' });
      const eta = el('td', { 'data-label': 'ETA' });
      const cancel = el('button', { type: 'button', class: 'danger small', 'aria-label': `Cancel ${opName(op)}` }, 'Cancel');
      cancel.addEventListener('click', () => cancelOperation(store, store.get(op.id) || op, cancel));
      const tr = el(
        'tr',
        { 'data-id': op.id },
        el('td', { class: 'op-name', 'data-label': 'Operation' }, link, el('span', { class: 'kind' }, op.kind)),
        el('td', { 'data-label': 'Status' }, status),
        el('td', { 'data-label': 'Progress', class: 'col-progress' }, bar, pct),
        stage,
        eta,
        el('td', { 'data-label': 'Started' }, timeEl(op.started_at || op.created_at)),
        el('td', { class: 'actions' }, cancel),
      );
      return { tr, bar, pct, status, stage, eta, cancel };
    }

    function update(r, op) {
      setProgress(r.bar, op);
      r.pct.textContent = fmtPct(op.progress);
      setStatus(r.status, op.status);
      r.stage.textContent = op.stage || '–';
      r.eta.textContent = op.status === 'running' ? fmtEta(op.eta_seconds) : '–';
      r.cancel.hidden = !ACTIVE.has(op.status) || op.status === 'cancelling';
    }

    function position(id) {
      // First index whose id is smaller (older) than `id`.
      let lo = 0, hi = order.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (order[mid] > id) lo = mid + 1; else hi = mid;
      }
      return lo;
    }

    function remove(id) {
      const r = rows.get(id);
      if (!r) return;
      r.tr.remove();
      rows.delete(id);
      const i = order.indexOf(id);
      if (i >= 0) order.splice(i, 1);
    }

    // Rows are rendered a bounded number per frame so a big page never blocks the page.
    const pendingIds = new Set();
    let freshIds = new Set();
    let scheduled = false;
    function schedule(id, fresh) {
      pendingIds.add(id);
      if (fresh) freshIds.add(id);
      if (!scheduled) {
        scheduled = true;
        requestAnimationFrame(flush);
      }
    }
    function flush() {
      scheduled = false;
      let budget = CONFIG.rowsPerFrame;
      for (const id of pendingIds) {
        const op = store.get(id);
        const r = rows.get(id);
        if (!op) { pendingIds.delete(id); continue; }
        if (r && !matches(op)) { remove(id); pendingIds.delete(id); continue; }
        if (r) { update(r, op); pendingIds.delete(id); continue; }
        if (!matches(op)) { pendingIds.delete(id); continue; }
        if (floor && id < floor) { pendingIds.delete(id); continue; }
        if (budget-- <= 0) break;
        const nr = row(op);
        update(nr, op);
        if (freshIds.has(id)) nr.tr.classList.add('fresh');
        const i = position(id);
        body.insertBefore(nr.tr, i < order.length ? rows.get(order[i]).tr : null);
        order.splice(i, 0, id);
        rows.set(id, nr);
        pendingIds.delete(id);
      }
      freshIds = new Set([...freshIds].filter((id) => pendingIds.has(id)));
      // Cap the DOM: drop the oldest rows; paging brings them back.
      if (order.length > CONFIG.opsMaxRows) {
        for (const id of order.slice(CONFIG.opsMaxRows)) remove(id);
        nextBefore = order[order.length - 1];
        floor = nextBefore;
      }
      showSummary();
      if (pendingIds.size) {
        scheduled = true;
        requestAnimationFrame(flush);
      }
    }

    function showSummary() {
      const n = order.length;
      $('#ops-empty').hidden = n > 0 || pendingIds.size > 0;
      more.hidden = !nextBefore;
      const what = [filter.status, filter.kind].filter(Boolean).join(' ');
      const text = `${fmtNum(n)} ${what ? `${what} ` : ''}operation${n === 1 ? '' : 's'} shown, newest first${nextBefore ? '; older ones below' : ''}.`;
      if (summary.textContent !== text) summary.textContent = text;
    }

    function query(before) {
      const q = new URLSearchParams({ limit: String(CONFIG.opsPageSize) });
      if (filter.status) q.set('status', filter.status);
      if (filter.kind) q.set('kind', filter.kind);
      if (before) q.set('before', before);
      return `/api/operations?${q}`;
    }

    function take(page, live) {
      const oldest = page.operations.length ? page.operations[page.operations.length - 1].id : null;
      if (!nextBefore) floor = '';
      else if (oldest && (floor === null || (floor && oldest < floor))) floor = oldest;
      for (const op of page.operations) {
        addKind(op.kind);
        store.put(op, { live });
        schedule(op.id, false);
      }
    }

    async function loadFirst(live) {
      const gen = generation;
      const page = await api(query(null));
      if (gen !== generation) return;
      // Only the first load decides paging; a refresh keeps what was paged in.
      if (!firstLoaded) nextBefore = page.next_before;
      firstLoaded = true;
      take(page, live);
      showSummary();
    }

    async function loadMore() {
      if (!nextBefore) return;
      const gen = generation;
      more.disabled = true;
      try {
        const page = await api(query(nextBefore));
        if (gen !== generation) return;
        nextBefore = page.next_before;
        take(page, false);
      } catch (e) {
        toast('error', 'Could not load older operations', e.message);
      } finally {
        more.disabled = false;
        showSummary();
      }
    }
    more.addEventListener('click', loadMore);

    function applyFilters() {
      filter.status = statusSel.value;
      filter.kind = kindSel.value;
      const q = new URLSearchParams();
      if (filter.status) q.set('status', filter.status);
      if (filter.kind) q.set('kind', filter.kind);
      history.replaceState(null, '', `${location.pathname}${q.toString() ? `?${q}` : ''}`);
      generation++;
      body.textContent = '';
      rows.clear();
      order = [];
      pendingIds.clear();
      nextBefore = null;
      floor = null;
      firstLoaded = false;
      summary.textContent = 'Loading…';
      loadFirst(false).catch((e) => toast('error', 'Could not load operations', e.message));
    }
    statusSel.addEventListener('change', applyFilters);
    kindSel.addEventListener('change', applyFilters);
    $('#filters').addEventListener('submit', (ev) => ev.preventDefault());

    store.listen((op, prev) => {
      addKind(op.kind);
      schedule(op.id, !prev && rows.size > 0);
    });

    // Start a demo.
    const form = $('#demo-form');
    const target = $('#demo-target');
    target.value = randomTarget();
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (!form.reportValidity()) return;
      const button = $('#start-demo');
      button.disabled = true;
      const params = { step_ms: Number($('#demo-pace').value) || 300 };
      const failAt = $('#demo-fail').value;
      if (failAt) params.fail_at = failAt;
      try {
        const op = await api('/api/operations', { method: 'POST', body: { kind: 'demo', target: target.value.trim(), params } });
        store.put(op, { live: true });
        target.value = randomTarget();
      } catch (e) {
        if (e instanceof ApiError && e.code === 'duplicate_operation' && e.body && e.body.operation) {
          const op = e.body.operation;
          store.put(op, { live: true });
          toast('warn', `Already running: ${opName(op)}`, 'Watching the running one instead.', `/operations/${encodeURIComponent(op.id)}`);
        } else {
          toast('error', 'Could not start the demo', e.message);
        }
      } finally {
        button.disabled = false;
      }
    });

    // After a gap (polling, or a rejoin that could not replay): the newest page, and the
    // rows shown as active, whose end may have been missed.
    async function refresh() {
      await loadFirst(true);
      const active = order.filter((id) => ACTIVE.has(store.get(id)?.status)).slice(0, 50);
      await Promise.all(active.map((id) => api(`/api/operations/${encodeURIComponent(id)}`).then((op) => store.put(op, { live: true }))));
    }
    conn.subscribe('operations', operationsRoom(store, () => refresh().catch(() => {})));
    summary.textContent = 'Loading…';
    loadFirst(false).catch((e) => {
      summary.textContent = '';
      toast('error', 'Could not load operations', e.message);
    });
    conn.onPoll(refresh);
  }

  // The log of one operation: incremental rendering, a capped DOM, no lost or doubled lines.
  class LogView {
    constructor(opId) {
      this.opId = opId;
      this.box = $('#log');
      /** Newest offset taken in; every line up to it is shown, queued or deliberately skipped. */
      this.last = 0;
      /** Offset of the oldest line in the view; lines before it are "earlier", not shown. */
      this.first = 1;
      /** Lines taken in but not yet in the DOM. */
      this.queue = [];
      /** Lines that arrived after a gap, waiting for the gap to be filled over REST. */
      this.gap = [];
      this.filling = false;
      /** Lines up to this offset exist on the server and are to be paged in over REST. */
      this.want = 0;
      this.count = 0;
      this.total = 0;
      this.follow = true;
      this.visible = true;
      this.scheduled = false;

      const follow = $('#log-follow');
      follow.addEventListener('change', () => {
        this.follow = follow.checked;
        if (this.follow) this.box.scrollTop = this.box.scrollHeight;
      });
      // Scrolling up by hand pauses auto-scroll; the checkbox says so and turns it back on.
      this.box.addEventListener('wheel', (ev) => {
        if (ev.deltaY < 0 && this.follow) {
          this.follow = false;
          follow.checked = false;
        }
      }, { passive: true });
      const show = $('#log-show');
      show.addEventListener('change', () => {
        this.visible = show.checked;
        $('#log-box').hidden = !this.visible;
        if (this.visible) this.schedule();
      });
      $('#log-load-earlier').addEventListener('click', () => this.loadEarlier());
    }

    /** Shows lines after `after` only (the tail of a long log). */
    startAt(after) {
      this.last = after;
      this.first = after + 1;
      this.note();
    }

    setTotal(n) {
      if (n > this.total) this.total = n;
      this.note();
    }

    /** Pages lines up to `upto` in over REST (after a rejoin that skipped them). */
    expect(upto) {
      if (upto > this.want) this.want = upto;
      if (this.want > this.last) this.fill();
    }

    push(line) {
      if (!line || typeof line.offset !== 'number' || line.offset <= this.last) return; // seen
      if (line.offset !== this.last + 1) {
        this.gap.push(line);
        this.fill();
        return;
      }
      this.take(line);
      this.drainGap();
    }

    take(line) {
      this.last = line.offset;
      if (line.offset > this.total) this.total = line.offset;
      this.queue.push(line);
      // Hidden for a long time: keep memory bounded too.
      if (this.queue.length > 2 * CONFIG.logMaxLines) this.queue.splice(0, this.queue.length - CONFIG.logMaxLines);
      this.schedule();
    }

    drainGap() {
      if (!this.gap.length) return;
      this.gap.sort((a, b) => a.offset - b.offset);
      while (this.gap.length && this.gap[0].offset <= this.last + 1) {
        const line = this.gap.shift();
        if (line.offset === this.last + 1) this.take(line);
      }
    }

    /** Fetches missing lines over REST until the lines waiting after a gap connect. */
    async fill() {
      if (this.filling) return;
      this.filling = true;
      let idle = 0;
      try {
        while (this.gap.length || this.want > this.last) {
          this.gap.sort((a, b) => a.offset - b.offset);
          const upto = this.gap.length ? this.gap[0].offset - 1 : this.want;
          if (upto <= this.last) {
            this.drainGap();
            continue;
          }
          if (upto - this.last > CONFIG.logMaxLines) {
            // More than the view keeps: skip to the part that will be shown.
            this.reset(upto - CONFIG.logMaxLines);
          }
          const got = await this.fetchAfter(Math.min(5000, upto - this.last), upto);
          this.drainGap();
          if (got) {
            idle = 0;
          } else if (++idle > 40) {
            // The lines are not readable (yet); do not block the live stream forever.
            this.reset(upto);
            this.drainGap();
          } else {
            await wait(250); // written in batches: the newest lines reach the database shortly
          }
        }
      } catch {
        setTimeout(() => this.fill(), 2000);
      } finally {
        this.filling = false;
      }
    }

    async fetchAfter(limit, upto = Infinity) {
      const page = await api(`/api/operations/${encodeURIComponent(this.opId)}/logs?after=${this.last}&limit=${Math.max(1, limit)}`);
      let got = 0;
      for (const line of page.lines || []) {
        if (line.offset === this.last + 1 && line.offset <= upto) {
          this.take(line);
          got++;
        }
      }
      this.setTotal(page.log_offset || 0);
      return got;
    }

    /** Polling: everything written since the last line seen (a few pages at most per call). */
    async catchUp() {
      for (let i = 0; i < 5; i++) {
        const got = await this.fetchAfter(5000);
        this.drainGap();
        if (got < 5000) return;
      }
    }

    /** Clears the view; lines up to `after` count as earlier ones. */
    reset(after) {
      this.queue = [];
      this.box.textContent = '';
      this.count = 0;
      this.last = after;
      this.first = after + 1;
    }

    schedule() {
      if (this.scheduled || !this.visible) return;
      this.scheduled = true;
      requestAnimationFrame(() => {
        this.scheduled = false;
        this.render();
      });
    }

    lineEl(line) {
      const d = document.createElement('div');
      d.className = line.stream === 'stderr' ? 'ln stderr' : 'ln';
      d.dataset.offset = String(line.offset);
      d.textContent = line.line;
      return d;
    }

    render() {
      if (!this.queue.length) {
        this.note();
        return;
      }
      let lines = this.queue;
      this.queue = [];
      if (lines.length >= CONFIG.logMaxLines) {
        lines = lines.slice(-CONFIG.logMaxLines);
        this.box.textContent = '';
        this.count = 0;
      }
      const frag = document.createDocumentFragment();
      for (const line of lines) frag.append(this.lineEl(line));
      this.box.append(frag);
      this.count += lines.length;
      const excess = this.count - CONFIG.logMaxLines;
      if (excess > 0) {
        const range = document.createRange();
        range.setStartBefore(this.box.firstElementChild);
        range.setEndBefore(this.box.children[excess]);
        // Not following: keep the line being read where it is as older lines leave.
        const removed = this.follow ? 0 : range.getBoundingClientRect().height;
        range.deleteContents();
        this.count -= excess;
        if (removed) this.box.scrollTop -= removed;
      }
      this.first = Number(this.box.firstElementChild.dataset.offset);
      if (this.follow) this.box.scrollTop = this.box.scrollHeight;
      this.note();
    }

    async loadEarlier() {
      const button = $('#log-load-earlier');
      this.render();
      const room = CONFIG.logMaxLines - this.count;
      const n = Math.min(CONFIG.logPageLines, this.first - 1, room);
      if (n <= 0) return;
      const after = this.first - 1 - n;
      button.disabled = true;
      try {
        const page = await api(`/api/operations/${encodeURIComponent(this.opId)}/logs?after=${after}&limit=${n}`);
        const lines = (page.lines || []).filter((l) => l.offset > after && l.offset < this.first);
        const frag = document.createDocumentFragment();
        for (const line of lines) frag.append(this.lineEl(line));
        const before = this.box.scrollHeight;
        this.box.prepend(frag);
        this.box.scrollTop += this.box.scrollHeight - before;
        this.count += lines.length;
        if (lines.length) this.first = lines[0].offset;
      } catch (e) {
        toast('error', 'Could not load earlier lines', e.message);
      } finally {
        button.disabled = false;
        this.note();
      }
    }

    note() {
      const earlier = this.first - 1;
      const shown = this.count;
      $('#log-empty').hidden = shown > 0 || this.queue.length > 0;
      $('#log-count').textContent = shown
        ? `(lines ${fmtNum(this.first)}–${fmtNum(this.first + shown - 1)}${this.total > this.first + shown - 1 ? ` of ${fmtNum(this.total)}` : ''})`
        : '';
      const box = $('#log-earlier');
      box.hidden = earlier <= 0;
      if (earlier > 0) {
        const full = shown >= CONFIG.logMaxLines;
        $('#log-earlier-text').textContent = `${fmtNum(earlier)} earlier line${earlier === 1 ? '' : 's'} not shown.${full ? ` The view keeps the newest ${fmtNum(CONFIG.logMaxLines)}.` : ''}`;
        $('#log-load-earlier').hidden = full;
      }
    }
  }

  // Operation detail: stages, progress, ETA, message, streaming log, result or error, run again.
  function operationPage(conn, store) {
    const id = decodeURIComponent(location.pathname.split('/')[2] || '');
    const log = new LogView(id);
    let announced = '';

    function render(op) {
      document.title = `${opName(op)} · Switchyard`;
      $('#op-title').textContent = opName(op);
      $('#op-crumb').textContent = op.id;
      setStatus($('#op-status'), op.status);
      setProgress($('#op-progress'), op);
      $('#op-percent').textContent = fmtPct(op.progress);
      $('#op-stage').textContent = op.stage || '–';
      $('#op-eta').textContent = op.status === 'running' ? fmtEta(op.eta_seconds) : '–';
      $('#op-message').textContent = op.message || '';
      for (const dd of document.querySelectorAll('#op-meta [data-field]')) {
        const f = dd.dataset.field;
        const v = op[f];
        dd.textContent = '';
        dd.append(f.endsWith('_at') ? timeEl(v) : document.createTextNode(v === null || v === undefined ? '–' : String(v)));
      }
      // Stages as steps.
      const steps = $('#op-stages');
      steps.textContent = '';
      const stateOf = { done: 'done', running: 'current', pending: 'pending', failed: 'failed', cancelled: 'cancelled' };
      for (const s of op.stages || []) {
        const state = stateOf[s.state] || s.state;
        steps.append(el(
          'li',
          { 'data-state': state, 'aria-current': state === 'current' ? 'step' : null },
          el('span', null, s.name),
          el('span', { class: 'state' }, state),
        ));
      }
      $('#op-no-stages').hidden = (op.stages || []).length > 0;
      // Outcome.
      const outcome = $('#op-outcome');
      const errBox = $('#op-error');
      const result = $('#op-result');
      outcome.hidden = !TERMINAL.has(op.status);
      if (op.error) {
        errBox.hidden = false;
        errBox.textContent = '';
        errBox.append(el('strong', null, op.error.message || 'Failed'), ' ', el('code', null, op.error.code || ''),
          op.error.stage ? ` · stage ${op.error.stage}` : '');
      } else {
        errBox.hidden = true;
      }
      if (op.result !== null && op.result !== undefined) {
        result.hidden = false;
        result.textContent = JSON.stringify(op.result, null, 2);
      } else {
        result.hidden = true;
      }
      $('#outcome-h').textContent = op.status === 'completed' ? 'Result' : op.status === 'failed' ? 'Error' : 'Cancelled';
      $('#op-cancel').hidden = !ACTIVE.has(op.status) || op.status === 'cancelling';
      $('#op-again').hidden = !(TERMINAL.has(op.status) && op.kind === 'demo');
      log.setTotal(op.log_offset || 0);
      // Announce stage and status changes, not every percent.
      const say = TERMINAL.has(op.status) ? `Operation ${op.status}` : `${op.status}${op.stage ? `, stage ${op.stage}` : ''}`;
      if (say !== announced) {
        announced = say;
        $('#op-announce').textContent = say;
      }
    }

    const draw = frameBatch(() => {
      const op = store.get(id);
      if (op) render(op);
    });
    store.listen((op) => {
      if (op.id === id) draw(id);
    });

    function missing(text) {
      const m = $('#op-missing');
      m.hidden = false;
      m.textContent = text;
      setStatus($('#op-status'), 'unknown');
      $('#op-card').hidden = true;
    }

    $('#op-cancel').addEventListener('click', (ev) => {
      const op = store.get(id);
      if (op) cancelOperation(store, op, ev.currentTarget);
    });
    $('#op-again').addEventListener('click', async (ev) => {
      const op = store.get(id);
      if (!op) return;
      ev.currentTarget.disabled = true;
      try {
        const next = await api('/api/operations', {
          method: 'POST',
          body: { kind: op.kind, target: op.target, project: op.project || undefined, params: op.params || {} },
        });
        location.assign(`/operations/${encodeURIComponent(next.id)}`);
      } catch (e) {
        if (e instanceof ApiError && e.code === 'duplicate_operation' && e.body && e.body.operation) {
          location.assign(`/operations/${encodeURIComponent(e.body.operation.id)}`);
          return;
        }
        ev.currentTarget.disabled = false;
        toast('error', 'Could not run it again', e.message);
      }
    });

    const room = {
      event(name, data, frame) {
        if (name === 'operation.log') {
          log.push(data);
        } else if (data && data.id === id) {
          // A backfilled terminal event of an operation that had ended before the page looked
          // is no news: the store toasts only transitions it saw, live ones toast here.
          store.put(data, { live: true });
          const end = name === 'operation.completed' || name === 'operation.failed' || name === 'operation.cancelled';
          if (end && frame.type === 'message') toastFor(data);
        }
      },
      error(f) {
        missing(f.code === 'not_found' ? 'No such operation (or you may not see it).' : f.message || f.code);
      },
    };

    conn.subscribe('operations', operationsRoom(store, () => {}));

    // A long log opens at its tail: the view starts once the status says how long it is.
    let started = false;
    function start(op) {
      if (started) return;
      started = true;
      log.startAt(Math.max(0, (op.log_offset || 0) - CONFIG.logTailLines));
      log.setTotal(op.log_offset || 0);
    }
    async function status() {
      const op = await api(`/api/operations/${encodeURIComponent(id)}`);
      store.put(op, { live: true });
      start(op);
      return op;
    }

    (async () => {
      try {
        await status();
      } catch (e) {
        if (e instanceof ApiError && e.status === 404) {
          missing('No such operation (or you may not see it).');
          return;
        }
        // Unreachable now: the join below asks again once the server answers.
      }
      conn.subscribe(`operation:${id}`, room, {
        async logOffset({ behind }) {
          try {
            if (!started) await status();
            // Dropped for falling behind: page the missed lines over REST and join from now.
            if (behind) {
              const now = await status();
              log.expect(now.log_offset || 0);
              return Math.max(log.last, now.log_offset || 0);
            }
          } catch {
            // No status over REST: the socket's backfill brings it.
          }
          return log.last; // exactly the lines after the last one seen
        },
      });
    })();

    conn.onPoll(async () => {
      await status();
      await log.catchUp();
    });
  }

  // Activity: the global feed, newest first, paging back through history.
  function activityPage(conn) {
    const feed = $('#feed');
    const more = $('#feed-more');
    const items = new Map();
    /** Ids shown, newest first. */
    let order = [];
    let nextBefore = null;
    let loadedOnce = false;

    function item(a, fresh) {
      const what = el('div', { class: 'what' },
        el('span', { class: 'actor' }, a.actor), ' ', a.verb,
        a.object ? ' ' : null, a.object ? el('span', { class: 'object' }, a.object) : null,
        a.project ? ' ' : null, a.project ? el('span', { class: 'tag' }, `project ${a.project}`) : null);
      let data = null;
      if (a.data !== null && a.data !== undefined) {
        const text = JSON.stringify(a.data);
        data = el('div', { class: 'data' }, text.length > 300 ? `${text.slice(0, 300)}…` : text);
      }
      return el('li', { 'data-id': String(a.id), class: fresh ? 'fresh' : null }, what, timeEl(a.created_at), data);
    }

    function add(list, fresh) {
      for (const a of list) {
        if (items.has(a.id)) continue;
        const node = item(a, fresh);
        // Live ones are the newest: the common case is the front.
        let i = 0;
        while (i < order.length && order[i] > a.id) i++;
        feed.insertBefore(node, i < order.length ? items.get(order[i]) : null);
        order.splice(i, 0, a.id);
        items.set(a.id, node);
      }
      if (order.length > CONFIG.feedMaxItems) {
        for (const id of order.slice(CONFIG.feedMaxItems)) {
          items.get(id).remove();
          items.delete(id);
        }
        order = order.slice(0, CONFIG.feedMaxItems);
        nextBefore = order[order.length - 1];
      }
      show();
    }

    function show() {
      $('#feed-empty').hidden = order.length > 0 || !loadedOnce;
      more.hidden = !nextBefore;
    }

    /** The newest page; after a gap, pages back until it meets what is already shown. */
    async function loadFirst() {
      const known = order.length ? order[0] : null;
      let before = null;
      for (let i = 0; i < CONFIG.feedMaxItems / CONFIG.feedPageSize; i++) {
        const page = await api(`/api/activities?limit=${CONFIG.feedPageSize}${before ? `&before=${before}` : ''}`);
        const list = page.activities || [];
        if (!loadedOnce) nextBefore = page.next_before;
        add(list, loadedOnce);
        if (!loadedOnce || known === null || !page.next_before || list.some((a) => a.id <= known)) break;
        before = page.next_before;
      }
      loadedOnce = true;
      show();
    }

    more.addEventListener('click', async () => {
      if (!nextBefore) return;
      more.disabled = true;
      try {
        const page = await api(`/api/activities?before=${nextBefore}&limit=${CONFIG.feedPageSize}`);
        nextBefore = page.next_before;
        add(page.activities || [], false);
      } catch (e) {
        toast('error', 'Could not load older activity', e.message);
      } finally {
        more.disabled = false;
        show();
      }
    });

    conn.subscribe('activity', {
      event(name, data) {
        if (name === 'activity.created' && data && data.id !== undefined) add([data], loadedOnce);
      },
      reset: () => loadFirst().catch(() => {}),
    });
    loadFirst().catch((e) => toast('error', 'Could not load activity', e.message));
    conn.onPoll(loadFirst);
  }

  // Rooms: members, users and presence, refreshed with each stats tick; one room's recent
  // messages and, for admins, a publish console (charts.js's roomPanel).
  function roomsPage(conn, store) {
    const body = $('#rooms-body');
    const error = $('#rooms-error');
    let busy = false;
    let again = false;

    // One subscription per room, shared by the page and the room panel (the connection keeps
    // one per room). A room stays joined once watched; events nobody watches are dropped.
    const watchers = new Map();
    function watch(room, handlers) {
      let set = watchers.get(room);
      if (!set) {
        set = new Set();
        watchers.set(room, set);
        const each = (k) => (...args) => { for (const h of set) h[k]?.(...args); };
        conn.subscribe(room, { event: each('event'), joined: each('joined'), reset: each('reset'), presence: each('presence'), error: each('error') });
      }
      set.add(handlers);
      return () => set.delete(handlers);
    }
    watch('operations', operationsRoom(store, () => {}));
    const panelRoot = $('#room-panel');
    const panel = panelRoot && window.SwitchyardCharts?.roomPanel(panelRoot, { api, watch, ApiError });
    // The room shown is in the URL (`/rooms#room=<name>`): a link to it, and a way in for a
    // token that may see a room but not list them all.
    function show(room) {
      if (!panel || !room) return;
      panel.open(room);
      history.replaceState(null, '', `#room=${encodeURIComponent(room)}`);
      for (const tr of body.querySelectorAll('tr[aria-current]')) tr.removeAttribute('aria-current');
      body.querySelector(`tr[data-room="${CSS.escape(room)}"]`)?.setAttribute('aria-current', 'true');
    }
    body.addEventListener('click', (ev) => {
      const b = ev.target.closest('button[data-open-room]');
      if (b) {
        show(b.dataset.openRoom);
        panelRoot.scrollIntoView({ block: 'nearest' });
      }
    });
    const linked = /^#room=(.+)$/.exec(location.hash);
    if (linked) {
      try { show(decodeURIComponent(linked[1])); } catch { /* a malformed link opens nothing */ }
    }

    async function refresh() {
      if (busy) {
        again = true;
        return;
      }
      busy = true;
      try {
        const page = await api('/api/rooms');
        error.hidden = true;
        const rooms = (page.rooms || []).slice().sort((a, b) => b.users - a.users || (a.name < b.name ? -1 : 1));
        const shown = rooms.slice(0, CONFIG.roomsMax);
        const present = new Map();
        await Promise.all(shown.filter((r) => r.users > 0).slice(0, CONFIG.presenceLookups).map(async (r) => {
          try {
            const p = await api(`/api/rooms/${encodeURIComponent(r.name)}/presence`);
            present.set(r.name, p.presence || []);
          } catch { /* shown as unknown */ }
        }));
        const frag = document.createDocumentFragment();
        for (const r of shown) {
          const users = present.get(r.name);
          const who = users ? users.map((u) => u.name || u.user).join(', ') || 'nobody' : r.users ? '…' : 'nobody';
          frag.append(el('tr', { 'data-room': r.name, 'aria-current': panel?.room === r.name ? 'true' : null },
            el('td', { 'data-label': 'Room' }, el('button', { type: 'button', class: 'link', 'data-open-room': r.name, title: `Show ${r.name}` }, el('code', null, r.name))),
            el('td', { class: 'num', 'data-label': 'Connections' }, fmtNum(r.members)),
            el('td', { class: 'num', 'data-label': 'Users' }, fmtNum(r.users)),
            el('td', { class: 'num', 'data-label': 'Last offset' }, fmtNum(r.offset)),
            el('td', { class: 'present', 'data-label': 'Present' }, who)));
        }
        // Keyboard focus on a room's button survives the refresh.
        const focused = document.activeElement?.closest?.('#rooms-body [data-open-room]')?.dataset.openRoom;
        body.textContent = '';
        body.append(frag);
        if (focused !== undefined) body.querySelector(`[data-open-room="${CSS.escape(focused)}"]`)?.focus();
        // Listing rooms needs the admin role (or open mode): so does the console.
        panel?.setAdmin(true);
        $('#rooms-empty').hidden = rooms.length > 0;
        $('#rooms-summary').textContent = `${fmtNum(rooms.length)} room${rooms.length === 1 ? '' : 's'}${rooms.length > shown.length ? `, the ${fmtNum(shown.length)} busiest shown` : ''} · updated ${timeFormat.format(new Date())}`;
      } catch (e) {
        if (e instanceof ApiError && e.status === 403) {
          panel?.setAdmin(false);
          error.hidden = false;
          error.textContent = 'This token may not list rooms: that needs the role admin.';
        } else {
          throw e;
        }
      } finally {
        busy = false;
        if (again) {
          again = false;
          refresh().catch(() => {});
        }
      }
    }

    $('#rooms-refresh').addEventListener('click', () => refresh().catch((e) => toast('error', 'Could not load rooms', e.message)));
    watch('system', {
      event(name) {
        if (name === 'stats') refresh().catch(() => {});
      },
    });
    refresh().catch(() => {});
    conn.onPoll(refresh);
  }

  // ---- start ---------------------------------------------------------------------------------

  const conn = new Connection();
  const store = new OpStore();
  const pages = {
    overview: overviewPage,
    operations: operationsPage,
    operation: operationPage,
    activity: (c, s) => {
      c.subscribe('operations', operationsRoom(s, () => {}));
      activityPage(c, s);
    },
    rooms: roomsPage,
  };
  const page = pages[document.body.dataset.page];
  if (page) page(conn, store);
  conn.start();
  // For debugging from the console; the page does not depend on it.
  window.switchyard = { conn, store, config: CONFIG };
})();
