//! `gridvfs-server`: the store-side proxy. Runs as an ordinary user (under sshd, or spawned
//! by the client for `local:`), confined to one export directory.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gridvfs-server",
    version = concat!(env!("CARGO_PKG_VERSION"), " (", env!("GRIDVFS_GIT_REV"), ")"),
    about = "gridvfs proxy-server: serves one export directory over the gridvfs tunnel protocol"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Policy {
    Whole,
    Blocks,
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
    /// Run an SSH server of our own (public keys only, each confined to an export by its
    /// authorized_keys line), for stores without an sshd account to use.
    Listen {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:2222")]
        addr: SocketAddr,
        /// The server's host key (OpenSSH format); an Ed25519 key is created if missing.
        #[arg(long)]
        host_key: PathBuf,
        /// Keys that may log in, one per line: `export="DIR"[,read-only] ssh-ed25519 AAAA…`
        /// (see `session-key`). Read again for every connection.
        #[arg(long)]
        authorized_keys: PathBuf,
    },
    /// Scan files and write a hint beside each (`.NAME.gvhint`): zero extents, fetch policy,
    /// block hashes. Clients use it while the file is unchanged.
    Hint {
        /// `whole`: fetch the whole file compressed on first touch (VM memory state);
        /// `blocks`: on demand with read-ahead (disk images).
        #[arg(long, value_enum, default_value = "blocks")]
        policy: Policy,
        /// The file will not change: clients never revalidate it.
        #[arg(long)]
        immutable: bool,
        /// Block size of the per-block hashes; a site cache tier (`--block-source`) is used
        /// by clients whose --block-size equals it (both default to 256 KiB).
        #[arg(long, default_value_t = 256 * 1024)]
        block_size: u32,
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Make a session key: a new key pair confined to one export (and to reading, with
    /// --read-only). Writes the private key to --out and adds its line to
    /// --authorized-keys (or prints the line).
    SessionKey {
        /// The export directory the key may reach.
        #[arg(long)]
        export: PathBuf,
        #[arg(long)]
        read_only: bool,
        /// Where to write the private key (created with mode 0600; never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// authorized_keys file to append the key's line to.
        #[arg(long)]
        authorized_keys: Option<PathBuf>,
        /// Comment stored in the key (e.g. the VM host it is for).
        #[arg(long, default_value = "gridvfs session key")]
        comment: String,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions { shell: clap_complete::Shell },
    /// Print the manual page (roff), e.g. `| gzip > /usr/local/share/man/man1/NAME.1.gz`.
    Man,
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
    gridvfs::process::raise_open_files_limit();
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
        Cmd::Listen {
            addr,
            host_key,
            authorized_keys,
        } => {
            gridvfs::server::clear_umask();
            let rt = tokio::runtime::Builder::new_multi_thread()
                .max_blocking_threads(512)
                .enable_all()
                .build()?;
            rt.block_on(gridvfs::server::listen::listen(
                gridvfs::server::listen::ListenConfig {
                    addr,
                    host_key,
                    authorized_keys,
                },
            ))
            .context("SSH listener failed")
        }
        Cmd::Hint {
            policy,
            immutable,
            block_size,
            paths,
        } => {
            let policy = match policy {
                Policy::Whole => gridvfs::proto::FetchPolicy::Whole,
                Policy::Blocks => gridvfs::proto::FetchPolicy::Blocks,
            };
            let mut failed = 0;
            for p in &paths {
                let t = std::time::Instant::now();
                match gridvfs::server::disk::write_hint(p, policy, immutable, block_size) {
                    Ok(h) => {
                        let zero: u64 = h.zero_extents.iter().map(|e| e.1).sum();
                        println!(
                            "{}: {:.1} MiB, {:.0}% zero in {} extents, {} block hashes ({:.1} s)",
                            p.display(),
                            h.size as f64 / 1048576.0,
                            100.0 * zero as f64 / h.size.max(1) as f64,
                            h.zero_extents.len(),
                            h.block_sums.len(),
                            t.elapsed().as_secs_f64()
                        );
                    }
                    Err(e) => {
                        eprintln!("{}: {e}", p.display());
                        failed += 1;
                    }
                }
            }
            anyhow::ensure!(failed == 0, "{failed} of {} files not hinted", paths.len());
            Ok(())
        }
        Cmd::SessionKey {
            export,
            read_only,
            out,
            authorized_keys,
            comment,
        } => {
            let (private, line) =
                gridvfs::server::keys::mint_session_key(&export, read_only, &comment)?;
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .with_context(|| format!("cannot create {}", out.display()))?
                .write_all(private.as_bytes())?;
            match authorized_keys {
                Some(ak) => {
                    let mut f = std::fs::OpenOptions::new()
                        .append(true)
                        .create(true)
                        .mode(0o600)
                        .open(&ak)
                        .with_context(|| format!("cannot open {}", ak.display()))?;
                    writeln!(f, "{line}")?;
                    eprintln!("added the key's line to {}", ak.display());
                }
                None => println!("{line}"),
            }
            eprintln!(
                "private key in {}: give it to the VM host, which connects with\n  gridvfs-client serve --remote ssh://HOST:PORT{} -i {}",
                out.display(),
                export.canonicalize()?.display(),
                out.display()
            );
            Ok(())
        }
        Cmd::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "gridvfs-server",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Cmd::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(())
        }
    }
}
