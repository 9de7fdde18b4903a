//! `ehr upload`: send records to the hospital's node, which seals, stores, indexes and registers
//! them; prints one CID per record.

use std::path::PathBuf;

use ehr_ledger::tx::ParticipantId;

use super::client::{Common, block_on};
use crate::client::ClientError;
use crate::client::crypto::parse_capsule_id;
use crate::client::identity::parse_participant;

/// Arguments of `ehr upload`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Examples:
  ehr upload --identity hospital-0.json observation.json
  ehr upload --identity hospital-0.json --policy <capsule id> --patient <participant id> bundle.json
  ehr upload --identity hospital-0.json --content-type application/pdf scan.pdf

FHIR JSON (a resource or a Bundle: one record per resource) and NDJSON (one record per line)
are validated and indexed by the node; any other content is sealed and stored without
keywords. The node answers once the ledger committed each record. One CID is printed per
record on standard output; progress and details go to standard error.")]
pub struct UploadArgs {
    /// The files to upload.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The capsule (access policy) to store them under (default: the node's default policy).
    #[arg(long, value_name = "CAPSULE")]
    pub policy: Option<String>,
    /// The patient the records belong to (a registered participant id).
    #[arg(long, value_name = "HEX")]
    pub patient: Option<String>,
    /// The media type (default: from the extension: .json → application/fhir+json, .ndjson →
    /// application/fhir+ndjson, anything else application/octet-stream).
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

/// The media type of `path` by its extension.
pub fn content_type_for(path: &std::path::Path) -> &'static str {
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("json") => "application/fhir+json",
        Some("ndjson") => "application/fhir+ndjson",
        _ => "application/octet-stream",
    }
}

/// Runs `ehr upload`.
pub fn run(args: UploadArgs) -> anyhow::Result<()> {
    block_on(async move {
        let policy = args
            .policy
            .as_deref()
            .map(|p| parse_capsule_id(p).map_err(|r| ClientError::input("--policy", r)))
            .transpose()?;
        let patient: Option<ParticipantId> = args
            .patient
            .as_deref()
            .map(|p| parse_participant(p).map_err(|r| ClientError::input("--patient", r)))
            .transpose()?;
        if let Some(t) = &args.content_type
            && (t.is_empty() || !t.contains('/') || t.chars().any(|c| c.is_control()))
        {
            return Err(ClientError::input(
                "--content-type",
                "must be a media type like type/subtype",
            )
            .into());
        }
        // Check every file before sending any, so a typo does not leave half an upload.
        let mut files = Vec::with_capacity(args.files.len());
        for path in &args.files {
            let meta = std::fs::metadata(path).map_err(|e| ClientError::io(path, e))?;
            if !meta.is_file() {
                return Err(ClientError::input(
                    path.display().to_string(),
                    "is not a regular file",
                )
                .into());
            }
            files.push((path.clone(), meta.len()));
        }
        let (id, _) = args.common.identity()?;
        let api = args.common.api(&id)?;
        let mut total = 0usize;
        for (path, len) in files {
            let ctype = args
                .content_type
                .clone()
                .unwrap_or_else(|| content_type_for(&path).to_owned());
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(|e| ClientError::io(&path, e))?;
            let bar = super::client_progress::bar(len, &format!("uploading {}", path.display()));
            let b2 = bar.clone();
            let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
            let stream = futures::StreamExt::inspect(stream, move |c| {
                if let Ok(c) = c {
                    b2.inc(c.len() as u64);
                }
            });
            let body = reqwest::Body::wrap_stream(stream);
            let records = api
                .upload(body, &ctype, policy.as_ref(), patient.as_ref(), &[])
                .await
                .map_err(|e| {
                    anyhow::Error::new(e).context(format!("uploading {}", path.display()))
                })?;
            bar.finish_and_clear();
            for r in &records {
                println!("{}", r.cid);
                eprintln!(
                    "{}: {} at height {} (capsule {}, epoch {}, {} sealed bytes)",
                    path.display(),
                    r.cid,
                    r.height,
                    short(&r.capsule),
                    r.epoch,
                    r.size
                );
            }
            total += records.len();
        }
        eprintln!("{total} record(s) registered");
        Ok(())
    })
}

/// The first 12 characters of an id, for messages.
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_follow_the_extension() {
        assert_eq!(content_type_for("a.json".as_ref()), "application/fhir+json");
        assert_eq!(content_type_for("a.JSON".as_ref()), "application/fhir+json");
        assert_eq!(
            content_type_for("a.ndjson".as_ref()),
            "application/fhir+ndjson"
        );
        assert_eq!(
            content_type_for("scan.pdf".as_ref()),
            "application/octet-stream"
        );
        assert_eq!(
            content_type_for("noext".as_ref()),
            "application/octet-stream"
        );
    }
}
