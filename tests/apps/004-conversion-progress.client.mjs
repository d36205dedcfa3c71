// Seed 004's client, written from its write-up (/work/shared/seeds/004): the
// ConversionWebSocket service (frontend/src/services/websocket.ts) and the ProgressContext's
// state and actions (frontend/src/contexts/ProgressContext.tsx) without React. The WebSocket is
// the `ws` package's, which has the browser's API (onopen/onmessage/onclose/onerror, readyState,
// close codes); `localStorage` is a Map-backed stand-in with the browser's methods. Shared by
// 004-conversion-progress.test.mjs and 004-conversion-progress.hooks.test.mjs.
import WebSocket from "ws";

/** The browser's localStorage, in memory. */
export function memoryStorage() {
  const m = new Map();
  return {
    getItem: (k) => (m.has(k) ? m.get(k) : null),
    setItem: (k, v) => m.set(k, String(v)),
    removeItem: (k) => m.delete(k),
  };
}

const TERMINAL = ["completed", "failed", "cancelled"];

/** ConversionStatus, as the TypeScript interface checks it: invalid messages are ignored. */
function isConversionStatus(m) {
  return (
    m !== null &&
    typeof m === "object" &&
    typeof m.job_id === "string" &&
    typeof m.status === "string" &&
    typeof m.progress === "number" &&
    typeof m.message === "string" &&
    typeof m.created_at === "string"
  );
}

/**
 * ConversionWebSocket: connection management, exponential backoff (1 s, doubling, at most
 * 30 s, 5 attempts), then HTTP polling of the status every 3 s. The timings are the write-up's
 * defaults; `options` exists in the app for tests (as the vitest mocks in the write-up do).
 */
export class ConversionWebSocket {
  constructor(apiBaseUrl, jobId, options = {}) {
    this.apiBaseUrl = apiBaseUrl;
    this.jobId = jobId;
    this.baseDelay = options.baseDelay ?? 1000;
    this.maxDelay = options.maxDelay ?? 30_000;
    this.maxAttempts = options.maxAttempts ?? 5;
    this.pollInterval = options.pollInterval ?? 3000;
    this.headers = options.headers; // what the browser would add (cookies) — see hooks test
    this.attempts = 0;
    this.messageHandlers = [];
    this.statusHandlers = [];
    this.ws = null;
    this.timer = null;
    this.pollTimer = null;
    this.finished = false;
    this.destroyed = false;
  }
  onMessage(f) {
    this.messageHandlers.push(f);
  }
  onStatus(f) {
    this.statusHandlers.push(f);
  }
  setStatus(s, error = null) {
    for (const f of this.statusHandlers) f(s, error);
  }
  deliver(m) {
    if (!isConversionStatus(m)) {
      console.warn("ignoring an invalid progress message", m);
      return;
    }
    if (TERMINAL.includes(m.status)) this.finished = true;
    for (const f of this.messageHandlers) f(m);
  }
  connect() {
    if (this.destroyed || this.finished) return;
    const url = this.apiBaseUrl.replace(/^http/, "ws") + `/api/v1/conversions/${this.jobId}/ws`;
    this.setStatus("connecting");
    const ws = new WebSocket(url, this.headers ? { headers: this.headers } : undefined);
    this.ws = ws;
    ws.onopen = () => {
      this.attempts = 0;
      this.setStatus("connected");
    };
    ws.onmessage = (e) => {
      let m;
      try {
        m = JSON.parse(e.data);
      } catch {
        console.warn("ignoring a message that is not JSON");
        return;
      }
      this.deliver(m);
    };
    ws.onerror = () => this.setStatus("error", "WebSocket error");
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      // After the terminal status the server closes: done, no reconnect.
      if (this.finished || this.destroyed) {
        this.setStatus("disconnected");
        return;
      }
      this.scheduleReconnect();
    };
  }
  scheduleReconnect() {
    if (this.attempts >= this.maxAttempts) {
      this.startPolling();
      return;
    }
    const delay = Math.min(this.baseDelay * 2 ** this.attempts, this.maxDelay);
    this.attempts += 1;
    this.setStatus("disconnected");
    this.timer = setTimeout(() => this.connect(), delay);
  }
  startPolling() {
    this.setStatus("disconnected", "Using fallback polling");
    this.polling = true;
    const poll = async () => {
      if (this.destroyed || this.finished) return;
      try {
        const res = await fetch(this.apiBaseUrl + `/api/v1/conversions/${this.jobId}/status`, {
          headers: this.headers,
        });
        if (res.ok) this.deliver(await res.json());
      } catch {
        // The next poll tries again.
      }
      if (!this.destroyed && !this.finished) this.pollTimer = setTimeout(poll, this.pollInterval);
    };
    poll();
  }
  disconnect() {
    this.destroyed = true;
    clearTimeout(this.timer);
    clearTimeout(this.pollTimer);
    if (this.ws) this.ws.close();
  }
}

/** ProgressContext's state and actions, with its localStorage persistence. */
export function createProgress(apiBaseUrl, { storage, persistenceKey = "default", enablePersistence = true, wsOptions } = {}) {
  const key = `modporter_progress_${persistenceKey}`;
  const historyKey = `modporter_progress_history_${persistenceKey}`;
  const saved = enablePersistence ? storage.getItem(key) : null;
  const state = {
    status: saved ? JSON.parse(saved) : null,
    connectionStatus: "disconnected",
    usingWebSocket: true,
    connectionError: null,
    history: enablePersistence ? JSON.parse(storage.getItem(historyKey) || "[]") : [],
  };
  let socket = null;
  const listeners = [];
  const actions = {
    updateStatus(status) {
      state.status = status;
      state.history = [...state.history, status].slice(-50);
      if (enablePersistence) {
        storage.setItem(key, JSON.stringify(status));
        storage.setItem(historyKey, JSON.stringify(state.history));
      }
      for (const f of listeners) f(status);
    },
    clearStatus() {
      state.status = null;
      if (enablePersistence) storage.removeItem(key);
    },
    setConnectionStatus(s) {
      state.connectionStatus = s;
    },
    setConnectionError(e) {
      state.connectionError = e;
    },
    connectToJob(jobId) {
      actions.disconnectFromJob();
      socket = new ConversionWebSocket(apiBaseUrl, jobId, wsOptions);
      socket.onMessage((m) => actions.updateStatus(m));
      socket.onStatus((s, error) => {
        actions.setConnectionStatus(s);
        actions.setConnectionError(error);
        if (error === "Using fallback polling") state.usingWebSocket = false;
      });
      socket.connect();
    },
    disconnectFromJob() {
      if (socket) socket.disconnect();
      socket = null;
    },
  };
  return { state, actions, onUpdate: (f) => listeners.push(f), socket: () => socket };
}
