//! Opaque page tokens (AIP-158): the position where the last page ended, and a fingerprint of the
//! request it belongs to, so a token used with other filters is refused rather than silently wrong.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::Error;

#[derive(Serialize, Deserialize)]
struct Token<C> {
    /// Fingerprint of the request's filters and sort.
    f: String,
    /// Where the previous page ended.
    c: C,
    /// How many items came before (the queue's rank).
    #[serde(default)]
    n: i64,
}

/// FNV-1a: a stable hash (the same across processes and versions), enough to tell requests apart.
pub fn fingerprint(request: &impl Serialize) -> String {
    let text = serde_json::to_string(request).unwrap_or_default();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

pub fn encode<C: Serialize>(fingerprint: &str, cursor: &C, before: i64) -> String {
    let token = Token {
        f: fingerprint.to_string(),
        c: cursor,
        n: before,
    };
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(&token).unwrap_or_default())
}

/// The cursor and count of a token; INVALID_ARGUMENT when it is not one of ours or belongs to another
/// request.
pub fn decode<C: DeserializeOwned>(token: &str, fingerprint: &str) -> Result<(C, i64), Error> {
    let bad = || {
        Error::invalid(
            "page_token",
            "is not a page token of this list; pass next_page_token from the previous response unchanged",
        )
    };
    let bytes = URL_SAFE_NO_PAD.decode(token.trim()).map_err(|_| bad())?;
    let token: Token<C> = serde_json::from_slice(&bytes).map_err(|_| bad())?;
    if token.f != fingerprint {
        return Err(Error::invalid(
            "page_token",
            "was issued for other filters or another sort; send the same filters, or start again \
             without a page token",
        ));
    }
    Ok((token.c, token.n.max(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_other_requests() {
        let fp = fingerprint(&("filters", 1));
        let token = encode(&fp, &(42i64, "x".to_string()), 50);
        let (cursor, before): ((i64, String), i64) = decode(&token, &fp).expect("decodes");
        assert_eq!(cursor, (42, "x".into()));
        assert_eq!(before, 50);
        let other = fingerprint(&("filters", 2));
        assert!(decode::<(i64, String)>(&token, &other).is_err());
        assert!(decode::<(i64, String)>("not-a-token!", &fp).is_err());
        assert_ne!(fingerprint(&1), fingerprint(&2));
    }
}
