//! `gridvfs-server`: the store-side proxy. Runs as an ordinary user (under sshd, or spawned
//! by the client for `local:`), confined to one export directory.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gridvfs-server",
    version,
    about = "gridvfs proxy-server: serves one export directory over the gridvfs tunnel protocol"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Speak the protocol on stdin/stdout (what the client runs over SSH or a pipe).
    Serve {
        /// Use stdin/stdout (the only transport this command has; kept explicit for
        /// compatibility with `ssh host gridvfs-server serve --stdio`).
        #[arg(long)]
        stdio: bool,
        /// The directory to export; nothing outside it is reachable.
        #[arg(long)]
        export: PathBuf,
        /// Refuse every modifying request.
        #[arg(long)]
        read_only: bool,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "gridvfs=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Serve {
            stdio,
            export,
            read_only,
        } => {
            anyhow::ensure!(
                stdio,
                "only --stdio is supported: run `gridvfs-server serve --stdio --export DIR`"
            );
            // Modes from the client are applied exactly: no umask of ours in between.
            gridvfs::server::clear_umask();
            let exp = gridvfs::server::Export::open(&export, read_only)
                .with_context(|| format!("cannot open export directory {}", export.display()))?;
            // Room for every in-flight request plus stdin/stdout, which tokio also runs on
            // blocking threads.
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .max_blocking_threads(gridvfs::server::MAX_IN_FLIGHT + 8)
                .enable_all()
                .build()?;
            rt.block_on(gridvfs::server::serve(
                Arc::new(exp),
                tokio::io::stdin(),
                tokio::io::stdout(),
            ))
            .context("tunnel session failed")?;
            Ok(())
        }
    }
}
