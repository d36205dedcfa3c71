//! Running a configured program as a child process.
//!
//! Its params reach it as one JSON object in the environment variable `SWITCHYARD_PARAMS`
//! and, for kinds with `stdin = "params"`, on stdin (the JSON and a newline, then end of file);
//! otherwise stdin is `/dev/null`. Only string params validated against their patterns are ever
//! placed in argv (`config.rs`).
//!
//! The child gets its own process group so cancel and timeout reach everything it started
//! (SIGTERM to the group, SIGKILL after the grace period): no orphans. Output is read line by
//! line; a stdout line that is a JSON object with `progress`, `stage`, `message` or `result`
//! is a status update, every other line is a log line.
//!
//! The child dies with the server: it asks the kernel for SIGKILL when its parent goes
//! (`PR_SET_PDEATHSIG`), so a server killed with SIGKILL, or crashing, leaves no command running
//! that start-up recovery has marked interrupted. Caveats, by design of the kernel feature:
//! * The signal follows the *thread* that forked the child, not the process. Commands are
//!   spawned by operation actors on the arbiter of the operation manager, which is the main
//!   thread of the `switchyard` binary (it lives as long as the process). An embedder that
//!   runs the server on a thread of its own kills the commands when that thread ends.
//! * It reaches the child only. Processes the command started itself survive it unless the
//!   command `exec`s its last step or they ask for the same signal (e.g. `setpriv --pdeathsig
//!   KILL`); a graceful stop, cancel and timeout do reach the whole process group.

use std::collections::BTreeMap;
use std::process::Stdio;

use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::process::Command;
use tokio_util::codec::{FramedRead, LinesCodec};

use crate::operations::config::PARAMS_ENV;
use crate::operations::{Update, MAX_LOG_LINE};

/// What the running program produced.
#[derive(Debug)]
pub enum Output {
    Line {
        stream: &'static str,
        line: String,
    },
    /// The program ended; `code` is `None` when a signal ended it.
    Exited {
        code: Option<i32>,
        signal: Option<i32>,
    },
}

pub struct Spawned {
    /// Process id, which is also its process group id.
    pub pgid: i32,
    pub output: BoxStream<'static, Output>,
}

/// Variables never passed to commands: the server's own secrets.
const SCRUBBED_ENV: &[&str] = &["SWITCHYARD_JWT_SECRET", "DATABASE_URL"];

/// What a command is given besides its argv.
pub struct Input<'a> {
    pub workdir: Option<&'a str>,
    /// The kind's extra environment.
    pub env: &'a BTreeMap<String, String>,
    /// The operation's params as one JSON object (`SWITCHYARD_PARAMS`).
    pub params_json: &'a str,
    /// Also write `params_json` and a newline to stdin (else stdin is `/dev/null`).
    pub params_on_stdin: bool,
}

pub fn spawn(argv: &[String], input: Input<'_>) -> std::io::Result<Spawned> {
    let Some((program, args)) = argv.split_first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "empty command",
        ));
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if input.params_on_stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        // Dropped only when its operation actor stops with the command still running (the
        // server is going away): never leave it behind.
        .kill_on_drop(true);
    let parent = std::process::id();
    // SAFETY: runs in the forked child before exec; prctl, getppid and the error constructor
    // are async-signal-safe (no allocation: the error is a raw OS code).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl: then nobody will signal us.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    cmd.envs(input.env);
    // After the kind's env (which may not name it, see `config.rs`): the params are ours.
    cmd.env(PARAMS_ENV, input.params_json);
    if let Some(dir) = input.workdir {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        let mut data = Vec::with_capacity(input.params_json.len() + 1);
        data.extend_from_slice(input.params_json.as_bytes());
        data.push(b'\n');
        // A task of its own: a command that reads its params late (or never) must not hold up
        // its output. It ends when everything is written or the command closes the pipe
        // (which it does by exiting, at the latest); dropping `stdin` is the end of file.
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            let _ = stdin.write_all(&data).await;
        });
    }
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out = lines(stdout, "stdout");
    let err = lines(stderr, "stderr");
    let exit = stream::once(async move {
        match child.wait().await {
            Ok(status) => {
                use std::os::unix::process::ExitStatusExt;
                Output::Exited {
                    code: status.code(),
                    signal: status.signal(),
                }
            }
            Err(_) => Output::Exited {
                code: None,
                signal: None,
            },
        }
    });
    // All output first, then the exit: the final status never overtakes its last lines.
    let output = stream::select(out, err).chain(exit).boxed();
    Ok(Spawned { pgid, output })
}

/// A stream of the lines of one pipe (absent pipe: no lines).
fn lines<R>(pipe: Option<R>, stream: &'static str) -> BoxStream<'static, Output>
where
    R: tokio::io::AsyncRead + Send + Unpin + 'static,
{
    match pipe {
        Some(r) => FramedRead::new(r, LinesCodec::new_with_max_length(MAX_LOG_LINE))
            .filter_map(move |l| async move {
                match l {
                    Ok(line) => Some(Output::Line { stream, line }),
                    Err(tokio_util::codec::LinesCodecError::MaxLineLengthExceeded) => {
                        Some(Output::Line {
                            stream,
                            line: format!("[line longer than {MAX_LOG_LINE} bytes dropped]"),
                        })
                    }
                    Err(_) => None,
                }
            })
            .boxed(),
        None => stream::empty().boxed(),
    }
}

/// Sends `signal` to the whole process group. Harmless if it is already gone.
pub fn signal_group(pgid: i32, signal: i32) {
    if pgid > 0 {
        // SAFETY: kill(2) with a negative pid signals a process group; it has no memory
        // effects in this process.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

/// True while any process of the group exists.
pub fn group_alive(pgid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    pgid > 0 && unsafe { libc::kill(-pgid, 0) } == 0
}

/// A stdout line that is a status update, if it is one.
pub fn status_line(line: &str) -> Option<Update> {
    let t = line.trim();
    if !t.starts_with('{') {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(t).ok()?;
    let obj = v.as_object()?;
    if ![
        "progress",
        "stage",
        "message",
        "result",
        "eta_seconds",
        "details",
    ]
    .iter()
    .any(|k| obj.contains_key(*k))
    {
        return None;
    }
    Some(Update {
        progress: obj.get("progress").and_then(|p| p.as_f64()),
        stage: obj
            .get("stage")
            .and_then(|s| s.as_str())
            .map(str::to_string),
        message: obj
            .get("message")
            .and_then(|s| s.as_str())
            .map(str::to_string),
        eta_seconds: obj.get("eta_seconds").and_then(|e| e.as_f64()),
        details: obj.get("details").filter(|d| !d.is_null()).cloned(),
        result: obj.get("result").cloned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_status_lines_are_updates_and_other_lines_are_logs() {
        let u =
            status_line(r#"{"progress":40,"stage":"pull","message":"Pulling images"}"#).unwrap();
        assert_eq!(u.progress, Some(40.0));
        assert_eq!(u.stage.as_deref(), Some("pull"));
        assert!(status_line("plain text").is_none());
        assert!(status_line(r#"{"unrelated":1}"#).is_none());
        assert!(status_line("{broken").is_none());
        let r = status_line(r#"{"result":{"url":"/x"}}"#).unwrap();
        assert_eq!(r.result, Some(serde_json::json!({"url": "/x"})));
    }
}
