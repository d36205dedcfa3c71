//! The work behind an operation. `command` runs a configured program; `demo` is a scripted
//! simulated install. (`external` needs no code here: the worker reports over HTTP or `/ws`.)

pub mod command;
pub mod demo;
