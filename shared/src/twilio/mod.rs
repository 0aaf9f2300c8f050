//! Twilio protocol pieces shared by the ingress, the worker and the simulator.
pub mod client;
pub mod signature;
pub mod status;
