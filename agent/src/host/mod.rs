//! The host around a release: running commands with timeouts (restart commands, hooks, exec checks), the app's
//! service (systemd or a command), health checks and the deploy hooks.
//!
//! Owns every process Switchback starts for an app. It must never run anything as root that the app's user
//! controls, and never run a file from a release that does not match its index. It decides no deploy: it reports
//! what happened (a verdict, a hook failure) to the engine.

pub mod command;
pub mod health;
pub mod hooks;
pub mod service;
