//! Signature helpers shared by connectors: HMAC-SHA256 in constant time, replay windows, and the
//! Switchyard request signature (`X-Switchyard-Timestamp` / `X-Switchyard-Signature`).

use base64::Engine as _;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::ConnectorError;

/// Header carrying the Unix timestamp (seconds) a Switchyard-signed request was made at.
pub const TIMESTAMP_HEADER: &str = "x-switchyard-timestamp";
/// Header carrying `sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>`.
pub const SIGNATURE_HEADER: &str = "x-switchyard-signature";
/// Requests older or newer than this many seconds are refused as replays.
pub const REPLAY_WINDOW_SECS: i64 = 300;

/// HMAC-SHA256 of `parts`, concatenated, under `secret` (the 32 raw bytes).
pub fn hmac_sha256(secret: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC accepts keys of any length, so construction cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable_hmac(),
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

/// Hex HMAC-SHA256 of `parts`, concatenated, under `secret`.
pub fn hmac_sha256_hex(secret: &[u8], parts: &[&[u8]]) -> String {
    hex::encode(hmac_sha256(secret, parts))
}

/// Standard base64 (with padding) of HMAC-SHA256 of `parts`, concatenated, under `secret`
/// (LINE's `X-Line-Signature`).
pub fn hmac_sha256_base64(secret: &[u8], parts: &[&[u8]]) -> String {
    base64::engine::general_purpose::STANDARD.encode(hmac_sha256(secret, parts))
}

#[cold]
fn unreachable_hmac() -> ! {
    unreachable!("HMAC-SHA256 accepts keys of every length")
}

/// Compares two strings in constant time (for signatures and hashes).
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Checks that `timestamp` (Unix seconds, as sent) is within `window_secs` of `now`.
pub fn check_timestamp(
    timestamp: &str,
    now: DateTime<Utc>,
    window_secs: i64,
) -> Result<i64, ConnectorError> {
    let ts: i64 = timestamp.trim().parse().map_err(|_| {
        ConnectorError::Unauthorized(format!("timestamp `{timestamp}` is not Unix seconds"))
    })?;
    let skew = now.timestamp() - ts;
    if skew.abs() > window_secs {
        return Err(ConnectorError::Unauthorized(format!(
            "timestamp is {skew} s from now; the window is ±{window_secs} s (replay refused)"
        )));
    }
    Ok(ts)
}

/// The value of `X-Switchyard-Signature` for `body` sent at `timestamp`.
pub fn switchyard_signature(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    format!(
        "sha256={}",
        hmac_sha256_hex(secret, &[ts.as_bytes(), b".", body])
    )
}

/// Verifies a Switchyard-signed request: timestamp within the replay window, then the HMAC.
pub fn verify_switchyard_signature(
    secret: &[u8],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(), ConnectorError> {
    let timestamp = timestamp.ok_or_else(|| {
        ConnectorError::Unauthorized(format!("missing `{TIMESTAMP_HEADER}` header"))
    })?;
    let signature = signature.ok_or_else(|| {
        ConnectorError::Unauthorized(format!("missing `{SIGNATURE_HEADER}` header"))
    })?;
    let ts = check_timestamp(timestamp, now, REPLAY_WINDOW_SECS)?;
    let expected = switchyard_signature(secret, ts, body);
    if !constant_time_eq(signature.trim(), &expected) {
        return Err(ConnectorError::Unauthorized(
            "signature does not match the body".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"s3cret";

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_764_000_000, 0).unwrap()
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        assert_eq!(
            hmac_sha256_hex(b"Jefe", &[b"what do ya want ", b"for nothing?"]),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn base64_hmac_matches_rfc4231_case_2() {
        // The RFC 4231 case 2 digest above, in standard base64.
        assert_eq!(
            hmac_sha256_base64(b"Jefe", &[b"what do ya want for nothing?"]),
            "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM="
        );
    }

    #[test]
    fn good_signature_verifies() {
        let body = br#"{"a":1}"#;
        let ts = now().timestamp();
        let sig = switchyard_signature(SECRET, ts, body);
        verify_switchyard_signature(SECRET, Some(&ts.to_string()), Some(&sig), body, now())
            .unwrap();
    }

    #[test]
    fn bad_stale_future_tampered_and_missing_are_refused() {
        let body = br#"{"a":1}"#;
        let ts = now().timestamp();
        let sig = switchyard_signature(SECRET, ts, body);
        let check = |ts: i64, sig: &str, body: &[u8]| {
            verify_switchyard_signature(SECRET, Some(&ts.to_string()), Some(sig), body, now())
        };
        assert!(check(ts, &switchyard_signature(b"other", ts, body), body).is_err());
        let stale = ts - REPLAY_WINDOW_SECS - 1;
        assert!(check(stale, &switchyard_signature(SECRET, stale, body), body).is_err());
        let future = ts + REPLAY_WINDOW_SECS + 1;
        assert!(check(future, &switchyard_signature(SECRET, future, body), body).is_err());
        assert!(check(ts, &sig, br#"{"a":2}"#).is_err());
        assert!(
            check(ts + 1, &sig, body).is_err(),
            "timestamp is signed too"
        );
        assert!(verify_switchyard_signature(SECRET, None, Some(&sig), body, now()).is_err());
        assert!(
            verify_switchyard_signature(SECRET, Some(&ts.to_string()), None, body, now()).is_err()
        );
        assert!(
            verify_switchyard_signature(SECRET, Some("yesterday"), Some(&sig), body, now())
                .is_err()
        );
        let edge = ts - REPLAY_WINDOW_SECS;
        assert!(check(edge, &switchyard_signature(SECRET, edge, body), body).is_ok());
    }
}
