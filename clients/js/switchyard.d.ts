// Types of the Switchyard client (switchyard.js). Served at /client.d.ts.

/** What a status badge shows. `idle` before `connect()`, `closed` after `close()`. */
export type ConnectionState =
  | 'idle'
  | 'connecting'
  | 'connected'
  | 'reconnecting'
  | 'polling'
  | 'offline'
  | 'closed';

export interface BackoffOptions {
  /** First wait, in ms. Default 500. */
  baseMs?: number;
  /** Longest wait, in ms. Default 10000. */
  maxMs?: number;
  /** Growth per failed attempt. Default 2. */
  factor?: number;
  /** Share of each wait taken off at random (0-1), so clients do not retry in step. Default 0.5. */
  jitter?: number;
}

export interface SwitchyardOptions {
  /** The server's base URL (`http(s)://host:port`). Default: the origin client.js was loaded from, else the page's. */
  url?: string;
  /** A JWT (docs/security.md). Sent in the first frame and as `Authorization` on REST calls. */
  token?: string | null;
  /**
   * Called before each connection (and by REST calls without a token yet); `refused` carries the
   * server's message when the last token was refused, so the app can fetch or ask for a new one.
   */
  getToken?: ((info: { refused?: string }) => string | null | Promise<string | null>) | null;
  /** Open mode only: the identity to declare (`{user, name}`, or a user id). */
  user?: { user: string; name?: string } | string | null;
  /** Connect in the constructor. Default true. */
  autoConnect?: boolean;
  backoff?: BackoffOptions;
  /** Failed WebSocket attempts in a row before the fallbacks (SSE, REST polling) start; 0 never. Default 3. */
  fallbackAfter?: number;
  /** Use Server-Sent Events for watched operations in the fallback (else REST polling). Default true. */
  sse?: boolean;
  /** REST polling interval while in the fallback, ms. Default 3000. */
  pollMs?: number;
  /** Ping interval, ms. Default 15000. */
  pingMs?: number;
  /** A socket silent this long is given up, ms. Default 40000. */
  silenceMs?: number;
  /** A socket not ready this long after opening is given up, ms. Default 20000. */
  connectTimeoutMs?: number;
  /** How long a publish, start or cancel waits for its answer, ms. Default 10000. */
  requestTimeoutMs?: number;
  /** Log lines per REST page when filling a gap or polling. Default 1000. */
  logPageLines?: number;
  /** Multi-room message ids remembered to deliver such a message once. Default 128. */
  dedupeWindow?: number;
  /** Where `persist` keeps offsets. Default `sessionStorage` (per tab, survives a reload). */
  storage?: Pick<Storage, 'getItem' | 'setItem'> | null;
  /** Prefix of the storage keys. Default `switchyard:`. */
  storagePrefix?: string;
  /** `fetch`/`EventSource` credentials. Default `same-origin`. */
  credentials?: RequestCredentials;
  /** The WebSocket path. Default `/ws`. */
  wsPath?: string;
}

export interface User {
  user: string;
  name?: string;
  session?: string;
}

export interface RoomMessage<T = unknown> {
  room: string;
  event: string;
  data: T;
  /** The room offset (null for an operation's backfill frames). */
  offset: number | null;
  from: User | null;
  messageId: string | null;
  /** A retained message handed to a join that did not resume (its offset is not new). */
  retained: boolean;
  /** An operation room's backfill frame (status snapshot, missed lines), not a room message. */
  backfill: boolean;
  seq?: number;
  /** The frame as the server sent it. */
  frame: Record<string, unknown>;
}

export interface Position {
  epoch: string;
  offset: number;
}

export interface PresenceChange {
  room: string;
  /** Everyone present now (up to SWITCHYARD_PRESENCE_LIST_MAX). */
  presence: User[];
  count: number;
  joined: User[];
  left: User[];
}

export interface ResetInfo {
  /** `not_recovered`: the room could not replay what was missed; `gap`, `new_epoch`: from the server's `reset`. */
  reason: 'not_recovered' | 'gap' | 'new_epoch';
  epoch: string;
  offset: number;
}

export interface JoinOptions {
  /** Resume from here (e.g. kept by the app); otherwise from the last message delivered, or now. */
  since?: Position;
  /** Keep the position in `storage`, so a reloaded page resumes where it was. */
  persist?: boolean;
  /** An operation room joined by log offset instead of `since` (watchOperation does this for you). */
  logOffset?: number | ((info: { behind: boolean }) => number | Promise<number>);
  /** Poll the room's history over REST while in the fallback. Default true. */
  poll?: boolean;
  onMessage?: (message: RoomMessage) => void;
  onPresence?: (change: PresenceChange) => void;
  /** What was missed cannot be replayed: reload the room's state (e.g. over REST). */
  onReset?: (info: ResetInfo) => void;
  onJoined?: (frame: Record<string, unknown>, info: { resumed: boolean; recovered: boolean }) => void;
  onError?: (error: SwitchyardError) => void;
}

export interface PublishOptions {
  /** `true`: the room's retained message; `"event"`: the last of its event name. */
  retain?: boolean | 'event';
  /** `false`: everyone but this connection. */
  echo?: boolean;
}

export interface RoomHandle {
  readonly room: string;
  readonly position: Position | null;
  readonly presence: User[];
  readonly presenceCount: number;
  /** Resolves with the first `joined` frame; rejects if the join is refused. */
  readonly ready: Promise<Record<string, unknown>>;
  /** Resolves with the ack once the room has ordered the message. */
  publish(event: string, data?: unknown, options?: PublishOptions): Promise<{ room: string; offset: number }>;
  leave(): void;
}

export interface OperationStatus {
  id: string;
  kind: string;
  target: string;
  project: string | null;
  status: 'queued' | 'running' | 'cancelling' | 'completed' | 'failed' | 'cancelled';
  progress: number;
  stage: string | null;
  stages: { name: string; state: string; progress_from: number; progress_to: number }[];
  message: string | null;
  eta_seconds: number | null;
  details: unknown;
  result: unknown;
  error: { code: string; message: string; stage?: string | null } | null;
  params: unknown;
  log_offset: number;
  created_at: string;
  started_at: string | null;
  updated_at: string;
  finished_at: string | null;
  [field: string]: unknown;
}

export interface LogLine {
  offset: number;
  stream: 'stdout' | 'stderr' | 'system' | string;
  line: string;
  ts?: string;
}

export interface WatchOptions {
  /** The last log line the caller has already: lines after it are delivered. Default 0. */
  after?: number;
  /**
   * Keep the log offset and the last status in `storage` under this key prefix (`true`:
   * `switchyard:op:`): a reloaded page gets the last status at once and no line twice.
   */
  persist?: boolean | string;
  /** Every new status object (the snapshot first). */
  onProgress?: (status: OperationStatus) => void;
  /** When `status.status` changes. */
  onStatus?: (status: OperationStatus) => void;
  /** Each log line once, in order. */
  onLog?: (line: LogLine) => void;
  /** Once: the terminal status, after every log line. */
  onDone?: (status: OperationStatus) => void;
  onError?: (error: SwitchyardError) => void;
}

export interface OperationWatch {
  readonly id: string;
  readonly status: OperationStatus | null;
  readonly logOffset: number;
  /** `websocket`, `sse`, `poll`, or null while reconnecting. */
  readonly transport: 'websocket' | 'sse' | 'poll' | null;
  /** Resolves with the terminal status. */
  readonly done: Promise<OperationStatus>;
  stop(): void;
  cancel(): Promise<OperationStatus>;
}

export interface StartOptions {
  /** Required by the server: what the operation works on. */
  target: string;
  project?: string | number;
  /** Remembered in `storage`: the same key gives the operation it started, not a new one. */
  idempotencyKey?: string;
}

export class SwitchyardError extends Error {
  /** A stable server code (docs/protocol.md, "Errors") or `network`, `timeout`, `disconnected`, `closed`. */
  code: string;
  status?: number;
  body?: unknown;
  frame?: Record<string, unknown>;
}

export const DEFAULTS: Readonly<Required<Omit<SwitchyardOptions, 'backoff'>> & { backoff: Required<BackoffOptions> }>;

export class Switchyard {
  constructor(options?: SwitchyardOptions);
  readonly url: string;
  readonly state: ConnectionState;
  readonly transport: 'websocket' | 'fallback' | null;
  readonly session: string | null;
  readonly user: User | null;
  on(event: 'state', fn: (state: ConnectionState, previous: ConnectionState) => void): () => void;
  on(event: 'ready', fn: () => void): () => void;
  on(event: 'error', fn: (error: SwitchyardError) => void): () => void;
  on(event: 'welcome', fn: (frame: Record<string, unknown>) => void): () => void;
  off(event: string, fn: (...args: any[]) => void): void;
  connect(): Promise<void>;
  retryNow(): void;
  close(): void;
  backoffDelay(attempt: number): number;
  join(room: string, options?: JoinOptions): RoomHandle;
  onPoll(fn: () => unknown): () => void;
  watchOperation(id: string, options?: WatchOptions): OperationWatch;
  startOperation(kind: string, params: Record<string, unknown> | undefined, options: StartOptions): Promise<{ operation: OperationStatus; duplicate: boolean }>;
  cancelOperation(id: string): Promise<OperationStatus>;
  fetchJson<T = any>(path: string, init?: { method?: string; body?: unknown; headers?: Record<string, string> }): Promise<T>;
}

export default Switchyard;
