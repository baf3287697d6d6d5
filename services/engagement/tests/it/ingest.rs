//! The HTTP contract of `POST /v1/beacons`: every validation error, auth, limits, CORS, duplicates.

use bytes::Bytes;
use followup_platform::event::{now_timestamp, timestamp};
use followup_proto::followup::common::v1::PortalSection;
use followup_proto::followup::events::v1::{BeaconBatch, BeaconEvent, BeaconKind};
use serde_json::{Value, json};

use crate::support::*;

fn violation_fields(body: &Value) -> Vec<String> {
    body["error"]["violations"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|v| v["field"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn every_validation_error_names_its_field() {
    let h = Harness::start().await;
    let plan = new_plan();
    let token = h.token(TENANT, &plan);
    let addr = h.beacons_addr();

    // Not JSON at all.
    let (status, _, body) = post_raw(&h.http, addr, "application/json", Bytes::from("{")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(violation_fields(&body), vec!["body"]);

    // A field of the wrong type is named by its path.
    let (status, body) = h
        .post(&json!({"token": token, "session_id": "s1", "events": [{"id": "e1", "kind": "heartbeat", "visible_ms": "ten"}]}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(violation_fields(&body), vec!["events[0].visible_ms"]);

    // Unknown section, negative and absurd durations, unknown kind, missing session: all at once.
    let (status, body) = h
        .post(&json!({"token": token, "events": [
            section("e1", "pricing", 10),
            heartbeat("e2", -5),
            heartbeat("e3", 9 * 3600 * 1000),
            {"id": "e4", "kind": "scroll"},
        ]}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        violation_fields(&body),
        vec![
            "session_id",
            "events[0].section",
            "events[1].visible_ms",
            "events[2].visible_ms",
            "events[3].kind"
        ]
    );
    assert_eq!(body["error"]["code"], "invalid_argument");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown section `pricing`"),
        "{body}"
    );

    // Too many events.
    let events = (0..51).map(|i| heartbeat(&format!("e{i}"), 10)).collect();
    let (status, body) = h.post(&batch(&token, "s1", events)).await;
    assert_eq!(status, 400);
    assert_eq!(violation_fields(&body), vec!["events"]);

    // Over 16 KiB.
    let big = json!({"token": token, "session_id": "s1", "events": [open("e1")], "padding": "x".repeat(17 * 1024)});
    let (status, _, body) = post_raw(&h.http, addr, "text/plain", big.to_string().into()).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "body_too_large");

    // A content type sendBeacon would never send.
    let (status, _, body) = post_raw(
        &h.http,
        addr,
        "application/x-www-form-urlencoded",
        Bytes::from("a=b"),
    )
    .await;
    assert_eq!(status, 415, "{body}");
}

#[tokio::test]
async fn bad_expired_foreign_and_other_plan_tokens_are_401() {
    let h = Harness::start().await;
    let plan = new_plan();
    let events = vec![open("e1")];

    let (status, body) = h.post(&batch("not-a-token", "s1", events.clone())).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthenticated");

    let expired = portal_token(&h.portal, TENANT, &plan, -120);
    let (status, body) = h.post(&batch(&expired, "s1", events.clone())).await;
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("expired"),
        "{body}"
    );

    let stranger = followup_platform::auth::Signer::from_pem(
        &followup_platform::auth::KeyPair::generate()
            .expect("keys")
            .private_pem,
    )
    .expect("signer");
    let foreign = portal_token(&stranger, TENANT, &plan, 3600);
    let (status, _) = h.post(&batch(&foreign, "s1", events.clone())).await;
    assert_eq!(status, 401);

    // A staff token is not a portal link.
    let staff = h.staff(TENANT);
    let (status, _) = h.post(&batch(&staff, "s1", events.clone())).await;
    assert_eq!(status, 401);

    let token = h.token(TENANT, &plan);
    let mut other_plan = batch(&token, "s1", events.clone());
    other_plan["plan_id"] = json!(new_plan());
    let (status, body) = h.post(&other_plan).await;
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("another plan"),
        "{body}"
    );

    // And nothing of it counted.
    assert!(!h.facts(TENANT, &plan).await.viewed);
}

#[tokio::test]
async fn a_link_over_its_rate_is_told_when_to_retry() {
    let h = Harness::start_with(|s| {
        s.rate_limit_per_minute = 1;
        s.rate_limit_burst = 2;
    })
    .await;
    let token = h.token(TENANT, &new_plan());
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..3 {
        let (status, headers, _) = post_raw(
            &h.http,
            h.beacons_addr(),
            "text/plain",
            batch(&token, "s1", vec![heartbeat(&format!("e{i}"), 100)])
                .to_string()
                .into(),
        )
        .await;
        statuses.push(status);
        if status == 429 {
            retry_after = headers
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
        }
    }
    assert_eq!(statuses, vec![202, 202, 429]);
    assert!(
        retry_after.is_some_and(|s| (1..=60).contains(&s)),
        "{retry_after:?}"
    );
    // Another link is not affected.
    let other = h.token(TENANT, &new_plan());
    let (status, _) = h.post(&batch(&other, "s2", vec![open("e1")])).await;
    assert_eq!(status, 202);
}

#[tokio::test]
async fn cors_answers_configured_origins_and_the_script_is_served() {
    let h = Harness::start_with(|s| {
        s.allowed_origins = vec!["https://portal.example.com".into()];
    })
    .await;
    let addr = h.beacons_addr();
    let preflight = |origin: &'static str| {
        http::Request::builder()
            .method("OPTIONS")
            .uri(format!("http://{addr}/v1/beacons"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .body(http_body_util::Full::new(Bytes::new()))
            .expect("request")
    };
    let allowed = h
        .http
        .request(preflight("https://portal.example.com"))
        .await
        .expect("preflight");
    assert_eq!(
        allowed
            .headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok()),
        Some("https://portal.example.com")
    );
    let refused = h
        .http
        .request(preflight("https://evil.example.net"))
        .await
        .expect("preflight");
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    let script = h
        .http
        .request(
            http::Request::get(format!("http://{addr}/v1/beacon.js"))
                .body(http_body_util::Full::new(Bytes::new()))
                .expect("request"),
        )
        .await
        .expect("script");
    assert_eq!(script.status(), 200);
    assert!(
        script
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/javascript"))
    );
}

#[tokio::test]
async fn duplicate_beacons_count_once() {
    let h = Harness::start().await;
    let plan = new_plan();
    let token = h.token(TENANT, &plan);
    let first = batch(
        &token,
        "s1",
        vec![
            open("e1"),
            heartbeat("e2", 1000),
            section("e3", "images", 700),
        ],
    );

    // The same request twice (a retry): stored once by JetStream.
    let (status, reply) = h.post(&first).await;
    assert_eq!((status, reply["duplicate"].clone()), (202, json!(false)));
    let (status, reply) = h.post(&first).await;
    assert_eq!((status, reply["duplicate"].clone()), (202, json!(true)));

    // An event repeated in another request (another batch id) counts once too.
    let (status, _) = h
        .post(&batch(
            &token,
            "s1",
            vec![heartbeat("e4", 500), heartbeat("e2", 1000)],
        ))
        .await;
    assert_eq!(status, 202);

    // A batch replayed past JetStream's duplicate window (published again under another message id):
    // the aggregator's event keys drop it.
    let replay = BeaconBatch {
        event_id: format!("{plan}:s1:e1-late"),
        tenant_id: TENANT.into(),
        occurred_at: Some(now_timestamp()),
        plan_id: plan.clone(),
        plan_version: 0,
        patient_id: "patient-1".into(),
        session_id: "s1".into(),
        events: vec![BeaconEvent {
            client_event_id: "e2".into(),
            kind: BeaconKind::Heartbeat as i32,
            section: 0,
            visible_ms: 1000,
            client_time: Some(timestamp(chrono::Utc::now())),
        }],
    };
    let js = h.env.nats.jetstream().await;
    let publish = async_nats::jetstream::message::PublishMessage::build()
        .payload(prost::Message::encode_to_vec(&replay).into())
        .message_id(replay.event_id.clone());
    js.send_publish(format!("beacons.{TENANT}"), publish)
        .await
        .expect("sent")
        .await
        .expect("stored");
    // A marker after it: once the marker is folded, the replay has been too.
    let (status, _) = h.post(&batch(&token, "s1", vec![heartbeat("e5", 1)])).await;
    assert_eq!(status, 202);

    h.facts_until(&plan, |f| ms(&f.total_view_time) >= 1501)
        .await;
    drained(&h.env).await;
    let facts = h.facts(TENANT, &plan).await;
    assert_eq!(ms(&facts.total_view_time), 1501);
    assert_eq!(facts.view_count, 1);
    assert_eq!(section_ms(&facts.section_times, PortalSection::Images), 700);
}
