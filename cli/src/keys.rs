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
        let private_pem = std::fs::read_to_string(&private)
            .with_context(|| format!("reading {}", private.display()))?;
        // A folder made before the keys were written as v1: the same key, rewritten once.
        let v1 =
            pkcs8_v1(&private_pem).with_context(|| format!("reading {}", private.display()))?;
        if v1 != private_pem {
            write_private(&private, &v1)?;
        }
        return Ok(KeyPair {
            private_pem: v1,
            public_pem: std::fs::read_to_string(&public)
                .with_context(|| format!("reading {}", public.display()))?,
        });
    }
    let mut pair = KeyPair::generate()?;
    pair.private_pem = pkcs8_v1(&pair.private_pem)?;
    write_private(&private, &pair.private_pem)?;
    std::fs::write(&public, &pair.public_pem)
        .with_context(|| format!("writing {}", public.display()))?;
    Ok(pair)
}

/// The Ed25519 private key of `pem` as PKCS#8 v1 (RFC 5208: the key alone). ed25519-dalek writes v2
/// (RFC 5958, with the public key too), which OpenSSL 3.0 and Python's `cryptography` refuse to load;
/// every reader, ours included, takes v1.
fn pkcs8_v1(pem: &str) -> anyhow::Result<String> {
    use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, KeypairBytes};
    let key = ed25519_dalek::SigningKey::from_pkcs8_pem(pem)
        .map_err(|e| anyhow::anyhow!("not an Ed25519 private key in PKCS#8 PEM: {e}"))?;
    let v1 = KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    };
    let pem = v1
        .to_pkcs8_pem(ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF)
        .map_err(|e| anyhow::anyhow!("encoding a private key: {e}"))?;
    Ok(pem.to_string())
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

    /// OpenSSL (and so Python's `cryptography`, which links it) must read the dev keys: integrators sign
    /// and check tokens with them outside Rust. Skipped, saying so, where `openssl` is not installed.
    #[test]
    fn openssl_loads_the_dev_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = DevKeys::load_or_create(dir.path()).expect("keys");
        if std::process::Command::new("openssl")
            .arg("version")
            .output()
            .is_err()
        {
            println!(
                "skipped: `openssl` is not installed, so the dev keys cannot be checked with it"
            );
            return;
        }
        for name in ["staff", "portal"] {
            let private = dir.path().join("keys").join(format!("{name}.pem"));
            let out = std::process::Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(&private)
                .output()
                .expect("openssl runs");
            assert!(
                out.status.success(),
                "openssl pkey cannot load {name}.pem: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // OpenSSL derives the same public key the services verify with.
            let public =
                std::fs::read_to_string(dir.path().join("keys").join(format!("{name}.pub.pem")))
                    .expect("public key");
            assert_eq!(String::from_utf8_lossy(&out.stdout), public, "{name}");
        }
        // And the keys still sign tokens the platform verifies.
        let token = keys
            .token(
                DEV_TENANT,
                "dev-owner",
                Role::Owner,
                Duration::from_secs(60),
            )
            .expect("token");
        let verifier = followup_platform::auth::Verifier::from_config(
            &followup_platform::config::AuthConfig {
                jwt_public_keys: vec![keys.staff.public_pem.clone()],
                jwt_public_key_files: vec![],
                jwt_audience: AUDIENCE.into(),
                jwt_issuer: None,
                leeway_secs: 0,
                max_token_lifetime_secs: DEFAULT_MAX_TOKEN_LIFETIME.as_secs(),
            },
        )
        .expect("verifier");
        assert_eq!(
            verifier.verify(&token).expect("verifies").tenant,
            DEV_TENANT
        );
    }

    /// Keys written before (PKCS#8 v2) are rewritten as v1 on load: the same key, so tokens already printed
    /// keep working.
    #[test]
    fn older_dev_keys_are_rewritten_as_the_same_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys_dir = dir.path().join("keys");
        std::fs::create_dir_all(&keys_dir).expect("dir");
        let old = KeyPair::generate().expect("pair");
        std::fs::write(keys_dir.join("staff.pem"), &old.private_pem).expect("write");
        std::fs::write(keys_dir.join("staff.pub.pem"), &old.public_pem).expect("write");
        let loaded = DevKeys::load_or_create(dir.path()).expect("keys");
        assert_eq!(loaded.staff.public_pem, old.public_pem);
        let token = loaded
            .token(
                DEV_TENANT,
                "dev-owner",
                Role::Owner,
                Duration::from_secs(60),
            )
            .expect("token");
        let verifier = followup_platform::auth::Verifier::from_config(
            &followup_platform::config::AuthConfig {
                jwt_public_keys: vec![old.public_pem.clone()],
                jwt_public_key_files: vec![],
                jwt_audience: AUDIENCE.into(),
                jwt_issuer: None,
                leeway_secs: 0,
                max_token_lifetime_secs: DEFAULT_MAX_TOKEN_LIFETIME.as_secs(),
            },
        )
        .expect("verifier");
        assert!(verifier.verify(&token).is_ok());
        let on_disk = std::fs::read_to_string(keys_dir.join("staff.pem")).expect("read");
        assert_eq!(on_disk, loaded.staff.private_pem);
        assert_eq!(pkcs8_v1(&on_disk).expect("v1"), on_disk, "already v1");
    }

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
