//! A real browser: headless Chromium, driven over WebDriver (chromedriver), opens a page that includes
//! /v1/beacon.js, scrolls through four sections, waits, leaves; the facts then show those sections and
//! one view. Needs the Debian packages `chromium` and `chromium-driver` (scripts/test.sh installs them).

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::response::Html;
use followup_platform::testkit::authed;
use followup_proto::followup::common::v1::PortalSection;
use followup_proto::followup::engagement::v1::ListViewSessionsRequest;
use serde_json::json;

use crate::support::*;

const SECTIONS: [(&str, PortalSection); 4] = [
    ("cover", PortalSection::Cover),
    ("treatment_details", PortalSection::TreatmentDetails),
    ("images", PortalSection::Images),
    ("3d_models", PortalSection::PortalSection3dModels),
];

fn page(beacons: SocketAddr, token: &str) -> String {
    let sections: String = SECTIONS
        .iter()
        .map(|(name, _)| {
            format!(
                "<section data-followup-section=\"{name}\" style=\"height:100vh;border:1px solid #999\"><h2>{name}</h2></section>\n"
            )
        })
        .collect();
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Your treatment plan</title></head>\
         <body style=\"margin:0\">\n{sections}\
         <script src=\"http://{beacons}/v1/beacon.js\" data-token=\"{token}\" async></script>\
         </body></html>"
    )
}

fn which(binary: &str) -> Option<String> {
    ["/usr/bin", "/usr/local/bin", "/usr/lib/chromium"]
        .iter()
        .map(|dir| format!("{dir}/{binary}"))
        .find(|path| std::path::Path::new(path).exists())
}

async fn free_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    listener.local_addr().expect("addr").port()
}

#[tokio::test]
async fn a_real_browser_reading_four_sections_is_one_view_with_section_times() {
    let chromedriver = which("chromedriver")
        .expect("chromedriver not found: install the Debian packages chromium and chromium-driver (scripts/test.sh does)");
    let chromium =
        which("chromium").expect("chromium not found: install the Debian package chromium");

    // The portal page, on another origin than the beacons (as in production): CORS is exercised too.
    let html = Arc::new(Mutex::new(String::new()));
    let page_listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind page server");
    let page_addr = page_listener.local_addr().expect("addr");
    let router = axum::Router::new()
        .route(
            "/plan",
            axum::routing::get(|State(html): State<Arc<Mutex<String>>>| async move {
                Html(html.lock().map(|h| h.clone()).unwrap_or_default())
            }),
        )
        .with_state(html.clone());
    tokio::spawn(async move {
        let _ = axum::serve(page_listener, router).await;
    });

    let h = Harness::start_with(|s| s.allowed_origins = vec![format!("http://{page_addr}")]).await;
    let plan = new_plan();
    let token = h.token(TENANT, &plan);
    *html.lock().expect("page lock") = page(h.beacons_addr(), &token);

    let port = free_port().await;
    let profile = tempfile::tempdir().expect("profile dir");
    let mut driver = tokio::process::Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver starts");
    let webdriver = format!("http://127.0.0.1:{port}");
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1200,800",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        }),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let browser = loop {
        match fantoccini::ClientBuilder::new(
            hyper_util::client::legacy::connect::HttpConnector::new(),
        )
        .capabilities(capabilities.clone())
        .connect(&webdriver)
        .await
        {
            Ok(client) => break client,
            Err(err) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no WebDriver session from chromedriver: {err}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };

    browser
        .goto(&format!("http://{page_addr}/plan"))
        .await
        .expect("the page opens");
    // Wait until the script has run and sent its open beacon.
    h.facts_until(&plan, |f| f.viewed).await;
    for (name, _) in SECTIONS {
        browser
            .execute(
                &format!(
                    "document.querySelector('[data-followup-section=\"{name}\"]').scrollIntoView()"
                ),
                vec![],
            )
            .await
            .expect("scroll");
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    // Leaving the page fires pagehide: the script flushes with navigator.sendBeacon.
    browser.goto("about:blank").await.expect("leave the page");

    let facts = h
        .facts_until(&plan, |f| {
            SECTIONS
                .iter()
                .all(|(_, section)| section_ms(&f.section_times, *section) > 0)
        })
        .await;
    let _ = browser.close().await;
    let _ = driver.kill().await;

    assert_eq!(facts.view_count, 1, "{facts:?}");
    for (name, section) in SECTIONS {
        let visible = section_ms(&facts.section_times, section);
        assert!(visible > 0 && visible < 60_000, "{name}: {visible} ms");
    }
    assert!(ms(&facts.total_view_time) > 0, "{facts:?}");
    assert_eq!(
        facts.last_section,
        PortalSection::PortalSection3dModels as i32
    );

    let sessions = h
        .grpc()
        .await
        .list_view_sessions(authed(
            ListViewSessionsRequest {
                plan_id: plan.clone(),
                page_size: 10,
                page_token: String::new(),
            },
            &h.staff(TENANT),
        ))
        .await
        .expect("sessions")
        .into_inner()
        .sessions;
    assert_eq!(sessions.len(), 1);
    assert!(sessions[0].closed, "pagehide sent the close beacon");
}
