//! A scheduler killed with SIGKILL in the middle of its claims loses nothing and fires nothing twice:
//! the real binary runs as a child process against seeded due steps and is killed while it fires.

use std::collections::HashSet;
use std::process::Stdio;

use chrono::{Duration, Utc};
use followup_platform::testkit::TestEnv;
use followup_proto::followup::events::v1 as ev;
use followup_scheduler::seed::{Seed, seed};
use prost::Message;
use sqlx::PgPool;
use tokio::process::{Child, Command};

use crate::support::{TENANT, eventually_within};

fn spawn(env: &TestEnv, key_file: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_followup-scheduler"))
        .env("FOLLOWUP_SCHEDULER__DATABASE_URL", &env.db.url)
        .env("FOLLOWUP_SCHEDULER__NATS_URL", env.nats.url())
        .env(
            "FOLLOWUP_SCHEDULER__NATS_CREDENTIALS_DIR",
            env.nats.credentials_dir(),
        )
        .env("FOLLOWUP_SCHEDULER__GRPC_ADDR", "127.0.0.1:0")
        .env("FOLLOWUP_SCHEDULER__ADMIN_ADDR", "127.0.0.1:0")
        .env("FOLLOWUP_SCHEDULER__CLAIM_LINKS__HTTP_ADDR", "127.0.0.1:0")
        .env(
            "FOLLOWUP_SCHEDULER__AUTH__JWT_PUBLIC_KEY_FILES",
            format!("[\"{}\"]", key_file.display()),
        )
        .env("FOLLOWUP_SCHEDULER__TIMER__BATCH_SIZE", "100")
        .env("FOLLOWUP_SCHEDULER__LOG__FILTER", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the scheduler binary starts")
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
        .expect("a count")
}

const REQUESTS: &str =
    "SELECT count(*) FROM outbox WHERE subject LIKE '%.scheduler.notification_requested'";

#[tokio::test]
async fn kill_9_during_a_claim_loses_nothing_and_fires_nothing_twice() {
    let env = TestEnv::start().await;
    let pool = env.db.pool().await;
    followup_platform::db::migrate(&pool, &followup_scheduler::MIGRATOR)
        .await
        .expect("migrated");
    // 2,000 enrollments with all four steps due: 8,000 due steps, 80 claims of 100.
    let now = Utc::now();
    seed(
        &pool,
        &Seed {
            tenant: TENANT.into(),
            prefix: String::new(),
            enrollments: 2000,
            due_enrollments: 2000,
            due_steps_each: 4,
            due_from: now - Duration::hours(1),
            due_to: now - Duration::minutes(1),
            future_at: now + Duration::days(30),
        },
    )
    .await
    .expect("seeded");
    let keys = tempfile::NamedTempFile::new().expect("key file");
    std::fs::write(keys.path(), &env.auth.keys.public_pem).expect("key written");

    let mut first = spawn(&env, keys.path());
    // Several claims in, the worker is claiming continuously: the kill lands inside one.
    eventually_within(60, "firing under way", || async {
        count(&pool, REQUESTS).await >= 500
    })
    .await;
    first.start_kill().expect("SIGKILL sent");
    first.wait().await.expect("the child ended");
    let fired = count(
        &pool,
        "SELECT count(*) FROM step_runs WHERE state = 'fired'",
    )
    .await;
    let requested = count(&pool, REQUESTS).await;
    eprintln!("killed after {fired} of 8000 steps");
    // Atomic: every committed fired step has its request, and no request lacks its step.
    assert_eq!(fired, requested, "fired steps and requests commit together");
    assert!(fired < 8_000, "the kill came during the claims");

    let mut second = spawn(&env, keys.path());
    eventually_within(90, "every step fired after the restart", || async {
        count(
            &pool,
            "SELECT count(*) FROM step_runs WHERE state = 'fired'",
        )
        .await
            == 8_000
    })
    .await;
    second.start_kill().expect("SIGKILL sent");
    second.wait().await.expect("the child ended");

    let payloads: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT payload FROM outbox WHERE subject LIKE '%.scheduler.notification_requested'",
    )
    .fetch_all(&pool)
    .await
    .expect("outbox");
    let keys: HashSet<String> = payloads
        .iter()
        .map(|p| {
            ev::NotificationRequested::decode(p.as_slice())
                .expect("a request")
                .idempotency_key
        })
        .collect();
    assert_eq!(payloads.len(), 8_000, "nothing fired twice");
    assert_eq!(keys.len(), 8_000, "every step has its one request");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM enrollments WHERE state = 'finished'"
        )
        .await,
        2000
    );
}
