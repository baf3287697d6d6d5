//! Signatures: Standard Webhooks for outbound calls (and the generic SMS provider's callbacks), Twilio's
//! request signature for its callbacks, and the signed token of an email's one-click unsubscribe link.

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha1::Sha1;
use sha2::Sha256;

pub const SECRET_PREFIX: &str = "whsec_";

/// A new webhook secret: "whsec_" + base64 of 32 random bytes.
pub fn new_webhook_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// The key bytes of a "whsec_…" secret (a secret without the prefix is read as base64 too).
pub fn secret_key(secret: &str) -> Option<Vec<u8>> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    STANDARD.decode(encoded).ok().filter(|k| !k.is_empty())
}

fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key) else {
        return Vec::new();
    };
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// One Standard Webhooks signature: `v1,` + base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")).
pub fn standard_signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    let mac = hmac_sha256(key, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    format!("v1,{}", STANDARD.encode(mac))
}

/// The `webhook-signature` header: one signature per key, space-separated (rotation overlap).
pub fn signature_header(keys: &[Vec<u8>], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|k| standard_signature(k, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks a `webhook-signature` header against a key, and that the timestamp is within `tolerance_secs`
/// of `now` (replay protection, as the spec asks).
pub fn verify_standard(
    key: &[u8],
    id: &str,
    timestamp: i64,
    body: &[u8],
    header: &str,
    now: i64,
    tolerance_secs: i64,
) -> bool {
    if (now - timestamp).abs() > tolerance_secs {
        return false;
    }
    let expected = standard_signature(key, id, timestamp, body);
    header
        .split_whitespace()
        .any(|candidate| constant_time_eq(candidate.as_bytes(), expected.as_bytes()))
}

/// Twilio's `X-Twilio-Signature`: base64(HMAC-SHA1(auth token, URL + each POST parameter's name and
/// value, sorted by name)).
pub fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut data = url.to_string();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let Ok(mut mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(auth_token.as_bytes()) else {
        return String::new();
    };
    mac.update(data.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What an email's unsubscribe link proves: this patient of this clinic asked to stop this category.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnsubscribeClaims {
    #[serde(rename = "t")]
    pub tenant: String,
    #[serde(rename = "p")]
    pub patient_id: String,
    /// Empty = every category.
    #[serde(rename = "c")]
    pub category: String,
    /// The message that carried the link.
    #[serde(rename = "m")]
    pub message_id: String,
    /// When the link stops working (Unix seconds). Links signed before expiries existed have none and
    /// keep working (only while `unsubscribe_signing_key` stays the same).
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<i64>,
}

impl UnsubscribeClaims {
    pub fn expired(&self, now: i64) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }
}

pub fn sign_unsubscribe(key: &[u8], claims: &UnsubscribeClaims) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let mac = hmac_sha256(key, &[b"unsubscribe.", payload.as_bytes()]);
    format!("{payload}.{}", URL_SAFE_NO_PAD.encode(mac))
}

pub fn verify_unsubscribe(key: &[u8], token: &str) -> Option<UnsubscribeClaims> {
    let (payload, mac) = token.split_once('.')?;
    let expected = hmac_sha256(key, &[b"unsubscribe.", payload.as_bytes()]);
    let given = URL_SAFE_NO_PAD.decode(mac).ok()?;
    if !constant_time_eq(&given, &expected) {
        return None;
    }
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the Standard Webhooks specification.
    #[test]
    fn matches_the_spec_example() {
        let key = secret_key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("key");
        let body = br#"{"test": 2432232314}"#;
        let signature = standard_signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(verify_standard(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            body,
            &format!("v1,bogus {signature}"),
            1614265330 + 10,
            300
        ));
        assert!(!verify_standard(
            &key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            body,
            &signature,
            1614265330 + 1000,
            300
        ));
    }

    #[test]
    fn twilio_example_signature() {
        // Twilio's documented example.
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(
            twilio_signature(
                "12345",
                "https://mycompany.com/myapp.php?foo=1&bar=2",
                &params
            ),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
    }

    #[test]
    fn unsubscribe_tokens_round_trip_and_resist_tampering() {
        let key = b"0123456789abcdef0123456789abcdef";
        let claims = UnsubscribeClaims {
            tenant: "c1".into(),
            patient_id: "p1".into(),
            category: "recall".into(),
            message_id: "m".into(),
            expires: Some(2_000_000_000),
        };
        assert!(!claims.expired(1_999_999_999));
        assert!(claims.expired(2_000_000_000));
        let token = sign_unsubscribe(key, &claims);
        assert_eq!(verify_unsubscribe(key, &token), Some(claims.clone()));
        let other = UnsubscribeClaims {
            patient_id: "p2".into(),
            ..claims
        };
        let forged = format!(
            "{}.{}",
            sign_unsubscribe(key, &other)
                .split('.')
                .next()
                .unwrap_or_default(),
            token.split('.').nth(1).unwrap_or_default()
        );
        assert_eq!(verify_unsubscribe(key, &forged), None);
        assert_eq!(verify_unsubscribe(b"another key", &token), None);
    }

    #[test]
    fn secrets_are_prefixed_base64() {
        let secret = new_webhook_secret();
        assert!(secret.starts_with("whsec_"));
        assert_eq!(secret_key(&secret).map(|k| k.len()), Some(32));
    }
}
