//! The cluster's node table: one Redis hash, `{prefix}:nodes`, node name -> that node's latest
//! figures (JSON), written by each node on its stats tick and read by the dashboard. A node that
//! dies stops writing: its heartbeat ages in the table (the dashboard says so), and after an
//! hour of silence the next reader removes it.

use std::sync::Arc;
use std::time::Duration;

use crate::broker::{NodeStats, NodesView, ViewFuture};
use crate::error_code::Refusal;

use super::RedisLog;

/// A node silent this long leaves the table.
const FORGET_AFTER: Duration = Duration::from_secs(3_600);

impl RedisLog {
    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
}

impl NodesView for Arc<RedisLog> {
    fn report(&self, stats: NodeStats) -> ViewFuture<Result<(), Refusal>> {
        let this = self.clone();
        Box::pin(async move {
            let json = serde_json::to_string(&stats)
                .map_err(|e| Refusal::new(crate::error_code::ErrorCode::Internal, e.to_string()))?;
            let key = this.nodes_key();
            // Idempotent, so the link may retry it; the table expires with the cluster.
            this.link
                .cmd::<()>(
                    redis::cmd("HSET")
                        .arg(&key)
                        .arg(&stats.node)
                        .arg(json)
                        .to_owned(),
                )
                .await?;
            this.link
                .cmd::<()>(
                    redis::cmd("PEXPIRE")
                        .arg(&key)
                        .arg(FORGET_AFTER.as_millis() as u64)
                        .to_owned(),
                )
                .await
        })
    }

    fn nodes(&self) -> ViewFuture<Result<Vec<NodeStats>, Refusal>> {
        let this = self.clone();
        Box::pin(async move {
            let key = this.nodes_key();
            let all: Vec<(String, String)> = this
                .link
                .cmd(redis::cmd("HGETALL").arg(&key).to_owned())
                .await?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let mut nodes = Vec::with_capacity(all.len());
            let mut gone = Vec::new();
            for (name, json) in all {
                match serde_json::from_str::<NodeStats>(&json) {
                    Ok(n)
                        if now.saturating_sub(n.heartbeat_ms) < FORGET_AFTER.as_millis() as u64 =>
                    {
                        nodes.push(n)
                    }
                    // Long silent, or written by a version that wrote something else.
                    _ => gone.push(name),
                }
            }
            if !gone.is_empty() {
                // Best effort: the next reader tries again.
                let _ = this
                    .link
                    .cmd::<()>(redis::cmd("HDEL").arg(&key).arg(gone).to_owned())
                    .await;
            }
            nodes.sort_by(|a, b| a.node.cmp(&b.node));
            Ok(nodes)
        })
    }
}
