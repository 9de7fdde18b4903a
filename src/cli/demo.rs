//! `ehr demo`: a scripted walkthrough on the embedded development consortium: upload synthetic
//! FHIR records as a hospital, search them by a code as a researcher (trapdoors built locally),
//! read and decrypt a hit, and verify its ledger proof, printing each step and its timing.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::search::{get, search};
use crate::client::api::Api;
use crate::client::crypto::{Combine, KeywordArg};
use crate::client::proof::verify_record_proof;
use crate::client::record::Output;
use crate::client::synthetic::{self, LOINC, OBSERVATIONS};
use crate::client::{ClientError, Consortium, Identity, NodeClient};

/// Arguments of `ehr demo`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Example:
  ehr demo                    # starts the development consortium in ./ehr-dev if needed
  ehr dev --dir ./ehr-dev     # or run it in another terminal, then
  ehr demo --dir ./ehr-dev

The records are generated synthetic FHIR resources (security label HTEST, ids synthetic-...);
they describe no real person. Decrypted copies go to DIR/demo-out/.")]
pub struct DemoArgs {
    /// The development consortium's directory (as `ehr dev --dir` made it).
    #[arg(long, default_value = "ehr-dev", value_name = "DIR")]
    pub dir: PathBuf,
    /// How many synthetic records to upload.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(2..=1000))]
    pub records: u16,
}

/// The files of a development consortium directory.
#[derive(Debug, Clone)]
pub struct DevFiles {
    /// `consortium.json`.
    pub consortium: PathBuf,
    /// `hospital-0.json`.
    pub hospital: PathBuf,
    /// `researcher.json`.
    pub researcher: PathBuf,
}

impl DevFiles {
    /// The files under `dir`.
    pub fn in_dir(dir: &Path) -> DevFiles {
        DevFiles {
            consortium: dir.join("consortium.json"),
            hospital: dir.join("hospital-0.json"),
            researcher: dir.join("researcher.json"),
        }
    }

    fn exist(&self) -> bool {
        self.consortium.is_file() && self.hospital.is_file() && self.researcher.is_file()
    }
}

/// Runs `ehr demo`: on the consortium running in `--dir`, or on one started in this process
/// (and stopped at the end) when none answers there.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let files = DevFiles::in_dir(&args.dir);
        let running = match files.exist() {
            true => match Identity::load(&files.hospital)?.node() {
                Some(url) => healthy(url).await,
                None => false,
            },
            false => false,
        };
        let started = if running {
            println!(
                "ehr demo: using the consortium running in {}",
                args.dir.display()
            );
            None
        } else {
            println!(
                "ehr demo: no consortium answers in {}: starting one in this process",
                args.dir.display()
            );
            let dev = super::dev::DevConsortium::start(&args.dir, 0).await?;
            println!(
                "ehr demo: {} replicas ready in {}",
                dev.nodes.len(),
                ms(dev.ready_after)
            );
            Some(dev)
        };
        let result = walkthrough(
            &files,
            &args.dir.join("demo-out"),
            usize::from(args.records),
        )
        .await;
        if let Some(dev) = started {
            dev.shutdown().await;
        }
        result
    })
}

/// Whether the node at `url` answers `/healthz`.
pub async fn healthy(url: &str) -> bool {
    let Ok(u) = reqwest::Url::parse(url).and_then(|u| u.join("healthz")) else {
        return false;
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build();
    match client {
        Ok(c) => c.get(u).send().await.is_ok_and(|r| r.status().is_success()),
        Err(_) => false,
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// The scripted walkthrough against a running consortium.
pub async fn walkthrough(files: &DevFiles, out_dir: &Path, count: usize) -> anyhow::Result<()> {
    let consortium = Consortium::load(&files.consortium)?;
    let hospital = Identity::load(&files.hospital)?;
    let researcher = Identity::load(&files.researcher)?;
    let node_of = |id: &Identity| -> anyhow::Result<Api> {
        let url = id.node().context("the identity file names no node")?;
        Ok(Api::new(NodeClient::new(
            url,
            id.signing_key(),
            id.chain_id(),
        )?))
    };
    let h_api = node_of(&hospital)?;
    let r_api = node_of(&researcher)?;
    println!(
        "[1/5] consortium {}: {} validators (tolerates f = {}), attribute keys need {} of them",
        consortium.chain_id,
        consortium.n(),
        consortium.f,
        consortium.threshold
    );
    println!(
        "      hospital  {} at {}",
        hospital.label(),
        h_api.http.base()
    );
    println!(
        "      researcher {} at {}",
        researcher.label(),
        r_api.http.base()
    );

    // Upload.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_secs());
    let docs = synthetic::records(seed, count);
    let t = Instant::now();
    let mut uploaded = Vec::with_capacity(docs.len());
    for d in &docs {
        let recs = h_api
            .upload(d.clone().into(), "application/fhir+json", None, None, &[])
            .await
            .context("uploading a synthetic record")?;
        let r = recs
            .into_iter()
            .next()
            .context("the node registered no record")?;
        uploaded.push((r, d.clone()));
    }
    let el = t.elapsed();
    println!(
        "[2/5] uploaded {} synthetic FHIR records as {} in {} ({:.1} records/s; each sealed, \
         stored in IPFS and committed on the ledger)",
        uploaded.len(),
        hospital.label(),
        ms(el),
        uploaded.len() as f64 / el.as_secs_f64()
    );
    for (r, _) in uploaded.iter().take(3) {
        println!("      {} at height {}", r.cid, r.height);
    }

    // Search.
    let (code, display, ..) = OBSERVATIONS[0];
    let token = format!("{LOINC}|{code}");
    let want: Vec<&str> = uploaded
        .iter()
        .filter(|(_, d)| String::from_utf8_lossy(d).contains(&format!("\"code\":\"{code}\"")))
        .map(|(r, _)| r.cid.as_str())
        .collect();
    let t = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(20);
    let hits = loop {
        let hits = search(
            &r_api,
            &researcher,
            &[KeywordArg::Code(token.clone())],
            Combine::And,
            1000,
            true,
        )
        .await?;
        // The index applies committed blocks right after the commit: wait for it briefly.
        if want.iter().all(|c| hits.iter().any(|h| h.cid == *c)) || Instant::now() > deadline {
            break hits;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let el = t.elapsed();
    let found = want
        .iter()
        .filter(|c| hits.iter().any(|h| h.cid == **c))
        .count();
    println!(
        "[3/5] searched {token} ({display}) as {}: {} hit(s), {} of the {} just uploaded, in {} \
         (the node saw only trapdoors, never the code)",
        researcher.label(),
        hits.len(),
        found,
        want.len(),
        ms(el)
    );
    if found < want.len() {
        return Err(ClientError::bad_response(
            "search",
            format!("found {found} of the {} records just uploaded", want.len()),
        )
        .into());
    }
    let cid = want
        .first()
        .context("no generated record carries the searched code")?
        .to_string();

    // Read and decrypt.
    std::fs::create_dir_all(out_dir).map_err(|e| ClientError::io(out_dir, e))?;
    let dest = out_dir.join(format!("{cid}.json"));
    let t = Instant::now();
    let got = get(
        &r_api,
        &researcher,
        &cid,
        "research",
        &Output::File(dest.clone()),
    )
    .await?;
    let el = t.elapsed();
    let original = &uploaded
        .iter()
        .find(|(r, _)| r.cid == cid)
        .expect("the CID came from the uploads")
        .1;
    let back = std::fs::read(&dest).map_err(|e| ClientError::io(&dest, e))?;
    if back != *original {
        return Err(ClientError::crypto("the decrypted record", "differs from the upload").into());
    }
    println!(
        "[4/5] read {cid}: access audited on the ledger (tx {}), data key unwrapped with the \
         researcher's attribute key, {} bytes decrypted and identical to the upload, in {}",
        super::upload::short(&got.audit_tx),
        got.plain_len,
        ms(el)
    );
    println!("      written to {}", dest.display());

    // Verify the ledger proof.
    let t = Instant::now();
    let answer = r_api.proof(&cid).await?;
    let v = verify_record_proof(&consortium, &super::client::cid_bytes(&cid)?, &answer)?;
    let el = t.elapsed();
    println!(
        "[5/5] ledger proof of {cid}: registered at height {} by {}, Merkle path ok, commit \
         certificate signed by validators {:?} ({} required), checked with consortium.json's \
         keys only, in {}",
        v.height,
        super::upload::short(&v.owner),
        v.signers,
        v.quorum,
        ms(el)
    );
    Ok(())
}
