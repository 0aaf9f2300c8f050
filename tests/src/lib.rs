//! Test support: a real PostgreSQL per test process (`pg`) and the service started on real
//! sockets (`app`).
pub mod app;
pub mod balancer;
pub mod browser;
pub mod fleet;
pub mod pg;
pub mod pgbouncer;
pub mod proxy;
pub mod sims;
pub mod traffic;
