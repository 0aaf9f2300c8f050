//! X-Twilio-Signature: HMAC-SHA1 over the URL Twilio called plus the sorted form parameters.
//!
//! Mirrors the official validators: the URL is tried as given and with the default port added or
//! removed, repeated keys have their values sorted, and JSON bodies are checked through the
//! `bodySHA256` query parameter. Comparison is constant-time.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use url::Url;

type HmacSha1 = Hmac<Sha1>;

/// Computes the base64 signature Twilio would send for `url` and form `params`.
pub fn compute(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    // Sorting by (name, value) puts names in order and, within a repeated name, its values; like
    // twilio-python (`sorted(set(values))`), a value repeated under one name counts once.
    sorted.sort_unstable();
    sorted.dedup();
    let mut mac = HmacSha1::new_from_slice(auth_token.as_bytes()).expect("HMAC takes any key");
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    STANDARD.encode(mac.finalize().into_bytes())
}

/// The URL variants the official validators accept: as given, with the scheme's default port
/// added, and with it removed.
pub fn url_variants(url: &str) -> Vec<String> {
    let mut out = vec![url.to_owned()];
    let Ok(parsed) = Url::parse(url) else {
        return out;
    };
    let default_port = match parsed.scheme() {
        "https" => 443,
        "http" => 80,
        _ => return out,
    };
    // `Url` normalises a default port away, so build the with-port form by hand.
    let without = strip_port(url);
    if let Some(without) = without {
        push_unique(&mut out, without);
    } else if let Some(host) = parsed.host_str() {
        let authority = match parsed.port() {
            None => format!("{host}:{default_port}"),
            Some(_) => return out,
        };
        if let Some(idx) = url.find(host) {
            let mut with = String::with_capacity(url.len() + 6);
            with.push_str(&url[..idx]);
            with.push_str(&authority);
            with.push_str(&url[idx + host.len()..]);
            push_unique(&mut out, with);
        }
    }
    out
}

fn push_unique(out: &mut Vec<String>, s: String) {
    if !out.contains(&s) {
        out.push(s);
    }
}

/// Removes an explicit default port (`:443` for https, `:80` for http), if present.
fn strip_port(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let port = match scheme.to_ascii_lowercase().as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => return None,
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let host = authority.strip_suffix(port)?;
    Some(format!("{scheme}://{host}{}", &rest[end..]))
}

/// Checks a form-encoded webhook against every accepted token and URL variant.
pub fn verify_form(
    tokens: &[&str],
    url: &str,
    params: &[(String, String)],
    signature: &str,
) -> bool {
    // Each comparison is constant-time, so timing reveals nothing about the expected signature;
    // stopping at the first match (as Twilio's own validators do) only saves work.
    let variants = url_variants(url);
    tokens.iter().any(|token| {
        variants
            .iter()
            .any(|candidate| constant_time_eq(&compute(token, candidate, params), signature))
    })
}

/// Checks a JSON-bodied webhook: the URL must carry `bodySHA256` = hex sha256 of the raw body, and
/// the signature covers the URL alone.
pub fn verify_json(tokens: &[&str], url: &str, body: &[u8], signature: &str) -> bool {
    let Ok(parsed) = Url::parse(url) else {
        return false;
    };
    let Some(claimed) = parsed
        .query_pairs()
        .find(|(k, _)| k == "bodySHA256")
        .map(|(_, v)| v.into_owned())
    else {
        return false;
    };
    let actual = hex::encode(Sha256::digest(body));
    if !constant_time_eq(&actual, &claimed.to_ascii_lowercase()) {
        return false;
    }
    verify_form(tokens, url, &[], signature)
}

pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn known_params() -> Vec<(String, String)> {
        p(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ])
    }

    const URL: &str = "https://mycompany.com/myapp.php?foo=1&bar=2";

    #[test]
    fn known_answer_from_twilio_python() {
        assert_eq!(
            compute("12345", URL, &known_params()),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
    }

    #[test]
    fn known_answer_with_port() {
        let with_port = "https://mycompany.com:443/myapp.php?foo=1&bar=2";
        assert_eq!(
            compute("12345", with_port, &known_params()),
            "kvajT1Ptam85bY51eRf/AJRuM3w="
        );
        // A request signed over either form validates against the other.
        assert!(verify_form(
            &["12345"],
            URL,
            &known_params(),
            "kvajT1Ptam85bY51eRf/AJRuM3w="
        ));
        assert!(verify_form(
            &["12345"],
            with_port,
            &known_params(),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
    }

    #[test]
    fn known_answer_repeated_keys() {
        let params = p(&[
            ("Sid", "CA123"),
            ("SidAccount", "AC123"),
            ("Digits", "5678"),
            ("Digits", "1234"),
            ("Digits", "1234"),
        ]);
        assert_eq!(
            compute("12345", URL, &params),
            "IK+Dwps556ElfBT0I3Rgjkr1wJU="
        );
    }

    #[test]
    fn rejects_wrong_token_and_tampered_params() {
        assert!(!verify_form(
            &["54321"],
            URL,
            &known_params(),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        let mut tampered = known_params();
        tampered[2].1 = "9999".into();
        assert!(!verify_form(
            &["12345"],
            URL,
            &tampered,
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
        assert!(!verify_form(&["12345"], URL, &known_params(), ""));
    }

    #[test]
    fn secondary_token_accepted() {
        assert!(verify_form(
            &["old-token", "12345"],
            URL,
            &known_params(),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        ));
    }

    #[test]
    fn json_body_sha256() {
        let body = br#"{"property":"value","boolean":true}"#;
        let hash = hex::encode(Sha256::digest(body));
        let url = format!("https://mycompany.com/myapp.php?foo=1&bar=2&bodySHA256={hash}");
        let sig = compute("12345", &url, &[]);
        assert!(verify_json(&["12345"], &url, body, &sig));
        assert!(!verify_json(&["12345"], &url, b"{}", &sig));
        assert!(!verify_json(
            &["12345"],
            URL,
            body,
            &compute("12345", URL, &[])
        ));
    }

    #[test]
    fn http_default_port_variants() {
        assert_eq!(
            url_variants("http://h.example/x?a=1"),
            vec!["http://h.example/x?a=1", "http://h.example:80/x?a=1"]
        );
        assert_eq!(
            url_variants("http://h.example:80/x"),
            vec!["http://h.example:80/x", "http://h.example/x"]
        );
        assert_eq!(
            url_variants("http://h.example:8080/x"),
            vec!["http://h.example:8080/x"]
        );
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any token, URL, parameters and claimed signature: an answer, never a panic; and a
        /// signature we computed always verifies while a changed one never does.
        #[test]
        fn verification_is_total_and_exact(
            token in ".{0,40}",
            url in ".{0,120}",
            params in proptest::collection::vec((".{0,20}", ".{0,40}"), 0..12),
            claimed in ".{0,60}",
        ) {
            let _ = verify_form(&[&token], &url, &params, &claimed);
            let _ = verify_json(&[&token], &url, claimed.as_bytes(), &claimed);
            let good = compute(&token, &url, &params);
            prop_assert!(verify_form(&[&token], &url, &params, &good));
            let mut bad = good.clone();
            bad.push('x');
            prop_assert!(!verify_form(&[&token], &url, &params, &bad));
        }

        /// Parameter order never matters.
        #[test]
        fn order_independent(params in proptest::collection::vec(("[A-Za-z]{1,8}", ".{0,20}"), 0..10)) {
            let mut reversed = params.clone();
            reversed.reverse();
            prop_assert_eq!(compute("t", "https://x.example/a", &params), compute("t", "https://x.example/a", &reversed));
        }
    }
}
