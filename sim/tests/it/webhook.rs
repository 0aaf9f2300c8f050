use std::collections::HashMap;

use shared::twilio::signature::verify_form;
use sim::webhook::{InboundSms, new_message_sid, num_segments, send, send_to, signed_request};

use crate::{Hook, TOKEN};

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";

#[test]
fn message_sids_look_like_twilios() {
    let a = new_message_sid();
    assert_eq!(a.len(), 34);
    assert!(a.starts_with("SM"));
    assert!(
        a[2..]
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    );
    assert_ne!(a, new_message_sid());
    assert_eq!(InboundSms::new("+1", "+2", "x").message_sid.len(), 34);
}

#[test]
fn params_carry_the_full_inbound_field_set() {
    let sms = InboundSms::new("+15551230001", "+15550001000", "Sí, gracias 🙏")
        .with_extra("MessagingServiceSid", "MG123");
    let p = sms.params(ACCOUNT);
    let map: HashMap<&str, &str> = p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    for name in [
        "ToCountry",
        "ToState",
        "SmsMessageSid",
        "NumMedia",
        "ToCity",
        "FromZip",
        "SmsSid",
        "FromState",
        "SmsStatus",
        "FromCity",
        "Body",
        "FromCountry",
        "To",
        "ToZip",
        "NumSegments",
        "MessageSid",
        "AccountSid",
        "From",
        "ApiVersion",
    ] {
        assert!(map.contains_key(name), "{name} missing");
    }
    assert_eq!(map["MessageSid"], sms.message_sid);
    assert_eq!(map["SmsSid"], sms.message_sid);
    assert_eq!(map["SmsMessageSid"], sms.message_sid);
    assert_eq!(map["SmsStatus"], "received");
    assert_eq!(map["ApiVersion"], "2010-04-01");
    assert_eq!(map["AccountSid"], ACCOUNT);
    assert_eq!(map["From"], "+15551230001");
    assert_eq!(map["To"], "+15550001000");
    assert_eq!(map["Body"], "Sí, gracias 🙏");
    assert_eq!(map["NumSegments"], "1");
    assert_eq!(
        p.last().unwrap(),
        &("MessagingServiceSid".into(), "MG123".into())
    );
}

#[test]
fn segments_follow_gsm_and_ucs2_limits() {
    assert_eq!(num_segments(""), 1);
    assert_eq!(num_segments("Yes"), 1);
    assert_eq!(num_segments(&"a".repeat(160)), 1);
    assert_eq!(num_segments(&"a".repeat(161)), 2);
    assert_eq!(
        num_segments(&"é".repeat(160)),
        1,
        "é is in the GSM alphabet"
    );
    assert_eq!(
        num_segments(&"€".repeat(80)),
        1,
        "extension characters count twice"
    );
    assert_eq!(num_segments(&"€".repeat(81)), 2);
    assert_eq!(num_segments(&"ç".repeat(70)), 1, "ç forces UCS-2");
    assert_eq!(num_segments(&"ç".repeat(71)), 2);
    assert_eq!(
        num_segments(&"🙏".repeat(35)),
        1,
        "emoji take two UTF-16 units"
    );
    assert_eq!(num_segments(&"🙏".repeat(36)), 2);
}

#[test]
fn signed_body_parses_back_and_verifies() {
    let url = "https://sms.example.com/webhook/twilio/sms?tenant=a&x=1";
    let params = InboundSms::new(
        "+15551230001",
        "+15550001000",
        "Olá & até já = 100% 👍\n'x'",
    )
    .params(ACCOUNT);
    let (body, sig) = signed_request(TOKEN, url, &params);
    let parsed: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    assert_eq!(parsed, params);
    assert!(verify_form(&[TOKEN], url, &parsed, &sig));
    assert!(!verify_form(&["other-token"], url, &parsed, &sig));
    assert!(!verify_form(
        &[TOKEN],
        "https://sms.example.com/other",
        &parsed,
        &sig
    ));
    let mut tampered = parsed.clone();
    tampered[10].1.push('!');
    assert!(!verify_form(&[TOKEN], url, &tampered, &sig));
}

#[tokio::test]
async fn send_posts_a_verifiable_form() {
    let hook = Hook::spawn(None).await;
    let http = reqwest::Client::new();
    let sms = InboundSms::new("+15551230001", "+15550001000", "hola");
    let resp = send(&http, &hook.url, TOKEN, &sms.params(ACCOUNT))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let bad = send(&http, &hook.url, "wrong", &sms.params(ACCOUNT))
        .await
        .unwrap();
    assert_eq!(bad.status(), 403);
    hook.seen(|s| {
        assert_eq!(s.sids, vec![sms.message_sid.clone()]);
        assert_eq!(s.rejected, 1);
    });
}

#[tokio::test]
async fn send_to_signs_the_public_url_behind_a_proxy() {
    let public = "https://sms.example.com/webhook/twilio/sms";
    let hook = Hook::spawn(Some(public)).await;
    let http = reqwest::Client::new();
    let params = InboundSms::new("+15551230001", "+15550001000", "hi").params(ACCOUNT);
    let direct = send(&http, &hook.url, TOKEN, &params).await.unwrap();
    assert_eq!(direct.status(), 403, "signed for the wrong URL");
    let proxied = send_to(&http, &hook.url, public, TOKEN, &params)
        .await
        .unwrap();
    assert_eq!(proxied.status(), 200);
}
