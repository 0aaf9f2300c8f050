//! Signing what we POST to an agent: `X-SMS-Timestamp: <unix seconds>` and
//! `X-SMS-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`. An agent recomputes the
//! signature over the raw body, compares in constant time, and refuses timestamps outside its
//! replay window (we suggest 5 minutes).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub const TIMESTAMP_HEADER: &str = "x-sms-timestamp";
pub const SIGNATURE_HEADER: &str = "x-sms-signature";
pub const REPLAY_WINDOW_SECS: i64 = 300;

/// The `X-SMS-Signature` value for `body` sent at `timestamp`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    BadTimestamp,
    Expired,
    BadSignature,
}

/// Verifies a request as an agent would, at time `now` (unix seconds).
pub fn verify(
    secret: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: i64,
) -> Result<(), VerifyError> {
    let ts: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    if (now - ts).abs() > REPLAY_WINDOW_SECS {
        return Err(VerifyError::Expired);
    }
    let expected = sign(secret, ts, body);
    if bool::from(expected.as_bytes().ct_eq(signature.trim().as_bytes())) {
        Ok(())
    } else {
        Err(VerifyError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_failures() {
        let body = br#"{"message":{"content":"hola"}}"#;
        let sig = sign("s3cret", 1_700_000_000, body);
        assert!(sig.starts_with("v1="));
        assert_eq!(
            verify("s3cret", "1700000000", &sig, body, 1_700_000_010),
            Ok(())
        );
        assert_eq!(
            verify("other", "1700000000", &sig, body, 1_700_000_010),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify("s3cret", "1700000000", &sig, b"{}", 1_700_000_010),
            Err(VerifyError::BadSignature)
        );
        assert_eq!(
            verify("s3cret", "1700000000", &sig, body, 1_700_000_301),
            Err(VerifyError::Expired)
        );
        assert_eq!(
            verify("s3cret", "x", &sig, body, 0),
            Err(VerifyError::BadTimestamp)
        );
    }

    #[test]
    fn known_answer() {
        // printf '1700000000.{}' | openssl dgst -sha256 -hmac key
        assert_eq!(
            sign("key", 1_700_000_000, b"{}"),
            "v1=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
    }
}
