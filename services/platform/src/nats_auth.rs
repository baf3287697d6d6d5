//! Who may do what on NATS: one nkey user per service, one per clinic integration, one admin.
//!
//! The server runs with a static configuration (NATS 2.9, no operator/JWT machinery): an `authorization`
//! block listing each user's public nkey and its `publish` / `subscribe` allow lists. This module is the
//! one place those lists are written; `followup dev`, the test kit and `followup nats-auth` (which makes
//! the production files) all render the server configuration from it, so what the tests exercise is what
//! production runs. deploy/README.md shows the table in prose.
//!
//! - A **service** may publish its own events (`followup.*.<service>.>`, engagement also `beacons.>`),
//!   the dead letters of the streams it consumes, and exactly the JetStream API requests it makes: info,
//!   create and update of the streams every service declares, create/info/next of its own durable
//!   consumers (the filter is part of the create subject, so a durable cannot be pointed elsewhere) and
//!   the acks of those consumers. The scheduler's backtests also read CLINIC and FOLLOWUP through
//!   ephemeral ordered consumers.
//! - A **clinic integration** may publish `clinic.<its tenant>.>` and nothing else. A JetStream publish
//!   waits for its PubAck on a reply subject, so it may subscribe to its own inbox.
//! - Everyone subscribes only to `_INBOX.<its public nkey>.>`: replies (PubAcks, API answers, fetched
//!   messages) of one user cannot be read by another. Clients set that inbox prefix ([`inbox_prefix`]);
//!   [`crate::jetstream::connect`] does it for the services.
//! - The **admin** user (operators, tests, the dev tools) may do anything.
//!
//! Credentials are nkey seed files (`<user>.nk`, the seed alone, as `nats --nkey` and nats-py's
//! `nkeys_seed` read them); the server only ever holds public keys.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use followup_proto::subjects::{self, Stream};

/// One durable consumer of a service, as declared with [`crate::jetstream::ConsumerSpec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsumerGrant {
    pub stream: Stream,
    pub durable: &'static str,
    pub filter: &'static str,
}

/// What one service may do on NATS.
#[derive(Clone, Copy, Debug)]
pub struct ServiceGrant {
    pub service: &'static str,
    /// Subjects it publishes its events on.
    pub publishes: &'static [&'static str],
    /// Its durable consumers.
    pub consumers: &'static [ConsumerGrant],
    /// Streams it reads through ephemeral ordered consumers (the scheduler's backtests).
    pub replays: &'static [Stream],
}

const fn c(stream: Stream, durable: &'static str, filter: &'static str) -> ConsumerGrant {
    ConsumerGrant {
        stream,
        durable,
        filter,
    }
}

/// Every service's grant. A consumer a service declares must be listed here: [`crate::Platform::consume`]
/// refuses one that is not (the server would refuse it anyway, less clearly).
pub const SERVICES: [ServiceGrant; 5] = [
    ServiceGrant {
        service: "plans",
        publishes: &["followup.*.plans.>"],
        // Which option of an alternative group the patient took, as cases saw it.
        consumers: &[c(
            Stream::Followup,
            "plans-cases",
            "followup.*.cases.case_status_changed",
        )],
        replays: &[],
    },
    ServiceGrant {
        service: "cases",
        publishes: &["followup.*.cases.>"],
        consumers: &[
            c(Stream::Followup, "cases-plans", "followup.*.plans.>"),
            c(
                Stream::Followup,
                "cases-engagement",
                "followup.*.engagement.>",
            ),
            c(
                Stream::Followup,
                "cases-scheduler",
                "followup.*.scheduler.>",
            ),
            c(
                Stream::Followup,
                "cases-notifications",
                "followup.*.notifications.>",
            ),
            c(
                Stream::Clinic,
                "cases-appointments",
                "clinic.*.appointment.>",
            ),
            c(
                Stream::Clinic,
                "cases-patients",
                "clinic.*.patient.upserted",
            ),
            c(Stream::Clinic, "cases-staff", "clinic.*.staff.upserted"),
        ],
        replays: &[],
    },
    ServiceGrant {
        service: "engagement",
        publishes: &["followup.*.engagement.>", "beacons.>"],
        consumers: &[c(Stream::Beacons, "engagement-beacons", "beacons.*")],
        replays: &[],
    },
    ServiceGrant {
        service: "scheduler",
        publishes: &["followup.*.scheduler.>"],
        consumers: &[
            c(Stream::Clinic, "scheduler-clinic", "clinic.>"),
            c(Stream::Followup, "scheduler-plans", "followup.*.plans.>"),
            c(
                Stream::Followup,
                "scheduler-engagement",
                "followup.*.engagement.>",
            ),
            c(Stream::Followup, "scheduler-cases", "followup.*.cases.>"),
            c(
                Stream::Followup,
                "scheduler-notifications",
                "followup.*.notifications.>",
            ),
        ],
        replays: &[Stream::Clinic, Stream::Followup],
    },
    ServiceGrant {
        service: "notifications",
        publishes: &["followup.*.notifications.>"],
        consumers: &[
            c(Stream::Clinic, "notifications-clinic", "clinic.*.>"),
            c(
                Stream::Followup,
                "notifications-requests",
                "followup.*.scheduler.notification_requested",
            ),
            c(
                Stream::Followup,
                "notifications-approvals",
                "followup.*.plans.plan_approved",
            ),
            c(
                Stream::Followup,
                "notifications-digests",
                "followup.*.cases.owner_digest",
            ),
        ],
        replays: &[],
    },
];

/// The grant of a service, by name.
pub fn service(name: &str) -> Option<&'static ServiceGrant> {
    SERVICES.iter().find(|grant| grant.service == name)
}

/// The subjects a user may publish and subscribe to (NATS wildcards). `None` for the admin: anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// The prefix a user's replies arrive under: `_INBOX.<public nkey>`. The server lets only that user
/// subscribe there, so a user must connect with it as its inbox prefix.
pub fn inbox_prefix(public_key: &str) -> String {
    format!("_INBOX.{public_key}")
}

impl ServiceGrant {
    pub fn permissions(&self, public_key: &str) -> Permissions {
        let api = "$JS.API";
        let mut publish: Vec<String> = self.publishes.iter().map(|s| s.to_string()).collect();
        // Every service declares every stream at start (create or update, racing replicas welcome).
        for stream in Stream::ALL {
            for action in ["INFO", "CREATE", "UPDATE"] {
                publish.push(format!("{api}.STREAM.{action}.{}", stream.name()));
            }
        }
        let mut deadletters = Vec::new();
        for consumer in self.consumers {
            let (stream, durable) = (consumer.stream.name(), consumer.durable);
            // async-nats puts the filter in the create subject: the durable can only be made with it.
            publish.push(format!(
                "{api}.CONSUMER.CREATE.{stream}.{durable}.{}",
                consumer.filter
            ));
            publish.push(format!("{api}.CONSUMER.INFO.{stream}.{durable}"));
            publish.push(format!("{api}.CONSUMER.MSG.NEXT.{stream}.{durable}"));
            publish.push(format!("$JS.ACK.{stream}.{durable}.>"));
            let deadletter = consumer.stream.deadletter_subject();
            if !deadletters.contains(&deadletter) {
                deadletters.push(deadletter);
            }
        }
        publish.extend(deadletters);
        for stream in self.replays {
            let stream = stream.name();
            // Ordered consumers are ephemeral: created without a name (the server refuses a durable on
            // that subject), asked for their info (a server-made name, so any name: metadata only), and
            // they answer the server's flow control. Their delete after a gap may fail: they expire.
            publish.push(format!("{api}.CONSUMER.CREATE.{stream}"));
            publish.push(format!("{api}.CONSUMER.INFO.{stream}.*"));
            publish.push(format!("$JS.FC.{stream}.>"));
        }
        Permissions {
            publish,
            subscribe: vec![format!("{}.>", inbox_prefix(public_key))],
        }
    }
}

/// A clinic integration: its own tenant's clinic subjects, and its inbox for the PubAcks.
pub fn clinic_permissions(
    tenant: &str,
    public_key: &str,
) -> Result<Permissions, subjects::SubjectError> {
    Ok(Permissions {
        publish: vec![Stream::Clinic.tenant_filter(tenant)?],
        subscribe: vec![format!("{}.>", inbox_prefix(public_key))],
    })
}

/// Who a user is; it decides the user's permissions and the name of its seed file.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Identity {
    Admin,
    Service(String),
    Clinic(String),
}

impl Identity {
    /// The seed file's name without `.nk`: `admin`, `plans`, `clinic.<tenant>`.
    pub fn file_stem(&self) -> String {
        match self {
            Identity::Admin => "admin".into(),
            Identity::Service(name) => name.clone(),
            Identity::Clinic(tenant) => format!("clinic.{tenant}"),
        }
    }

    fn from_file_stem(stem: &str) -> Option<Self> {
        if stem == "admin" {
            Some(Identity::Admin)
        } else if let Some(tenant) = stem.strip_prefix("clinic.") {
            subjects::validate_tenant(tenant)
                .ok()
                .map(|()| Identity::Clinic(tenant.to_string()))
        } else {
            service(stem).map(|grant| Identity::Service(grant.service.to_string()))
        }
    }

    /// `None`: every permission (the admin).
    pub fn permissions(&self, public_key: &str) -> Result<Option<Permissions>, NatsAuthError> {
        match self {
            Identity::Admin => Ok(None),
            Identity::Service(name) => service(name)
                .map(|grant| Some(grant.permissions(public_key)))
                .ok_or_else(|| NatsAuthError::UnknownService(name.clone())),
            Identity::Clinic(tenant) => clinic_permissions(tenant, public_key)
                .map(Some)
                .map_err(|e| NatsAuthError::Tenant(e.to_string())),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NatsAuthError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{path}: not an nkey user seed (a file holding one line starting with SU)")]
    NotASeed { path: PathBuf },
    #[error("no NATS permissions are defined for a service named {0}")]
    UnknownService(String),
    #[error("clinic tenant: {0}")]
    Tenant(String),
    #[error("nkey: {0}")]
    Nkey(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> NatsAuthError {
    let context = context.into();
    move |source| NatsAuthError::Io { context, source }
}

/// Reads the nkey user seed of a seed file (surrounding whitespace ignored).
pub fn read_seed(path: &Path) -> Result<String, NatsAuthError> {
    let text = std::fs::read_to_string(path).map_err(io(format!("reading {}", path.display())))?;
    let seed = text.trim();
    if seed.starts_with("SU") && nkeys::KeyPair::from_seed(seed).is_ok() {
        Ok(seed.to_string())
    } else {
        Err(NatsAuthError::NotASeed {
            path: path.to_path_buf(),
        })
    }
}

/// The public key (`U…`) of a seed.
pub fn public_key(seed: &str) -> Result<String, NatsAuthError> {
    nkeys::KeyPair::from_seed(seed)
        .map(|pair| pair.public_key())
        .map_err(|e| NatsAuthError::Nkey(e.to_string()))
}

/// Connection options that authenticate as the nkey user of a seed file, with the inbox prefix the
/// server lets only that user read.
pub fn connect_options(seed_file: &Path) -> Result<async_nats::ConnectOptions, NatsAuthError> {
    let seed = read_seed(seed_file)?;
    let public_key = public_key(&seed)?;
    Ok(async_nats::ConnectOptions::new()
        .nkey(seed)
        .custom_inbox_prefix(inbox_prefix(&public_key)))
}

/// A folder of seed files, one per user (`admin.nk`, `<service>.nk`, `clinic.<tenant>.nk`), and the
/// server's `authorization` block rendered from them (`users.conf`). `followup dev`, the test kit and
/// `followup nats-auth` keep one each; production keeps it with the operator, as secret as the Secrets
/// made from it.
#[derive(Clone, Debug)]
pub struct AuthDir {
    pub dir: PathBuf,
}

impl AuthDir {
    /// The folder, with a seed for the admin and every service made where missing and `users.conf`
    /// rendered.
    pub fn create(dir: &Path) -> Result<Self, NatsAuthError> {
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let auth = Self {
            dir: dir.to_path_buf(),
        };
        auth.ensure(&Identity::Admin)?;
        for grant in SERVICES {
            auth.ensure(&Identity::Service(grant.service.to_string()))?;
        }
        auth.write_server_config()?;
        Ok(auth)
    }

    /// The seed file of a user.
    pub fn seed_file(&self, identity: &Identity) -> PathBuf {
        self.dir.join(format!("{}.nk", identity.file_stem()))
    }

    /// The server's `authorization` block, included by the server configuration.
    pub fn server_config_file(&self) -> PathBuf {
        self.dir.join("users.conf")
    }

    /// Makes the user's seed file unless it exists; returns its path. The server learns of a new user
    /// when `users.conf` is rendered again ([`Self::write_server_config`]) and reloaded.
    pub fn ensure(&self, identity: &Identity) -> Result<PathBuf, NatsAuthError> {
        if let Identity::Clinic(tenant) = identity {
            subjects::validate_tenant(tenant).map_err(|e| NatsAuthError::Tenant(e.to_string()))?;
        }
        let path = self.seed_file(identity);
        if path.is_file() {
            read_seed(&path)?;
            return Ok(path);
        }
        let seed = nkeys::KeyPair::new_user()
            .seed()
            .map_err(|e| NatsAuthError::Nkey(e.to_string()))?;
        write_private(&path, &seed)?;
        Ok(path)
    }

    /// Every user of the folder, by identity.
    pub fn users(&self) -> Result<BTreeMap<Identity, String>, NatsAuthError> {
        let mut users = BTreeMap::new();
        let entries =
            std::fs::read_dir(&self.dir).map_err(io(format!("reading {}", self.dir.display())))?;
        for entry in entries {
            let path = entry
                .map_err(io(format!("reading {}", self.dir.display())))?
                .path();
            if path.extension().is_none_or(|ext| ext != "nk") {
                continue;
            }
            let Some(identity) = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(Identity::from_file_stem)
            else {
                continue;
            };
            users.insert(identity, public_key(&read_seed(&path)?)?);
        }
        Ok(users)
    }

    /// Renders `users.conf` from the seed files present.
    pub fn write_server_config(&self) -> Result<PathBuf, NatsAuthError> {
        let text = render_authorization(&self.users()?)?;
        let path = self.server_config_file();
        std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))?;
        Ok(path)
    }
}

/// The `authorization { users = [...] }` block of a server configuration.
pub fn render_authorization(users: &BTreeMap<Identity, String>) -> Result<String, NatsAuthError> {
    let mut out = String::from(
        "# Made by followup (services/platform/src/nats_auth.rs): one nkey user per service, clinic\n\
         # integration and admin. Render it again rather than editing it.\n\
         authorization {\n  users = [\n",
    );
    for (identity, key) in users {
        let _ = writeln!(out, "    # {}", identity.file_stem());
        match identity.permissions(key)? {
            None => {
                let _ = writeln!(out, "    {{ nkey: {} }}", quote(key));
            }
            Some(permissions) => {
                let _ = writeln!(out, "    {{");
                let _ = writeln!(out, "      nkey: {}", quote(key));
                let _ = writeln!(out, "      permissions: {{");
                let _ = writeln!(
                    out,
                    "        publish: {{ allow: [{}] }}",
                    list(&permissions.publish)
                );
                let _ = writeln!(
                    out,
                    "        subscribe: {{ allow: [{}] }}",
                    list(&permissions.subscribe)
                );
                let _ = writeln!(out, "      }}");
                let _ = writeln!(out, "    }}");
            }
        }
    }
    out.push_str("  ]\n}\n");
    Ok(out)
}

/// Quoted, so `$JS…` is not read as a variable.
fn quote(subject: &str) -> String {
    format!("\"{subject}\"")
}

fn list(subjects: &[String]) -> String {
    subjects
        .iter()
        .map(|s| quote(s))
        .collect::<Vec<_>>()
        .join(", ")
}

fn write_private(path: &Path, text: &str) -> Result<(), NatsAuthError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("writing {}", path.display())))?;
    // No newline: nats-py's `nkeys_seed` reads the whole file as the seed.
    file.write_all(text.as_bytes())
        .map_err(io(format!("writing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_publish_only_their_own_events() {
        for grant in SERVICES {
            let own = format!("followup.*.{}.>", grant.service);
            for subject in grant.publishes {
                assert!(
                    *subject == own || (grant.service == "engagement" && *subject == "beacons.>"),
                    "{} publishes {subject}",
                    grant.service
                );
            }
            for consumer in grant.consumers {
                assert!(
                    consumer.durable.starts_with(&format!("{}-", grant.service)),
                    "{consumer:?}"
                );
            }
        }
    }

    #[test]
    fn a_clinic_publishes_only_its_tenant() {
        let permissions = clinic_permissions("acme", "UKEY").expect("a valid tenant");
        assert_eq!(permissions.publish, vec!["clinic.acme.>".to_string()]);
        assert_eq!(permissions.subscribe, vec!["_INBOX.UKEY.>".to_string()]);
        assert!(clinic_permissions("a.b", "UKEY").is_err());
        assert!(clinic_permissions("*", "UKEY").is_err());
    }

    #[test]
    fn a_folder_renders_every_user() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let auth = AuthDir::create(dir.path())?;
        auth.ensure(&Identity::Clinic("acme".into()))?;
        auth.write_server_config()?;
        let users = auth.users()?;
        assert_eq!(users.len(), 7, "{users:?}");
        let text = std::fs::read_to_string(auth.server_config_file())?;
        assert!(text.contains("\"clinic.acme.>\""), "{text}");
        assert!(
            text.contains("\"$JS.API.CONSUMER.MSG.NEXT.FOLLOWUP.cases-plans\""),
            "{text}"
        );
        // Seeds are kept, not remade.
        let before = std::fs::read_to_string(auth.seed_file(&Identity::Admin))?;
        AuthDir::create(dir.path())?;
        assert_eq!(
            before,
            std::fs::read_to_string(auth.seed_file(&Identity::Admin))?
        );
        assert!(!text.contains(&before), "the server config holds no seed");
        Ok(())
    }
}
