//! What every test needs once (feature `testkit`).
//!
//! - [`TestNats`]: a private `nats-server -js` on a random port with a temporary store, killed on drop;
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
use crate::service::{ServiceConfig, ServiceInfo};

pub const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The admin URL of the PostgreSQL server tests create their databases on.
pub fn admin_database_url() -> String {
    std::env::var("FOLLOWUP_TEST_DATABASE_URL")
        .unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_string())
}

/// A private NATS server with JetStream, for one test (or one test binary).
pub struct TestNats {
    server: LocalNats,
    _dir: tempfile::TempDir,
}

impl TestNats {
    pub async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("followup-nats-")
            .tempdir()
            .expect("temporary NATS store");
        let server = LocalNats::start(dir.path(), None)
            .await
            .expect("private nats-server starts");
        Self { server, _dir: dir }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connects to the private NATS server")
    }

    pub async fn jetstream(&self) -> async_nats::jetstream::Context {
        crate::jetstream::context(self.client().await)
    }

    /// The server's process id (fault tests kill it).
    pub fn pid(&self) -> u32 {
        self.server.pid()
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

    /// Publishes an event as a clinic system would: protobuf, `Nats-Msg-Id` = its event id, awaiting
    /// the PubAck. `subject` must carry the event's tenant.
    pub async fn publish<M: Message + Name>(&self, subject: &str, message: &M) {
        let event =
            crate::event::OutgoingEvent::new("test", subject, message).expect("a valid event");
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in &event.headers {
            headers.insert(name.as_str(), value.as_str());
        }
        let js = self.nats.jetstream().await;
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
