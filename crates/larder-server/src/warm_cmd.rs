//! `larder warm ENTITY --config FILE`: fill an entity's cache before traffic
//! arrives, with a progress bar.
//!
//! Builds only the named entity (no listener) and runs the library's
//! `warm_all`, which leases, loads and fills batches under the same fill
//! rule as every read, so a warm-up never overwrites a newer write.

use anyhow::{bail, Result};
use indicatif::{ProgressBar, ProgressStyle};
use larder_server::config::Config;
use larder_server::serve;
use std::path::PathBuf;
use std::time::Instant;

/// Options of `larder warm`.
#[derive(Debug, clap::Args)]
pub(crate) struct WarmArgs {
    /// The entity to warm.
    entity: String,
    /// The config file (TOML).
    #[arg(long, env = "LARDER_CONFIG")]
    config: PathBuf,
    /// Rows per batch.
    #[arg(long, default_value_t = larder::WARM_BATCH)]
    batch: usize,
}

pub(crate) async fn run(args: WarmArgs) -> Result<()> {
    let mut config = Config::load(&args.config)?;
    let Some(i) = config.entity.iter().position(|e| e.name == args.entity) else {
        bail!(
            "no entity `{}` in {} (entities: {})",
            args.entity,
            args.config.display(),
            config
                .entity
                .iter()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    config.entity = vec![config.entity.swap_remove(i)];
    let state = serve::start(config).await?;
    let Some(entity) = state.entity(&args.entity) else {
        bail!("entity `{}` was not built", args.entity);
    };
    let total = state.count_rows(entity).await;
    let bar = match total {
        Some(n) => ProgressBar::new(n).with_style(ProgressStyle::with_template(
            "{spinner} {bar:40} {pos}/{len} rows ({per_sec}, {eta} left) {msg}",
        )?),
        None => ProgressBar::new_spinner()
            .with_style(ProgressStyle::with_template("{spinner} {pos} rows {msg}")?),
    };
    let started = Instant::now();
    let done = entity
        .cache
        .warm_all(larder::WarmOptions::default().batch(args.batch), |p| {
            bar.set_position(p.done);
            bar.set_message(format!("{} written, {} skipped", p.written, p.skipped));
        })
        .await?;
    bar.finish_and_clear();
    println!(
        "warmed `{}`: {} rows, {} entries written, {} skipped (loading elsewhere or written since) in {:.1?}",
        args.entity,
        done.done,
        done.written,
        done.skipped,
        started.elapsed()
    );
    Ok(())
}
