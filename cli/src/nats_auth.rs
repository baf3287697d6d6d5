//! `followup nats-auth`: the NATS users of a deployment (or of the dev stack) as nkey seed files, and the
//! server's `users.conf` rendered from them (permissions: `followup_platform::nats_auth`).

use std::path::PathBuf;

use followup_platform::nats_auth::{self, AuthDir, Identity};

#[derive(clap::Args)]
pub struct NatsAuthArgs {
    #[command(subcommand)]
    command: NatsAuthCommand,
}

#[derive(clap::Subcommand)]
enum NatsAuthCommand {
    /// Make the admin's and every service's seed file (existing ones are kept) and render users.conf.
    Init {
        /// The folder of seed files; keep it as secret as the Secrets made from it.
        #[arg(long, default_value = ".followup/nats-auth")]
        dir: PathBuf,
    },
    /// Make the credentials of a clinic integration: it may publish clinic.<tenant>.> and nothing else.
    Clinic {
        /// The clinic (tenant) the integration publishes for.
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = ".followup/nats-auth")]
        dir: PathBuf,
    },
    /// Render users.conf again from the seed files present (after deleting a clinic's, to revoke it).
    Config {
        #[arg(long, default_value = ".followup/nats-auth")]
        dir: PathBuf,
    },
}

pub fn run(args: NatsAuthArgs) -> anyhow::Result<()> {
    match args.command {
        NatsAuthCommand::Init { dir } => {
            let auth = AuthDir::create(&dir)?;
            for (identity, key) in auth.users()? {
                println!(
                    "{:<28} {}  {}",
                    identity.file_stem(),
                    key,
                    auth.seed_file(&identity).display()
                );
            }
            reload_hint(&auth);
        }
        NatsAuthCommand::Clinic { tenant, dir } => {
            let auth = AuthDir::create(&dir)?;
            let identity = Identity::Clinic(tenant.clone());
            let path = auth.ensure(&identity)?;
            let key = nats_auth::public_key(&nats_auth::read_seed(&path)?)?;
            let permissions = nats_auth::clinic_permissions(&tenant, &key)?;
            println!("clinic {tenant}: credentials in {}", path.display());
            println!("  give this file to the clinic's integration, and only to it");
            println!("  user (public nkey) {key}");
            println!("  may publish        {}", permissions.publish.join(", "));
            println!(
                "  inbox prefix       {} (set it in the client: its PubAcks arrive there)",
                nats_auth::inbox_prefix(&key)
            );
            reload_hint(&auth);
        }
        NatsAuthCommand::Config { dir } => {
            let auth = AuthDir { dir };
            auth.write_server_config()?;
            reload_hint(&auth);
        }
    }
    Ok(())
}

fn reload_hint(auth: &AuthDir) {
    // Rendered by every command: the server learns of new or removed users only from this file.
    if let Err(err) = auth.write_server_config() {
        eprintln!("rendering users.conf: {err}");
        return;
    }
    println!(
        "{} rendered: reload the NATS server to apply it (followup dev: kill -HUP <its pid>, printed \
         at start; Kubernetes: deploy/README.md, NATS users and permissions)",
        auth.server_config_file().display()
    );
}
