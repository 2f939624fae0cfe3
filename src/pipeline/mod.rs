//! The pipeline behind the hot path: what moves accepted state on after the request has its answer.
//! None of it serves HTTP.
//!
//! - `relay`: every partition's outbox stream -> Kafka (idempotent producer; acknowledged in Redis only
//!   after Kafka acknowledged).
//! - `saga`: the worker that runs the later steps of operations spanning two owners (the wallet entry
//!   after a coupon issue, each product's step after an order event), from the outbox, on any engine.
//! - `expiry`: per-partition sweeps of due reservations, orphan holds and unfinished e-mail claims.
//! - `reconcile` and `rebuild`: the operator's tools that compare Redis with MySQL, and rebuild Redis
//!   from MySQL.
//! - `kafka`: the Kafka plumbing they share (producer, topic checks, consumer-group lag).

pub mod expiry;
pub mod kafka;
pub mod rebuild;
pub mod reconcile;
pub mod relay;
pub mod saga;
