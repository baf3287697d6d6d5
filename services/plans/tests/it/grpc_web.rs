//! A browser's call to the real service: gRPC-Web text (base64) over HTTP/1.1 with the staff token, as
//! grpc-web's JavaScript client sends it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use followup_platform::auth::Role;
use followup_proto::followup::plans::v1 as pb;
use prost::Message;

use crate::support::{CLINIC, Svc, http};

const LIST: &str = "/followup.plans.v1.CatalogService/ListFeeSchedules";

/// A gRPC-Web text body: base64 of (flag 0, big-endian length, protobuf).
fn text_frame(message: &impl Message) -> String {
    let payload = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    frame.extend_from_slice(&payload);
    STANDARD.encode(frame)
}

/// The message frames and the trailers of a gRPC-Web text response (base64 chunks, each padded).
fn read_text(body: &str) -> (Vec<Vec<u8>>, String) {
    let mut bytes = Vec::new();
    let mut rest = body.trim();
    // Each frame is encoded on its own, so padding may end a chunk in the middle of the body.
    while !rest.is_empty() {
        let end = rest
            .find('=')
            .map(|i| i + rest[i..].bytes().take_while(|b| *b == b'=').count())
            .unwrap_or(rest.len());
        bytes.extend(STANDARD.decode(&rest[..end]).unwrap());
        rest = &rest[end..];
    }
    let (mut messages, mut trailers, mut at) = (Vec::new(), String::new(), 0);
    while at + 5 <= bytes.len() {
        let flag = bytes[at];
        let len = u32::from_be_bytes(bytes[at + 1..at + 5].try_into().unwrap()) as usize;
        let chunk = bytes[at + 5..at + 5 + len].to_vec();
        at += 5 + len;
        if flag & 0x80 != 0 {
            trailers.push_str(&String::from_utf8_lossy(&chunk));
        } else {
            messages.push(chunk);
        }
    }
    (messages, trailers)
}

#[tokio::test]
async fn a_browser_lists_fee_schedules_through_grpc_web() {
    let svc = Svc::start().await;
    svc.setup_catalog(CLINIC).await;
    let url = format!("http://{}{LIST}", svc.running.as_ref().unwrap().grpc_addr);
    let token = svc.env.auth.token(CLINIC, Role::FrontDesk);
    let bearer = format!("Bearer {token}");
    let body = text_frame(&pb::ListFeeSchedulesRequest::default());

    let (status, headers, answer) = http(
        "POST",
        &url,
        &[
            ("content-type", "application/grpc-web-text"),
            ("accept", "application/grpc-web-text"),
            ("x-grpc-web", "1"),
            ("authorization", &bearer),
        ],
        &body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/grpc-web-text+proto")
    );
    let (messages, trailers) = read_text(&answer);
    assert!(trailers.contains("grpc-status:0"), "{trailers:?}");
    let list = pb::ListFeeSchedulesResponse::decode(messages[0].as_slice()).unwrap();
    let names: Vec<&str> = list.fee_schedules.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["Standard"]);

    // Without the token the same call is refused the gRPC way, readable by the page.
    let (status, headers, _) = http(
        "POST",
        &url,
        &[
            ("content-type", "application/grpc-web-text"),
            ("x-grpc-web", "1"),
        ],
        &body,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        headers.get("grpc-status").and_then(|v| v.to_str().ok()),
        Some("16"),
        "UNAUTHENTICATED: {headers:?}"
    );
    svc.stop().await;
}
