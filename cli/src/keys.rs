//! The dev stack's keys: one pair signs staff tokens, one pair signs patients' portal links.
//!
//! They live in `<dir>/keys/` (default `.followup/keys/`), made on first use, so tokens printed yesterday
//! still work after a restart. Production keys come from Secrets, never from here.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use followup_platform::auth::{DEFAULT_MAX_TOKEN_LIFETIME, KeyPair, Role, Signer};

pub const DEV_TENANT: &str = "demo-clinic";
pub const AUDIENCE: &str = "followup";

pub struct DevKeys {
    pub staff: KeyPair,
    pub portal: KeyPair,
}

impl DevKeys {
    /// Loads the keys of a dev folder, making them the first time.
    pub fn load_or_create(dir: &Path) -> anyhow::Result<Self> {
        let keys = dir.join("keys");
        std::fs::create_dir_all(&keys).with_context(|| format!("creating {}", keys.display()))?;
        Ok(Self {
            staff: pair(&keys, "staff")?,
            portal: pair(&keys, "portal")?,
        })
    }

    pub fn signer(&self) -> anyhow::Result<Signer> {
        Ok(Signer::from_pem(&self.staff.private_pem)?)
    }

    pub fn token(
        &self,
        tenant: &str,
        sub: &str,
        role: Role,
        ttl: Duration,
    ) -> anyhow::Result<String> {
        // The services refuse longer tokens (auth.max_token_lifetime_secs, 24 h by default): a token
        // that cannot work is an error here, not a puzzling UNAUTHENTICATED later.
        let max = DEFAULT_MAX_TOKEN_LIFETIME;
        if ttl > max {
            anyhow::bail!(
                "a token may be valid for at most {} hours (the services' auth.max_token_lifetime_secs); asked for {} hours",
                max.as_secs() / 3600,
                ttl.as_secs().div_ceil(3600)
            );
        }
        Ok(self
            .signer()?
            .staff_token(tenant, sub, role, AUDIENCE, ttl)?)
    }
}

fn pair(dir: &Path, name: &str) -> anyhow::Result<KeyPair> {
    let private = dir.join(format!("{name}.pem"));
    let public = dir.join(format!("{name}.pub.pem"));
    if private.is_file() && public.is_file() {
        return Ok(KeyPair {
            private_pem: std::fs::read_to_string(&private)
                .with_context(|| format!("reading {}", private.display()))?,
            public_pem: std::fs::read_to_string(&public)
                .with_context(|| format!("reading {}", public.display()))?,
        });
    }
    let pair = KeyPair::generate()?;
    write_private(&private, &pair.private_pem)?;
    std::fs::write(&public, &pair.public_pem)
        .with_context(|| format!("writing {}", public.display()))?;
    Ok(pair)
}

fn write_private(path: &Path, pem: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    file.write_all(pem.as_bytes())?;
    Ok(())
}

#[derive(clap::Args)]
pub struct TokenArgs {
    /// The clinic (tenant) the token is for.
    #[arg(long, default_value = DEV_TENANT)]
    tenant: String,
    /// owner, admin, dentist, front_desk or system.
    #[arg(long, default_value = "owner")]
    role: Role,
    /// The staff id (`sub`).
    #[arg(long, default_value = "dev-owner")]
    sub: String,
    /// Hours the token is valid: at most 24, the services' default `auth.max_token_lifetime_secs`.
    #[arg(long, default_value_t = 24)]
    hours: u64,
    /// The dev stack's folder.
    #[arg(long, default_value = ".followup")]
    dir: PathBuf,
}

pub fn print_token(args: TokenArgs) -> anyhow::Result<()> {
    let keys = DevKeys::load_or_create(&args.dir)?;
    println!(
        "{}",
        keys.token(
            &args.tenant,
            &args.sub,
            args.role,
            Duration::from_secs(args.hours * 3600)
        )?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use followup_platform::auth::Verifier;
    use followup_platform::config::AuthConfig;

    #[test]
    fn tokens_stay_within_the_services_maximum_lifetime() {
        let dir = tempfile::tempdir().expect("dir");
        let keys = DevKeys::load_or_create(dir.path()).expect("keys");
        let verifier = Verifier::from_config(&AuthConfig {
            jwt_public_keys: vec![keys.staff.public_pem.clone()],
            jwt_public_key_files: vec![],
            jwt_audience: AUDIENCE.into(),
            jwt_issuer: None,
            leeway_secs: 30,
            max_token_lifetime_secs: DEFAULT_MAX_TOKEN_LIFETIME.as_secs(),
        })
        .expect("verifier");
        let day = keys
            .token(
                DEV_TENANT,
                "dev-owner",
                Role::Owner,
                Duration::from_secs(24 * 3600),
            )
            .expect("a day is allowed");
        assert!(verifier.verify(&day).is_ok(), "the default token verifies");
        let err = keys
            .token(
                DEV_TENANT,
                "dev-owner",
                Role::Owner,
                Duration::from_secs(25 * 3600),
            )
            .expect_err("longer than the maximum");
        assert!(err.to_string().contains("at most 24 hours"), "{err}");
    }
}
