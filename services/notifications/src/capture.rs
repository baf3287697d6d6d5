//! A local capture of everything the service sends, for `followup dev` and the tests: a real SMTP
//! listener (a sink that accepts every message) and a real HTTP endpoint that answers like the generic
//! JSON SMS provider (honouring `Idempotency-Key`) and accepts webhook calls. What it received is listed
//! at `GET /captured` (JSON), so `followup notifications captured` can show what a patient would have got.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// The capture's default ports in `followup dev` (SMTP, HTTP).
pub const DEV_SMTP_PORT: u16 = 2525;
pub const DEV_HTTP_PORT: u16 = 8025;

/// Starts the dev stack's capture (default ports, or free ones) and points the service's SMS adapter,
/// SMTP transport and webhook rules at it.
pub async fn for_dev(
    sources: followup_platform::config::Sources,
    ephemeral_ports: bool,
) -> std::io::Result<(followup_platform::config::Sources, Capture)> {
    let (smtp, http) = if ephemeral_ports {
        (0, 0)
    } else {
        (DEV_SMTP_PORT, DEV_HTTP_PORT)
    };
    let capture = Capture::start(
        SocketAddr::from(([127, 0, 0, 1], smtp)),
        SocketAddr::from(([127, 0, 0, 1], http)),
    )
    .await?;
    let mut sources = sources
        .set("sms.provider", "generic_json")
        .set("sms.base_url", format!("http://{}/sms", capture.http_addr))
        .set("sms.from", "+15005550006")
        .set("smtp.url", format!("smtp://{}", capture.smtp_addr))
        .set("smtp.from", "Followup dev <dev@followup.invalid>")
        .set("webhooks.allow_http", true);
    if ephemeral_ports {
        sources = sources.set("http_addr", "127.0.0.1:0");
    }
    Ok((sources, capture))
}

/// One thing the capture received.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Captured {
    /// "sms", "email" or "webhook".
    pub kind: String,
    pub at: chrono::DateTime<chrono::Utc>,
    /// SMS: the number; email: the RCPT TO address; webhook: the request path.
    pub to: String,
    /// SMS: the body; email: the raw message (headers and body); webhook: the request body.
    pub content: String,
    /// HTTP headers (SMS and webhooks).
    pub headers: BTreeMap<String, String>,
    /// The provider id it answered with (SMS).
    pub id: String,
}

#[derive(Clone, Default)]
struct Store {
    items: Arc<Mutex<Vec<Captured>>>,
    /// Idempotency-Key → the id first answered, like a provider that honours the key.
    keys: Arc<Mutex<HashMap<String, String>>>,
}

/// A running capture; it stops when dropped.
pub struct Capture {
    pub smtp_addr: SocketAddr,
    pub http_addr: SocketAddr,
    store: Store,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Capture {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Capture {
    /// Binds both listeners (port 0 picks free ports).
    pub async fn start(smtp: SocketAddr, http: SocketAddr) -> std::io::Result<Self> {
        let store = Store::default();
        let smtp_listener = TcpListener::bind(smtp).await?;
        let http_listener = TcpListener::bind(http).await?;
        let smtp_addr = smtp_listener.local_addr()?;
        let http_addr = http_listener.local_addr()?;
        let smtp_task = tokio::spawn(smtp_sink(smtp_listener, store.clone()));
        let router = Router::new()
            .route("/captured", get(list))
            .route("/sms/messages", post(sms))
            .fallback(post(webhook))
            .with_state(store.clone());
        let http_task = tokio::spawn(async move {
            let _ = axum::serve(http_listener, router).await;
        });
        Ok(Self {
            smtp_addr,
            http_addr,
            store,
            tasks: vec![smtp_task, http_task],
        })
    }

    pub fn captured(&self) -> Vec<Captured> {
        self.store
            .items
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default()
    }

    /// Keeps serving for as long as the process runs (the dev stack).
    pub fn detach(mut self) {
        self.tasks.clear();
    }
}

fn header_map(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .filter(|(name, _)| *name != axum::http::header::AUTHORIZATION)
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
        .collect()
}

fn push(store: &Store, item: Captured) {
    if let Ok(mut items) = store.items.lock() {
        // A dev stack left running for days stays small.
        if items.len() >= 10_000 {
            items.remove(0);
        }
        items.push(item);
    }
}

async fn list(State(store): State<Store>) -> impl IntoResponse {
    let items = store.items.lock().map(|v| v.clone()).unwrap_or_default();
    axum::Json(items)
}

async fn sms(State(store): State<Store>, headers: HeaderMap, body: Bytes) -> impl IntoResponse {
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let field = |n: &str| {
        json.get(n)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let (id, fresh) = {
        let Ok(mut keys) = store.keys.lock() else {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(serde_json::json!({"error": "capture poisoned"})),
            );
        };
        match keys.get(&key) {
            Some(id) if !key.is_empty() => (id.clone(), false),
            _ => {
                let id = format!("cap-{}", uuid::Uuid::now_v7().simple());
                if !key.is_empty() {
                    keys.insert(key, id.clone());
                }
                (id, true)
            }
        }
    };
    if fresh {
        push(
            &store,
            Captured {
                kind: "sms".into(),
                at: chrono::Utc::now(),
                to: field("to"),
                content: field("body"),
                headers: header_map(&headers),
                id: id.clone(),
            },
        );
    }
    (
        StatusCode::CREATED,
        axum::Json(serde_json::json!({ "id": id })),
    )
}

async fn webhook(
    State(store): State<Store>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    push(
        &store,
        Captured {
            kind: "webhook".into(),
            at: chrono::Utc::now(),
            to: uri.path().to_string(),
            content: String::from_utf8_lossy(&body).into_owned(),
            headers: header_map(&headers),
            id: String::new(),
        },
    );
    StatusCode::NO_CONTENT
}

/// Just enough SMTP to accept mail from lettre (and any client that does not insist on TLS or AUTH).
async fn smtp_sink(listener: TcpListener, store: Store) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        let store = store.clone();
        tokio::spawn(async move {
            let _ = smtp_session(socket, store).await;
        });
    }
}

async fn smtp_session(socket: tokio::net::TcpStream, store: Store) -> std::io::Result<()> {
    let (read, mut write) = socket.into_split();
    let mut reader = BufReader::new(read);
    write.write_all(b"220 followup-capture ESMTP\r\n").await?;
    let mut recipients: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_ascii_uppercase();
        if command.starts_with("EHLO") {
            write
                .write_all(b"250-followup-capture\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
                .await?;
        } else if command.starts_with("HELO")
            || command.starts_with("MAIL")
            || command.starts_with("NOOP")
        {
            write.write_all(b"250 OK\r\n").await?;
        } else if command.starts_with("RSET") {
            recipients.clear();
            write.write_all(b"250 OK\r\n").await?;
        } else if command.starts_with("RCPT") {
            let address = line
                .split_once('<')
                .and_then(|(_, rest)| rest.split_once('>'))
                .map(|(a, _)| a.to_string())
                .unwrap_or_default();
            recipients.push(address);
            write.write_all(b"250 OK\r\n").await?;
        } else if command == "DATA" {
            write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
            let mut data = String::new();
            loop {
                line.clear();
                if reader.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    break;
                }
                let unstuffed = line
                    .strip_prefix('.')
                    .filter(|_| line.starts_with(".."))
                    .unwrap_or(&line);
                data.push_str(unstuffed);
            }
            let id = format!("cap-{}", uuid::Uuid::now_v7().simple());
            for to in recipients.drain(..) {
                push(
                    &store,
                    Captured {
                        kind: "email".into(),
                        at: chrono::Utc::now(),
                        to,
                        content: data.clone(),
                        headers: BTreeMap::new(),
                        id: id.clone(),
                    },
                );
            }
            write
                .write_all(format!("250 OK queued as {id}\r\n").as_bytes())
                .await?;
        } else if command.starts_with("QUIT") {
            write.write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            write.write_all(b"502 not implemented\r\n").await?;
        }
    }
}
