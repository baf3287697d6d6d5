//! `followup dev` with neither NATS_URL nor DATABASE_URL: it starts its own NATS and PostgreSQL, all five
//! services reach SERVING and list their APIs through reflection, and SIGINT leaves no process behind.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// Every process whose parent chain leads to `root`.
fn descendants(root: u32) -> BTreeSet<u32> {
    let mut parents = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The command name is in parentheses and may hold spaces: the parent pid follows the last ')'.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
        if let Some(ppid) = after
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok())
        {
            parents.push((pid, ppid));
        }
    }
    let mut found = BTreeSet::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, ppid) in &parents {
            if *ppid == parent && found.insert(*pid) {
                frontier.push(*pid);
            }
        }
    }
    found
}

async fn serving(addr: &str) -> bool {
    let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
        return false;
    };
    let Ok(channel) = endpoint.connect().await else {
        return false;
    };
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    matches!(
        health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await,
        Ok(response) if response.get_ref().status
            == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    )
}

async fn reflected_services(addr: &str) -> Vec<String> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer: {other:?}"),
    }
}

#[tokio::test]
async fn dev_stack_serves_everything_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_followup"))
        .args(["dev", "--ephemeral-ports", "--dir"])
        .arg(dir.path())
        .env_remove("NATS_URL")
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();

    let mut grpc = Vec::new();
    let mut nats_url = None;
    let ready = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            println!("{line}");
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let ["NATS", url, ..] = fields.as_slice()
                && url.starts_with("nats://")
            {
                nats_url = Some(url.to_string());
            }
            if let [name, addr, ..] = fields.as_slice()
                && ["plans", "cases", "engagement", "scheduler", "notifications"].contains(name)
            {
                grpc.push((name.to_string(), addr.to_string()));
            }
            if line.starts_with("ready:") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true), "followup dev did not get ready");
    assert_eq!(grpc.len(), 5, "five services listed: {grpc:?}");

    for (name, addr) in &grpc {
        // Loopback unless `--listen` says otherwise.
        assert!(addr.starts_with("127.0.0.1:"), "{name} listens on {addr}");
        assert!(serving(addr).await, "{name} is SERVING");
        let services = reflected_services(addr).await;
        let expected = format!("followup.{name}.v1.");
        assert!(
            services.iter().any(|s| s.starts_with(&expected)),
            "{name} reflects its API: {services:?}"
        );
        assert!(
            services.iter().any(|s| s == "grpc.health.v1.Health"),
            "{services:?}"
        );
    }

    // The private NATS server admits only its users: an anonymous connection is refused, the admin's
    // seed (what the dev tools use) is accepted.
    let nats_url = nats_url.expect("followup dev prints its NATS URL");
    assert!(
        async_nats::ConnectOptions::new()
            .connect(nats_url.as_str())
            .await
            .is_err(),
        "an anonymous connection to the dev stack's NATS is refused"
    );
    let admin = dir.path().join("nats-auth").join("admin.nk");
    followup_platform::nats_auth::connect_options(&admin)
        .unwrap()
        .connect(nats_url.as_str())
        .await
        .expect("the dev admin connects");
    // Made once and kept, so unsubscribe links survive a restart.
    let key = std::fs::read_to_string(dir.path().join("keys").join("unsubscribe.key")).unwrap();
    assert_eq!(key.len(), 64, "a 32-byte hex key");

    let children = descendants(pid);
    assert!(
        children.len() >= 2,
        "nats-server and postgres run as children: {children:?}"
    );
    // Keep reading stdout so the child never blocks on a full pipe while it stops.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    // SIGINT, as Ctrl-C in a terminal.
    assert!(send_signal(pid, "INT"));
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(
        status.success(),
        "followup dev exits 0 on SIGINT: {status:?}"
    );
    let _ = drain.await;

    for _ in 0..50 {
        if children
            .iter()
            .all(|p| !followup_platform::local::pid_exists(*p))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let alive: Vec<u32> = children
        .into_iter()
        .filter(|p| followup_platform::local::pid_exists(*p))
        .collect();
    assert!(alive.is_empty(), "processes left behind: {alive:?}");
}

/// Sends a signal with the `kill` command, keeping the test free of unsafe code.
fn send_signal(pid: u32, signal: &str) -> bool {
    std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .is_ok_and(|s| s.success())
}
