//! One trace per journey: with `OTEL_EXPORTER_OTLP_ENDPOINT` pointed at an OTLP/gRPC receiver this test
//! runs, the spans of a patient journey are exported and their trace ids and parent links checked.
//!
//! Telemetry is process-global (one subscriber, one exporter), so the journey runs in a child process: the
//! test starts the receiver, runs itself again with the endpoint in the environment (the child starts
//! the whole stack in-process, runs the journey under a root span and flushes), then reads what arrived.
//!
//! Asserted, one trace, each span the child of the one that caused it (a batched consumer's span the
//! child of its event when the batch holds one, else linked to it): the staff member's call, `SendPlan`
//! in plans; `plan_sent` through the outbox and NATS to the scheduler (which enrolls the case) and to
//! cases; `enrollment_started` on to cases; the patient's view (beacons posted with the journey's
//! `traceparent`, as an instrumented portal page would) through engagement's aggregator to cases; the
//! step the scheduler's timer fires later (the enrollment stores its trace); `notification_requested`
//! to notifications; the send its worker makes later (the message stores its trace); `message_sent` to
//! cases.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use followup_e2e::scenario::{self, PHASE_1, Patient};
use followup_e2e::{Stack, daytime_zone, eventually, portal_token};
use followup_platform::config::{LogConfig, LogFormat};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tracing::Instrument as _;

const CHILD: &str = "FOLLOWUP_E2E_TRACE_CHILD";
const TENANT: &str = "traced-clinic";

/// A span as the receiver got it.
#[derive(Clone, Debug)]
struct Received {
    trace: String,
    id: String,
    parent: String,
    name: String,
    attributes: HashMap<String, String>,
    /// (trace id, span id) of each link.
    links: Vec<(String, String)>,
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Received>>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                for span in scope.spans {
                    let attributes = span
                        .attributes
                        .iter()
                        .map(|kv| {
                            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                                Some(Value::StringValue(s)) => s.clone(),
                                Some(Value::IntValue(i)) => i.to_string(),
                                Some(Value::BoolValue(b)) => b.to_string(),
                                Some(other) => format!("{other:?}"),
                                None => String::new(),
                            };
                            (kv.key.clone(), value)
                        })
                        .collect();
                    received.push(Received {
                        trace: hex(&span.trace_id),
                        id: hex(&span.span_id),
                        parent: hex(&span.parent_span_id),
                        name: span.name,
                        attributes,
                        links: span
                            .links
                            .iter()
                            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                            .collect(),
                    });
                }
            }
        }
        self.spans.lock().unwrap().extend(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[test]
fn a_plan_journey_is_one_trace_across_services_and_nats() {
    if std::env::var_os(CHILD).is_some() {
        journey();
        return;
    }
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let spans = runtime.block_on(async {
        let receiver = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
        });
        let child = tokio::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "a_plan_journey_is_one_trace_across_services_and_nats",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}"))
            .env("OTEL_BSP_SCHEDULE_DELAY", "200")
            .env(
                "RUST_LOG",
                "info,sqlx=warn,async_nats=warn,h2=warn,hyper=warn,tower=warn",
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(240), child)
            .await
            .expect("the journey ends by itself")
            .unwrap();
        if !output.status.success() {
            println!("{}", String::from_utf8_lossy(&output.stdout));
            eprintln!("{}", String::from_utf8_lossy(&output.stderr));
            panic!("the traced journey failed: {:?}", output.status);
        }
        receiver.spans.lock().unwrap().clone()
    });
    check(&spans);
}

/// The child: the whole stack in this process, exporting its spans; the journey under one root span.
fn journey() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let telemetry = followup_platform::telemetry::init(
            "followup-e2e",
            &LogConfig {
                format: LogFormat::Pretty,
                filter: "info".into(),
            },
        );
        let stack = Stack::start().await;
        let clinic = stack.clinic(TENANT);
        let (zone, _) = daytime_zone();
        scenario::set_up_clinic(&clinic, zone, Duration::from_secs(3600)).await;
        scenario::play_demo_speed_follow_up(
            &clinic,
            Duration::from_secs(1),
            Duration::from_secs(600),
        )
        .await;
        let maria = Patient::new("pat-maria", "Maria", "Santos", "+15125550101", zone);
        scenario::publish_patient(&stack, TENANT, &maria).await;

        let root = tracing::info_span!("journey", tenant = TENANT);
        let plan = async {
            let plan =
                scenario::build_and_send(&clinic, &maria.id, "Phase 1: restorations", &PHASE_1)
                    .await;
            // The browser that opens the link carries the journey's context, as an instrumented
            // portal page would.
            let mut carrier = HashMap::new();
            followup_platform::telemetry::inject_current(&mut carrier);
            let (status, answer) = stack
                .post_beacons(
                    &scenario::page_view(
                        &portal_token(&plan.portal_url),
                        plan.id(),
                        "traced-view",
                        &[("cover", 2_000)],
                    ),
                    carrier.get("traceparent").map(String::as_str),
                )
                .await;
            assert_eq!(status, 202, "{answer}");
            plan
        }
        .instrument(root)
        .await;

        eventually(
            "the first reminder reaches Maria",
            Duration::from_secs(60),
            || {
                let sms = stack.sms_to(&maria.phone);
                async move { (!sms.is_empty()).then_some(()) }
            },
        )
        .await;
        eventually(
            "cases counts the reminder (message_sent consumed)",
            Duration::from_secs(60),
            || {
                let mut c = clinic.clone();
                let plan_id = plan.id().to_string();
                async move {
                    let case = c
                        .cases
                        .get_case(followup_proto::followup::cases::v1::GetCaseRequest {
                            case_id: plan_id,
                            timeline_page_size: 1,
                        })
                        .await
                        .ok()?
                        .into_inner()
                        .case?;
                    (case.reminders_sent >= 1 && case.viewed).then_some(())
                }
            },
        )
        .await;
        telemetry.flush();
        drop(telemetry);
    });
}

fn consumer_span<'a>(
    spans: &'a [Received],
    consumer: &str,
    subject_tail: &str,
) -> Vec<&'a Received> {
    spans
        .iter()
        .filter(|s| s.name == "consume" || s.name == "consume_batch")
        .filter(|s| s.attributes.get("consumer").is_some_and(|c| c == consumer))
        .filter(|s| {
            s.name == "consume_batch"
                || s.attributes
                    .get("subject")
                    .is_some_and(|subject| subject.ends_with(subject_tail))
        })
        .collect()
}

/// Whether `span` descends from `ancestor` through parent links within its trace.
fn descends(spans: &[Received], span: &Received, ancestor: &Received) -> bool {
    let by_id: HashMap<&str, &Received> = spans.iter().map(|s| (s.id.as_str(), s)).collect();
    let mut current = span;
    for _ in 0..64 {
        if current.parent == ancestor.id && current.trace == ancestor.trace {
            return true;
        }
        match by_id.get(current.parent.as_str()) {
            Some(parent) => current = parent,
            None => return false,
        }
    }
    false
}

/// A batched consumer's span continues `cause` (a batch of one) or links to it (a larger batch).
fn continues(spans: &[Received], span: &Received, cause: &Received) -> bool {
    descends(spans, span, cause) || span.links.iter().any(|(t, _)| *t == cause.trace)
}

fn check(spans: &[Received]) {
    let journey = spans
        .iter()
        .find(|s| s.name == "journey")
        .unwrap_or_else(|| {
            panic!(
                "the journey's root span was exported: {} spans",
                spans.len()
            )
        });
    let trace = journey.trace.clone();
    let in_trace = |s: &&Received| s.trace == trace;

    // The staff member's call: SendPlan in the plans service, a child of the journey.
    let send = spans
        .iter()
        .filter(in_trace)
        .find(|s| {
            s.name == "grpc"
                && s.attributes
                    .get("rpc.method")
                    .is_some_and(|m| m.ends_with("/SendPlan"))
        })
        .expect("plans' SendPlan span is in the journey's trace");
    assert_eq!(send.parent, journey.id, "SendPlan is the journey's child");

    // plan_sent through the outbox and NATS to the scheduler: the case is enrolled in the same trace.
    let enrolled = consumer_span(spans, "scheduler-plans", "plans.plan_sent");
    let enrolled = enrolled
        .iter()
        .find(|s| descends(spans, s, send))
        .unwrap_or_else(|| {
            panic!(
                "the scheduler consumed plan_sent as a child of SendPlan: {:#?}",
                consumer_span(spans, "scheduler-plans", "plans.plan_sent")
            )
        });

    // ...and to cases (a batched consumer).
    let cases_sent = consumer_span(spans, "cases-plans", "");
    assert!(
        cases_sent.iter().any(|s| continues(spans, s, send)),
        "cases consumed plan_sent in the journey's trace: {cases_sent:#?}"
    );

    // enrollment_started, written where the case was enrolled, reaches cases in the same trace.
    let cases_enrolled = consumer_span(spans, "cases-scheduler", "");
    assert!(
        cases_enrolled.iter().any(|s| continues(spans, s, enrolled)),
        "cases consumed enrollment_started as a child of the enrollment: {cases_enrolled:#?}"
    );

    // The patient's view: the portal page sends the journey's traceparent with its beacons (as an
    // instrumented page would), engagement carries it onto the BEACONS stream, and its aggregator's
    // plan_viewed reaches cases in the same trace.
    let beacon = spans
        .iter()
        .filter(in_trace)
        .find(|s| s.name == "engagement.beacon")
        .expect("engagement's beacon span is in the journey's trace");
    let aggregated = consumer_span(spans, "engagement-beacons", "");
    let aggregated = aggregated
        .iter()
        .find(|s| continues(spans, s, beacon))
        .unwrap_or_else(|| {
            panic!("engagement aggregated the beacon in its trace: {aggregated:#?}")
        });
    let cases_viewed = consumer_span(spans, "cases-engagement", "");
    assert!(
        cases_viewed.iter().any(|s| continues(spans, s, aggregated)),
        "cases consumed plan_viewed in the journey's trace: {cases_viewed:#?}"
    );

    // The step the scheduler's timer fires later continues the enrollment's trace (stored with it), and
    // its notification_requested reaches notifications as a child of the fired step.
    let fired = spans
        .iter()
        .filter(|s| s.name == "scheduler.fire_step")
        .find(|s| descends(spans, s, enrolled))
        .unwrap_or_else(|| {
            panic!(
                "the fired step is a child of the enrollment: {:#?}",
                spans
                    .iter()
                    .filter(|s| s.name == "scheduler.fire_step")
                    .collect::<Vec<_>>()
            )
        });
    let requested = consumer_span(
        spans,
        "notifications-requests",
        "scheduler.notification_requested",
    );
    let requested = requested
        .iter()
        .find(|s| descends(spans, s, fired))
        .unwrap_or_else(|| {
            panic!("notifications took the request as a child of the fired step: {requested:#?}")
        });

    // The message the notifications worker sends later continues the trace the request stored, and
    // message_sent reaches cases in it.
    let delivered = spans
        .iter()
        .filter(|s| s.name == "notifications.deliver")
        .find(|s| descends(spans, s, requested))
        .unwrap_or_else(|| {
            panic!(
                "the delivery is a child of the request: {:#?}",
                spans
                    .iter()
                    .filter(|s| s.name == "notifications.deliver")
                    .collect::<Vec<_>>()
            )
        });
    let cases_sent_message = consumer_span(spans, "cases-notifications", "");
    assert!(
        cases_sent_message
            .iter()
            .any(|s| continues(spans, s, delivered)),
        "cases consumed message_sent in the journey's trace: {cases_sent_message:#?}"
    );
    println!(
        "journey trace {trace}: {} spans in it, {} exported",
        spans.iter().filter(in_trace).count(),
        spans.len()
    );
}
