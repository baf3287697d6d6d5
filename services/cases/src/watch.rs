//! Live changes for WatchCases, across replicas: every commit that changes cases NOTIFYs
//! `followup_cases`; each replica LISTENs once and fans the changes out to its streams.

use std::time::Duration;

use followup_platform::shutdown::Shutdown;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::storage::WATCH_CHANNEL;

/// What a change did to a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Created,
    Updated,
    Activity,
}

/// One change, or word that changes may have been missed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Case {
        tenant_id: String,
        case_id: Uuid,
        kind: ChangeKind,
        entry_id: Option<Uuid>,
    },
    /// The listening connection broke: streams end with UNAVAILABLE so clients re-list.
    Lost,
}

/// Parses a NOTIFY payload `tenant\tcase\tkind\tentry`.
pub fn parse(payload: &str) -> Option<Change> {
    let mut parts = payload.split('\t');
    let tenant_id = parts.next()?.to_string();
    let case_id = Uuid::parse_str(parts.next()?).ok()?;
    let kind = match parts.next()? {
        "created" => ChangeKind::Created,
        "updated" => ChangeKind::Updated,
        _ => ChangeKind::Activity,
    };
    let entry_id = parts.next().and_then(|e| Uuid::parse_str(e).ok());
    Some(Change::Case {
        tenant_id,
        case_id,
        kind,
        entry_id,
    })
}

/// The replica's fan-out point.
#[derive(Clone)]
pub struct WatchHub {
    sender: broadcast::Sender<Change>,
}

impl WatchHub {
    pub fn new(buffer: usize) -> Self {
        let (sender, _) = broadcast::channel(buffer.max(16));
        Self { sender }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.sender.subscribe()
    }

    fn publish(&self, change: Change) {
        // No subscribers is fine: nobody is watching.
        let _ = self.sender.send(change);
    }

    /// LISTENs until shutdown, reconnecting after a broken connection.
    pub async fn listen(self, pool: PgPool, shutdown: Shutdown) {
        while !shutdown.is_triggered() {
            let mut listener = match PgListener::connect_with(&pool).await {
                Ok(listener) => listener,
                Err(err) => {
                    tracing::warn!(error = %err, "watch listener cannot connect; retrying");
                    tokio::select! {
                        () = shutdown.triggered() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            if let Err(err) = listener.listen(WATCH_CHANNEL).await {
                tracing::warn!(error = %err, "LISTEN failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            loop {
                let received = tokio::select! {
                    () = shutdown.triggered() => return,
                    received = listener.try_recv() => received,
                };
                match received {
                    Ok(Some(notification)) => {
                        if let Some(change) = parse(notification.payload()) {
                            self.publish(change);
                        }
                    }
                    // The connection was lost; notifications sent meanwhile are gone.
                    Ok(None) => {
                        self.publish(Change::Lost);
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "watch listener failed; reconnecting");
                        self.publish(Change::Lost);
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        let case = Uuid::now_v7();
        let entry = Uuid::now_v7();
        assert_eq!(
            parse(&format!("clinic-a\t{case}\tupdated\t{entry}")),
            Some(Change::Case {
                tenant_id: "clinic-a".into(),
                case_id: case,
                kind: ChangeKind::Updated,
                entry_id: Some(entry),
            })
        );
        assert_eq!(
            parse(&format!("clinic-a\t{case}\tcreated\t")),
            Some(Change::Case {
                tenant_id: "clinic-a".into(),
                case_id: case,
                kind: ChangeKind::Created,
                entry_id: None,
            })
        );
        assert_eq!(parse("garbage"), None);
    }
}
