//! `node-agent get-secret`: the drop-in for the seed's `get_secret.py`, fast enough for boot paths.

use crate::cli::GetSecretArgs;
use crate::config::SecretRef;
use crate::privileges;
use crate::secrets::{self, SecretError, Source, Wanted};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum GetSecretError {
    #[error(
        "no AWS region: set AWS_REGION, or run on an EC2 instance whose metadata service answers"
    )]
    NoRegion,
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Owner(#[from] privileges::PrivilegeError),
    #[error(transparent)]
    Stdout(#[from] crate::out::StdoutError),
}

pub async fn run(args: &GetSecretArgs) -> Result<(), GetSecretError> {
    // The SDK's region chain: AWS_REGION, the profile, then IMDS.
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    if conf.region().is_none() {
        return Err(GetSecretError::NoRegion);
    }
    let source = Source::Aws(aws_sdk_secretsmanager::Client::new(&conf));
    let reference = SecretRef {
        name: args.name.clone(),
        field: args.field.clone(),
    };
    let fetched = source
        .fetch(
            &reference,
            "",
            Wanted::Stage(&args.version_stage),
            Duration::from_secs(args.timeout),
        )
        .await?;
    match &args.out {
        Some(path) => {
            let owner = args.owner.as_deref().map(privileges::resolve).transpose()?;
            secrets::write_file_as(path, fetched.value.expose(), args.mode, owner)?;
        }
        None => {
            // Straight from the zeroizing buffer; a reader gone early (EPIPE) ends quietly.
            crate::out::print(fetched.value.expose())?;
        }
    }
    Ok(())
}
