//! flashsale: a Redis-first flash-sale engine. See docs/architecture.md for the shape.

pub mod abuse;
pub mod app;
pub mod auth;
pub mod config;
pub mod dblock;
pub mod dependencies;
pub mod domain;
pub mod error;
pub mod expiry;
pub mod extract;
pub mod gauges;
pub mod http;
pub mod idempotency;
pub mod ids;
pub mod kafka;
pub mod keys;
pub mod openapi;
pub mod partition;
pub mod popular;
pub mod rebuild;
pub mod reconcile;
pub mod relay;
pub mod routes;
pub mod scripts;
pub mod state;
pub mod telemetry;
