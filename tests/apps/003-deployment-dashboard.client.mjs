// Seed 003's client (static/js/websocket.js, from the write-up at /work/shared/seeds/003),
// shared by 003-deployment-dashboard.test.mjs and 003-deployment-dashboard.hooks.test.mjs.
// The dashboard's base.html loads "Socket.IO client library (CDN): v4.5.4": that version, the
// npm alias tests/js pins for it (`emitWithAck` does not exist before 4.6; this client never
// needed it).
import { io } from "socket.io-client-454";

// ---- the app's client, as its write-up describes it ----------------------------------------

/** websocket.js, with the DOM reduced to the state it shows. */
export function createDashboardClient(url, ioOptions = {}) {
  const ui = {
    badge: "Connecting...",
    stats: null,
    deployments: new Map(), // hostname -> row
    highlighted: [],
    systemStatus: null,
    toasts: [],
    statusMessages: [],
  };
  // As shipped: Socket.IO's automatic reconnection, 10 attempts with a 3-second delay.
  const socket = io(url, { reconnection: true, reconnectionAttempts: 10, reconnectionDelay: 3000, ...ioOptions });

  socket.on("connect", () => (ui.badge = "Connected"));
  socket.on("disconnect", () => (ui.badge = "Disconnected"));
  socket.on("connect_error", () => (ui.badge = "Disconnected"));

  socket.on("status", (data) => ui.statusMessages.push(data));
  socket.on("stats_update", (data) => updateDashboardStats(data));
  socket.on("deployment_update", (data) => updateDeploymentRow(data));
  socket.on("deployments_refresh", (data) => refreshDeploymentsTable(data));
  socket.on("system_status", (data) => updateSystemStatus(data));

  function updateDashboardStats(data) {
    ui.stats = data;
  }
  function statusBadge(status) {
    if (status === "completed" || status === "success") return "success";
    if (status === "failed") return "danger";
    return "warning";
  }
  function updateDeploymentRow(data) {
    if (!data || typeof data.hostname !== "string") return; // malformed: ignored, as websocket.js does
    ui.deployments.set(data.hostname, { ...ui.deployments.get(data.hostname), ...data, badge: statusBadge(data.status) });
    ui.highlighted.push(data.hostname);
    if (data.status === "failed") ui.toasts.push({ level: "danger", text: `Deployment failed: ${data.hostname}` });
  }
  function refreshDeploymentsTable(data) {
    ui.deployments = new Map((data.deployments || []).map((d) => [d.hostname, { ...d, badge: statusBadge(d.status) }]));
  }
  function updateSystemStatus(data) {
    ui.systemStatus = data;
    const pct = data?.disk_space?.percent_used;
    if (typeof pct === "number" && pct > 90) ui.toasts.push({ level: "danger", text: "Disk space low" });
  }

  return {
    socket,
    ui,
    requestStats: () => socket.emit("request_stats"),
    requestDeployments: () => socket.emit("request_deployments"),
    requestSystemStatus: () => socket.emit("request_system_status"),
    triggerDeploymentUpdate: (d) => socket.emit("trigger_deployment_update", d),
  };
}

// ---- waiting, with a timeout ----------------------------------------------------------------

export function within(promise, what, ms = 15_000) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

