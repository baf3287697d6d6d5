//! A local SMS provider: the generic JSON API the notifications service speaks
//! (`POST {base_url}/messages` with `{to, from, body, reference}` and an `Idempotency-Key` header),
//! answering 200 with a provider id, the same id again for a key it has seen (as a provider that
//! honours idempotency keys does). It keeps every request it received, so a run can count requests per
//! key (a duplicate is a key requested twice) and per recipient.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use serde_json::json;
use tokio::sync::Notify;

/// One request the sink received.
#[derive(Clone, Debug)]
pub struct Received {
    /// The `Idempotency-Key` header: `<tenant>:<idempotency key>`.
    pub key: String,
    pub to: String,
    pub body: String,
    /// The notifications message id.
    pub reference: String,
    pub at: SystemTime,
    /// Whether this key had been requested before (a repeat: the provider answered with the first id).
    pub repeat: bool,
}

#[derive(Default)]
struct Inner {
    received: Vec<Received>,
    ids: HashMap<String, String>,
    by_to: HashMap<String, Vec<usize>>,
}

#[derive(Clone, Default)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    arrived: Arc<Notify>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the lists half-written (each push is one step).
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A running sink; it stops when dropped. Its [`SinkView`] (through `Deref`, or [`Sink::view`] for a
/// handle that other tasks keep) reads what it received.
pub struct Sink {
    addr: SocketAddr,
    view: SinkView,
    task: tokio::task::JoinHandle<()>,
}

/// What the sink received, readable from any task.
#[derive(Clone)]
pub struct SinkView {
    shared: Shared,
}

impl std::ops::Deref for Sink {
    type Target = SinkView;
    fn deref(&self) -> &SinkView {
        &self.view
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sink {
    /// Listens on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Shared::default();
        let router = Router::new()
            .route("/sms/messages", post(accept))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(Self {
            addr,
            view: SinkView { shared },
            task,
        })
    }

    /// The notifications service's `sms.base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/sms", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle on what the sink receives, for other tasks.
    pub fn view(&self) -> SinkView {
        self.view.clone()
    }
}

impl SinkView {
    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().received.clone()
    }

    /// Requests received since index `from` (for a reader that follows arrivals), and the next index.
    pub fn received_since(&self, from: usize) -> (Vec<Received>, usize) {
        let inner = self.shared.lock();
        let from = from.min(inner.received.len());
        (inner.received[from..].to_vec(), inner.received.len())
    }

    pub fn len(&self) -> usize {
        self.shared.lock().received.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Distinct idempotency keys received for a recipient.
    pub fn keys_to(&self, to: &str) -> Vec<String> {
        let inner = self.shared.lock();
        let mut keys: Vec<String> = inner
            .by_to
            .get(to)
            .map(|indexes| {
                indexes
                    .iter()
                    .filter_map(|i| inner.received.get(*i))
                    .map(|r| r.key.clone())
                    .collect()
            })
            .unwrap_or_default();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Resolves when another request arrives (or at once if one arrived since the last wake-up).
    pub async fn arrival(&self) {
        self.shared.arrived.notified().await;
    }
}

async fn accept(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let at = SystemTime::now();
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "the body is not JSON"})),
        );
    };
    let field = |name: &str| {
        json.get(name)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let to = field("to");
    let id = {
        let mut inner = shared.lock();
        let index = inner.received.len();
        let fresh_id = format!("sink-{index}");
        let (id, repeat) = match inner.ids.get(&key) {
            Some(id) if !key.is_empty() => (id.clone(), true),
            _ => {
                inner.ids.insert(key.clone(), fresh_id.clone());
                (fresh_id, false)
            }
        };
        inner.received.push(Received {
            key,
            to: to.clone(),
            body: field("body"),
            reference: field("reference"),
            at,
            repeat,
        });
        inner.by_to.entry(to).or_default().push(index);
        id
    };
    shared.arrived.notify_waiters();
    shared.arrived.notify_one();
    (StatusCode::OK, Json(json!({"id": id, "status": "queued"})))
}
