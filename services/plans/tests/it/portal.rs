//! The patient portal: the plan as the patient sees it, patient approval, and every token failure.

use followup_platform::auth::{PORTAL_AUDIENCE, PortalClaims, Role, Signer};
use followup_proto::followup::plans::v1 as pb;

use crate::support::*;

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test]
async fn the_patient_sees_the_plan_and_approves_it() {
    let svc = Svc::start().await;
    svc.setup_catalog(CLINIC).await;
    let (plan_id, _) = svc.journey(CLINIC, "pat-1").await;
    svc.plans
        .clone()
        .update_plan(svc.owner(pb::UpdatePlanRequest {
            plan: Some(pb::Plan {
                plan_id: plan_id.clone(),
                internal_note: "SECRET-STAFF-NOTE".into(),
                patient_note: "Three visits <b>over</b> two months".into(),
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["internal_note".into(), "patient_note".into()],
            }),
        }))
        .await
        .unwrap();
    let sent = svc.send(CLINIC, &plan_id).await;
    assert!(
        sent.portal_url
            .starts_with(&format!("http://localhost:{}/p/", svc.portal.port())),
        "{}",
        sent.portal_url
    );
    let token = token_of(&sent.portal_url);
    let auth = bearer(&token);
    // The link names the version sent (engagement tags beacons with it).
    let payload = base64::Engine::decode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        token.split('.').nth(1).unwrap(),
    )
    .unwrap();
    let claims: serde_json::Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(claims["plan_version"], 1);
    assert_eq!(claims["plan_id"], plan_id.as_str());

    let (status, headers, body) = http(
        "GET",
        &svc.url(&format!("/v1/portal/plans/{plan_id}")),
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["status"], "sent");
    assert_eq!(json["totals"]["total"]["amount_minor"], 355_000);
    assert_eq!(json["totals"]["total_display"], "$3,550.00");
    assert_eq!(
        json["sections"],
        serde_json::json!(["cover", "treatment_details"])
    );
    assert_eq!(json["visits"][2]["items"][0]["tooth"], "#19 MOD");
    assert!(
        !body.contains("SECRET-STAFF-NOTE"),
        "internal notes never reach the patient"
    );
    assert!(!body.contains("dr-jones"), "staff ids stay internal");

    // The reference page: sections, the beacon script with the token, the Approve button, escaping.
    let (status, _, page) = http("GET", &svc.url(&format!("/p/{token}")), &[], "").await;
    assert_eq!(status, 200);
    assert!(page.contains(r#"data-followup-section="cover""#));
    assert!(page.contains(r#"data-followup-section="treatment_details""#));
    assert!(page.contains(&format!(
        r#"<script src="http://beacons.test/v1/beacon.js" data-token="{token}" async></script>"#
    )));
    assert!(page.contains(">Approve</button>"));
    assert!(
        page.contains("Three visits &lt;b&gt;over"),
        "patient text is escaped"
    );
    assert!(!page.contains("<b>over"));
    assert!(!page.contains("SECRET-STAFF-NOTE"));
    let (status, _, print) = http("GET", &svc.url(&format!("/p/{token}/print")), &[], "").await;
    assert_eq!(status, 200);
    assert!(print.contains("Porcelain crown on an implant") && print.contains("$3,550.00"));

    // The page's form needs the consent box.
    let (status, _, _) = http(
        "POST",
        &svc.url(&format!("/p/{token}/approve")),
        &[("content-type", "application/x-www-form-urlencoded")],
        "",
    )
    .await;
    assert_eq!(status, 400);

    let (status, _, body) = http(
        "POST",
        &svc.url(&format!("/v1/portal/plans/{plan_id}/approve")),
        &[
            ("authorization", &auth),
            ("user-agent", "Mozilla/5.0 (test)"),
        ],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["status"], "approved");
    assert_eq!(answer["changed"], true);

    let plan = svc.get(CLINIC, &plan_id).await;
    assert_eq!(plan.status, pb::PlanStatus::Approved as i32);
    assert_eq!(
        plan.approval.unwrap().channel,
        pb::ApprovalChannel::PatientPortal as i32
    );
    // Consent evidence: time, IP and user agent.
    let pool = svc.env.db.pool().await;
    let evidence: serde_json::Value =
        sqlx::query_scalar("SELECT consent_evidence FROM plan_versions WHERE plan_id = $1::uuid")
            .bind(&plan_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(evidence["ip"], "127.0.0.1");
    assert_eq!(evidence["user_agent"], "Mozilla/5.0 (test)");

    // A second approval changes nothing; the form shows the plan as approved.
    let (status, _, body) = http(
        "POST",
        &svc.url(&format!("/v1/portal/plans/{plan_id}/approve")),
        &[("authorization", &auth)],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""changed":false"#), "{body}");
    let (status, headers, _) = http(
        "POST",
        &svc.url(&format!("/p/{token}/approve")),
        &[("content-type", "application/x-www-form-urlencoded")],
        "consent=yes",
    )
    .await;
    assert_eq!(status, 303);
    assert_eq!(headers["location"], format!("../{token}?approved=1"));
    let (_, _, page) = http("GET", &svc.url(&format!("/p/{token}?approved=1")), &[], "").await;
    assert!(page.contains("You approved this plan"));
    assert!(!page.contains(">Approve</button>"));
    svc.stop().await;
}

#[tokio::test]
async fn every_token_failure_is_refused_without_data() {
    let svc = Svc::start().await;
    svc.setup_catalog(CLINIC).await;
    let (plan_id, _) = svc.journey(CLINIC, "pat-1").await;
    let (other_plan, _) = svc.journey(CLINIC, "pat-2").await;
    let draft_only = svc.create_plan(CLINIC, "pat-1", "Never sent").await;
    let sent = svc.send(CLINIC, &plan_id).await;
    let token = token_of(&sent.portal_url);
    let other_token = token_of(&svc.send(CLINIC, &other_plan).await.portal_url);
    let signer = Signer::from_pem(&svc.portal_keys.private_pem).unwrap();
    let now = jsonwebtoken::get_current_timestamp();
    let claims = |plan: &str, patient: &str, exp: u64| PortalClaims {
        tenant: CLINIC.into(),
        plan_id: plan.into(),
        plan_version: 1,
        patient_id: patient.into(),
        jti: "forged".into(),
        aud: PORTAL_AUDIENCE.into(),
        iat: now - 100,
        exp,
    };

    let expired = signer.sign(&claims(&plan_id, "pat-1", now - 10)).unwrap();
    let mut tampered: Vec<String> = token.split('.').map(String::from).collect();
    tampered[1] = other_token.split('.').nth(1).unwrap().to_string();
    let tampered = tampered.join(".");
    let foreign_key = {
        let keys = followup_platform::auth::KeyPair::generate().unwrap();
        Signer::from_pem(&keys.private_pem)
            .unwrap()
            .sign(&claims(&plan_id, "pat-1", now + 600))
            .unwrap()
    };
    // Signed with the right key but never issued (no send recorded), e.g. a leaked key's forgery.
    let never_issued = signer.sign(&claims(&plan_id, "pat-1", now + 600)).unwrap();
    let staff = svc.env.auth.token(CLINIC, Role::Owner);
    let api = |plan: &str| svc.url(&format!("/v1/portal/plans/{plan}"));

    let unauthorized = [
        ("no token", api(&plan_id), None),
        ("expired", api(&plan_id), Some(expired.as_str())),
        ("tampered", api(&plan_id), Some(tampered.as_str())),
        ("another key", api(&plan_id), Some(foreign_key.as_str())),
        ("never issued", api(&plan_id), Some(never_issued.as_str())),
        ("a staff token", api(&plan_id), Some(staff.as_str())),
        ("garbage", api(&plan_id), Some("not-a-token")),
    ];
    for (what, url, token) in unauthorized {
        let auth = token.map(bearer);
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("authorization", a.as_str())).collect();
        for method in ["GET", "POST"] {
            let url = if method == "POST" {
                format!("{url}/approve")
            } else {
                url.clone()
            };
            let (status, _, body) = http(method, &url, &headers, "").await;
            assert_eq!(status, 401, "{what} {method}: {body}");
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert!(json["error"]["code"].is_string(), "{what}: {body}");
            assert!(!body.contains("Phase 1"), "{what}: no plan data");
        }
    }
    // Portal front-ends on other origins may call the API (token-authenticated, no cookies).
    let (status, headers, _) = http(
        "OPTIONS",
        &api(&plan_id),
        &[
            ("origin", "https://portal.clinic.example"),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "authorization"),
        ],
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["access-control-allow-origin"], "*");
    let expired_json: serde_json::Value = serde_json::from_str(
        &http(
            "GET",
            &api(&plan_id),
            &[("authorization", &bearer(&expired))],
            "",
        )
        .await
        .2,
    )
    .unwrap();
    assert_eq!(expired_json["error"]["code"], "link_expired");

    // Another plan's token, an unknown plan: 404.
    let (status, _, body) = http(
        "GET",
        &api(&other_plan),
        &[("authorization", &bearer(&token))],
        "",
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(!body.contains("Phase 1"));
    let (status, _, _) = http(
        "POST",
        &format!("{}/approve", api(&draft_only.plan_id)),
        &[("authorization", &bearer(&token))],
        "",
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(
        svc.get(CLINIC, &draft_only.plan_id).await.status,
        pb::PlanStatus::Draft as i32
    );

    // The page answers HTML errors with the same statuses.
    for (bad, expected) in [
        (expired.as_str(), 401),
        (tampered.as_str(), 401),
        ("x.y.z", 401),
    ] {
        let (status, headers, body) = http("GET", &svc.url(&format!("/p/{bad}")), &[], "").await;
        assert_eq!(status, expected);
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(!body.contains("Phase 1"));
    }

    // A revised plan is a draft again: its old link shows nothing until it is sent again.
    svc.plans
        .clone()
        .revise_plan(svc.owner(pb::RevisePlanRequest {
            plan_id: plan_id.clone(),
            reason: "new prices".into(),
        }))
        .await
        .unwrap();
    let (status, _, body) = http(
        "GET",
        &api(&plan_id),
        &[("authorization", &bearer(&token))],
        "",
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("plan_unavailable"));
    let (status, _, _) = http("GET", &svc.url(&format!("/p/{token}")), &[], "").await;
    assert_eq!(status, 404);

    // Cancelled: the patient can still read it, but not approve it.
    svc.plans
        .clone()
        .cancel_plan(svc.owner(pb::CancelPlanRequest {
            plan_id: other_plan.clone(),
            reason: "withdrawn".into(),
        }))
        .await
        .unwrap();
    let (status, _, body) = http(
        "POST",
        &format!("{}/approve", api(&other_plan)),
        &[("authorization", &bearer(&other_token))],
        "",
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let (_, _, page) = http("GET", &svc.url(&format!("/p/{other_token}")), &[], "").await;
    assert!(page.contains("withdrawn by the clinic"));
    svc.stop().await;
}
