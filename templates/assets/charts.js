// Switchyard dashboard: the views that draw a recent past. Served like switchyard.js, loaded
// before it, no dependencies; it defines `window.SwitchyardCharts` and touches nothing until
// switchyard.js's page controllers call it:
//
//   overviewCharts  the overview's charts of the last 15 minutes: connections, messages in and
//                   out per second, operations started / finished / failed and slow-consumer
//                   evictions per stats tick. Inline SVG built with DOM calls (the pages' CSP
//                   allows no inline script or style attribute; SVG attributes are neither).
//                   Backfilled from `GET /api/stats/recent` (the server keeps the last 15
//                   minutes, so a reload or a new tab is not empty), then one point per `stats`
//                   event of the `system` room.
//   roomPanel       the rooms page's panel for one room: its recent history (REST, then live
//                   from the room) and, for admins, a publish console.
//
// The page controllers pass in what they own (the REST helper, the live connection), so this
// file never opens a connection of its own.
'use strict';

(() => {
  const SVG_NS = 'http://www.w3.org/2000/svg';
  const WINDOW_MS = 15 * 60 * 1000;
  // A gap longer than this many stats intervals breaks the line (a restart, a lost connection)
  // instead of drawing a slope across time nobody measured.
  const GAP_INTERVALS = 3;
  // Drawing area in viewBox units; the SVG scales to the card's width.
  // About the card's width at a desktop's four charts a row, so text keeps its size.
  const W = 240, H = 100, LEFT = 30, RIGHT = 4, TOP = 8, BOTTOM = 16;
  // A server younger than the window is drawn over its whole life (at least a minute), so a
  // fresh start does not squeeze everything against "now".
  const MIN_SPAN_MS = 60 * 1000;

  const CHARTS = [
    { id: 'connections', title: 'Connections', series: [{ key: 'connections', label: 'open' }] },
    {
      id: 'messages', title: 'Messages per second', unit: '/s', series: [
        { key: 'messages_in_per_sec', label: 'in' },
        { key: 'messages_out_per_sec', label: 'out' },
      ],
    },
    {
      id: 'operations', title: 'Operations per tick', series: [
        { key: 'operations_started', label: 'started' },
        { key: 'operations_finished', label: 'finished' },
        { key: 'operations_failed', label: 'failed' },
      ],
    },
    { id: 'evictions', title: 'Evictions per tick', series: [{ key: 'slow_consumer_evictions', label: 'slow consumers' }] },
  ];

  const numberFormat = new Intl.NumberFormat(undefined, { maximumFractionDigits: 2 });
  const compactFormat = new Intl.NumberFormat(undefined, { notation: 'compact', maximumFractionDigits: 1 });
  const fmt = (v) => (v === null || v === undefined || Number.isNaN(v) ? '–' : numberFormat.format(v));

  /** A span back from now as an axis label: "−15 min", "−40 s". */
  function ago(ms) {
    const s = Math.round(ms / 1000);
    return s >= 120 ? `−${Math.round(s / 60)} min` : `−${s} s`;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  }

  function html(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else e.setAttribute(k, String(v));
    }
    e.append(...children);
    return e;
  }

  /** 1, 2 or 5 times a power of ten at or above `v`, so axis labels read well. */
  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  /** One chart: a figure with its caption (title, each series' latest value), the SVG and a
   *  text alternative. `draw(points, now)` redraws it from samples sorted by `at_ms`. */
  class LineChart {
    constructor(def) {
      this.def = def;
      const titleId = `chart-${def.id}-title`;
      this.values = def.series.map((s, i) => html('span', { class: `chart-value s${i}`, 'data-series': s.key, text: '–' }));
      const legend = html('span', { class: 'chart-legend' }, ...def.series.flatMap((s, i) => [
        html('span', { class: `chart-key s${i}`, 'aria-hidden': 'true' }),
        html('span', { class: 'chart-label', text: ` ${s.label} ` }),
        this.values[i],
      ]));
      this.svg = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', class: 'chart-svg', focusable: 'false' });
      this.grid = svg('g', { class: 'chart-grid' });
      this.lines = def.series.map((s, i) => svg('path', { class: `chart-line s${i}`, 'data-series': s.key, d: '' }));
      this.svg.append(this.grid, ...this.lines);
      this.text = html('p', { class: 'visually-hidden', 'data-role': 'summary' });
      this.root = html('figure', { class: 'chart', 'data-chart': def.id, 'aria-labelledby': titleId },
        html('figcaption', {}, html('span', { class: 'chart-title', id: titleId, text: def.title }), legend),
        this.svg, this.text);
    }

    draw(points, now, intervalMs) {
      const def = this.def;
      const span = Math.min(WINDOW_MS, Math.max(MIN_SPAN_MS, points.length ? now - points[0].at_ms : 0));
      const start = now - span;
      let max = 0;
      for (const p of points) for (const s of def.series) max = Math.max(max, Number(p[s.key]) || 0);
      const top = niceMax(max);
      const x = (t) => LEFT + ((t - start) / span) * (W - LEFT - RIGHT);
      const y = (v) => TOP + (1 - v / top) * (H - TOP - BOTTOM);

      // Axes: 0, half and the top on the left; the span's start, two thirds and "now" along
      // the bottom.
      const grid = [];
      for (const v of [0, top / 2, top]) {
        grid.push(svg('line', { x1: LEFT, x2: W - RIGHT, y1: y(v), y2: y(v), class: v === 0 ? 'axis' : 'rule' }));
        const label = svg('text', { x: LEFT - 4, y: y(v) + 3, 'text-anchor': 'end', class: 'tick' });
        label.textContent = compactFormat.format(v);
        grid.push(label);
      }
      for (const [t, text, anchor] of [[start, ago(span), 'start'], [start + span / 3, ago((2 * span) / 3), 'middle'], [start + (2 * span) / 3, ago(span / 3), 'middle'], [now, 'now', 'end']]) {
        const label = svg('text', { x: x(t), y: H - 4, 'text-anchor': anchor, class: 'tick' });
        label.textContent = text;
        grid.push(label);
      }
      this.grid.replaceChildren(...grid);

      const gap = Math.max(intervalMs || 0, 1000) * GAP_INTERVALS;
      const latest = points[points.length - 1];
      def.series.forEach((s, i) => {
        let d = '';
        let prev = null;
        for (const p of points) {
          const v = Number(p[s.key]);
          if (!Number.isFinite(v)) { prev = null; continue; }
          const cmd = prev === null || p.at_ms - prev > gap ? 'M' : 'L';
          d += `${cmd}${x(p.at_ms).toFixed(1)} ${y(v).toFixed(1)}`;
          prev = p.at_ms;
        }
        this.lines[i].setAttribute('d', d);
        const now_ = latest ? latest[s.key] : undefined;
        // For tests and curious readers: the latest value, the highest and the sum over the
        // window (the sum is what "how many in 15 minutes" means for the per-tick counts).
        const vs = points.map((p) => Number(p[s.key])).filter(Number.isFinite);
        this.lines[i].dataset.latest = now_ === undefined ? '' : String(now_);
        this.lines[i].dataset.max = vs.length ? String(Math.max(...vs)) : '';
        this.lines[i].dataset.total = String(vs.reduce((a, v) => a + v, 0));
        this.values[i].textContent = `${fmt(now_)}${def.unit || ''}`;
      });

      // The text alternative: each series now, its lowest and highest over the window.
      const parts = def.series.map((s) => {
        const vs = points.map((p) => Number(p[s.key])).filter(Number.isFinite);
        if (!vs.length) return `${s.label}: no data yet`;
        return `${s.label} ${fmt(vs[vs.length - 1])}${def.unit || ''} now, lowest ${fmt(Math.min(...vs))}, highest ${fmt(Math.max(...vs))}`;
      });
      const summary = `${def.title}, last ${ago(span).slice(1)} (${points.length} samples): ${parts.join('; ')}.`;
      this.svg.setAttribute('aria-label', summary);
      this.text.textContent = summary;
      this.root.dataset.points = String(points.length);
      this.root.dataset.firstAt = points.length ? String(points[0].at_ms) : '';
    }
  }

  /**
   * The overview's charts in `root`. deps: `api(path)` (REST with the page's token).
   * Returns `{add(stats), backfill()}`: `add` takes a `stats` event, `backfill` merges
   * `/api/stats/recent` (on load and after every reconnect, to fill what the page missed).
   */
  function overviewCharts(root, { api }) {
    if (!root) return { add() {}, backfill: async () => {} };
    const charts = CHARTS.map((def) => new LineChart(def));
    root.replaceChildren(...charts.map((c) => c.root));
    /** at_ms → sample; one node's (the one serving this page, once known). */
    const points = new Map();
    let node = null;
    let intervalMs = 0;
    let scheduled = false;

    function render() {
      if (scheduled) return;
      scheduled = true;
      requestAnimationFrame(() => {
        scheduled = false;
        const now = Date.now();
        for (const t of points.keys()) if (t < now - WINDOW_MS) points.delete(t);
        const sorted = [...points.values()].sort((a, b) => a.at_ms - b.at_ms);
        for (const c of charts) c.draw(sorted, now, intervalMs);
      });
    }

    function put(s) {
      if (!s || typeof s.at_ms !== 'number') return;
      points.set(s.at_ms, s);
    }

    // Keeps the time axis moving between ticks (and old points leaving on the left).
    setInterval(render, 5000);
    render();

    return {
      add(stats) {
        if (!stats || typeof stats.heartbeat_ms !== 'number') return;
        // On a cluster every node publishes into `system`: chart the serving node's figures,
        // as its /api/stats/recent does (the Nodes table lists the others).
        if (node && stats.node && stats.node !== node) return;
        if (!intervalMs && stats.interval_ms) intervalMs = stats.interval_ms;
        put({ ...stats, at_ms: stats.heartbeat_ms });
        render();
      },
      async backfill() {
        const body = await api('/api/stats/recent');
        if (!body) return;
        if (body.node && body.node !== node) {
          node = body.node;
          for (const [t, p] of points) if (p.node && p.node !== node) points.delete(t);
        }
        intervalMs = body.interval_ms || intervalMs;
        for (const s of body.samples || []) put(s);
        render();
      },
    };
  }

  // ---- room panel ------------------------------------------------------------------------

  // The newest messages the panel shows; the room may keep more (GET /api/rooms/{room}/history).
  const HISTORY_SHOWN = 100;

  /**
   * The rooms page's panel for one room at a time. deps: `api(path, opts)`, `watch(room,
   * handlers)` (follows a room live; returns a function that stops) and `ApiError`.
   * Returns `{open(room), setAdmin(bool)}`.
   */
  function roomPanel(root, { api, watch, ApiError }) {
    const title = root.querySelector('#room-title');
    const list = root.querySelector('#room-history');
    const empty = root.querySelector('#room-history-empty');
    const note = root.querySelector('#room-history-note');
    const form = root.querySelector('#room-console');
    const eventInput = root.querySelector('#console-event');
    const dataInput = root.querySelector('#console-data');
    const retainInput = root.querySelector('#console-retain');
    const error = root.querySelector('#console-error');
    const result = root.querySelector('#console-result');
    const submit = form.querySelector('button[type="submit"]');
    let room = null;
    let stop = null;
    let admin = false;
    /** offset → message frame, of the room shown. */
    const shown = new Map();

    function item(m) {
      let data = '';
      try { data = JSON.stringify(m.data); } catch { data = String(m.data); }
      if (data && data.length > 400) data = `${data.slice(0, 400)}…`;
      const who = m.from && (m.from.name || m.from.user);
      return html('li', { 'data-offset': String(m.offset) },
        html('span', { class: 'offset', text: `#${m.offset}` }),
        html('span', { class: 'event', text: m.event }),
        who ? html('span', { class: 'muted small', text: `from ${who}` }) : '',
        html('code', { class: 'data', text: data }));
    }

    function render() {
      const newest = [...shown.values()].sort((a, b) => b.offset - a.offset).slice(0, HISTORY_SHOWN);
      // Nodes already shown stay (no flicker for a reader); only new ones are built.
      const have = new Map([...list.children].map((li) => [li.dataset.offset, li]));
      list.replaceChildren(...newest.map((m) => have.get(String(m.offset)) || item(m)));
      if (shown.size > HISTORY_SHOWN) {
        shown.clear();
        for (const m of newest) shown.set(m.offset, m);
      }
      empty.hidden = newest.length > 0;
    }

    function add(frame) {
      if (!frame || typeof frame.offset !== 'number' || shown.has(frame.offset)) return;
      shown.set(frame.offset, frame);
      render();
    }

    async function loadHistory(forRoom) {
      note.textContent = '';
      try {
        const body = await api(`/api/rooms/${encodeURIComponent(forRoom)}/history`);
        if (room !== forRoom) return;
        for (const m of body.messages || []) if (typeof m.offset === 'number') shown.set(m.offset, m);
        render();
        note.textContent = body.complete === false ? 'Older messages are no longer kept.' : '';
      } catch (e) {
        if (room !== forRoom) return;
        note.textContent = e instanceof ApiError && e.status === 403
          ? 'This token may not see this room.'
          : `Could not load the history: ${e.message}`;
      }
    }

    function open(name) {
      if (room === name) return;
      if (stop) stop();
      room = name;
      shown.clear();
      list.replaceChildren();
      title.textContent = name;
      root.hidden = false;
      root.dataset.room = name;
      result.textContent = '';
      error.hidden = true;
      dataInput.removeAttribute('aria-invalid');
      form.hidden = !admin;
      empty.hidden = true;
      const forRoom = name;
      stop = watch(name, {
        event(_event, _data, frame) { if (room === forRoom && frame && frame.type === 'message') add(frame); },
        reset() { if (room === forRoom) loadHistory(forRoom); },
        joined(_f, info) { if (room === forRoom && info && info.resumed && !info.recovered) loadHistory(forRoom); },
        error(f) { if (room === forRoom) note.textContent = `Not live: ${(f && f.message) || 'the room refused this page'}`; },
      });
      loadHistory(forRoom);
    }

    function fail(text) {
      error.textContent = text;
      error.hidden = false;
    }

    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (!room || !admin) return;
      error.hidden = true;
      result.textContent = '';
      dataInput.removeAttribute('aria-invalid');
      const event = eventInput.value.trim();
      if (!event) {
        fail('Give the event a name.');
        eventInput.focus();
        return;
      }
      let data = null;
      const text = dataInput.value.trim();
      if (text) {
        try {
          data = JSON.parse(text);
        } catch (e) {
          dataInput.setAttribute('aria-invalid', 'true');
          fail(`Data is not valid JSON: ${e.message}`);
          dataInput.focus();
          return;
        }
      }
      const to = room;
      submit.disabled = true;
      try {
        const body = { event, data };
        if (retainInput && retainInput.checked) body.retain = true;
        const res = await api(`/api/rooms/${encodeURIComponent(to)}/publish`, { method: 'POST', body });
        if (room === to) {
          result.textContent = `Published “${event}” to ${to} at offset ${res.offset}.`;
          // Shown at once even when the live connection is down (it is the same message the
          // room sends, so it is never shown twice).
          loadHistory(to);
        }
      } catch (e) {
        fail(`Not published: ${e.message}${e.code ? ` (${e.code})` : ''}`);
      } finally {
        submit.disabled = false;
      }
    });

    return {
      open,
      setAdmin(yes) {
        admin = Boolean(yes);
        form.hidden = !admin || !room;
      },
      get room() { return room; },
    };
  }

  window.SwitchyardCharts = { overviewCharts, roomPanel };
})();
