use std::time::Duration;

use followup_platform::ServiceInfo;
use followup_platform::consumer::{Handler, HandlerError};
use followup_platform::event::{Envelope, new_event_id, now_timestamp};
use followup_platform::nats_auth::Identity;
use followup_platform::testkit::TestEnv;
use followup_platform::{CommonConfig, Platform};
use followup_proto::followup::events::v1::EventHeader;
use sqlx::PgConnection;
use sqlx::migrate::Migrator;

pub static MIGRATOR: Migrator = sqlx::migrate!("tests/it/migrations");

pub const INFO: ServiceInfo = ServiceInfo {
    name: "itest",
    grpc_port: 0,
    admin_port: 0,
};

pub fn config(env: &TestEnv) -> CommonConfig {
    let mut common = env
        .config(&INFO, followup_platform::config::NoServiceConfig {})
        .common;
    // The test service is none of the five, so it has no NATS user of its own: the admin's.
    common.nats_credentials_file = Some(env.nats.credentials(&Identity::Admin));
    common
}

pub async fn platform(env: &TestEnv) -> Platform {
    Platform::start(INFO, config(env), &MIGRATOR).await.unwrap()
}

/// An event of the generic header shape, for `tenant`.
pub fn event(tenant: &str) -> EventHeader {
    EventHeader {
        event_id: new_event_id().to_string(),
        tenant_id: tenant.into(),
        occurred_at: Some(now_timestamp()),
    }
}

/// Records every event it applies; refuses subjects containing `poison`, fails `flaky` ones
/// transiently the first time they are delivered and `stuck` ones every time.
pub struct Recorder;

impl Handler for Recorder {
    async fn handle(&self, conn: &mut PgConnection, event: &Envelope) -> Result<(), HandlerError> {
        let header: EventHeader = event.decode()?;
        if event.subject.contains("poison") {
            return Err(HandlerError::Invalid("poison event".into()));
        }
        if event.subject.contains("flaky") && event.delivered == 1 {
            return Err(HandlerError::Transient("not yet".into()));
        }
        if event.subject.contains("stuck") {
            return Err(HandlerError::Transient("still not".into()));
        }
        sqlx::query("INSERT INTO applied (tenant_id, event_id, subject) VALUES ($1, $2, $3)")
            .bind(&header.tenant_id)
            .bind(&header.event_id)
            .bind(&event.subject)
            .execute(conn)
            .await?;
        Ok(())
    }
}

/// Polls `check` until it holds, at most ten seconds.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    // Generous: CI's two cores run this beside the whole-system tests, and a deadline is not a timing
    // assertion (a check that never holds still fails).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

pub async fn count(pool: &sqlx::PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A plain HTTP/1.0 GET: status code and body.
pub async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (code, body)
}
