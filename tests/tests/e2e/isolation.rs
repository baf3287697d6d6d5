//! Clinics apart: a token of clinic A never sees clinic B's plans, cases, contacts or rules through any
//! service, and a beacon with clinic A's portal link never touches clinic B's case.

use std::time::Duration;

use followup_e2e::scenario::{self, Patient, item};
use followup_e2e::{Clinic, Stack, daytime_zone, eventually, portal_token};
use followup_platform::auth::{KeyPair, PORTAL_AUDIENCE, PortalClaims, Signer};
use followup_proto::followup::cases::v1 as cases;
use followup_proto::followup::common::v1::{CaseRef, CaseStatus, case_ref};
use followup_proto::followup::engagement::v1 as engagement;
use followup_proto::followup::notifications::v1 as notifications;
use followup_proto::followup::plans::v1 as plans;
use followup_proto::followup::scheduler::v1 as scheduler;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(30);

/// Both clinics have a patient with the same clinic-side id: ids are the clinics' own strings.
const PATIENT: &str = "pat-1";

struct Setup {
    clinic: Clinic,
    plan: scenario::SentPlan,
    rule: scheduler::Rule,
    patient: Patient,
}

async fn clinic(stack: &Stack, tenant: &str, given: &str, phone: &str) -> Setup {
    let clinic = stack.clinic(tenant);
    let (zone, _) = daytime_zone();
    scenario::set_up_clinic(&clinic, zone, Duration::from_secs(3600)).await;
    let rule = scenario::play_no_show_recovery(&clinic).await;
    let patient = Patient::new(PATIENT, given, "Doe", phone, zone);
    scenario::publish_patient(stack, tenant, &patient).await;
    let plan =
        scenario::build_and_send(&clinic, PATIENT, "Two fillings", &[item("D2391", "30", 1)]).await;
    let plan_id = plan.id().to_string();
    eventually("the case exists", WAIT, || {
        let mut c = clinic.clone();
        let plan_id = plan_id.clone();
        async move {
            c.cases
                .get_case(cases::GetCaseRequest {
                    case_id: plan_id,
                    timeline_page_size: 1,
                })
                .await
                .ok()
        }
    })
    .await;
    eventually("the contact exists", WAIT, || {
        let mut c = clinic.clone();
        async move {
            c.notifications
                .get_contact(notifications::GetContactRequest {
                    patient_id: PATIENT.into(),
                })
                .await
                .ok()
        }
    })
    .await;
    Setup {
        clinic,
        plan,
        rule,
        patient,
    }
}

fn code<T: std::fmt::Debug>(result: Result<tonic::Response<T>, tonic::Status>) -> Code {
    match result {
        Ok(answer) => panic!("another clinic's resource was answered: {answer:?}"),
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clinic_never_sees_another_clinics_data() {
    let stack = Stack::start().await;
    let a = clinic(&stack, "clinic-a", "Alice", "+15125550111").await;
    let b = clinic(&stack, "clinic-b", "Bruno", "+15125550122").await;
    let mut a_sees = a.clinic.clone();
    let b_plan = b.plan.id().to_string();

    // Plans.
    assert_eq!(
        code(
            a_sees
                .plans
                .get_plan(plans::GetPlanRequest {
                    plan_id: b_plan.clone(),
                    plan_version: 0
                })
                .await
        ),
        Code::NotFound
    );
    let listed = a_sees
        .plans
        .list_plans(plans::ListPlansRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .plans
            .iter()
            .map(|p| p.plan_id.as_str())
            .collect::<Vec<_>>(),
        vec![a.plan.id()]
    );
    assert_eq!(
        code(
            a_sees
                .plans
                .cancel_plan(plans::CancelPlanRequest {
                    plan_id: b_plan.clone(),
                    reason: "not yours".into()
                })
                .await
        ),
        Code::NotFound
    );

    // Cases.
    assert_eq!(
        code(
            a_sees
                .cases
                .get_case(cases::GetCaseRequest {
                    case_id: b_plan.clone(),
                    timeline_page_size: 1
                })
                .await
        ),
        Code::NotFound
    );
    let listed = a_sees
        .cases
        .list_cases(cases::ListCasesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .cases
            .iter()
            .map(|c| c.case_id.as_str())
            .collect::<Vec<_>>(),
        vec![a.plan.id()]
    );
    let queue = a_sees
        .cases
        .list_follow_up_queue(cases::ListFollowUpQueueRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        queue
            .entries
            .iter()
            .all(|e| e.case.as_ref().is_some_and(|c| c.case_id == a.plan.id()))
    );
    assert_eq!(
        code(
            a_sees
                .cases
                .add_note(cases::AddNoteRequest {
                    case_id: b_plan.clone(),
                    text: "peek".into()
                })
                .await
        ),
        Code::NotFound
    );

    // Contacts: the same patient id names two people, each seen only by their clinic.
    let contact = a_sees
        .notifications
        .get_contact(notifications::GetContactRequest {
            patient_id: PATIENT.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .contact
        .unwrap_or_default();
    assert_eq!(contact.given_name, a.patient.given_name);
    assert_eq!(contact.phone_e164, a.patient.phone);
    let contacts = a_sees
        .notifications
        .list_contacts(notifications::ListContactsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(
        contacts
            .contacts
            .iter()
            .all(|c| c.phone_e164 != b.patient.phone && c.given_name != b.patient.given_name),
        "{contacts:?}"
    );

    // Rules and what they hold.
    assert_eq!(
        code(
            a_sees
                .scheduler
                .get_rule(scheduler::GetRuleRequest {
                    rule_id: b.rule.rule_id.clone(),
                    rule_version: 0
                })
                .await
        ),
        Code::NotFound
    );
    let rules = a_sees
        .scheduler
        .list_rules(scheduler::ListRulesRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        rules
            .rules
            .iter()
            .map(|r| r.rule_id.as_str())
            .collect::<Vec<_>>(),
        vec![a.rule.rule_id.as_str()]
    );
    assert_eq!(
        code(
            a_sees
                .scheduler
                .pause_rule(scheduler::PauseRuleRequest {
                    rule_id: b.rule.rule_id.clone()
                })
                .await
        ),
        Code::NotFound
    );
    let b_ref = Some(CaseRef {
        target: Some(case_ref::Target::PlanId(b_plan.clone())),
    });
    match a_sees
        .scheduler
        .get_case_facts(scheduler::GetCaseFactsRequest { case_ref: b_ref })
        .await
    {
        Err(status) => assert_eq!(status.code(), Code::NotFound),
        Ok(facts) => assert!(
            facts
                .get_ref()
                .facts
                .as_ref()
                .is_none_or(|f| f.patient_id.is_empty()),
            "no facts of clinic B: {facts:?}"
        ),
    }

    // Engagement answers "never viewed" for a plan it does not know in this clinic.
    let seen = a_sees
        .engagement
        .get_plan_engagement(engagement::GetPlanEngagementRequest {
            plan_id: b_plan.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .engagement
        .unwrap_or_default();
    assert_eq!(seen.view_count, 0);

    // Beacons: clinic A's link naming clinic B's plan is refused...
    let a_token = portal_token(&a.plan.portal_url);
    let (status, answer) = stack
        .post_beacons(
            &scenario::page_view(&a_token, &b_plan, "cross-1", &[("cover", 2_000)]),
            None,
        )
        .await;
    assert_eq!(status, 401, "{answer}");
    // ...a link signed by anyone but the plans service is refused, whatever clinic it claims...
    let now = chrono::Utc::now().timestamp() as u64;
    let forged = Signer::from_pem(&KeyPair::generate().unwrap().private_pem)
        .unwrap()
        .sign(&PortalClaims {
            tenant: "clinic-b".into(),
            plan_id: b_plan.clone(),
            plan_version: 1,
            patient_id: PATIENT.into(),
            jti: "forged".into(),
            aud: PORTAL_AUDIENCE.into(),
            iat: now,
            exp: now + 3600,
        })
        .unwrap();
    let (status, answer) = stack
        .post_beacons(
            &scenario::page_view(&forged, &b_plan, "forged-1", &[("cover", 2_000)]),
            None,
        )
        .await;
    assert_eq!(status, 401, "{answer}");
    // ...and clinic A's own view counts for clinic A only.
    let (status, answer) = stack
        .post_beacons(
            &scenario::page_view(&a_token, a.plan.id(), "own-1", &[("cover", 2_000)]),
            None,
        )
        .await;
    assert_eq!(status, 202, "{answer}");
    eventually("clinic A's case is viewed", WAIT, || {
        let mut c = a.clinic.clone();
        let plan_id = a.plan.id().to_string();
        async move {
            let case = c
                .cases
                .get_case(cases::GetCaseRequest {
                    case_id: plan_id,
                    timeline_page_size: 1,
                })
                .await
                .ok()?;
            case.into_inner().case.filter(|c| c.viewed)
        }
    })
    .await;
    let mut b_sees = b.clinic.clone();
    let b_case = b_sees
        .cases
        .get_case(cases::GetCaseRequest {
            case_id: b_plan.clone(),
            timeline_page_size: 50,
        })
        .await
        .unwrap()
        .into_inner()
        .case
        .unwrap_or_default();
    assert_eq!(
        b_case.status,
        CaseStatus::SentNotViewed as i32,
        "{b_case:?}"
    );
    assert!(!b_case.viewed);
    let b_facts = b_sees
        .engagement
        .get_plan_engagement(engagement::GetPlanEngagementRequest {
            plan_id: b_plan.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .engagement
        .unwrap_or_default();
    assert_eq!(b_facts.view_count, 0, "{b_facts:?}");

    stack.stop().await;
}
