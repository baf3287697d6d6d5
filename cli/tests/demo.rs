//! `followup demo` against a real `followup dev --ephemeral-ports` stack: the eight steps happen and the
//! demo exits 0. The demo finds every service from the addresses `followup dev` printed.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

/// What `followup dev` printed: each service's gRPC address and HTTP servers, NATS and the capture.
#[derive(Default, Debug)]
struct Endpoints {
    grpc: HashMap<String, String>,
    http: HashMap<String, String>,
    nats: String,
    capture: String,
}

impl Endpoints {
    fn read(&mut self, line: &str) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["NATS", url, ..] if url.starts_with("nats://") => self.nats = url.to_string(),
            ["capture", "SMTP", _, "HTTP", url, ..] => self.capture = url.to_string(),
            [name, grpc, _admin, rest @ ..]
                if ["plans", "cases", "engagement", "scheduler", "notifications"]
                    .contains(name) =>
            {
                self.grpc.insert(name.to_string(), format!("http://{grpc}"));
                if let [server, addr, ..] = rest {
                    self.http
                        .insert(server.to_string(), format!("http://{addr}"));
                }
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn the_demo_shows_the_eight_steps_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let mut dev = Command::new(env!("CARGO_BIN_EXE_followup"))
        .args(["dev", "--ephemeral-ports", "--dir"])
        .arg(dir.path())
        .env_remove("NATS_URL")
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(dev.stdout.take().unwrap()).lines();
    let mut endpoints = Endpoints::default();
    let ready = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            endpoints.read(&line);
            if line.starts_with("ready:") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true), "followup dev did not get ready");
    // Keep reading so the stack never blocks on a full pipe.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    assert_eq!(endpoints.grpc.len(), 5, "{endpoints:?}");

    let demo = Command::new(env!("CARGO_BIN_EXE_followup"))
        .arg("demo")
        .arg("--dir")
        .arg(dir.path())
        .args(["--plans-addr", &endpoints.grpc["plans"]])
        .args(["--cases-addr", &endpoints.grpc["cases"]])
        .args(["--engagement-addr", &endpoints.grpc["engagement"]])
        .args(["--scheduler-addr", &endpoints.grpc["scheduler"]])
        .args(["--notifications-addr", &endpoints.grpc["notifications"]])
        .args(["--beacons-url", &endpoints.http["beacons"]])
        .args(["--capture-url", &endpoints.capture])
        .args(["--nats-url", &endpoints.nats])
        .env_remove("FOLLOWUP_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(240), demo)
        .await
        .expect("the demo ends by itself")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert!(output.status.success(), "the demo failed: {stderr}");
    for n in 1..=8 {
        assert!(stdout.contains(&format!("Step {n}/8")), "step {n} is shown");
    }
    for said in [
        "Phase 1: restorations",
        "waiting for the patient's response",
        "SMS to +15125550101",
        "Recovered in",
        "STOP",
        "the sequence stopped: opted out",
        "Maria's case: patient booked",
        "Her follow-up sequence stopped: booked",
        "Unscheduled (leakage)",
        "Recovered by follow-up: 1 plan",
    ] {
        assert!(stdout.contains(said), "the demo says {said:?}");
    }

    // Ctrl-C stops the stack cleanly.
    let pid = dev.id().unwrap();
    assert!(
        std::process::Command::new("kill")
            .arg("-INT")
            .arg(pid.to_string())
            .status()
            .is_ok_and(|s| s.success())
    );
    let status = tokio::time::timeout(Duration::from_secs(60), dev.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "followup dev exits 0: {status:?}");
    let _ = drain.await;
}
