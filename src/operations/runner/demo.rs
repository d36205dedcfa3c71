//! The built-in demo: a simulated install (init, config, pull, build, deploy, validate) with log
//! lines, about ten seconds at the default pace. `fail_at` makes it fail when it reaches a stage;
//! `step_ms` sets the pace (tests run it fast).

use serde_json::json;

use crate::operations::Update;

pub const DEFAULT_STEP_MS: u64 = 300;

#[derive(Debug, Clone)]
pub enum Step {
    Update(Update),
    Log { stream: &'static str, line: String },
    Fail { code: &'static str, message: String },
    Complete(serde_json::Value),
}

fn update(stage: Option<&str>, progress: f64, message: Option<&str>) -> Step {
    Step::Update(Update {
        progress: Some(progress),
        stage: stage.map(str::to_string),
        message: message.map(str::to_string),
        ..Update::default()
    })
}

fn log(line: impl Into<String>) -> Step {
    Step::Log {
        stream: "stdout",
        line: line.into(),
    }
}

pub fn script(fail_at: Option<&str>) -> Vec<Step> {
    let images = [
        "postgres:16",
        "redis:7",
        "api:1.4.2",
        "worker:1.4.2",
        "web:1.4.2",
    ];
    let services = ["api", "worker", "web", "scheduler"];
    let mut s: Vec<(&str, Vec<Step>)> = Vec::new();
    s.push((
        "init",
        vec![
            update(Some("init"), 0.0, Some("Initializing installation")),
            log("Checking prerequisites"),
            log("docker 27.1 found, compose plugin found"),
            update(None, 5.0, None),
        ],
    ));
    s.push((
        "config",
        vec![
            update(Some("config"), 10.0, Some("Configuring environment")),
            log("Writing .env (14 variables)"),
            log("Generating service secrets"),
            update(None, 15.0, None),
        ],
    ));
    let mut pull = vec![update(Some("pull"), 20.0, Some("Downloading images"))];
    for (i, img) in images.iter().enumerate() {
        pull.push(log(format!("Pulling {img}")));
        pull.push(update(None, 20.0 + 6.0 * (i as f64 + 1.0), None));
    }
    s.push(("pull", pull));
    let mut build = vec![update(Some("build"), 55.0, Some("Building services"))];
    for (i, svc) in services.iter().enumerate() {
        build.push(log(format!("Building {svc}")));
        build.push(update(None, 55.0 + 5.0 * (i as f64 + 1.0), None));
    }
    s.push(("build", build));
    s.push((
        "deploy",
        vec![
            update(Some("deploy"), 80.0, Some("Starting services")),
            log("Starting api, worker, web, scheduler"),
            update(None, 85.0, None),
            log("All containers running"),
            update(None, 90.0, None),
        ],
    ));
    s.push((
        "validate",
        vec![
            update(Some("validate"), 95.0, Some("Validating installation")),
            log("GET /health → 200"),
            log("Smoke tests passed (12/12)"),
        ],
    ));

    let mut steps = Vec::new();
    for (stage, stage_steps) in s {
        if fail_at == Some(stage) {
            steps.push(stage_steps[0].clone());
            steps.push(Step::Log {
                stream: "stderr",
                line: format!("error: simulated failure during {stage}"),
            });
            steps.push(Step::Fail {
                code: "demo_failure",
                message: format!("simulated failure in stage {stage}"),
            });
            return steps;
        }
        steps.extend(stage_steps);
    }
    steps.push(Step::Complete(json!({
        "services": services,
        "url": "http://localhost:3000",
    })));
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_walks_every_stage_and_ends_once() {
        let steps = script(None);
        let stages: Vec<_> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Update(u) => u.stage.clone(),
                _ => None,
            })
            .collect();
        assert_eq!(
            stages,
            ["init", "config", "pull", "build", "deploy", "validate"]
        );
        assert!(matches!(steps.last(), Some(Step::Complete(_))));
        let failing = script(Some("build"));
        assert!(matches!(failing.last(), Some(Step::Fail { .. })));
        assert!(failing.iter().all(|s| !matches!(s, Step::Complete(_))));
    }
}
