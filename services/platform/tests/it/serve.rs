use std::time::Duration;

use followup_platform::grpc::GrpcServices;
use followup_platform::testkit::TestEnv;

use crate::support::{eventually, get, platform};

#[tokio::test]
async fn health_readiness_metrics_and_a_clean_stop() {
    let env = TestEnv::start().await;
    let running = platform(&env)
        .await
        .serve(GrpcServices::new(), vec![])
        .await
        .unwrap();

    assert_eq!(get(running.admin_addr, "/healthz").await.0, 200);
    let (code, body) = get(running.admin_addr, "/readyz").await;
    assert_eq!(code, 200, "{body}");
    let (code, metrics) = get(running.admin_addr, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains("followup_outbox_backlog{service=\"itest\"} 0"),
        "{metrics}"
    );

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", running.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        status.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    assert!(
        running.stop().await,
        "everything drained within the grace period"
    );
}

#[tokio::test]
async fn readiness_follows_nats() {
    let TestEnv { nats, db, auth } = TestEnv::start().await;
    let env = TestEnv { nats, db, auth };
    let running = platform(&env)
        .await
        .serve(GrpcServices::new(), vec![])
        .await
        .unwrap();
    let admin = running.admin_addr;
    assert_eq!(get(admin, "/readyz").await.0, 200);

    let TestEnv { nats, db, auth } = env;
    drop(nats);
    eventually("readiness reports NATS down", || async move {
        get(admin, "/readyz").await.0 == 503
    })
    .await;
    let (_, body) = get(admin, "/readyz").await;
    assert!(body.contains("\"nats\":false"), "{body}");
    let _keep = (db, auth);
    let _ = tokio::time::timeout(Duration::from_secs(30), running.stop()).await;
}
