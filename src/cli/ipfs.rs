//! `ehr ipfs ...`: the local IPFS repository from the command line.
//!
//! Every command opens the repository offline (no listeners; the repository lock means a
//! running node's repository cannot be opened at the same time), does its work and closes it.
//! CIDs are printed as CIDv1 base32, exactly as `ipfs add --cid-version=1` prints them.

use std::ops::Range;
use std::path::PathBuf;

use anyhow::{Context, bail};
use ehr_storage::blockstore::{Blockstore, BlockstoreConfig, Cid};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

/// Where the repository lives: `--repo`, else `$EHR_DATA_DIR/ipfs`, else `./data/ipfs`.
#[derive(Debug, Clone, clap::Args)]
pub struct RepoArg {
    /// IPFS repository directory [default: $EHR_DATA_DIR/ipfs, or ./data/ipfs].
    #[arg(long, value_name = "DIR", env = "EHR_IPFS_REPO")]
    repo: Option<PathBuf>,
}

impl RepoArg {
    fn path(&self) -> PathBuf {
        if let Some(p) = &self.repo {
            return p.clone();
        }
        match std::env::var_os("EHR_DATA_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d).join("ipfs"),
            _ => PathBuf::from("data").join("ipfs"),
        }
    }
}

/// IPFS repository commands.
#[derive(Debug, clap::Subcommand)]
pub enum IpfsCmd {
    /// Add files (each as one UnixFS file, pinned) and print one CID per file, in order.
    Add {
        /// Only compute and print the CIDs; store nothing (no repository needed).
        #[arg(long, short = 'n')]
        only_hash: bool,
        /// Files to add.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        repo: RepoArg,
    },
    /// Write a file's bytes to stdout (every block is verified against its hash).
    Cat {
        /// The file's CID.
        cid: String,
        /// Only bytes START..END (end exclusive), fetching only the blocks needed.
        #[arg(long, value_name = "START..END")]
        range: Option<String>,
        #[command(flatten)]
        repo: RepoArg,
    },
    /// Pin a CID recursively (its whole DAG must be in the repository).
    Pin {
        /// The root CID.
        cid: String,
        #[command(flatten)]
        repo: RepoArg,
    },
    /// Remove a recursive pin (the blocks go at the next `gc`).
    Unpin {
        /// The root CID.
        cid: String,
        #[command(flatten)]
        repo: RepoArg,
    },
    /// List recursively pinned roots.
    Pins {
        #[command(flatten)]
        repo: RepoArg,
    },
    /// Remove every block not reachable from a pin; prints how many were removed.
    Gc {
        #[command(flatten)]
        repo: RepoArg,
    },
    /// Export a DAG as a CARv1 archive.
    Export {
        /// The root CID.
        cid: String,
        /// Output file (default: stdout).
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
        #[command(flatten)]
        repo: RepoArg,
    },
    /// Import a CAR archive and pin its roots; prints the roots.
    Import {
        /// The CAR file.
        file: PathBuf,
        #[command(flatten)]
        repo: RepoArg,
    },
    /// Check that every pinned DAG is complete; exits non-zero if not.
    Check {
        #[command(flatten)]
        repo: RepoArg,
    },
    /// Print the repository's peer id.
    Id {
        #[command(flatten)]
        repo: RepoArg,
    },
}

/// Runs an `ehr ipfs` command.
pub fn run(cmd: IpfsCmd) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(cmd))
}

fn parse_cid(text: &str) -> anyhow::Result<Cid> {
    Cid::try_from(text).with_context(|| format!("`{text}` is not a valid CID"))
}

fn parse_range(text: &str) -> anyhow::Result<Range<u64>> {
    let (a, b) = text
        .split_once("..")
        .with_context(|| format!("--range `{text}`: expected START..END"))?;
    let start = a
        .trim()
        .parse()
        .with_context(|| format!("--range `{text}`: bad START"))?;
    let end = b
        .trim()
        .parse()
        .with_context(|| format!("--range `{text}`: bad END"))?;
    if start > end {
        bail!("--range `{text}`: START is after END");
    }
    Ok(start..end)
}

async fn open(repo: &RepoArg) -> anyhow::Result<Blockstore> {
    let path = repo.path();
    let cfg = BlockstoreConfig {
        repo: path.clone(),
        listen: Vec::new(),
        ..Default::default()
    };
    Blockstore::open(cfg)
        .await
        .with_context(|| format!("opening the IPFS repository {}", path.display()))
}

async fn run_async(cmd: IpfsCmd) -> anyhow::Result<()> {
    let mut stdout = tokio::io::stdout();
    match cmd {
        IpfsCmd::Add {
            only_hash: true,
            files,
            ..
        } => {
            for f in files {
                let file = tokio::fs::File::open(&f)
                    .await
                    .with_context(|| format!("opening {}", f.display()))?;
                let cid = Blockstore::only_hash(file)
                    .await
                    .with_context(|| format!("hashing {}", f.display()))?;
                stdout.write_all(format!("{cid}\n").as_bytes()).await?;
            }
        }
        IpfsCmd::Add {
            only_hash: false,
            files,
            repo,
        } => {
            // open every file first so a typo fails before anything is stored
            let mut opened = Vec::with_capacity(files.len());
            for f in &files {
                opened.push(
                    tokio::fs::File::open(f)
                        .await
                        .with_context(|| format!("opening {}", f.display()))?,
                );
            }
            let store = open(&repo).await?;
            let mut result = Ok(());
            for (f, file) in files.iter().zip(opened) {
                match store.add(file).await {
                    Ok(added) => {
                        stdout
                            .write_all(format!("{}\n", added.cid).as_bytes())
                            .await?
                    }
                    Err(e) => {
                        result =
                            Err(anyhow::Error::new(e).context(format!("adding {}", f.display())));
                        break;
                    }
                }
            }
            store.shutdown().await;
            result?;
        }
        IpfsCmd::Cat { cid, range, repo } => {
            let cid = parse_cid(&cid)?;
            let range = range.as_deref().map(parse_range).transpose()?;
            let store = open(&repo).await?;
            let mut stream = match range {
                Some(r) => store.cat_range(cid, r),
                None => store.cat(cid),
            };
            let mut result = Ok(());
            while let Some(chunk) = stream.next().await {
                match chunk {
                    Ok(bytes) => stdout.write_all(&bytes).await?,
                    Err(e) => {
                        result = Err(anyhow::Error::new(e).context(format!("reading {cid}")));
                        break;
                    }
                }
            }
            drop(stream);
            store.shutdown().await;
            result?;
        }
        IpfsCmd::Pin { cid, repo } => {
            let cid = parse_cid(&cid)?;
            let store = open(&repo).await?;
            let r = store
                .pin(cid)
                .await
                .with_context(|| format!("pinning {cid}"));
            store.shutdown().await;
            r?;
            stdout
                .write_all(format!("pinned {cid}\n").as_bytes())
                .await?;
        }
        IpfsCmd::Unpin { cid, repo } => {
            let cid = parse_cid(&cid)?;
            let store = open(&repo).await?;
            let r = store
                .unpin(cid)
                .await
                .with_context(|| format!("unpinning {cid}"));
            store.shutdown().await;
            r?;
            stdout
                .write_all(format!("unpinned {cid}\n").as_bytes())
                .await?;
        }
        IpfsCmd::Pins { repo } => {
            let store = open(&repo).await?;
            let r = store.list_pins().await.context("listing pins");
            store.shutdown().await;
            for cid in r? {
                stdout.write_all(format!("{cid}\n").as_bytes()).await?;
            }
        }
        IpfsCmd::Gc { repo } => {
            let store = open(&repo).await?;
            let r = store.gc().await.context("garbage collection");
            store.shutdown().await;
            stdout
                .write_all(format!("removed {} blocks\n", r?.len()).as_bytes())
                .await?;
        }
        IpfsCmd::Export { cid, output, repo } => {
            let cid = parse_cid(&cid)?;
            let store = open(&repo).await?;
            let r = match &output {
                Some(path) => match tokio::fs::File::create(path).await {
                    Ok(mut f) => {
                        let r = store
                            .export_car(cid, &mut f)
                            .await
                            .map_err(anyhow::Error::new);
                        match r {
                            Ok(n) => f.sync_all().await.map(|()| n).map_err(anyhow::Error::new),
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => {
                        Err(anyhow::Error::new(e).context(format!("creating {}", path.display())))
                    }
                },
                None => store
                    .export_car(cid, &mut stdout)
                    .await
                    .map_err(anyhow::Error::new),
            };
            store.shutdown().await;
            r.with_context(|| format!("exporting {cid}"))?;
        }
        IpfsCmd::Import { file, repo } => {
            let f = tokio::fs::File::open(&file)
                .await
                .with_context(|| format!("opening {}", file.display()))?;
            let store = open(&repo).await?;
            let r = store
                .import_car(tokio::io::BufReader::with_capacity(1 << 20, f))
                .await;
            store.shutdown().await;
            for cid in r.with_context(|| format!("importing {}", file.display()))? {
                stdout.write_all(format!("{cid}\n").as_bytes()).await?;
            }
        }
        IpfsCmd::Check { repo } => {
            let store = open(&repo).await?;
            let r = store.check().await.context("checking the repository");
            store.shutdown().await;
            let report = r?;
            for (root, missing) in &report.incomplete_pins {
                stdout
                    .write_all(format!("incomplete {root}: missing {missing}\n").as_bytes())
                    .await?;
            }
            stdout
                .write_all(format!("{} pins checked\n", report.pins_checked).as_bytes())
                .await?;
            if !report.incomplete_pins.is_empty() {
                stdout.flush().await?;
                bail!(
                    "{} pinned DAGs are incomplete",
                    report.incomplete_pins.len()
                );
            }
        }
        IpfsCmd::Id { repo } => {
            let store = open(&repo).await?;
            let id = store.peer_id();
            store.shutdown().await;
            stdout.write_all(format!("{id}\n").as_bytes()).await?;
        }
    }
    stdout.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_or_explain() {
        assert_eq!(parse_range("3..10").expect("valid"), 3..10);
        assert_eq!(parse_range(" 0 .. 0 ").expect("valid"), 0..0);
        for bad in ["3", "a..4", "4..b", "9..3", "-1..2"] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cids_parse_or_explain() {
        assert!(parse_cid("bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e").is_ok());
        let err = parse_cid("not-a-cid").expect_err("invalid");
        assert!(err.to_string().contains("not-a-cid"));
    }

    #[test]
    fn repo_defaults_to_data_dir() {
        let explicit = RepoArg {
            repo: Some(PathBuf::from("x/y")),
        };
        assert_eq!(explicit.path(), PathBuf::from("x/y"));
    }
}
