//! The engine's integration tests, one test binary (`cargo test --release --test it`), one module per
//! area. One binary instead of one per file: every file used to compile and link the whole harness and
//! every dependency's generic code again, which made the test build several times slower than the tests.
//! Run one area with a filter, e.g. `cargo test --release --test it kafka_restart::`.

mod common;
mod lua_support;

mod bad_input;
mod dblock_baseline;
mod failover;
mod foundation;
mod hot_paths;
mod http_contract;
mod ids;
mod integrity;
mod kafka_restart;
mod lua_scripts;
mod ops;
mod pipeline;
mod redis_restart;
mod relay_resilience;
mod replica_wait;
mod sale_rules;
mod slots;
mod sold_out;
