//! Who is calling.
//!
//! Staff and systems call gRPC with `authorization: Bearer <JWT>` carrying `tenant`, `sub` and `role`,
//! verified with the configured public keys (Ed25519, RSA or EC PEM; several at once for rotation). The
//! [`Authenticator`] interceptor puts the verified [`Caller`] in the request's extensions; handlers take it
//! with [`caller`] and check roles with [`Caller::require`]. A token of clinic A only ever yields tenant A:
//! every query a handler runs filters by `caller.tenant`.
//!
//! Patient portal links carry a different token ([`PortalClaims`], audience `followup-portal`), signed by
//! the plans service with its Ed25519 private key and verified by engagement with the public key alone.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey, spki::der::pem::LineEnding};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;
use crate::event::is_valid_tenant;

/// Staff roles (docs/ARCHITECTURE.md#tokens-and-roles), plus `system` for integrations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Dentist,
    FrontDesk,
    System,
}

impl Role {
    pub const ALL: [Role; 5] = [
        Role::Owner,
        Role::Admin,
        Role::Dentist,
        Role::FrontDesk,
        Role::System,
    ];
    /// Everyone who works in the clinic (not integrations).
    pub const STAFF: [Role; 4] = [Role::Owner, Role::Admin, Role::Dentist, Role::FrontDesk];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Dentist => "dentist",
            Role::FrontDesk => "front_desk",
            Role::System => "system",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("unknown role `{s}` (one of owner, admin, dentist, front_desk, system)")
            })
    }
}

/// The claims of a staff or system token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The clinic.
    pub tenant: String,
    /// The staff id (the clinic system's `staff.upserted` id) or the integration's name.
    pub sub: String,
    pub role: Role,
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

/// The verified caller of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    pub tenant: String,
    pub sub: String,
    pub role: Role,
}

impl Caller {
    /// PERMISSION_DENIED unless the caller has one of `allowed`.
    #[allow(clippy::result_large_err)]
    pub fn require(&self, allowed: &[Role]) -> Result<(), tonic::Status> {
        if allowed.contains(&self.role) {
            Ok(())
        } else {
            let names: Vec<&str> = allowed.iter().map(|r| r.as_str()).collect();
            Err(tonic::Status::permission_denied(format!(
                "role `{}` may not do this; it needs one of: {}",
                self.role,
                names.join(", ")
            )))
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing `authorization: Bearer <token>` metadata")]
    Missing,
    #[error("token expired; request a new one")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("no usable key: {0}")]
    Key(String),
}

impl From<AuthError> for tonic::Status {
    fn from(err: AuthError) -> Self {
        tonic::Status::unauthenticated(err.to_string())
    }
}

/// A public key and the algorithm it verifies.
#[derive(Clone)]
struct VerifyingKey {
    key: DecodingKey,
    algorithm: Algorithm,
}

/// Parses one PEM public key of any supported kind.
fn verifying_key(pem: &str) -> Result<VerifyingKey, AuthError> {
    let bytes = pem.trim().as_bytes();
    if let Ok(key) = DecodingKey::from_ed_pem(bytes) {
        return Ok(VerifyingKey {
            key,
            algorithm: Algorithm::EdDSA,
        });
    }
    if let Ok(key) = DecodingKey::from_rsa_pem(bytes) {
        return Ok(VerifyingKey {
            key,
            algorithm: Algorithm::RS256,
        });
    }
    if let Ok(key) = DecodingKey::from_ec_pem(bytes) {
        return Ok(VerifyingKey {
            key,
            algorithm: Algorithm::ES256,
        });
    }
    Err(AuthError::Key(
        "not an Ed25519, RSA or EC public key in PEM form".into(),
    ))
}

fn verify_with<T: DeserializeOwned>(
    keys: &[VerifyingKey],
    token: &str,
    audience: &str,
    issuer: Option<&str>,
    leeway: u64,
) -> Result<T, AuthError> {
    let mut last = AuthError::Invalid("no verification key configured".into());
    for key in keys {
        let mut validation = Validation::new(key.algorithm);
        validation.set_audience(&[audience]);
        validation.leeway = leeway;
        // A token used before its `nbf` is refused (jsonwebtoken skips the check unless asked).
        validation.validate_nbf = true;
        if let Some(issuer) = issuer {
            validation.set_issuer(&[issuer]);
            // set_issuer alone checks `iss` only when present: a token without one would pass.
            validation.set_required_spec_claims(&["exp", "aud", "iss"]);
        } else {
            validation.set_required_spec_claims(&["exp", "aud"]);
        }
        match jsonwebtoken::decode::<T>(token, &key.key, &validation) {
            Ok(data) => return Ok(data.claims),
            Err(err) => {
                use jsonwebtoken::errors::ErrorKind;
                last = match err.kind() {
                    ErrorKind::ExpiredSignature => return Err(AuthError::Expired),
                    ErrorKind::InvalidAudience => {
                        return Err(AuthError::Invalid(format!(
                            "the token's `aud` claim is not `{audience}`"
                        )));
                    }
                    ErrorKind::InvalidIssuer => {
                        return Err(AuthError::Invalid(format!(
                            "the token's `iss` claim is not `{}`",
                            issuer.unwrap_or_default()
                        )));
                    }
                    // A signature or algorithm mismatch may be another key's token: try the next key.
                    ErrorKind::InvalidSignature | ErrorKind::InvalidAlgorithm => {
                        AuthError::Invalid("signature does not verify".into())
                    }
                    other => return Err(AuthError::Invalid(describe_jwt_error(other))),
                };
            }
        }
    }
    Err(last)
}

/// What is wrong with a token, in words a person acts on (never the library's debug output).
fn describe_jwt_error(kind: &jsonwebtoken::errors::ErrorKind) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match kind {
        ErrorKind::MissingRequiredClaim(claim) => format!("token is missing the `{claim}` claim"),
        ErrorKind::InvalidClaimFormat(claim) => {
            format!("the token's `{claim}` claim has the wrong type")
        }
        ErrorKind::ImmatureSignature => {
            "token is not valid yet: its `nbf` (not before) time is in the future".into()
        }
        ErrorKind::InvalidToken => {
            "not a JWT: expected three base64url parts separated by dots".into()
        }
        ErrorKind::Base64(_) => "a part of the token is not base64url".into(),
        ErrorKind::Utf8(_) => "a part of the token is not UTF-8".into(),
        ErrorKind::Json(err) => {
            let text = err.to_string();
            // serde names a claim the claims struct needs: say it as the other missing claims are said.
            match text
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split_once('`'))
            {
                Some((claim, _)) => format!("token is missing the `{claim}` claim"),
                None => format!("the token's header or claims are not valid: {text}"),
            }
        }
        ErrorKind::InvalidSubject => "the token's `sub` claim is not accepted".into(),
        ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
            "the token's `alg` is not supported (EdDSA, RS256 or ES256)".into()
        }
        _ => "the token cannot be verified".into(),
    }
}

/// The longest staff token accepted by default (`auth.max_token_lifetime_secs`): one working day. An
/// integration renews its token; a leaked token stops working within a day.
pub const DEFAULT_MAX_TOKEN_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(24 * 3600);

fn hours(secs: u64) -> String {
    if secs.is_multiple_of(3600) {
        format!("{} h", secs / 3600)
    } else {
        format!("{secs} s")
    }
}

/// Verifies staff/system tokens.
#[derive(Clone)]
pub struct Verifier {
    keys: Arc<Vec<VerifyingKey>>,
    audience: String,
    issuer: Option<String>,
    leeway: u64,
    max_lifetime: u64,
}

impl Verifier {
    pub fn from_config(config: &AuthConfig) -> Result<Self, AuthError> {
        let mut pems = config.jwt_public_keys.clone();
        for path in &config.jwt_public_key_files {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| AuthError::Key(format!("reading {}: {e}", path.display())))?;
            pems.push(pem);
        }
        let keys = pems
            .iter()
            .map(|p| verifying_key(p))
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(AuthError::Key("auth.jwt_public_keys is empty".into()));
        }
        Ok(Self {
            keys: Arc::new(keys),
            audience: config.jwt_audience.clone(),
            issuer: config.jwt_issuer.clone(),
            leeway: config.leeway_secs,
            max_lifetime: config.max_token_lifetime_secs,
        })
    }

    pub fn verify(&self, token: &str) -> Result<Caller, AuthError> {
        let claims: Claims = verify_with(
            &self.keys,
            token,
            &self.audience,
            self.issuer.as_deref(),
            self.leeway,
        )?;
        if !is_valid_tenant(&claims.tenant) {
            return Err(AuthError::Invalid(
                "tenant claim is not a valid clinic id".into(),
            ));
        }
        if claims.sub.is_empty() {
            return Err(AuthError::Invalid(
                "the token's `sub` claim is empty".into(),
            ));
        }
        // A validly signed token for a century is a key to the clinic forever if it leaks: refuse
        // any token issued for longer than the maximum, or still valid for longer than it from now.
        let max = self.max_lifetime;
        if claims.exp.saturating_sub(claims.iat) > max {
            return Err(AuthError::Invalid(format!(
                "token lifetime (`exp` - `iat`) is {}, more than the {} this service accepts (auth.max_token_lifetime_secs): issue a shorter-lived token",
                hours(claims.exp.saturating_sub(claims.iat)),
                hours(max)
            )));
        }
        let now = jsonwebtoken::get_current_timestamp();
        if claims.exp.saturating_sub(now) > max + self.leeway {
            return Err(AuthError::Invalid(format!(
                "token is valid for another {} (`exp` - now), more than the {} this service accepts (auth.max_token_lifetime_secs): issue a shorter-lived token",
                hours(claims.exp.saturating_sub(now)),
                hours(max)
            )));
        }
        Ok(Caller {
            tenant: claims.tenant,
            sub: claims.sub,
            role: claims.role,
        })
    }

    /// Reads the bearer token of gRPC metadata.
    pub fn verify_metadata(
        &self,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<Caller, AuthError> {
        let value = metadata.get("authorization").ok_or(AuthError::Missing)?;
        let value = value
            .to_str()
            .map_err(|_| AuthError::Invalid("authorization is not ASCII".into()))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .ok_or_else(|| AuthError::Invalid("authorization must be `Bearer <token>`".into()))?;
        self.verify(token.trim())
    }
}

/// The tonic interceptor that authenticates every call of a service.
#[derive(Clone)]
pub struct Authenticator {
    verifier: Verifier,
}

impl Authenticator {
    pub fn new(verifier: Verifier) -> Self {
        Self { verifier }
    }
}

impl tonic::service::Interceptor for Authenticator {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let caller = self.verifier.verify_metadata(request.metadata())?;
        tracing::Span::current().record("tenant", caller.tenant.as_str());
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

/// The caller the [`Authenticator`] verified.
#[allow(clippy::result_large_err)]
pub fn caller<T>(request: &tonic::Request<T>) -> Result<Caller, tonic::Status> {
    request
        .extensions()
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| tonic::Status::unauthenticated("no verified caller on this request"))
}

/// An Ed25519 key pair in PEM form (PKCS#8 private key, SPKI public key).
#[derive(Clone)]
pub struct KeyPair {
    pub private_pem: String,
    pub public_pem: String,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("public_pem", &self.public_pem)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A fresh random key pair (dev stack, tests, key rotation tooling).
    pub fn generate() -> Result<Self, AuthError> {
        let signing = SigningKey::generate(&mut rand::rngs::OsRng);
        let private_pem = signing
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| AuthError::Key(e.to_string()))?
            .to_string();
        let public_pem = signing
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| AuthError::Key(e.to_string()))?;
        Ok(Self {
            private_pem,
            public_pem,
        })
    }
}

/// Signs tokens with an Ed25519 private key.
#[derive(Clone)]
pub struct Signer {
    key: EncodingKey,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signer([redacted])")
    }
}

impl Signer {
    pub fn from_pem(private_pem: &str) -> Result<Self, AuthError> {
        let key = EncodingKey::from_ed_pem(private_pem.trim().as_bytes())
            .map_err(|e| AuthError::Key(format!("not an Ed25519 private key in PEM form: {e}")))?;
        Ok(Self { key })
    }

    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), claims, &self.key)
            .map_err(|e| AuthError::Key(e.to_string()))
    }

    /// A staff/system token valid for `ttl`.
    pub fn staff_token(
        &self,
        tenant: &str,
        sub: &str,
        role: Role,
        audience: &str,
        ttl: std::time::Duration,
    ) -> Result<String, AuthError> {
        let now = jsonwebtoken::get_current_timestamp();
        self.sign(&Claims {
            tenant: tenant.into(),
            sub: sub.into(),
            role,
            aud: audience.into(),
            iat: now,
            exp: now + ttl.as_secs(),
            iss: None,
        })
    }
}

pub const PORTAL_AUDIENCE: &str = "followup-portal";

/// What a patient's portal link proves: this patient may see and approve this plan of this clinic
/// until `exp`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortalClaims {
    pub tenant: String,
    pub plan_id: String,
    /// The plan version the link was sent for (a revision is a new version); 0 from issuers that do not
    /// set it.
    #[serde(default)]
    pub plan_version: i32,
    pub patient_id: String,
    /// Each send issues a fresh token; its id lets a re-send be told apart.
    pub jti: String,
    pub aud: String,
    pub iat: u64,
    pub exp: u64,
}

/// Verifies portal link tokens with the plans service's public key(s).
#[derive(Clone)]
pub struct PortalVerifier {
    keys: Arc<Vec<VerifyingKey>>,
}

impl PortalVerifier {
    pub fn from_pems(pems: &[String]) -> Result<Self, AuthError> {
        let keys = pems
            .iter()
            .map(|p| verifying_key(p))
            .collect::<Result<Vec<_>, _>>()?;
        if keys.is_empty() {
            return Err(AuthError::Key("no portal public key configured".into()));
        }
        Ok(Self {
            keys: Arc::new(keys),
        })
    }

    pub fn verify(&self, token: &str) -> Result<PortalClaims, AuthError> {
        let claims: PortalClaims = verify_with(&self.keys, token, PORTAL_AUDIENCE, None, 0)?;
        if !is_valid_tenant(&claims.tenant) {
            return Err(AuthError::Invalid(
                "tenant claim is not a valid clinic id".into(),
            ));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn setup() -> (Signer, Verifier) {
        let pair = KeyPair::generate().expect("keys");
        let signer = Signer::from_pem(&pair.private_pem).expect("signer");
        let config = AuthConfig {
            jwt_public_keys: vec![pair.public_pem],
            jwt_public_key_files: vec![],
            jwt_audience: "followup".into(),
            jwt_issuer: None,
            leeway_secs: 0,
            max_token_lifetime_secs: DEFAULT_MAX_TOKEN_LIFETIME.as_secs(),
        };
        (signer, Verifier::from_config(&config).expect("verifier"))
    }

    #[test]
    fn a_signed_token_verifies() {
        let (signer, verifier) = setup();
        let token = signer
            .staff_token(
                "c1",
                "staff-1",
                Role::Dentist,
                "followup",
                Duration::from_secs(60),
            )
            .expect("token");
        let caller = verifier.verify(&token).expect("verifies");
        assert_eq!(
            caller,
            Caller {
                tenant: "c1".into(),
                sub: "staff-1".into(),
                role: Role::Dentist
            }
        );
        assert!(caller.require(&[Role::Dentist, Role::Owner]).is_ok());
        let denied = caller.require(&[Role::Owner]).expect_err("denied");
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    }

    #[test]
    fn expired_tampered_foreign_and_wrong_audience_are_refused() {
        let (signer, verifier) = setup();
        let now = jsonwebtoken::get_current_timestamp();
        let expired = signer
            .sign(&Claims {
                tenant: "c1".into(),
                sub: "s".into(),
                role: Role::Owner,
                aud: "followup".into(),
                iat: now - 120,
                exp: now - 60,
                iss: None,
            })
            .expect("token");
        assert_eq!(
            verifier.verify(&expired).expect_err("expired"),
            AuthError::Expired
        );

        let good = signer
            .staff_token("c1", "s", Role::Owner, "followup", Duration::from_secs(60))
            .expect("token");
        let mut parts: Vec<String> = good.split('.').map(String::from).collect();
        // Swap the payload for one claiming another clinic; the signature no longer matches.
        let forged = signer
            .staff_token("c2", "s", Role::Owner, "followup", Duration::from_secs(60))
            .expect("token");
        parts[1] = forged.split('.').nth(1).unwrap_or_default().to_string();
        assert!(matches!(
            verifier.verify(&parts.join(".")),
            Err(AuthError::Invalid(_))
        ));

        let (other_signer, _) = setup();
        let foreign = other_signer
            .staff_token("c1", "s", Role::Owner, "followup", Duration::from_secs(60))
            .expect("t");
        assert!(matches!(
            verifier.verify(&foreign),
            Err(AuthError::Invalid(_))
        ));

        let portal = signer
            .staff_token(
                "c1",
                "s",
                Role::Owner,
                PORTAL_AUDIENCE,
                Duration::from_secs(60),
            )
            .expect("t");
        assert!(matches!(
            verifier.verify(&portal),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            verifier.verify("not-a-jwt"),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn rotated_keys_both_verify() {
        let (old_signer, _) = setup();
        let old = KeyPair::generate().expect("keys");
        let new = KeyPair::generate().expect("keys");
        let _ = old_signer;
        let config = AuthConfig {
            jwt_public_keys: vec![old.public_pem.clone(), new.public_pem.clone()],
            jwt_public_key_files: vec![],
            jwt_audience: "followup".into(),
            jwt_issuer: None,
            leeway_secs: 0,
            max_token_lifetime_secs: DEFAULT_MAX_TOKEN_LIFETIME.as_secs(),
        };
        let verifier = Verifier::from_config(&config).expect("verifier");
        for pair in [old, new] {
            let signer = Signer::from_pem(&pair.private_pem).expect("signer");
            let token = signer
                .staff_token("c1", "s", Role::System, "followup", Duration::from_secs(60))
                .expect("t");
            assert!(verifier.verify(&token).is_ok());
        }
    }

    #[test]
    fn portal_tokens_round_trip_and_are_not_staff_tokens() {
        let pair = KeyPair::generate().expect("keys");
        let signer = Signer::from_pem(&pair.private_pem).expect("signer");
        let now = jsonwebtoken::get_current_timestamp();
        let claims = PortalClaims {
            tenant: "c1".into(),
            plan_id: "p1".into(),
            plan_version: 2,
            patient_id: "pat-1".into(),
            jti: "j1".into(),
            aud: PORTAL_AUDIENCE.into(),
            iat: now,
            exp: now + 60,
        };
        let token = signer.sign(&claims).expect("token");
        let verifier =
            PortalVerifier::from_pems(std::slice::from_ref(&pair.public_pem)).expect("verifier");
        assert_eq!(verifier.verify(&token).expect("verifies"), claims);

        let staff = Verifier::from_config(&AuthConfig {
            jwt_public_keys: vec![pair.public_pem],
            jwt_public_key_files: vec![],
            jwt_audience: "followup".into(),
            jwt_issuer: None,
            leeway_secs: 0,
            max_token_lifetime_secs: DEFAULT_MAX_TOKEN_LIFETIME.as_secs(),
        })
        .expect("verifier");
        assert!(
            staff.verify(&token).is_err(),
            "a portal link must not work as a staff token"
        );
    }

    fn verifier_with(issuer: Option<&str>) -> (Signer, Verifier) {
        let pair = KeyPair::generate().expect("keys");
        let signer = Signer::from_pem(&pair.private_pem).expect("signer");
        let config = AuthConfig {
            jwt_public_keys: vec![pair.public_pem],
            jwt_public_key_files: vec![],
            jwt_audience: "followup".into(),
            jwt_issuer: issuer.map(String::from),
            leeway_secs: 0,
            max_token_lifetime_secs: DEFAULT_MAX_TOKEN_LIFETIME.as_secs(),
        };
        (signer, Verifier::from_config(&config).expect("verifier"))
    }

    /// Claims as any issuer may write them, so tests can leave claims out or add `nbf`.
    fn raw(signer: &Signer, claims: serde_json::Value) -> String {
        signer.sign(&claims).expect("token")
    }

    fn invalid(result: Result<Caller, AuthError>) -> String {
        match result {
            Err(AuthError::Invalid(message)) => message,
            other => panic!("expected an invalid token, got {other:?}"),
        }
    }

    #[test]
    fn a_configured_issuer_is_required_not_only_checked_when_present() {
        let (signer, verifier) = verifier_with(Some("https://idp.clinic.example"));
        let now = jsonwebtoken::get_current_timestamp();
        let claims = |iss: Option<&str>| {
            let mut c = serde_json::json!({
                "tenant": "c1", "sub": "s", "role": "owner", "aud": "followup",
                "iat": now, "exp": now + 600,
            });
            if let Some(iss) = iss {
                c["iss"] = iss.into();
            }
            c
        };
        let message = invalid(verifier.verify(&raw(&signer, claims(None))));
        assert_eq!(message, "token is missing the `iss` claim");
        let message = invalid(verifier.verify(&raw(&signer, claims(Some("https://evil")))));
        assert_eq!(
            message,
            "the token's `iss` claim is not `https://idp.clinic.example`"
        );
        assert!(
            verifier
                .verify(&raw(&signer, claims(Some("https://idp.clinic.example"))))
                .is_ok()
        );
        // Without a configured issuer, `iss` stays optional.
        let (signer, verifier) = verifier_with(None);
        assert!(verifier.verify(&raw(&signer, claims(None))).is_ok());
    }

    #[test]
    fn a_token_before_its_nbf_is_refused() {
        let (signer, verifier) = verifier_with(None);
        let now = jsonwebtoken::get_current_timestamp();
        let token = |nbf: u64| {
            raw(
                &signer,
                serde_json::json!({
                    "tenant": "c1", "sub": "s", "role": "owner", "aud": "followup",
                    "iat": now, "exp": now + 7200, "nbf": nbf,
                }),
            )
        };
        let message = invalid(verifier.verify(&token(now + 3600)));
        assert_eq!(
            message,
            "token is not valid yet: its `nbf` (not before) time is in the future"
        );
        assert!(verifier.verify(&token(now - 10)).is_ok());
    }

    #[test]
    fn a_token_beyond_the_maximum_lifetime_is_refused() {
        let (signer, verifier) = verifier_with(None);
        let now = jsonwebtoken::get_current_timestamp();
        let token = |iat: u64, exp: u64| {
            raw(
                &signer,
                serde_json::json!({
                    "tenant": "c1", "sub": "s", "role": "owner", "aud": "followup",
                    "iat": iat, "exp": exp,
                }),
            )
        };
        let century = 100 * 365 * 24 * 3600;
        let message = invalid(verifier.verify(&token(now, now + century)));
        assert!(
            message.starts_with("token lifetime (`exp` - `iat`) is 876000 h, more than the 24 h"),
            "{message}"
        );
        assert!(
            message.contains("auth.max_token_lifetime_secs"),
            "{message}"
        );
        // An `iat` back-dated to look recent does not help: what is left of it counts too.
        let message = invalid(verifier.verify(&token(now + century - 3600, now + century)));
        assert!(
            message.starts_with("token is valid for another"),
            "{message}"
        );
        let message = invalid(verifier.verify(&token(now, now + 25 * 3600)));
        assert!(message.contains("25 h"), "{message}");
        // A day exactly is fine (what `followup token` issues by default).
        assert!(verifier.verify(&token(now, now + 24 * 3600)).is_ok());
        let ok = signer
            .staff_token(
                "c1",
                "s",
                Role::Owner,
                "followup",
                DEFAULT_MAX_TOKEN_LIFETIME,
            )
            .expect("token");
        assert!(verifier.verify(&ok).is_ok());
    }

    #[test]
    fn token_errors_read_as_words_not_debug_output() {
        let (signer, verifier) = verifier_with(None);
        let now = jsonwebtoken::get_current_timestamp();
        let no_aud = raw(
            &signer,
            serde_json::json!({
                "tenant": "c1", "sub": "s", "role": "owner", "iat": now, "exp": now + 60,
            }),
        );
        assert_eq!(
            invalid(verifier.verify(&no_aud)),
            "token is missing the `aud` claim"
        );
        let no_exp = raw(
            &signer,
            serde_json::json!({
                "tenant": "c1", "sub": "s", "role": "owner", "aud": "followup", "iat": now,
            }),
        );
        assert_eq!(
            invalid(verifier.verify(&no_exp)),
            "token is missing the `exp` claim"
        );
        let no_role = raw(
            &signer,
            serde_json::json!({
                "tenant": "c1", "sub": "s", "aud": "followup", "iat": now, "exp": now + 60,
            }),
        );
        assert_eq!(
            invalid(verifier.verify(&no_role)),
            "token is missing the `role` claim"
        );
        let portal = signer
            .staff_token(
                "c1",
                "s",
                Role::Owner,
                PORTAL_AUDIENCE,
                Duration::from_secs(60),
            )
            .expect("t");
        assert_eq!(
            invalid(verifier.verify(&portal)),
            "the token's `aud` claim is not `followup`"
        );
        assert_eq!(
            invalid(verifier.verify("not-a-jwt")),
            "not a JWT: expected three base64url parts separated by dots"
        );
        for message in [
            invalid(verifier.verify(&no_aud)),
            invalid(verifier.verify("a.b.c")),
            invalid(verifier.verify("not-a-jwt")),
        ] {
            assert!(
                !message.contains('(') || message.contains("(not before)"),
                "no Rust debug output: {message}"
            );
        }
    }

    #[test]
    fn metadata_without_bearer_is_missing() {
        let (_, verifier) = setup();
        let metadata = tonic::metadata::MetadataMap::new();
        assert_eq!(
            verifier.verify_metadata(&metadata).expect_err("missing"),
            AuthError::Missing
        );
    }
}
