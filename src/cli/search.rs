//! `ehr search` (trapdoors built here from the capsules your attribute key opens) and `ehr get`
//! (fetch a record, unwrap its key here, open it into a file).

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

use super::client::{Common, block_on, cid_bytes};
use super::upload::short;
use crate::client::ClientError;
use crate::client::Identity;
use crate::client::api::{Api, SearchHit};
use crate::client::crypto::{
    Combine, KeyKind, KeywordArg, build_query, open_capsules, parse_capsule_id, seal_context,
    search_body, unwrap_data_key,
};
use crate::client::record::{Output, open_stream};

/// Arguments of `ehr search`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Examples:
  ehr search --identity researcher.json 'http://loinc.org|4548-4'
  ehr search --identity researcher.json 'http://snomed.info/sct|44054006' --text metformin --and
  ehr search --identity researcher.json '|E11.9' '|E11.65' --or --all-pages

Keywords never leave your machine: the capsules (search keys wrapped under access policies)
your attribute key opens give the trapdoors sent to the node, one per keyword, capsule and
epoch. The node returns only records you are authorised to read. Prints one line per hit:
CID, ledger height, capsule (abbreviated), epoch.")]
pub struct SearchArgs {
    /// FHIR coding tokens `system|code` (`|code` when the system is empty).
    #[arg(value_name = "SYSTEM|CODE")]
    pub codes: Vec<String>,
    /// Words of text to search for (repeatable).
    #[arg(long = "text", value_name = "WORD")]
    pub texts: Vec<String>,
    /// Every keyword must match (the default).
    #[arg(long, conflicts_with = "or")]
    pub and: bool,
    /// Any keyword may match.
    #[arg(long)]
    pub or: bool,
    /// Hits per page (1 to 1000).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub limit: u16,
    /// Follow the cursor through every page.
    #[arg(long)]
    pub all_pages: bool,
    #[command(flatten)]
    pub common: Common,
}

/// Runs `ehr search`.
pub fn run_search(a: SearchArgs) -> anyhow::Result<()> {
    block_on(async move {
        let mut keywords: Vec<KeywordArg> = a.codes.iter().cloned().map(KeywordArg::Code).collect();
        keywords.extend(a.texts.iter().cloned().map(KeywordArg::Text));
        if keywords.is_empty() {
            return Err(ClientError::input(
                "keyword",
                "give at least one `system|code` or --text WORD",
            )
            .into());
        }
        let (id, _) = a.common.identity()?;
        let api = a.common.api(&id)?;
        let combine = if a.or { Combine::Or } else { Combine::And };
        let hits = search(
            &api,
            &id,
            &keywords,
            combine,
            usize::from(a.limit),
            a.all_pages,
        )
        .await?;
        for h in &hits {
            println!(
                "{}\t{}\t{}\t{}",
                h.cid,
                h.height,
                short(&h.capsule),
                h.epoch
            );
        }
        eprintln!("{} hit(s)", hits.len());
        Ok(())
    })
}

/// Opens the capsules, builds the query and runs it (every page if `all_pages`).
pub async fn search(
    api: &Api,
    id: &Identity,
    keywords: &[KeywordArg],
    combine: Combine,
    limit: usize,
    all_pages: bool,
) -> Result<Vec<SearchHit>, ClientError> {
    let key = id.abe_key().ok_or_else(|| {
        ClientError::input(
            "--identity",
            "has no attribute key: run `ehr keygen --abe` first",
        )
    })?;
    let spin = super::client_progress::spinner("opening capsules");
    let listed = api.capsules().await?;
    let report = open_capsules(&listed, key);
    spin.finish_and_clear();
    for (cap, reason) in &report.invalid {
        eprintln!(
            "warning: capsule {} skipped: {reason}",
            short(&hex::encode(cap.0))
        );
    }
    tracing::info!(
        opened = report.opened.len(),
        not_satisfied = report.not_satisfied,
        "capsules"
    );
    if report.opened.is_empty() {
        // Nothing is searchable with this key: say so, and find nothing (not an error: the
        // answer "no record you may read matches" is true).
        for k in keywords {
            if let KeywordArg::Text(t) | KeywordArg::Code(t) = k
                && t.trim().is_empty()
            {
                return Err(ClientError::input("keyword", "must not be empty"));
            }
        }
        eprintln!(
            "warning: your attribute key opens none of the {} capsule(s): no record can match",
            listed.len()
        );
        return Ok(Vec::new());
    }
    let query = build_query(&report.opened, keywords, combine)?;
    let mut hits = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let body = search_body(&query, limit, cursor.as_deref());
        let page = api.search(&body).await?;
        let before = hits.len();
        hits.extend(page.hits);
        match page.next_cursor {
            Some(c) if all_pages => {
                if B64.decode(&c).is_err() {
                    return Err(ClientError::bad_response("next_cursor", "not base64url"));
                }
                // A node that hands back the same cursor (or empty pages) would loop forever.
                if cursor.as_deref() == Some(c.as_str()) || hits.len() == before {
                    return Err(ClientError::bad_response(
                        "next_cursor",
                        "the node returned a cursor that does not advance",
                    ));
                }
                cursor = Some(c);
            }
            Some(_) => {
                eprintln!("more hits: use --all-pages or a larger --limit");
                break;
            }
            None => break,
        }
    }
    Ok(hits)
}

/// Arguments of `ehr get`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Examples:
  ehr get bafkrei... -o record.json --identity researcher.json
  ehr get bafkrei... -o - --purpose treatment --identity clinician.json | jq .

The node checks on the ledger that you may read the record, records the access there (an
audit transaction), and streams the sealed record. Its data key is unwrapped here, with your
attribute key or, for a grant, your signing key. The output file is written only once the whole
record verified; plaintext goes to the terminal only with `-o -`.")]
pub struct GetArgs {
    /// The record's CID.
    pub cid: String,
    /// Where to write the plaintext (`-` for standard output).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Why you read it (recorded on the ledger).
    #[arg(long, default_value = "research",
          value_parser = ["treatment", "research", "audit", "emergency", "patient-request"])]
    pub purpose: String,
    #[command(flatten)]
    pub common: Common,
}

/// Runs `ehr get`.
pub fn run_get(a: GetArgs) -> anyhow::Result<()> {
    block_on(async move {
        let (id, _) = a.common.identity()?;
        let api = a.common.api(&id)?;
        let out = Output::from_arg(&a.output);
        let got = get(&api, &id, &a.cid, &a.purpose, &out).await?;
        if let Output::File(p) = &out {
            eprintln!(
                "{} bytes written to {} (key: {}, audit tx {})",
                got.plain_len,
                p.display(),
                got.kind_name,
                got.audit_tx
            );
        }
        Ok(())
    })
}

/// What `get` fetched.
#[derive(Debug)]
pub struct Got {
    /// Plaintext bytes written.
    pub plain_len: u64,
    /// `abe` or `grant`.
    pub kind_name: &'static str,
    /// The audit transaction the node recorded.
    pub audit_tx: String,
}

/// Fetches, unwraps and opens `cid` into `out`.
pub async fn get(
    api: &Api,
    id: &Identity,
    cid: &str,
    purpose: &str,
    out: &Output,
) -> Result<Got, ClientError> {
    let cid = cid.trim();
    let cid_bin = cid_bytes(cid)?;
    let resp = api.get_record(cid, purpose).await?;
    let header = |name: &str| -> Result<String, ClientError> {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| ClientError::bad_response("record", format!("no `{name}` header")))
    };
    let capsule = parse_capsule_id(&header("ehr-capsule")?)
        .map_err(|e| ClientError::bad_response("ehr-capsule header", e))?;
    let kind = KeyKind::parse(&header("ehr-key-kind")?)?;
    let wrapped = B64
        .decode(header("ehr-wrapped-key")?.trim())
        .map_err(|_| ClientError::bad_response("ehr-wrapped-key header", "not base64url"))?;
    let audit_tx = header("ehr-audit-tx").unwrap_or_default();
    let key = unwrap_data_key(
        kind,
        &wrapped,
        &capsule,
        &cid_bin,
        id.abe_key(),
        id.signing_key(),
    )?;
    let len = resp.content_length().unwrap_or(0);
    let bar = super::client_progress::bar(len, "downloading");
    let b2 = bar.clone();
    let plain_len = open_stream(
        resp.bytes_stream(),
        &key,
        &seal_context(&capsule),
        out,
        move |n| b2.set_position(n),
    )
    .await?;
    bar.finish_and_clear();
    Ok(Got {
        plain_len,
        kind_name: match kind {
            KeyKind::Abe => "abe",
            KeyKind::Grant => "grant",
        },
        audit_tx,
    })
}
