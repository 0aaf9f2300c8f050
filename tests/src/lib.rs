//! Test support: a real PostgreSQL per test process (`pg`), the service started on real sockets
//! (`app`), and an agent to route to (`agent`).
pub mod agent;
pub mod app;
pub mod pg;
