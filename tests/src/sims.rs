//! The external services, played by `sms-sim` on a free loopback port: Twilio (with the test
//! account), the Collections Monitor, and tenants' agents. One place to start each, for every test.

use sim::{
    agent::{AgentSim, AgentSimHandle},
    monitor::{MonitorSim, MonitorSimHandle, Tenant},
    twilio::{TwilioSim, TwilioSimHandle},
};

use crate::app::{ACCOUNT_SID, AUTH_TOKEN};

/// Twilio's REST API for the test account (`ACCOUNT_SID`, `AUTH_TOKEN`).
pub async fn twilio() -> TwilioSimHandle {
    TwilioSim::start("127.0.0.1:0".parse().unwrap(), ACCOUNT_SID, AUTH_TOKEN)
        .await
        .unwrap()
}

/// A Monitor that knows `tenants`.
pub async fn monitor(tenants: impl IntoIterator<Item = Tenant>) -> MonitorSimHandle {
    let m = MonitorSim::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    m.seed(tenants);
    m
}

/// A Monitor tenant with a name made from its id.
pub fn tenant(id: &str, numbers: &[&str], lang: Option<&str>) -> Tenant {
    Tenant {
        tenant_id: id.into(),
        name: Some(format!("Tenant {id}")),
        phone_numbers: numbers.iter().map(|s| s.to_string()).collect(),
        language_preference: lang.map(str::to_owned),
    }
}

/// Agents that verify requests signed with `secret`.
pub async fn agent(secret: &str) -> AgentSimHandle {
    AgentSim::start("127.0.0.1:0".parse().unwrap(), secret)
        .await
        .unwrap()
}
