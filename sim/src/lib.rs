//! `sms-sim`: plays the services around SMS Foundation over real HTTP (the Collections Monitor),
//! sends correctly signed Twilio webhooks, and generates load.
pub mod load;
pub mod monitor;
pub mod webhook;
