//! Settings as an operator meets them: `switchyard serve --help` against the README's table, and
//! the real binary reading a variable, a flag over a variable, and a refused value.

use std::collections::BTreeMap;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::helpers::*;

/// A setting's default as the README or `--help` states it: `None` when there is none to state
/// (unset, one per core, random).
type Defaults = BTreeMap<String, Option<String>>;

#[test]
fn serve_help_and_the_readme_table_list_the_same_settings_with_the_same_defaults() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--help"])
        // What `--help` shows of a variable depends on whether it is set.
        .env_clear()
        .output()
        .expect("the binary runs");
    let help = String::from_utf8(out.stdout).expect("help is UTF-8");
    assert!(out.status.success(), "{help}");
    let help = help_settings(&help);
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let mut readme = readme_settings(&readme);
    // The log filter is env_logger's, read before the command line (`serve --help` mentions it
    // below the list).
    assert_eq!(readme.remove("RUST_LOG"), Some(Some("info".into())));
    // Both lists are long enough that an empty parse cannot pass.
    assert!(help.len() >= 70, "--help lists only {help:?}");

    let missing_in_readme: Vec<_> = help.keys().filter(|v| !readme.contains_key(*v)).collect();
    let missing_in_help: Vec<_> = readme.keys().filter(|v| !help.contains_key(*v)).collect();
    assert!(
        missing_in_readme.is_empty(),
        "`switchyard serve --help` lists settings the README's table does not: {missing_in_readme:?}"
    );
    assert!(
        missing_in_help.is_empty(),
        "the README's table lists settings `switchyard serve --help` does not: {missing_in_help:?}"
    );
    let differ: Vec<_> = help
        .iter()
        .filter(|(var, default)| readme[*var] != **default)
        .map(|(var, default)| format!("{var}: --help {default:?}, README {:?}", readme[var]))
        .collect();
    assert!(differ.is_empty(), "defaults differ: {differ:#?}");
}

/// Each argument's `[env: VAR=…]` and `[default: …]` in clap's help. An argument's block starts
/// at its `-x`/`--name` line; its help and brackets follow on the same or the next lines.
fn help_settings(help: &str) -> Defaults {
    let mut blocks: Vec<String> = Vec::new();
    for line in help.lines() {
        if line.trim_start().starts_with('-') {
            blocks.push(String::new());
        }
        if let Some(block) = blocks.last_mut() {
            block.push(' ');
            block.push_str(line.trim());
        }
    }
    let bracket = |block: &str, open: &str| {
        let start = block.find(open)? + open.len();
        let len = block[start..].find(']')?;
        Some(block[start..start + len].to_string())
    };
    blocks
        .iter()
        .filter_map(|block| {
            // `VAR=` (unset when the help was printed) or `VAR` (its value hidden).
            let var = bracket(block, "[env: ")?;
            let var = var.split('=').next().unwrap_or_default().to_string();
            Some((var, bracket(block, "[default: ")))
        })
        .collect()
}

/// The rows of the README's settings table: `| `VAR` | default | meaning |`. A default in
/// backticks (`8080`, `0` (off)) is a value `--help` must show; prose (unset, cores) means there
/// is none.
fn readme_settings(readme: &str) -> Defaults {
    let section = readme
        .split("\n## Settings\n")
        .nth(1)
        .expect("README has a `## Settings` section");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|row| {
            let cells: Vec<&str> = row.split(" | ").collect();
            let ticked = |cell: &str| {
                let cell = cell.trim().trim_start_matches('|').trim();
                cell.strip_prefix('`')
                    .and_then(|c| c.split('`').next())
                    .map(str::to_string)
            };
            let var = ticked(cells[0]).expect("a row names its variable in backticks");
            let default = cells.get(1).and_then(|c| ticked(c));
            (var, default)
        })
        .collect()
}

/// Runs the binary with `args` and `env` (nothing else from the test's environment but PATH),
/// a SQLite file in a temporary directory.
fn binary(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_switchyard"));
    cmd.args(args)
        .env_clear()
        .env("DATABASE_URL", dir.join("db.sqlite"))
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs the binary and expects it to refuse to start: its exit code and stderr.
async fn refused(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = tokio::time::timeout(WAIT, binary(args, env, dir.path()).output())
        .await
        .expect("the binary exits")
        .expect("the binary runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_bad_value_stops_start_up_naming_its_variable_whether_set_by_variable_or_flag() {
    let (code, stderr) = refused(&[], &[("SWITCHYARD_PORT", "eighty")]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid value for SWITCHYARD_PORT: \"eighty\""),
        "{stderr}"
    );
    let (code, stderr) = refused(&["serve", "--history-size=-1"], &[]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("invalid value for SWITCHYARD_HISTORY_SIZE: \"-1\""),
        "{stderr}"
    );
    // A check across two settings, one given by flag and one by variable.
    let (code, stderr) = refused(
        &["serve", "--heartbeat-timeout-ms", "500"],
        &[("SWITCHYARD_HEARTBEAT_INTERVAL_MS", "1000")],
    )
    .await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("SWITCHYARD_HEARTBEAT_TIMEOUT_MS")
            && stderr.contains("must be longer than SWITCHYARD_HEARTBEAT_INTERVAL_MS"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_flag_wins_over_its_variable_and_an_empty_variable_counts_as_unset() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Were the variable read, the bad port would stop start-up; were the empty node id read,
    // it would be refused (1-32 characters).
    let mut child = binary(
        &["serve", "--port", "0"],
        &[("SWITCHYARD_PORT", "eighty"), ("SWITCHYARD_NODE_ID", "")],
        dir.path(),
    )
    .spawn()
    .expect("the binary runs");
    let stderr = child.stderr.take().expect("stderr");
    let port = tokio::time::timeout(WAIT, async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut seen = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.split(" listening on ").nth(1) {
                return rest
                    .split_whitespace()
                    .next()
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse::<u16>().ok())
                    .unwrap_or_else(|| panic!("no port in {line:?}"));
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        panic!("the binary stopped before listening:\n{seen}");
    })
    .await
    .expect("the binary listens in time");
    let health = reqwest::get(format!("http://127.0.0.1:{port}/health"))
        .await
        .expect("GET /health");
    assert_eq!(health.status().as_u16(), 200);
    child.kill().await.expect("stop the binary");
}

/// The listening socket's backlog as `ss` reports it (its Send-Q column for a listener).
fn listen_backlog_of(port: u16) -> u32 {
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .nth(2)
        .and_then(|q| q.parse().ok())
        .unwrap_or_else(|| panic!("no listener on {port} in `ss` output: {text}"))
}

/// Rust's standard listener asks for a backlog of 128: a burst of connects beyond it had its
/// SYNs dropped and retried a second later (found by the bench's connect scenario).
#[tokio::test]
async fn the_listening_socket_has_the_configured_backlog() {
    let app = crate::helpers::spawn_app().await;
    assert_eq!(listen_backlog_of(app.port), 1024);
    let app = crate::helpers::spawn_app_with(crate::helpers::Backend::Sqlite, |s| {
        s.listen_backlog = 777;
    })
    .await;
    assert_eq!(listen_backlog_of(app.port), 777);
}
