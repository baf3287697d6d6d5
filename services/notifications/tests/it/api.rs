//! The gRPC API: validation, tenancy, templates and preview, consent, tasks, webhooks, conversations.

use followup_platform::auth::Role;
use followup_platform::testkit::authed;
use followup_proto::followup::common::v1::{Channel, SmsEncoding};
use followup_proto::followup::events::v1::TaskSpec;
use followup_proto::followup::notifications::v1 as api;

use crate::support::*;

fn contact(patient_id: &str, phone: &str) -> api::UpsertContactRequest {
    api::UpsertContactRequest {
        contact: Some(api::Contact {
            patient_id: patient_id.into(),
            given_name: "Zoë".into(),
            family_name: "Adler".into(),
            phone_e164: phone.into(),
            time_zone: daytime_zone(),
            ..Default::default()
        }),
        update_mask: None,
    }
}

#[tokio::test]
async fn contacts_are_validated_and_scoped_to_the_clinic() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    let bad = client
        .upsert_contact(h.req(contact("p1", "07700 900123")))
        .await
        .expect_err("not E.164");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
    assert!(
        bad.message().starts_with("contact.phone_e164"),
        "{}",
        bad.message()
    );

    let saved = client
        .upsert_contact(h.req(contact("p1", "+447700900123")))
        .await
        .expect("upserted")
        .into_inner();
    assert_eq!(saved.contact.expect("contact").source, "grpc");

    // A patch touches only the masked field.
    let mut patch = contact("p1", "");
    patch.contact.as_mut().expect("c").email = "zoe@example.com".into();
    patch.update_mask = Some(prost_types::FieldMask {
        paths: vec!["email".into()],
    });
    let patched = client
        .upsert_contact(h.req(patch))
        .await
        .expect("patched")
        .into_inner()
        .contact
        .expect("c");
    assert_eq!(
        (patched.phone_e164.as_str(), patched.email.as_str()),
        ("+447700900123", "zoe@example.com")
    );

    let other = authed(
        api::GetContactRequest {
            patient_id: "p1".into(),
        },
        &h.env.auth.token("clinic-b", Role::Owner),
    );
    assert_eq!(
        client
            .get_contact(other)
            .await
            .expect_err("other clinic")
            .code(),
        tonic::Code::NotFound
    );
    // Consent answers like the contact: another clinic's patient is not found (it answered OK with
    // every channel allowed).
    let other_consent = authed(
        api::GetConsentRequest {
            patient_id: "p1".into(),
        },
        &h.env.auth.token("clinic-b", Role::Owner),
    );
    assert_eq!(
        client
            .get_consent(other_consent)
            .await
            .expect_err("other clinic's consent")
            .code(),
        tonic::Code::NotFound
    );
    let own = client
        .get_consent(h.req(api::GetConsentRequest {
            patient_id: "p1".into(),
        }))
        .await
        .expect("own clinic's consent")
        .into_inner();
    assert!(!own.states.is_empty());

    let system = authed(contact("p2", "+447700900124"), &h.token(Role::System));
    assert_eq!(
        client
            .upsert_contact(system)
            .await
            .expect_err("system")
            .code(),
        tonic::Code::PermissionDenied
    );
}

#[tokio::test]
async fn templates_refuse_unknown_variables_and_preview_counts_segments() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    let template = |body: &str| api::Template {
        key: "custom_nudge".into(),
        channel: Channel::Sms as i32,
        name: "Nudge".into(),
        body: body.into(),
        category: "treatment_follow_up".into(),
        enabled: true,
        ..Default::default()
    };
    let err = client
        .create_template(h.req(api::CreateTemplateRequest {
            template: Some(template(
                "Hi {{ patient_first_name }}, your {{ procedure }} awaits",
            )),
        }))
        .await
        .expect_err("unknown variable");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("`procedure`"), "{}", err.message());

    let created = client
        .create_template(h.req(api::CreateTemplateRequest {
            template: Some(template("Hi {{ patient_first_name }} 😀 {{ portal_url }}")),
        }))
        .await
        .expect("created")
        .into_inner()
        .template
        .expect("template");
    assert_eq!(created.variables, vec!["patient_first_name", "portal_url"]);
    let dup = client
        .create_template(h.req(api::CreateTemplateRequest {
            template: Some(template("x")),
        }))
        .await
        .expect_err("duplicate");
    assert_eq!(dup.code(), tonic::Code::AlreadyExists);

    client
        .upsert_contact(h.req(contact("p1", "+447700900123")))
        .await
        .expect("contact");
    let preview = client
        .preview_template(h.req(api::PreviewTemplateRequest {
            template_source: Some(api::preview_template_request::TemplateSource::TemplateId(
                created.template_id.clone(),
            )),
            recipient: Some(api::preview_template_request::Recipient::PatientId(
                "p1".into(),
            )),
            variables: Default::default(),
        }))
        .await
        .expect("preview")
        .into_inner();
    let message = preview.message.expect("rendered");
    assert_eq!(message.body, "Hi Zoë 😀");
    assert_eq!(message.encoding, SmsEncoding::Ucs2 as i32);
    assert_eq!(message.segment_count, 1);
    assert_eq!(preview.warnings.len(), 1, "portal_url was not supplied");

    // The shipped defaults are listed, and an edit copies one into the clinic's templates.
    let listed = client
        .list_templates(h.req(api::ListTemplatesRequest {
            key: "plan_follow_up_1".into(),
            ..Default::default()
        }))
        .await
        .expect("list")
        .into_inner()
        .templates;
    assert_eq!(listed.len(), 3, "sms, email and chat");
    assert!(listed.iter().all(|t| t.built_in));
}

#[tokio::test]
async fn staff_consent_changes_are_logged_and_win_over_waiting_messages() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    h.patient("p1", "+447700900123", "", &night_zone()).await;
    h.request(sms_request("enr-9:0", "p1")).await;
    h.status_of("enr-9:0", &["deferred"]).await;

    let set = client
        .set_consent(h.req(api::SetConsentRequest {
            patient_id: "p1".into(),
            channel: Channel::Sms as i32,
            category: "treatment_follow_up".into(),
            granted: false,
            note: "asked on the phone".into(),
            ..Default::default()
        }))
        .await
        .expect("set")
        .into_inner();
    assert_eq!(set.event.expect("event").staff_id, "staff-owner");
    let state = set
        .states
        .iter()
        .find(|s| s.channel == Channel::Sms as i32 && s.category == "treatment_follow_up")
        .expect("state");
    assert!(!state.allowed);

    // The deferred message is due in the morning; bring it forward to see the opt-out win.
    sqlx::query("UPDATE messages SET due_at = now() WHERE idempotency_key = 'enr-9:0'")
        .execute(&h.pool)
        .await
        .expect("due now");
    let m = h.status_of("enr-9:0", &["suppressed"]).await;
    assert_eq!(m.suppression_reason, 1);

    let history = client
        .list_consent_history(h.req(api::ListConsentHistoryRequest {
            patient_id: "p1".into(),
            ..Default::default()
        }))
        .await
        .expect("history")
        .into_inner()
        .events;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].note, "asked on the phone");

    let bad = client
        .set_consent(h.req(api::SetConsentRequest {
            patient_id: "p1".into(),
            category: "nope".into(),
            ..Default::default()
        }))
        .await
        .expect_err("unknown category");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn tasks_are_listed_per_owner_and_completed_once() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    let mut r = sms_request("enr-10:1", "p1");
    r.channel = Channel::Task as i32;
    r.task = Some(TaskSpec {
        title: "Call about the plan".into(),
        ..Default::default()
    });
    h.request(r).await;
    h.status_of("enr-10:1", &["sent"]).await;
    let tasks = client
        .list_tasks(h.req(api::ListTasksRequest {
            owner_staff_id: "staff-owner".into(),
            ..Default::default()
        }))
        .await
        .expect("tasks")
        .into_inner()
        .tasks;
    assert_eq!(tasks.len(), 1);
    let done = client
        .complete_task(h.req(api::CompleteTaskRequest {
            task_id: tasks[0].task_id.clone(),
            outcome: "left_voicemail".into(),
            note: String::new(),
        }))
        .await
        .expect("completed")
        .into_inner()
        .task
        .expect("task");
    assert_eq!(done.state, api::TaskState::Completed as i32);
    let again = client
        .complete_task(h.req(api::CompleteTaskRequest {
            task_id: tasks[0].task_id.clone(),
            outcome: "reached".into(),
            note: String::new(),
        }))
        .await
        .expect_err("twice");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test]
async fn a_rotated_webhook_secret_signs_alongside_the_old_one() {
    let h = Harness::start().await;
    let hook = Sink::start().await;
    let mut client = h.client().await;
    let created = client
        .create_webhook_endpoint(h.req(api::CreateWebhookEndpointRequest {
            endpoint: Some(api::WebhookEndpoint {
                url: format!("{}/tasks", hook.url()),
                ..Default::default()
            }),
        }))
        .await
        .expect("created")
        .into_inner();
    assert!(created.secret.starts_with("whsec_"));
    let id = created.endpoint.expect("endpoint").webhook_endpoint_id;
    let rotated = client
        .rotate_webhook_secret(h.req(api::RotateWebhookSecretRequest {
            webhook_endpoint_id: id.clone(),
            previous_secret_ttl: None,
        }))
        .await
        .expect("rotated")
        .into_inner();
    assert_ne!(rotated.secret, created.secret);

    let mut r = sms_request("enr-11:0", "p1");
    r.channel = Channel::Webhook as i32;
    r.template_key = String::new();
    h.request(r).await;
    h.status_of(&format!("enr-11:0@{id}"), &["sent"]).await;
    let call = hook.received().pop().expect("a call");
    let signatures = call.header("webhook-signature");
    assert_eq!(
        signatures.split(' ').count(),
        2,
        "new and previous secret both sign: {signatures}"
    );
}

#[tokio::test]
async fn a_staff_reply_reaches_the_patient_and_the_conversation() {
    let h = Harness::start().await;
    let mut client = h.client().await;
    h.patient("p1", "+447700900123", "", &daytime_zone()).await;
    let sent = client
        .send_conversation_reply(h.req(api::SendConversationReplyRequest {
            patient_id: "p1".into(),
            text: "See you Tuesday".into(),
            channel: Channel::Sms as i32,
            idempotency_key: "r1".into(),
        }))
        .await
        .expect("reply")
        .into_inner()
        .message
        .expect("message");
    h.status_of("reply:r1", &["sent"]).await;
    let again = client
        .send_conversation_reply(h.req(api::SendConversationReplyRequest {
            patient_id: "p1".into(),
            text: "See you Tuesday".into(),
            channel: Channel::Sms as i32,
            idempotency_key: "r1".into(),
        }))
        .await
        .expect("retried call")
        .into_inner()
        .message
        .expect("message");
    assert_eq!(again.message_id, sent.message_id);
    assert_eq!(h.sms.received().len(), 1);
    let conversation = client
        .list_conversation_messages(h.req(api::ListConversationMessagesRequest {
            patient_id: "p1".into(),
            ..Default::default()
        }))
        .await
        .expect("conversation")
        .into_inner()
        .messages;
    assert_eq!(conversation.len(), 1);
    assert_eq!(conversation[0].text, "See you Tuesday");
    assert_eq!(conversation[0].status, api::MessageStatus::Sent as i32);

    let listed = client
        .get_message(h.req(api::GetMessageRequest {
            message_id: sent.message_id.clone(),
        }))
        .await
        .expect("message")
        .into_inner();
    assert_eq!(listed.attempts.len(), 1);
    assert_eq!(
        listed.attempts[0].outcome,
        api::AttemptOutcome::Accepted as i32
    );
}
