//! One integration-test crate (links once). Every test runs a real server on port 0.

mod activities;
mod actor_invariants;
mod architecture;
mod auth;
mod bench_smoke;
mod budget;
mod budget_limits;
mod chaos;
mod cors;
mod crash;
mod dashboard;
mod hardening;
mod health;
mod helpers;
mod limits;
mod operations;
mod presence;
mod properties;
mod protocol;
mod resume;
mod rooms;
mod shutdown;
mod socketio;
mod transport;
