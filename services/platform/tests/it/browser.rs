//! What a browser and a reflection client see of the gRPC port: gRPC-Web over HTTP/1.1 with CORS from
//! `grpc_web.allowed_origins`, and reflection through both `v1` and `v1alpha`.

use bytes::{Buf, Bytes};
use followup_platform::grpc::GrpcServices;
use followup_platform::testkit::TestEnv;
use followup_platform::{Platform, Running};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use prost::Message;

use crate::support::{INFO, MIGRATOR, config};

const ALLOWED: &str = "https://staff.example.com";
const REFUSED: &str = "https://elsewhere.example.net";
const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

async fn serve(env: &TestEnv) -> Running {
    let mut config = config(env);
    config.grpc_web.allowed_origins = vec![ALLOWED.to_string()];
    Platform::start(INFO, config, &MIGRATOR)
        .await
        .unwrap()
        .serve(GrpcServices::new(), vec![])
        .await
        .unwrap()
}

/// An HTTP/1.1-only client, as a browser's fetch to a plain-HTTP origin is.
fn http1() -> Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// One gRPC-Web message frame: flag 0, big-endian length, the protobuf.
fn frame(message: &impl Message) -> Bytes {
    let payload = message.encode_to_vec();
    let mut out = Vec::with_capacity(5 + payload.len());
    out.push(0);
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(&payload);
    out.into()
}

/// Splits a gRPC-Web response body into its message frames and its trailer frame (flag 0x80).
fn unframe(mut body: Bytes) -> (Vec<Bytes>, String) {
    let mut messages = Vec::new();
    let mut trailers = String::new();
    while body.remaining() >= 5 {
        let flag = body.get_u8();
        let len = body.get_u32() as usize;
        let chunk = body.split_to(len);
        if flag & 0x80 != 0 {
            trailers.push_str(&String::from_utf8_lossy(&chunk));
        } else {
            messages.push(chunk);
        }
    }
    assert!(body.is_empty(), "trailing bytes in the gRPC-Web body");
    (messages, trailers)
}

fn header<'a>(response: &'a http::Response<hyper::body::Incoming>, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn grpc_web_over_http1_answers_a_call_with_cors_for_allowed_origins_only() {
    let env = TestEnv::start().await;
    let running = serve(&env).await;
    let url = format!("http://{}{HEALTH_CHECK}", running.grpc_addr);
    let client = http1();

    // The call itself, as grpc-web's JavaScript client sends it.
    let request = http::Request::post(&url)
        .version(http::Version::HTTP_11)
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .header("origin", ALLOWED)
        .body(Full::new(frame(&tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.version(), http::Version::HTTP_11);
    assert_eq!(
        header(&response, "content-type"),
        Some("application/grpc-web+proto")
    );
    assert_eq!(
        header(&response, "access-control-allow-origin"),
        Some(ALLOWED)
    );
    let exposed = header(&response, "access-control-expose-headers").unwrap_or_default();
    assert!(exposed.contains("grpc-status"), "{exposed}");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let (messages, trailers) = unframe(body);
    assert!(trailers.contains("grpc-status:0"), "{trailers:?}");
    assert_eq!(messages.len(), 1);
    let answer = tonic_health::pb::HealthCheckResponse::decode(messages[0].clone()).unwrap();
    assert_eq!(
        answer.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    // The preflight a browser sends before a cross-origin call with an authorization header.
    let preflight = |origin: &'static str| {
        http::Request::options(&url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type,x-grpc-web,x-user-agent",
            )
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let allowed = client.request(preflight(ALLOWED)).await.unwrap();
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(
        header(&allowed, "access-control-allow-origin"),
        Some(ALLOWED)
    );
    let methods = header(&allowed, "access-control-allow-methods").unwrap_or_default();
    assert!(methods.contains("POST"), "{methods}");
    let headers = header(&allowed, "access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    for needed in [
        "authorization",
        "content-type",
        "x-grpc-web",
        "x-user-agent",
    ] {
        assert!(headers.contains(needed), "{needed} not in {headers}");
    }

    // Another origin gets no permission: the browser stops the call before it is sent.
    let refused = client.request(preflight(REFUSED)).await.unwrap();
    assert_eq!(header(&refused, "access-control-allow-origin"), None);

    // Native gRPC (HTTP/2) still works on the same port.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", running.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap();

    running.stop().await;
}

#[tokio::test]
async fn without_configured_origins_no_other_origin_is_allowed() {
    let env = TestEnv::start().await;
    let running = Platform::start(INFO, config(&env), &MIGRATOR)
        .await
        .unwrap()
        .serve(GrpcServices::new(), vec![])
        .await
        .unwrap();
    let url = format!("http://{}{HEALTH_CHECK}", running.grpc_addr);
    let preflight = http::Request::options(&url)
        .header("origin", ALLOWED)
        .header("access-control-request-method", "POST")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let answer = http1().request(preflight).await.unwrap();
    assert_eq!(header(&answer, "access-control-allow-origin"), None);
    running.stop().await;
}

#[tokio::test]
async fn reflection_lists_services_through_v1alpha_and_v1() {
    use futures::StreamExt;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::{ServerReflectionRequest, ServerReflectionResponse};

    let env = TestEnv::start().await;
    let running = Platform::start(INFO, config(&env), &MIGRATOR)
        .await
        .unwrap()
        .serve(GrpcServices::new(), vec![])
        .await
        .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", running.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel.clone());
    let ask = |request: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let answers: Vec<ServerReflectionResponse> = client
        .server_reflection_info(futures::stream::iter([
            ask(MessageRequest::ListServices(String::new())),
            ask(MessageRequest::FileContainingSymbol(
                "grpc.reflection.v1.ServerReflection".into(),
            )),
        ]))
        .await
        .unwrap()
        .into_inner()
        .map(|answer| answer.unwrap())
        .collect()
        .await;
    assert_eq!(answers.len(), 2);
    let services: Vec<String> = match &answers[0].message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.iter().map(|s| s.name.clone()).collect()
        }
        other => panic!("unexpected reflection answer: {other:?}"),
    };
    for expected in [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            services.iter().any(|s| s == expected),
            "{expected} not listed through v1alpha: {services:?}"
        );
    }
    assert!(
        matches!(
            &answers[1].message_response,
            Some(MessageResponse::FileDescriptorResponse(files)) if !files.file_descriptor_proto.is_empty()
        ),
        "the v1 reflection service is described through v1alpha: {:?}",
        answers[1].message_response
    );

    // And v1 lists the same.
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient as V1Client;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest as V1Request;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse as V1Response;
    let mut v1 = V1Client::new(channel);
    let answer = v1
        .server_reflection_info(futures::stream::iter([
            tonic_reflection::pb::v1::ServerReflectionRequest {
                host: String::new(),
                message_request: Some(V1Request::ListServices(String::new())),
            },
        ]))
        .await
        .unwrap()
        .into_inner()
        .message()
        .await
        .unwrap()
        .unwrap();
    let Some(V1Response::ListServicesResponse(list)) = answer.message_response else {
        panic!("unexpected v1 answer");
    };
    let v1_services: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert_eq!(v1_services.len(), services.len(), "{v1_services:?}");
    running.stop().await;
}
