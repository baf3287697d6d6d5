//! What every admin command shares: who it calls as, where the dev stack's NATS is, how errors read.
//!
//! Each service's command module flattens [`Access`] into its arguments, so `--token`, `--tenant`,
//! `--staff`, `--role`, `--dir` and `--nats-url` mean the same everywhere, and with none of them a command
//! works against `followup dev` as the dev clinic's owner.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use followup_platform::auth::Role;
use followup_proto::subjects::Event;

use crate::keys::{DEV_TENANT, DevKeys};

#[derive(clap::Args, Clone, Debug)]
pub struct Access {
    /// A staff token; default: one for the dev clinic signed with the dev stack's key.
    #[arg(long, global = true, env = "FOLLOWUP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// The clinic (tenant) of the default token and of the events a command publishes.
    #[arg(long, global = true, default_value = DEV_TENANT)]
    pub tenant: String,
    /// The staff id (`sub`) of the default token.
    #[arg(long, global = true, default_value = "dev-owner")]
    pub staff: String,
    /// The role of the default token: owner, admin, dentist, front_desk or system.
    #[arg(long, global = true, default_value = "owner")]
    pub role: Role,
    /// The dev stack's folder: its keys sign the default token, its NATS port is found there.
    #[arg(long, global = true, default_value = ".followup")]
    pub dir: PathBuf,
    /// NATS, for commands that publish events as a clinic system would; default: NATS_URL, else the
    /// dev stack's private server.
    #[arg(long, global = true)]
    pub nats_url: Option<String>,
    /// The NATS nkey seed file to publish with (a clinic integration's, from `followup nats-auth
    /// clinic`); default: the dev stack's admin (`<dir>/nats-auth/admin.nk`) when there is one.
    #[arg(long, global = true)]
    pub nats_credentials: Option<PathBuf>,
}

impl Access {
    /// The token to call with: `--token`, else one signed with the dev keys (valid for an hour).
    pub fn token(&self) -> anyhow::Result<String> {
        match &self.token {
            Some(token) => Ok(token.clone()),
            None => DevKeys::load_or_create(&self.dir)?.token(
                &self.tenant,
                &self.staff,
                self.role,
                Duration::from_secs(3600),
            ),
        }
    }

    /// NATS: `--nats-url`, NATS_URL, or the port file the dev stack's private server writes.
    pub fn nats_url(&self) -> anyhow::Result<String> {
        dev_nats_url(self.nats_url.as_deref(), &self.dir)
    }

    /// Publishes an event as a clinic system would: protobuf on its subject, `Nats-Msg-Id` = its
    /// event id, waiting for JetStream's acknowledgement.
    pub async fn publish<E: Event>(&self, event: &E) -> anyhow::Result<()> {
        let subject = event
            .subject()
            .map_err(|e| anyhow::anyhow!("cannot publish for this clinic: {e:?}"))?;
        self.publish_encoded(subject, event.event_id(), event.encode_to_vec())
            .await
    }

    /// Publishes an already encoded event on `subject` with `event_id` as its `Nats-Msg-Id`.
    pub async fn publish_encoded(
        &self,
        subject: String,
        event_id: &str,
        payload: Vec<u8>,
    ) -> anyhow::Result<()> {
        let url = self.nats_url()?;
        let client = connect_nats(&url, self.nats_credentials.as_deref(), &self.dir).await?;
        let js = async_nats::jetstream::new(client);
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .message_id(event_id);
        js.send_publish(subject.clone(), publish)
            .await
            .with_context(|| format!("publishing on {subject}"))?
            .await
            .with_context(|| {
                format!("no acknowledgement for {subject} (is the dev stack running?)")
            })?;
        Ok(())
    }
}

/// A NATS connection for a command: as the user of `credentials` (an nkey seed file), else as the dev
/// stack's admin when `dir` has one (the dev stack's NATS admits only its users), else anonymous.
pub async fn connect_nats(
    url: &str,
    credentials: Option<&Path>,
    dir: &Path,
) -> anyhow::Result<async_nats::Client> {
    let dev_admin = dir.join("nats-auth").join("admin.nk");
    let seed_file = credentials
        .map(Path::to_path_buf)
        .or_else(|| dev_admin.is_file().then_some(dev_admin));
    let options = match &seed_file {
        Some(path) => followup_platform::nats_auth::connect_options(path)?,
        None => async_nats::ConnectOptions::new(),
    };
    options
        .connect(url)
        .await
        .with_context(|| match &seed_file {
            Some(path) => format!("connecting to NATS at {url} as {}", path.display()),
            None => format!("connecting to NATS at {url} (no credentials: --nats-credentials)"),
        })
}

/// NATS for a command: the URL given, else NATS_URL, else the port file the dev stack's private
/// nats-server wrote under `dir`.
pub fn dev_nats_url(given: Option<&str>, dir: &Path) -> anyhow::Result<String> {
    if let Some(url) = given {
        return Ok(url.to_string());
    }
    if let Ok(url) = std::env::var("NATS_URL")
        && !url.is_empty()
    {
        return Ok(url);
    }
    let ports = dir.join("nats").join("ports");
    std::fs::read_dir(&ports)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "ports"))
        .find_map(|e| read_ports(&e.path()))
        .with_context(|| {
            format!(
                "no NATS URL: pass --nats-url, set NATS_URL, or run `followup dev` (it writes its port under {})",
                ports.display()
            )
        })
}

fn read_ports(path: &Path) -> Option<String> {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    json.get("nats")?
        .as_array()?
        .first()?
        .as_str()
        .map(str::to_string)
}

/// A request carrying `authorization: Bearer <token>`.
pub fn authed<T>(message: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .context("the token is not valid gRPC metadata")?,
    );
    Ok(request)
}

/// A gRPC error as a person reads it.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}
