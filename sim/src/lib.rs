//! `sms-sim`: plays the services around SMS Foundation over real HTTP for tests, benchmarks and
//! local runs: the Collections Monitor ([`monitor`]), Twilio's Messaging REST API with signed
//! status callbacks ([`twilio`]), the tenants' agents ([`agent`]), correctly signed Twilio
//! webhooks ([`webhook`]), load ([`load`]) and an OTLP trace receiver ([`otlp`]), served by
//! [`server`] and driven from [`cli`].
pub mod agent;
pub mod cli;
pub mod load;
pub mod monitor;
pub mod otlp;
pub mod server;
pub mod twilio;
pub mod webhook;
