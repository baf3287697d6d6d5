//! The beacon ingest (port 8080): `POST /v1/beacons` and `GET /v1/beacon.js`.
//!
//! A beacon is answered 202 only once JetStream has acknowledged it on the BEACONS stream, with
//! `Nats-Msg-Id` = the batch id, so a retried request is stored once. That publish IS the durable write:
//! no database transaction happens on this path, so there is nothing for an outbox to make atomic with it.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use axum::Router;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use followup_platform::auth::{AuthError, PortalVerifier};
use followup_platform::event::{now_timestamp, timestamp};
use followup_platform::metrics::{MethodLabels, Metrics, RpcLabels};
use followup_proto::followup::events::v1::{BeaconBatch, BeaconEvent, BeaconKind};
use followup_proto::subjects::Event as _;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use prost::{Message, Name};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tracing::Instrument as _;
use uuid::Uuid;

use crate::config::Settings;
use crate::domain::{self, BeaconRequest, Limits};
use crate::error::Error;

/// The beacon script, served as is.
pub const BEACON_JS: &str = include_str!("beacon.js");
/// The largest body accepted.
pub const MAX_BODY: usize = 16 * 1024;

const ROUTE_BEACONS: &str = "POST /v1/beacons";

/// A portal token that verified once, remembered until it expires.
#[derive(Clone, Debug)]
struct Portal {
    tenant: String,
    plan_id: Uuid,
    plan_version: i32,
    patient_id: String,
    /// The rate limit's key: one per issued link.
    link: String,
    exp: u64,
}

/// Verified tokens. A page posts the same token every few seconds, and an Ed25519 verification costs
/// more than the rest of the request; a map hit only returns what the same exact string proved before.
struct TokenCache {
    entries: Mutex<HashMap<String, Portal>>,
    capacity: usize,
}

impl TokenCache {
    fn get(&self, token: &str) -> Option<Portal> {
        self.entries.lock().ok()?.get(token).cloned()
    }

    fn insert(&self, token: &str, portal: Portal) {
        if self.capacity == 0 {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            // Crude but bounded: starting over costs one verification per live page.
            if entries.len() >= self.capacity {
                entries.clear();
            }
            entries.insert(token.to_string(), portal);
        }
    }
}

/// What the ingest needs.
pub struct Ingest {
    pub verifier: PortalVerifier,
    pub js: async_nats::jetstream::Context,
    pub limits: Limits,
    pub publish_timeout: Duration,
    pub metrics: Arc<Metrics>,
    limiter: DefaultKeyedRateLimiter<String>,
    tokens: TokenCache,
}

impl Ingest {
    pub fn new(
        settings: &Settings,
        verifier: PortalVerifier,
        js: async_nats::jetstream::Context,
        metrics: Arc<Metrics>,
    ) -> Self {
        let per_minute = NonZeroU32::new(settings.rate_limit_per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(settings.rate_limit_burst).unwrap_or(NonZeroU32::MIN);
        Self {
            verifier,
            js,
            limits: settings.limits(),
            publish_timeout: Duration::from_millis(settings.publish_timeout_ms),
            metrics,
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst)),
            tokens: TokenCache {
                entries: Mutex::new(HashMap::new()),
                capacity: settings.token_cache_size,
            },
        }
    }

    /// Forgets rate-limit state of links that have been quiet (called periodically).
    pub fn forget_idle(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }

    fn verify(&self, token: &str) -> Result<Portal, Error> {
        let now = jsonwebtoken_now();
        if let Some(portal) = self.tokens.get(token) {
            if portal.exp > now {
                return Ok(portal);
            }
            return Err(Error::Unauthenticated(
                "token expired: the portal link is no longer valid; ask the clinic for a new one"
                    .into(),
            ));
        }
        let claims = self.verifier.verify(token).map_err(|e| match e {
            AuthError::Expired => Error::Unauthenticated(
                "token expired: the portal link is no longer valid; ask the clinic for a new one"
                    .into(),
            ),
            other => Error::Unauthenticated(format!("token: {other}")),
        })?;
        let plan_id = Uuid::parse_str(&claims.plan_id).map_err(|_| {
            Error::Unauthenticated("token: it does not name a plan (plan_id is not a UUID)".into())
        })?;
        let portal = Portal {
            plan_version: claims.plan_version,
            link: if claims.jti.is_empty() {
                format!("{}:{}:{}", claims.tenant, claims.plan_id, claims.iat)
            } else {
                format!("{}:{}", claims.tenant, claims.jti)
            },
            tenant: claims.tenant,
            plan_id,
            patient_id: claims.patient_id,
            exp: claims.exp,
        };
        self.tokens.insert(token, portal.clone());
        Ok(portal)
    }

    /// Checks, authenticates, rate-limits and stores one request. Returns the events accepted and
    /// whether JetStream had already stored this batch.
    async fn accept(
        &self,
        headers: &HeaderMap,
        body: Result<Bytes, BytesRejection>,
    ) -> Result<(usize, bool), Error> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" && essence != "text/plain" {
            return Err(Error::UnsupportedMediaType(
                content_type.chars().take(80).collect(),
            ));
        }
        let body = body.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Error::BodyTooLarge { limit: MAX_BODY }
            } else {
                Error::invalid("body", rejection.body_text())
            }
        })?;
        let request: BeaconRequest = parse_json(&body)?;
        let checked = domain::check(request, &self.limits).map_err(Error::Invalid)?;
        let portal = self.verify(&checked.token)?;
        if let Some(plan_id) = &checked.plan_id
            && Uuid::parse_str(plan_id).ok() != Some(portal.plan_id)
        {
            return Err(Error::Unauthenticated(
                "token is for another plan than plan_id: use the token of the link this page was opened with".into(),
            ));
        }
        if let Err(not_until) = self.limiter.check_key(&portal.link) {
            return Err(Error::RateLimited(
                not_until.wait_time_from(DefaultClock::default().now()),
            ));
        }

        let first_id = checked.events.first().map(|e| e.id.as_str()).unwrap_or("");
        let batch_id = domain::batch_id(&portal.plan_id.to_string(), &checked.session_id, first_id);
        let batch = BeaconBatch {
            event_id: batch_id.clone(),
            tenant_id: portal.tenant.clone(),
            occurred_at: Some(now_timestamp()),
            plan_id: portal.plan_id.to_string(),
            plan_version: portal.plan_version,
            patient_id: portal.patient_id.clone(),
            session_id: checked.session_id.clone(),
            events: checked
                .events
                .iter()
                .map(|e| BeaconEvent {
                    client_event_id: e.id.clone(),
                    kind: match e.kind {
                        domain::Kind::Open => BeaconKind::Open,
                        domain::Kind::SectionVisible => BeaconKind::SectionVisible,
                        domain::Kind::Heartbeat => BeaconKind::Heartbeat,
                        domain::Kind::Close => BeaconKind::Close,
                    } as i32,
                    section: e.section.map(|s| s.number()).unwrap_or(0),
                    visible_ms: e.visible_ms,
                    client_time: e.client_time.map(timestamp),
                })
                .collect(),
        };
        let subject = batch
            .subject()
            .map_err(|e| Error::Unauthenticated(format!("token: {e}")))?;
        let mut nats_headers = async_nats::HeaderMap::new();
        nats_headers.insert("Content-Type", followup_platform::event::PROTOBUF);
        nats_headers.insert("ce-specversion", "1.0");
        nats_headers.insert("ce-type", BeaconBatch::full_name().as_str());
        nats_headers.insert("ce-source", "followup/engagement");
        nats_headers.insert("ce-id", batch_id.as_str());
        // The view's trace: the portal page's own when it sent a traceparent (fetch can; sendBeacon
        // cannot), else a new one. It travels on the BEACONS stream, so the aggregator's plan_viewed and
        // everything that follows from it (the scheduler's timer, the message) belong to this view.
        let span = tracing::info_span!("engagement.beacon", tenant = %portal.tenant, plan_id = %portal.plan_id);
        followup_platform::telemetry::set_parent_from(
            &span,
            &followup_platform::telemetry::HttpHeadersRef(headers),
        );
        span.in_scope(|| {
            followup_platform::telemetry::inject_current(
                &mut followup_platform::telemetry::NatsHeaders(&mut nats_headers),
            )
        });
        let publish = PublishMessage::build()
            .payload(batch.encode_to_vec().into())
            .headers(nats_headers)
            .message_id(batch_id);
        let stored = tokio::time::timeout(
            self.publish_timeout,
            async {
                let ack = self
                    .js
                    .send_publish(subject, publish)
                    .await
                    .map_err(|e| Error::Unavailable(e.to_string()))?;
                ack.await.map_err(|e| Error::Unavailable(e.to_string()))
            }
            .instrument(span),
        )
        .await
        .map_err(|_| Error::Unavailable("no PubAck within the publish timeout".into()))??;
        Ok((checked.events.len(), stored.duplicate))
    }
}

fn jsonwebtoken_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Parses JSON, naming the field that does not fit (`events[2].visible_ms`).
fn parse_json(body: &[u8]) -> Result<BeaconRequest, Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let parsed: Result<BeaconRequest, _> = serde_path_to_error::deserialize(&mut deserializer);
    match parsed {
        Ok(request) => deserializer
            .end()
            .map(|()| request)
            .map_err(|e| Error::invalid("body", format!("not a single JSON object: {e}"))),
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            if inner.is_syntax() || inner.is_eof() || path.is_empty() || path == "." || path == "?"
            {
                return Err(Error::invalid(
                    "body",
                    format!("not a valid JSON object: {inner}"),
                ));
            }
            // serde's message names the expected type, e.g. "invalid type: string, expected i64".
            Err(Error::invalid(path, inner.to_string()))
        }
    }
}

async fn post_beacons(
    State(ingest): State<Arc<Ingest>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let response = match ingest.accept(&headers, body).await {
        Ok((accepted, duplicate)) => (
            StatusCode::ACCEPTED,
            axum::Json(serde_json::json!({"accepted": accepted, "duplicate": duplicate})),
        )
            .into_response(),
        Err(err) => err.into_response(),
    };
    ingest
        .metrics
        .http_requests
        .get_or_create(&RpcLabels {
            method: ROUTE_BEACONS.into(),
            code: response.status().as_u16().to_string(),
        })
        .inc();
    ingest
        .metrics
        .http_duration
        .get_or_create(&MethodLabels {
            method: ROUTE_BEACONS.into(),
        })
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn beacon_js() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/javascript; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            ),
        ],
        BEACON_JS,
    )
        .into_response()
}

/// CORS for the configured portal origins. Origins that are not valid header values are refused at start.
pub fn cors(origins: &[String]) -> Result<Option<CorsLayer>, String> {
    if origins.is_empty() {
        return Ok(None);
    }
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        let values = origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o.trim_end_matches('/')).map_err(|_| {
                    format!(
                        "allowed_origins: `{o}` is not an origin such as https://portal.example.com"
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        AllowOrigin::list(values)
    };
    Ok(Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::POST, Method::GET])
            .allow_headers([header::CONTENT_TYPE])
            .max_age(Duration::from_secs(24 * 3600)),
    ))
}

/// The ingest router.
pub fn router(ingest: Arc<Ingest>, cors: Option<CorsLayer>) -> Router {
    let router = Router::new()
        .route("/v1/beacons", post(post_beacons))
        .route("/v1/beacon.js", get(beacon_js))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(ingest);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_stays_small() {
        assert!(
            BEACON_JS.len() < 3 * 1024,
            "beacon.js is {} bytes",
            BEACON_JS.len()
        );
    }

    #[test]
    fn json_errors_name_the_field() {
        let err = parse_json(br#"{"events":[{"id":"a","visible_ms":"ten"}]}"#).expect_err("type");
        match err {
            Error::Invalid(v) => assert_eq!(v[0].field, "events[0].visible_ms"),
            other => panic!("{other:?}"),
        }
        let err = parse_json(b"{").expect_err("syntax");
        assert!(matches!(err, Error::Invalid(v) if v[0].field == "body"));
    }
}
