//! Every JetStream stream (docs/ARCHITECTURE.md#streams), declared here and nowhere else, and durable consumers.
//!
//! Each service declares the streams at start (create or update, idempotent, racing replicas welcome), so
//! a fresh NATS cluster needs no separate setup job; `deploy/` documents the same settings for operators.
//! Consumers use one filter subject each: Debian's NATS server is 2.9, which has no multi-filter consumers.

use std::time::Duration;

use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy, pull};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context};

use crate::config::CommonConfig;

use followup_proto::subjects::Stream;

pub const CLINIC: &str = Stream::Clinic.name();
pub const FOLLOWUP: &str = Stream::Followup.name();
pub const BEACONS: &str = Stream::Beacons.name();
pub const DEADLETTER: &str = Stream::Deadletter.name();

#[derive(Debug, thiserror::Error)]
pub enum JetStreamError {
    #[error("NATS unreachable after {waited:?}: {reason}")]
    Unreachable { waited: Duration, reason: String },
    #[error("declaring stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
    #[error("declaring consumer {consumer} on {stream}: {reason}")]
    Consumer {
        stream: String,
        consumer: String,
        reason: String,
    },
}

/// A stream and why it is set the way it is.
#[derive(Clone, Debug)]
pub struct StreamSpec {
    /// Its name and subjects come from the contract table.
    pub stream: Stream,
    /// How long messages are kept. Long enough for a backtest over a month of history and for a consumer
    /// that was down for days to catch up.
    pub max_age: Duration,
    /// Window in which JetStream drops a publish whose `Nats-Msg-Id` it has seen. It holds every id of the
    /// window in memory, so it is sized by traffic: at 55k msg/s a 2-minute window cost 2.6 GB.
    pub duplicate_window: Duration,
    pub max_bytes: i64,
}

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// The streams of docs/ARCHITECTURE.md#streams.
pub fn streams() -> [StreamSpec; 4] {
    [
        StreamSpec {
            stream: Stream::Clinic,
            max_age: 30 * DAY,
            // Clinic systems retry within seconds to minutes; their rate is low.
            duplicate_window: Duration::from_secs(10 * 60),
            max_bytes: -1,
        },
        StreamSpec {
            stream: Stream::Followup,
            max_age: 30 * DAY,
            // An outbox relay that crashed after publishing republishes on restart, within this window.
            // Past it the consumers' inboxes still drop the duplicate.
            duplicate_window: Duration::from_secs(10 * 60),
            max_bytes: -1,
        },
        StreamSpec {
            stream: Stream::Beacons,
            // Beacons are folded into facts within seconds; a week covers a long aggregator outage.
            max_age: 7 * DAY,
            // The highest-rate stream: a browser retries a beacon within seconds, so keep the window short.
            duplicate_window: Duration::from_secs(30),
            max_bytes: -1,
        },
        StreamSpec {
            stream: Stream::Deadletter,
            // Operators need time to look at a poison message and replay or discard it.
            max_age: 90 * DAY,
            duplicate_window: Duration::from_secs(10 * 60),
            max_bytes: -1,
        },
    ]
}

/// The dead-letter subject for messages of a stream (by name): `deadletter.clinic`, `deadletter.followup`, ….
pub fn deadletter_subject(stream: &str) -> String {
    match Stream::ALL.into_iter().find(|s| s.name() == stream) {
        Some(stream) => stream.deadletter_subject(),
        None => format!("deadletter.{}", stream.to_lowercase()),
    }
}

/// Connects to NATS, retrying while it is not reachable yet.
pub async fn connect(
    config: &CommonConfig,
    client_name: &str,
) -> Result<async_nats::Client, JetStreamError> {
    let started = tokio::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        let options = authenticate(config)
            .await
            .map_err(|reason| JetStreamError::Unreachable {
                waited: started.elapsed(),
                reason,
            })?;
        // What the server refused (a bad credential, a permission) is logged, and named when the first
        // connection never comes.
        let last_error = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        let recorder = last_error.clone();
        let options = options
            .name(client_name)
            // Reconnect forever: an outage of the NATS server must not end the service; readiness shows it.
            .max_reconnects(None)
            .retry_on_initial_connect()
            .event_callback(move |event| {
                let recorder = recorder.clone();
                async move {
                    if let async_nats::Event::ServerError(err) = &event {
                        tracing::warn!(error = %err, "NATS server error");
                        if let Ok(mut last) = recorder.lock() {
                            *last = Some(err.to_string());
                        }
                    }
                }
            });
        // retry_on_initial_connect returns at once; wait for the first connection, bounded.
        match options.connect(config.nats_url.as_str()).await {
            Ok(client) => {
                let deadline = config.startup_timeout().saturating_sub(started.elapsed());
                let connected = tokio::time::timeout(deadline, async {
                    while client.connection_state() != async_nats::connection::State::Connected {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
                .await;
                return match connected {
                    Ok(()) => Ok(client),
                    Err(_) => Err(JetStreamError::Unreachable {
                        waited: started.elapsed(),
                        reason: match last_error.lock().ok().and_then(|last| last.clone()) {
                            Some(err) => format!(
                                "no connection to {}: the server said {err} (check \
                                 nats_credentials_file)",
                                config.nats_url
                            ),
                            None => format!("no connection to {}", config.nats_url),
                        },
                    }),
                };
            }
            Err(err) if started.elapsed() < config.startup_timeout() => {
                tracing::warn!(error = %err, "NATS not reachable yet, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(err) => {
                return Err(JetStreamError::Unreachable {
                    waited: started.elapsed(),
                    reason: err.to_string(),
                });
            }
        }
    }
}

/// Credentials and TLS of a connection, from the configuration.
///
/// An nkey seed file (what `followup nats-auth` makes) connects as that nkey user with the inbox prefix
/// the server lets only that user read (`nats_auth::inbox_prefix`); a `.creds` file (a user JWT and its
/// seed) is for an operator-mode cluster.
pub async fn authenticate(config: &CommonConfig) -> Result<async_nats::ConnectOptions, String> {
    let mut options = match &config.nats_credentials_file {
        None => async_nats::ConnectOptions::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("NATS credentials file {}: {e}", path.display()))?;
            if text.contains("BEGIN NATS USER JWT") {
                async_nats::ConnectOptions::new()
                    .credentials_file(path)
                    .await
                    .map_err(|e| format!("NATS credentials file {}: {e}", path.display()))?
            } else {
                crate::nats_auth::connect_options(path).map_err(|e| e.to_string())?
            }
        }
    };
    if let Some(ca) = &config.nats_tls_ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    Ok(options)
}

/// Creates or updates every stream. Safe to run from several services and replicas at once.
pub async fn ensure_streams(js: &Context, replicas: usize) -> Result<(), JetStreamError> {
    for spec in streams() {
        ensure_stream(js, &spec, replicas).await?;
    }
    Ok(())
}

async fn ensure_stream(
    js: &Context,
    spec: &StreamSpec,
    replicas: usize,
) -> Result<(), JetStreamError> {
    let config = stream::Config {
        name: spec.stream.name().to_string(),
        subjects: vec![spec.stream.subjects().to_string()],
        retention: RetentionPolicy::Limits,
        storage: StorageType::File,
        discard: DiscardPolicy::Old,
        max_age: spec.max_age,
        max_bytes: spec.max_bytes,
        duplicate_window: spec.duplicate_window,
        num_replicas: replicas,
        allow_direct: true,
        ..Default::default()
    };
    let mut last_error = String::new();
    // Another replica may create the stream between our update and create: try again.
    for _ in 0..5 {
        match js.create_or_update_stream(config.clone()).await {
            Ok(_) => return Ok(()),
            Err(err) => {
                last_error = err.to_string();
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    Err(JetStreamError::Stream {
        stream: spec.stream.name().to_string(),
        reason: last_error,
    })
}

/// A durable pull consumer: one filter subject, explicit acks.
#[derive(Clone, Debug)]
pub struct ConsumerSpec {
    pub stream: &'static str,
    /// Durable name, unique per stream: `<service>-<what>`, e.g. `cases-plans`.
    pub durable: String,
    /// One subject filter, e.g. `followup.*.plans.>`.
    pub filter_subject: String,
    /// How long a delivered message may stay unacknowledged before JetStream redelivers it.
    pub ack_wait: Duration,
    /// Upper bound of messages delivered and not yet acknowledged.
    pub max_ack_pending: i64,
}

impl ConsumerSpec {
    pub fn new(
        stream: &'static str,
        durable: impl Into<String>,
        filter_subject: impl Into<String>,
    ) -> Self {
        Self {
            stream,
            durable: durable.into(),
            filter_subject: filter_subject.into(),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 20_000,
        }
    }
}

/// Creates the durable consumer, or updates the settings an existing one allows to change. A change the
/// server refuses (e.g. the filter subject on NATS 2.9) keeps the existing consumer and says so, since
/// deleting it would lose its position.
pub async fn ensure_consumer(
    js: &Context,
    spec: &ConsumerSpec,
) -> Result<consumer::PullConsumer, JetStreamError> {
    let err = |reason: String| JetStreamError::Consumer {
        stream: spec.stream.to_string(),
        consumer: spec.durable.clone(),
        reason,
    };
    let stream = js
        .get_stream(spec.stream)
        .await
        .map_err(|e| err(e.to_string()))?;
    let config = pull::Config {
        durable_name: Some(spec.durable.clone()),
        filter_subject: spec.filter_subject.clone(),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::Explicit,
        ack_wait: spec.ack_wait,
        // Transient failures are retried with a nak delay for as long as they last; poison messages go to
        // the dead-letter subject, so nothing needs a delivery cap to unblock the stream.
        max_deliver: -1,
        max_ack_pending: spec.max_ack_pending,
        ..Default::default()
    };
    match stream.create_consumer(config).await {
        Ok(consumer) => Ok(consumer),
        Err(create_err) => match stream.get_consumer::<pull::Config>(&spec.durable).await {
            Ok(consumer) => {
                tracing::warn!(
                    consumer = %spec.durable,
                    error = %create_err,
                    "consumer exists with other settings the server would not change; using it as it is"
                );
                Ok(consumer)
            }
            Err(_) => Err(err(create_err.to_string())),
        },
    }
}

/// A JetStream context with the publish-ack timeout the outbox relay relies on.
pub fn context(client: async_nats::Client) -> Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .build(client)
}
