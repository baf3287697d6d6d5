//! What every test needs once (feature `testkit`).
//!
//! - [`TestNats`]: a private `nats-server -js` on a random port with a temporary store, secured with the
//!   users and permissions of production (`nats_auth`), killed on drop;
//! - [`TestDb`]: a fresh database on the test PostgreSQL server, dropped on drop. The server is
//!   `FOLLOWUP_TEST_DATABASE_URL` (an admin URL, e.g. `postgres://postgres@127.0.0.1:5432/postgres`), which
//!   `scripts/test.sh` provides, starting a server when none runs;
//! - [`TestAuth`]: a key pair and tokens for any clinic and role;
//! - [`TestEnv`]: all three, and the configuration sources that point a service at them on port 0.

use std::time::Duration;

use prost::{Message, Name};
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;

use crate::auth::{Claims, KeyPair, Role, Signer};
use crate::config::Sources;
use crate::local::LocalNats;
use crate::nats_auth::{AuthDir, Identity};
use crate::service::{ServiceConfig, ServiceInfo};

pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The admin URL of the PostgreSQL server tests create their databases on.
pub fn admin_database_url() -> String {
    std::env::var("FOLLOWUP_TEST_DATABASE_URL")
        .unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_string())
}

/// A private NATS server with JetStream, for one test (or one test binary), secured as production is:
/// only the users of [`crate::nats_auth`] may connect, each with its permissions. Services started from
/// [`TestEnv::sources`] connect as themselves; [`TestNats::client`] is the admin; [`TestEnv::publish`]
/// publishes as the subject's producer (the clinic integration of its tenant, or the service).
pub struct TestNats {
    server: LocalNats,
    auth: AuthDir,
    /// Clinic users are added on first use: one reload of the server at a time.
    clinics: tokio::sync::Mutex<std::collections::HashSet<String>>,
    clients: tokio::sync::Mutex<std::collections::HashMap<Identity, async_nats::Client>>,
    _dir: tempfile::TempDir,
}

impl TestNats {
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("followup-nats-")
            .tempdir()
            .expect("temporary NATS store");
        let auth = AuthDir::create(&dir.path().join("auth")).expect("NATS users for the test");
        let server = LocalNats::start_with_config(
            &dir.path().join("store"),
            None,
            &auth.server_config_file(),
        )
        .await
        .expect("private nats-server starts");
        Self {
            server,
            auth,
            clinics: Default::default(),
            clients: Default::default(),
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The folder of every user's seed file: `nats_credentials_dir` of a service under test.
    pub fn credentials_dir(&self) -> &std::path::Path {
        &self.auth.dir
    }

    /// The seed file of the admin or a service (`FOLLOWUP_<SERVICE>__NATS_CREDENTIALS_FILE` of a
    /// service run as a process).
    pub fn credentials(&self, identity: &Identity) -> std::path::PathBuf {
        self.auth.seed_file(identity)
    }

    /// The seed file of `tenant`'s clinic integration, made (and the server reloaded) on first use.
    pub async fn clinic_credentials(&self, tenant: &str) -> std::path::PathBuf {
        let identity = Identity::Clinic(tenant.to_string());
        let mut known = self.clinics.lock().await;
        let path = self
            .auth
            .ensure(&identity)
            .expect("a clinic seed file for a valid tenant");
        if known.insert(tenant.to_string()) {
            self.auth
                .write_server_config()
                .expect("users.conf rendered");
            self.server.reload().expect("nats-server reloads");
            // The reload is asynchronous: the new user may connect once it is done.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                match self.try_connect(&path).await {
                    Ok(client) => {
                        drop(client);
                        break;
                    }
                    Err(err) if tokio::time::Instant::now() < deadline => {
                        tracing::debug!(error = %err, "clinic user not accepted yet");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    Err(err) => {
                        panic!("nats-server did not accept clinic {tenant} after reload: {err}")
                    }
                }
            }
        }
        path
    }

    async fn try_connect(&self, seed_file: &std::path::Path) -> Result<async_nats::Client, String> {
        crate::nats_auth::connect_options(seed_file)
            .map_err(|e| e.to_string())?
            .connect(self.url())
            .await
            .map_err(|e| e.to_string())
    }

    /// A connection as the user of a seed file (its inbox prefix set).
    pub async fn connect_as(&self, seed_file: &std::path::Path) -> async_nats::Client {
        self.try_connect(seed_file)
            .await
            .unwrap_or_else(|e| panic!("connects as {}: {e}", seed_file.display()))
    }

    /// A connection (kept for the test's life) as `identity`; clinic users are made on first use.
    pub async fn client_as(&self, identity: &Identity) -> async_nats::Client {
        if let Some(client) = self.clients.lock().await.get(identity) {
            return client.clone();
        }
        let path = match identity {
            Identity::Clinic(tenant) => self.clinic_credentials(tenant).await,
            other => self.credentials(other),
        };
        let client = self.connect_as(&path).await;
        self.clients
            .lock()
            .await
            .insert(identity.clone(), client.clone());
        client
    }

    /// An admin connection: every permission (inspecting streams, subscribing anywhere).
    pub async fn client(&self) -> async_nats::Client {
        self.connect_as(&self.credentials(&Identity::Admin)).await
    }

    /// JetStream as the admin.
    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        crate::jetstream::context(self.client().await)
    }

    /// JetStream as whoever produces `subject`: the clinic integration of `clinic.<tenant>.…`, the
    /// service of `followup.<tenant>.<service>.…`, engagement for `beacons.…`, else the admin.
    pub async fn jetstream_for(&self, subject: &str) -> async_nats::jetstream::Context {
        crate::jetstream::context(self.client_as(&producer(subject)).await)
    }

    /// The server's process id (fault tests kill it).
    pub fn pid(&self) -> u32 {
        self.server.pid()
    }

    /// The server's log: permission violations are written there.
    pub fn log_path(&self) -> &std::path::Path {
        self.server.log_path()
    }
}

/// Who publishes on `subject` in production.
pub fn producer(subject: &str) -> Identity {
    let tokens: Vec<&str> = subject.split('.').collect();
    match tokens.as_slice() {
        ["clinic", tenant, _, ..] if followup_proto::subjects::validate_tenant(tenant).is_ok() => {
            Identity::Clinic((*tenant).to_string())
        }
        ["followup", _, service, _, ..] if crate::nats_auth::service(service).is_some() => {
            Identity::Service((*service).to_string())
        }
        ["beacons", ..] => Identity::Service("engagement".into()),
        _ => Identity::Admin,
    }
}

/// A fresh database, dropped (with its connections) when the value is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl TestDb {
    pub async fn create() -> Self {
        let admin_url = admin_database_url();
        let name = format!("followup_test_{}", uuid::Uuid::now_v7().simple());
        crate::db::create_database_if_missing(&admin_url, &name).await.unwrap_or_else(|e| {
            panic!(
                "cannot create a test database on {admin_url}: {e}\n\
                 run the tests through scripts/test.sh, which starts PostgreSQL when none is running, \
                 or set FOLLOWUP_TEST_DATABASE_URL"
            )
        });
        let options: PgConnectOptions = admin_url.parse().expect("admin URL parses");
        let url = options.database(&name).to_url_lossy().to_string();
        Self {
            name,
            url,
            admin_url,
        }
    }

    pub async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.url)
            .await
            .expect("connects to the test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        // Drop runs inside the test's runtime, which cannot be blocked on: use a thread with its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut conn = admin_url
                    .parse::<PgConnectOptions>()
                    .ok()?
                    .connect()
                    .await
                    .ok()?;
                let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        });
        let _ = dropped.join();
    }
}

/// Keys and tokens for tests.
pub struct TestAuth {
    pub keys: KeyPair,
    signer: Signer,
}

impl Default for TestAuth {
    fn default() -> Self {
        Self::new()
    }
}

impl TestAuth {
    pub fn new() -> Self {
        let keys = KeyPair::generate().expect("Ed25519 key pair");
        let signer = Signer::from_pem(&keys.private_pem).expect("signer from a fresh key");
        Self { keys, signer }
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// A valid token for a staff member `staff-<role>` of `tenant`.
    pub fn token(&self, tenant: &str, role: Role) -> String {
        self.token_for(tenant, &format!("staff-{role}"), role)
    }

    pub fn token_for(&self, tenant: &str, sub: &str, role: Role) -> String {
        self.signer
            .staff_token(tenant, sub, role, "followup", Duration::from_secs(3600))
            .expect("token")
    }

    /// A token that expired a minute ago.
    pub fn expired_token(&self, tenant: &str, role: Role) -> String {
        let now = jsonwebtoken::get_current_timestamp();
        self.signer
            .sign(&Claims {
                tenant: tenant.into(),
                sub: format!("staff-{role}"),
                role,
                aud: "followup".into(),
                iat: now - 3600,
                exp: now - 60,
                iss: None,
            })
            .expect("token")
    }
}

/// A request carrying `authorization: Bearer <token>`.
pub fn authed<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {token}")
        .parse()
        .expect("a JWT is valid metadata");
    request.metadata_mut().insert("authorization", value);
    request
}

/// A private NATS server, a fresh database and keys: everything a service test starts from.
pub struct TestEnv {
    pub nats: TestNats,
    pub db: TestDb,
    pub auth: TestAuth,
}

impl TestEnv {
    pub async fn start() -> Self {
        let (nats, db) = tokio::join!(TestNats::start(), TestDb::create());
        Self {
            nats,
            db,
            auth: TestAuth::new(),
        }
    }

    /// Configuration layers pointing a service at this environment, on free ports, ignoring the
    /// process environment.
    pub fn sources(&self) -> Sources {
        Sources::overrides_only()
            .set("database_url", &self.db.url)
            .set("database_max_connections", 8)
            .set("nats_url", self.nats.url())
            .set("nats_credentials_dir", self.nats.credentials_dir())
            .set("grpc_addr", "127.0.0.1:0")
            .set("admin_addr", "127.0.0.1:0")
            .set(
                "auth.jwt_public_keys",
                vec![self.auth.keys.public_pem.clone()],
            )
            .set("startup_timeout_secs", 20)
            .set("shutdown_grace_secs", 10)
            .set("outbox.poll_interval_ms", 200)
    }

    pub fn config<S>(&self, info: &ServiceInfo, defaults: S) -> ServiceConfig<S>
    where
        S: serde::Serialize + serde::de::DeserializeOwned,
    {
        ServiceConfig::load(info, defaults, self.sources()).expect("test configuration is valid")
    }

    /// Publishes an event as its producer would (the clinic integration of the subject's tenant, or the
    /// service whose subject it is: [`TestNats::jetstream_for`]): protobuf, `Nats-Msg-Id` = its event
    /// id, awaiting the PubAck. `subject` must carry the event's tenant.
    pub async fn publish<M: Message + Name>(&self, subject: &str, message: &M) {
        let event =
            crate::event::OutgoingEvent::new("test", subject, message).expect("a valid event");
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in &event.headers {
            headers.insert(name.as_str(), value.as_str());
        }
        let js = self.nats.jetstream_for(subject).await;
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(event.payload.into())
            .headers(headers)
            .message_id(event.event_id.to_string());
        js.send_publish(subject.to_string(), publish)
            .await
            .expect("publish sent")
            .await
            .expect("publish acknowledged");
    }
}
