//! Domain types, configuration, database access, job types and protocol helpers shared by the
//! `sms-ingress`, `sms-worker` and `sms-sim` binaries.
pub mod agent_signature;
pub mod config;
pub mod db;
pub mod delivery;
pub mod fence;
pub mod jobs;
pub mod language;
pub mod metrics;
pub mod monitor;
pub mod optout;
pub mod outbound;
pub mod phone;
pub mod pool_mode;
pub mod quiet_hours;
pub mod retry;
pub mod routing;
pub mod secret;
pub mod segments;
pub mod telemetry;
pub mod tenants;
pub mod traffic;
pub mod twilio;
pub mod usage;
