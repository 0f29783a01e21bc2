//! `roompin-balancer token --config FILE --meeting M --user U --ttl 1h`:
//! mints a join token (HS256, signed with the first of `[auth]
//! hs256_secrets`) for operators and tests. A real deployment mints its
//! tokens in its own backend, with the same claims (docs/SECURITY.md).
//!
//! Binary-only: `main.rs` declares this module.

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

use roompin_shared::auth::{mint_hs256, now_secs, Claims};
use roompin_shared::config::BalancerConfig;
use roompin_shared::protocol::{check_user, MEETING_PARAM};
use roompin_shared::MeetingId;

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// The balancer TOML; its `[auth]` section has the secret.
    #[arg(long)]
    config: PathBuf,
    /// The meeting the token lets its holder join.
    #[arg(long)]
    meeting: String,
    /// The user (`sub`): the name the holder appears under.
    #[arg(long)]
    user: String,
    /// How long the token is valid, e.g. `90s`, `15m`, `1h`, `7d`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
}

/// The token for `args`, as the CLI prints it.
pub fn mint(args: &TokenArgs) -> anyhow::Result<String> {
    let config = BalancerConfig::load(&args.config)?;
    let auth = config
        .auth
        .as_ref()
        .with_context(|| format!("{}: no [auth] section", args.config.display()))?;
    let secret = auth.hs256_secrets.first().with_context(|| {
        format!(
            "{}: [auth] has no hs256_secrets to sign with",
            args.config.display()
        )
    })?;
    let meeting = MeetingId::parse(&args.meeting, MEETING_PARAM).context("--meeting")?;
    check_user(&args.user).map_err(|e| anyhow::anyhow!("--user: {e}"))?;
    anyhow::ensure!(args.ttl.as_secs() > 0, "--ttl must be at least 1s");
    let now = now_secs();
    let claims = Claims {
        sub: args.user.clone(),
        meeting_id: meeting.to_string(),
        exp: now.saturating_add(args.ttl.as_secs()),
        nbf: None,
        iat: Some(now),
        iss: auth.issuer.clone(),
        aud: auth.audience.clone(),
    };
    Ok(mint_hs256(secret, &claims)?)
}

pub fn run(args: &TokenArgs) -> anyhow::Result<()> {
    println!("{}", mint(args)?);
    Ok(())
}
