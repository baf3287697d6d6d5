//! The patient portal: the plan as the patient sees it, patient approval, and every token failure.

use followup_platform::auth::{PORTAL_AUDIENCE, PortalClaims, Role, Signer};
use followup_proto::followup::plans::v1 as pb;

use crate::support::*;

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The JSON approval of a link sent for version 1.
const CONSENT_V1: &str = r#"{"consent":true,"plan_version":1}"#;

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
    assert!(page.contains(r#"<input type="hidden" name="plan_version" value="1">"#));
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
        CONSENT_V1,
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
        CONSENT_V1,
    )
    .await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""changed":false"#), "{body}");
    let (status, headers, _) = http(
        "POST",
        &svc.url(&format!("/p/{token}/approve")),
        &[("content-type", "application/x-www-form-urlencoded")],
        "consent=yes&plan_version=1",
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
        CONSENT_V1,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let (_, _, page) = http("GET", &svc.url(&format!("/p/{other_token}")), &[], "").await;
    assert!(page.contains("withdrawn by the clinic"));
    svc.stop().await;
}

/// Revise a sent plan (new prices) and send it again: version 2.
async fn revise_and_resend(svc: &Svc, plan_id: &str) -> pb::SendPlanResponse {
    svc.plans
        .clone()
        .revise_plan(svc.owner(pb::RevisePlanRequest {
            plan_id: plan_id.into(),
            reason: "new prices".into(),
        }))
        .await
        .unwrap();
    let sent = svc.send(CLINIC, plan_id).await;
    assert_eq!(sent.plan.as_ref().unwrap().plan_version, 2);
    sent
}

#[tokio::test]
async fn a_version_1_link_after_a_version_2_send_shows_the_newer_plan_page_and_approves_nothing() {
    let svc = Svc::start().await;
    svc.setup_catalog(CLINIC).await;
    let (plan_id, _) = svc.journey(CLINIC, "pat-1").await;
    let v1 = token_of(&svc.send(CLINIC, &plan_id).await.portal_url);
    let v2 = token_of(&revise_and_resend(&svc, &plan_id).await.portal_url);
    let api = svc.url(&format!("/v1/portal/plans/{plan_id}"));

    // The old link shows neither version: it says a newer plan was sent and how to get it.
    let (status, _, body) = http("GET", &api, &[("authorization", &bearer(&v1))], "").await;
    assert_eq!(status, 410, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"]["code"], "newer_plan_sent");
    assert!(
        !body.contains("Phase 1") && !body.contains("3,550"),
        "{body}"
    );
    let (status, _, page) = http("GET", &svc.url(&format!("/p/{v1}")), &[], "").await;
    assert_eq!(status, 410);
    assert!(page.contains("A newer plan was sent to you"), "{page}");
    assert!(page.contains("contact the clinic"), "{page}");
    assert!(!page.contains("Phase 1") && !page.contains(">Approve</button>"));
    let (status, _, _) = http("GET", &svc.url(&format!("/p/{v1}/print")), &[], "").await;
    assert_eq!(status, 410);

    // Nor does it approve, through the API or the form.
    let (status, _, body) = http(
        "POST",
        &format!("{api}/approve"),
        &[("authorization", &bearer(&v1))],
        CONSENT_V1,
    )
    .await;
    assert_eq!(status, 410, "{body}");
    let (status, _, page) = http(
        "POST",
        &svc.url(&format!("/p/{v1}/approve")),
        &[("content-type", "application/x-www-form-urlencoded")],
        "consent=yes&plan_version=1",
    )
    .await;
    assert_eq!(status, 410, "{page}");
    assert_eq!(
        svc.get(CLINIC, &plan_id).await.status,
        pb::PlanStatus::Sent as i32
    );

    // The new link shows version 2, and approves it only under that version's number.
    let (status, _, body) = http("GET", &api, &[("authorization", &bearer(&v2))], "").await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["plan_version"], 2);
    let (status, _, body) = http(
        "POST",
        &format!("{api}/approve"),
        &[("authorization", &bearer(&v2))],
        CONSENT_V1,
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"]["code"], "version_mismatch");
    assert_eq!(json["error"]["field"], "plan_version");
    let (status, _, body) = http(
        "POST",
        &format!("{api}/approve"),
        &[("authorization", &bearer(&v2))],
        r#"{"consent":true,"plan_version":2}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let plan = svc.get(CLINIC, &plan_id).await;
    assert_eq!(plan.status, pb::PlanStatus::Approved as i32);
    assert_eq!(plan.plan_version, 2);
    svc.stop().await;
}

#[tokio::test]
async fn a_json_approval_needs_explicit_consent_and_the_version() {
    let svc = Svc::start().await;
    svc.setup_catalog(CLINIC).await;
    let (plan_id, _) = svc.journey(CLINIC, "pat-1").await;
    let token = token_of(&svc.send(CLINIC, &plan_id).await.portal_url);
    let approve = svc.url(&format!("/v1/portal/plans/{plan_id}/approve"));
    let auth = bearer(&token);
    for (body, code, field) in [
        ("{}", "missing_field", Some("consent")),
        ("", "invalid_body", None),
        ("consent=yes", "invalid_body", None),
        (r#"{"consent":true}"#, "missing_field", Some("plan_version")),
        (
            r#"{"consent":false,"plan_version":1}"#,
            "consent_required",
            Some("consent"),
        ),
        (
            r#"{"consent":"yes","plan_version":1}"#,
            "consent_required",
            Some("consent"),
        ),
        (
            r#"{"consent":true,"plan_version":"one"}"#,
            "invalid_field",
            Some("plan_version"),
        ),
    ] {
        let (status, headers, answer) = http(
            "POST",
            &approve,
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await;
        assert_eq!(status, 400, "{body}: {answer}");
        assert!(
            headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json")
        );
        let json: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(json["error"]["code"], code, "{body}: {answer}");
        match field {
            Some(field) => {
                assert_eq!(json["error"]["field"], field, "{body}: {answer}");
                assert!(
                    json["error"]["message"]
                        .as_str()
                        .unwrap()
                        .contains(&format!("`{field}`")),
                    "{answer}"
                );
            }
            None => assert!(json["error"]["field"].is_null()),
        }
    }
    // The form needs the version too.
    let (status, _, page) = http(
        "POST",
        &svc.url(&format!("/p/{token}/approve")),
        &[("content-type", "application/x-www-form-urlencoded")],
        "consent=yes",
    )
    .await;
    assert_eq!(status, 400, "{page}");
    assert_eq!(
        svc.get(CLINIC, &plan_id).await.status,
        pb::PlanStatus::Sent as i32,
        "nothing was approved"
    );
    svc.stop().await;
}

#[tokio::test]
async fn a_cross_site_approval_is_refused_and_a_same_site_one_works() {
    let svc = Svc::start().await;
    svc.setup_catalog(CLINIC).await;
    let (plan_id, _) = svc.journey(CLINIC, "pat-1").await;
    let token = token_of(&svc.send(CLINIC, &plan_id).await.portal_url);
    let form = svc.url(&format!("/p/{token}/approve"));
    let api = svc.url(&format!("/v1/portal/plans/{plan_id}/approve"));
    let auth = bearer(&token);
    let own = format!("http://localhost:{}", svc.portal.port());
    let form_type = ("content-type", "application/x-www-form-urlencoded");

    // What a form on another site submits, as a browser sends it.
    for headers in [
        vec![
            form_type,
            ("origin", "https://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ],
        vec![form_type, ("origin", "https://evil.example")],
        vec![form_type, ("origin", "null")],
        vec![form_type, ("sec-fetch-site", "cross-site")],
        // Same site but another origin (a sibling host) is not the portal either.
        vec![
            form_type,
            ("origin", "http://other.localhost"),
            ("sec-fetch-site", "same-site"),
        ],
    ] {
        let (status, _, page) = http("POST", &form, &headers, "consent=yes&plan_version=1").await;
        assert_eq!(status, 403, "{headers:?}: {page}");
        assert!(page.contains("only accepted from the plan"), "{page}");
    }
    // The JSON API too: a page elsewhere holding the token cannot approve from the patient's browser.
    let (status, _, body) = http(
        "POST",
        &api,
        &[
            ("authorization", &auth),
            ("origin", "https://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ],
        CONSENT_V1,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"]["code"], "cross_site");
    assert_eq!(
        svc.get(CLINIC, &plan_id).await.status,
        pb::PlanStatus::Sent as i32,
        "nothing was approved"
    );

    // The portal's own page approves.
    let (status, headers, page) = http(
        "POST",
        &form,
        &[
            form_type,
            ("origin", &own),
            ("sec-fetch-site", "same-origin"),
        ],
        "consent=yes&plan_version=1",
    )
    .await;
    assert_eq!(status, 303, "{page}");
    assert_eq!(headers["location"], format!("../{token}?approved=1"));
    assert_eq!(
        svc.get(CLINIC, &plan_id).await.status,
        pb::PlanStatus::Approved as i32
    );
    svc.stop().await;
}

#[tokio::test]
async fn every_portal_response_carries_the_security_headers() {
    use base64::Engine as _;
    use sha2::Digest as _;
    let svc = Svc::start().await;
    svc.setup_catalog(CLINIC).await;
    let (plan_id, _) = svc.journey(CLINIC, "pat-1").await;
    let token = token_of(&svc.send(CLINIC, &plan_id).await.portal_url);
    let auth = bearer(&token);
    let responses = [
        ("page", "GET", format!("/p/{token}"), None, ""),
        ("print", "GET", format!("/p/{token}/print"), None, ""),
        ("error page", "GET", "/p/not-a-token".to_string(), None, ""),
        (
            "form error",
            "POST",
            format!("/p/{token}/approve"),
            None,
            "",
        ),
        (
            "JSON",
            "GET",
            format!("/v1/portal/plans/{plan_id}"),
            Some(auth.as_str()),
            "",
        ),
        (
            "JSON error",
            "POST",
            format!("/v1/portal/plans/{plan_id}/approve"),
            Some(auth.as_str()),
            "{}",
        ),
        ("unknown path", "GET", "/nothing/here".to_string(), None, ""),
    ];
    for (what, method, path, auth, body) in responses {
        let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", *a)).collect();
        let (status, headers, page) = http(method, &svc.url(&path), &headers, body).await;
        let csp = headers
            .get("content-security-policy")
            .unwrap_or_else(|| panic!("{what} ({status}) has no CSP"))
            .to_str()
            .unwrap()
            .to_string();
        assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
        assert!(csp.contains("default-src 'none'"), "{what}: {csp}");
        // engagement's beacon script loads and posts its beacons to its own origin.
        assert!(
            csp.contains("script-src http://beacons.test;"),
            "{what}: {csp}"
        );
        assert!(
            csp.contains("connect-src http://beacons.test;"),
            "{what}: {csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{what}: {csp}");
        assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
        assert_eq!(headers["x-frame-options"], "DENY", "{what}");
        assert_eq!(headers["referrer-policy"], "no-referrer", "{what}");
        // Each HTML page's inline style is allowed by its hash, and the page has no inline script.
        if headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
        {
            let css = page
                .split_once("<style>")
                .and_then(|(_, rest)| rest.split_once("</style>"))
                .map(|(css, _)| css)
                .unwrap_or_else(|| panic!("{what}: no style"));
            let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(css));
            assert!(csp.contains(&format!("'sha256-{hash}'")), "{what}: {csp}");
            assert!(!page.contains("javascript:"), "{what}");
            assert_eq!(
                page.matches("<script").count(),
                page.matches("<script src=").count()
            );
        }
    }
    svc.stop().await;
}

/// The reference page in headless Chromium, under its real CSP, with engagement's real `beacon.js`
/// served from another origin: the script loads and its first beacon reaches that origin.
#[tokio::test]
async fn the_csp_lets_engagements_beacon_script_load_and_post_in_a_real_browser() {
    use std::sync::{Arc, Mutex};
    let chromium = ["/usr/bin/chromium", "/usr/lib/chromium/chromium"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("chromium not found: install the Debian package chromium (scripts/test.sh does)");

    // engagement's beacon origin: its real script, and a record of the beacons posted to it.
    let beacons: Arc<Mutex<Vec<String>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let router = axum::Router::new()
        .route(
            "/v1/beacon.js",
            axum::routing::get(|| async {
                (
                    [("content-type", "text/javascript")],
                    include_str!("../../../engagement/src/http/beacon.js"),
                )
            }),
        )
        .route(
            "/v1/beacons",
            axum::routing::post(
                |axum::extract::State(seen): axum::extract::State<Arc<Mutex<Vec<String>>>>,
                 body: String| async move {
                    seen.lock().unwrap().push(body);
                    ""
                },
            ),
        )
        .with_state(beacons.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });

    let beacon_url = format!("{origin}/v1/beacon.js");
    let svc = Svc::start_with(|s| s.beacon_script_url = beacon_url).await;
    svc.setup_catalog(CLINIC).await;
    let (plan_id, _) = svc.journey(CLINIC, "pat-1").await;
    let sent = svc.send(CLINIC, &plan_id).await;
    let token = token_of(&sent.portal_url);
    let (_, headers, _) = http("GET", &sent.portal_url, &[], "").await;
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains(&format!("script-src {origin};")), "{csp}");

    let profile = tempfile_dir();
    let output = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--virtual-time-budget=5000",
            &format!("--user-data-dir={}", profile.display()),
            "--dump-dom",
            &sent.portal_url,
        ])
        .kill_on_drop(true)
        .output()
        .await
        .expect("chromium runs");
    let dom = String::from_utf8_lossy(&output.stdout);
    assert!(
        dom.contains(r#"data-followup-section="cover""#),
        "the page rendered: {dom}"
    );

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        if beacons.lock().unwrap().iter().any(|b| b.contains(&token)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no beacon reached the beacon origin: the CSP blocked the script or its beacon"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_dir_all(&profile);
    svc.stop().await;
}

/// A fresh directory for a browser profile.
fn tempfile_dir() -> std::path::PathBuf {
    let dir =
        std::env::temp_dir().join(format!("followup-plans-chromium-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
