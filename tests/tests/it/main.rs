//! Integration tests: the service on real sockets against a real Postgres, with external
//! services played by `sms-sim` over HTTP.

mod abuse;
mod authorization;
mod console;
mod conversations;
mod deploy;
mod deployment;
mod directory;
mod docs;
mod errors;
mod faults;
mod identity;
mod inbound_worker;
mod isolation;
mod keys;
mod lifecycle;
mod metrics;
mod openapi;
mod opt_outs;
mod otel;
mod outbound;
mod plans;
mod pooler_protocol;
mod poolers;
mod queue;
mod quiet_hours;
mod routing;
mod scheduled;
mod schema;
mod security;
mod shutdown;
mod usage;

mod webhook;
