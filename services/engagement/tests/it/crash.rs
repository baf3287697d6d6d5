//! Crash test: the service process is killed (SIGKILL) while beacons are in flight. Every beacon that got
//! a 202 is in the facts after the restart, and after the page retries what was refused or cut off, every
//! beacon counts exactly once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use followup_platform::auth::{KeyPair, Signer};
use followup_platform::testkit::TestEnv;
use serde_json::Value;
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use crate::support::*;

const PAGES: usize = 12;

struct Ports {
    grpc: SocketAddr,
    admin: SocketAddr,
    http: SocketAddr,
}

async fn free_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    listener.local_addr().expect("addr")
}

fn config_file(
    dir: &std::path::Path,
    env: &TestEnv,
    portal: &KeyPair,
    ports: &Ports,
) -> std::path::PathBuf {
    let path = dir.join("engagement.toml");
    let toml = format!(
        "database_url = \"{db}\"\nnats_url = \"{nats}\"\nnats_credentials_dir = \"{creds}\"\ngrpc_addr = \"{grpc}\"\nadmin_addr = \"{admin}\"\n\
         http_addr = \"{http}\"\nstartup_timeout_secs = 20\nshutdown_grace_secs = 5\n\
         rate_limit_per_minute = 1000000\nrate_limit_burst = 100000\naggregator_ack_wait_secs = 2\n\
         portal_public_keys = ['''{portal}''']\n\n[auth]\njwt_public_keys = ['''{staff}''']\n\n\
         [log]\nformat = \"json\"\nfilter = \"warn\"\n",
        db = env.db.url,
        nats = env.nats.url(),
        creds = env.nats.credentials_dir().display(),
        grpc = ports.grpc,
        admin = ports.admin,
        http = ports.http,
        portal = portal.public_pem.trim(),
        staff = env.auth.keys.public_pem.trim(),
    );
    std::fs::write(&path, toml).expect("config written");
    path
}

async fn spawn(config: &std::path::Path, http: SocketAddr) -> Child {
    let mut child = Command::new(env!("CARGO_BIN_EXE_followup-engagement"))
        .arg("--config")
        .arg(config)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("the service binary starts");
    let client = http_client();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let probe = http::Request::get(format!("http://{http}/v1/beacon.js"))
            .body(http_body_util::Full::new(Bytes::new()))
            .expect("request");
        if let Ok(response) = client.request(probe).await
            && response.status() == 200
        {
            return child;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the service exited at start: {status}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the service did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One request of one page: its body, and the visible time it reports.
#[derive(Clone)]
struct Beacon {
    body: Value,
    visible_ms: i64,
}

fn beacons_of_page(token: &str, page: usize, count: usize) -> Vec<Beacon> {
    (0..count)
        .map(|i| {
            let visible_ms = 100 + ((page * 31 + i * 7) % 900) as i64;
            let session = format!("page-{page}");
            let events = if i == 0 {
                vec![
                    open(&format!("{session}.0")),
                    heartbeat(&format!("{session}.0b"), visible_ms),
                ]
            } else {
                vec![heartbeat(&format!("{session}.{i}"), visible_ms)]
            };
            Beacon {
                body: batch(token, &session, events),
                visible_ms,
            }
        })
        .collect()
}

#[tokio::test]
async fn every_accepted_beacon_survives_a_kill_and_none_counts_twice() {
    let env = TestEnv::start().await;
    let portal_keys = KeyPair::generate().expect("keys");
    let portal = Signer::from_pem(&portal_keys.private_pem).expect("signer");
    let ports = Ports {
        grpc: free_addr().await,
        admin: free_addr().await,
        http: free_addr().await,
    };
    let dir = tempfile::tempdir().expect("dir");
    let config = config_file(dir.path(), &env, &portal_keys, &ports);
    let mut child = spawn(&config, ports.http).await;

    let plan = new_plan();
    let pages: Vec<Vec<Beacon>> = (0..PAGES)
        .map(|page| beacons_of_page(&portal_token(&portal, TENANT, &plan, 3600), page, 120))
        .collect();
    let expected_total: i64 = pages.iter().flatten().map(|b| b.visible_ms).sum();

    // Pages post as fast as they can; the process is killed once enough beacons were accepted.
    let accepted_ms = Arc::new(Mutex::new(0i64));
    let accepted_count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<BTreeMap<(usize, usize), bool>>> = Arc::default();
    let mut tasks = Vec::new();
    for (page, beacons) in pages.iter().cloned().enumerate() {
        let (accepted_ms, accepted_count, stop, outcomes) = (
            accepted_ms.clone(),
            accepted_count.clone(),
            stop.clone(),
            outcomes.clone(),
        );
        let http = ports.http;
        tasks.push(tokio::spawn(async move {
            let client = http_client();
            for (i, beacon) in beacons.iter().enumerate() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let sent = tokio::time::timeout(
                    Duration::from_secs(10),
                    try_post_raw(&client, http, "text/plain", beacon.body.to_string().into()),
                )
                .await;
                // A cut connection or a timeout is "no 202": the page will retry it.
                let ok = matches!(sent, Ok(Ok((202, _, _))));
                outcomes.lock().await.insert((page, i), ok);
                if ok {
                    *accepted_ms.lock().await += beacon.visible_ms;
                    accepted_count.fetch_add(1, Ordering::SeqCst);
                } else {
                    break;
                }
            }
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while accepted_count.load(Ordering::SeqCst) < 400 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "beacons are not being accepted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.start_kill().expect("SIGKILL");
    stop.store(true, Ordering::SeqCst);
    let _ = child.wait().await;
    for task in tasks {
        let _ = task.await;
    }
    let accepted_before_kill = *accepted_ms.lock().await;

    let child = spawn(&config, ports.http).await;
    let mut client = followup_proto::followup::engagement::v1::engagement_service_client::EngagementServiceClient::connect(
        format!("http://{}", ports.grpc),
    )
    .await
    .expect("gRPC connects");
    let staff = env
        .auth
        .token(TENANT, followup_platform::auth::Role::FrontDesk);

    // Every 202'd beacon is there after the restart (and nothing beyond what was sent).
    let facts = poll_facts(&mut client, &staff, &plan, Duration::from_secs(30), |f| {
        ms(&f.total_view_time) >= accepted_before_kill
    })
    .await;
    assert!(ms(&facts.total_view_time) <= expected_total);

    // The pages retry what got no 202 (same ids), then send the rest.
    let outcomes = outcomes.lock().await.clone();
    let retries = pages.iter().enumerate().map(|(page, beacons)| {
        let outcomes = &outcomes;
        async move {
            let http = http_client();
            for (i, beacon) in beacons.iter().enumerate() {
                if outcomes.get(&(page, i)) == Some(&true) {
                    continue;
                }
                let (status, _, body) = post_raw(
                    &http,
                    ports.http,
                    "text/plain",
                    beacon.body.to_string().into(),
                )
                .await;
                assert_eq!(status, 202, "{body}");
            }
        }
    });
    futures::future::join_all(retries).await;

    let facts = poll_facts(&mut client, &staff, &plan, Duration::from_secs(30), |f| {
        ms(&f.total_view_time) >= expected_total
    })
    .await;
    drained(&env).await;
    let settled = facts_of(&mut client, &staff, &plan).await;
    assert_eq!(
        ms(&settled.total_view_time),
        expected_total,
        "none counted twice"
    );
    assert_eq!(ms(&facts.total_view_time), expected_total);
    assert_eq!(settled.view_count, PAGES as i32);
    drop(child);
}

async fn facts_of(
    client: &mut followup_proto::followup::engagement::v1::engagement_service_client::EngagementServiceClient<tonic::transport::Channel>,
    staff: &str,
    plan: &str,
) -> followup_proto::followup::engagement::v1::PlanEngagement {
    facts(client, staff, plan).await
}
