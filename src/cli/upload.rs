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
    /// Seal on this machine (the node never sees the plaintext): the data key is wrapped under
    /// the capsule's policy with the consortium's CP-ABE parameters (needs --consortium), and
    /// keyword keys are sent when your attribute key opens the capsule. The whole file is one
    /// record.
    #[arg(long)]
    pub seal_locally: bool,
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
        if args.seal_locally {
            let consortium = args.common.consortium()?;
            let mut total = 0usize;
            for (path, _) in &files {
                let ctype = args
                    .content_type
                    .clone()
                    .unwrap_or_else(|| content_type_for(path).to_owned());
                let records = local::upload_sealed(
                    &api,
                    &id,
                    &consortium,
                    path,
                    &ctype,
                    policy,
                    patient.as_ref(),
                )
                .await
                .map_err(|e| {
                    anyhow::Error::new(e).context(format!("uploading {}", path.display()))
                })?;
                for r in &records {
                    println!("{}", r.cid);
                    eprintln!(
                        "{}: {} at height {} (sealed locally)",
                        path.display(),
                        r.cid,
                        r.height
                    );
                }
                total += records.len();
            }
            eprintln!("{total} record(s) registered");
            return Ok(());
        }
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

/// Client-side sealing (`--seal-locally`).
mod local {
    use std::path::Path;

    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use ehr_ledger::tx::ParticipantId;
    use ehr_search::sse::{Capsule, CapsuleId};
    use ehr_storage::blockstore::Blockstore;
    use ehr_storage::seal::DataKey;
    use zeroize::Zeroizing;

    use crate::client::api::{Api, UploadedRecord};
    use crate::client::crypto::{
        keyword_keys_header, record_key_aad, seal_context, search_keywords,
    };
    use crate::client::{ClientError, Consortium, Identity};

    /// Largest file sealed locally (it is held in memory twice).
    const MAX_LOCAL_RECORD: u64 = 1 << 30;

    /// Seals `path` here and uploads the envelope.
    pub async fn upload_sealed(
        api: &Api,
        id: &Identity,
        consortium: &Consortium,
        path: &Path,
        ctype: &str,
        policy: Option<CapsuleId>,
        patient: Option<&ParticipantId>,
    ) -> Result<Vec<UploadedRecord>, ClientError> {
        let listed = api.capsules().await?;
        let entry = match policy {
            Some(p) => listed
                .iter()
                .find(|c| c.id == p)
                .ok_or_else(|| ClientError::input("--policy", "no such capsule on the ledger"))?,
            None => {
                // The hospital's own capsule: the one the node lists as owned by this identity.
                let own: Vec<_> = api
                    .capsule_owners()
                    .await?
                    .into_iter()
                    .filter(|(_, owner)| *owner == id.participant())
                    .map(|(c, _)| c)
                    .collect();
                match own.as_slice() {
                    [one] => listed.iter().find(|c| c.id == *one).ok_or_else(|| {
                        ClientError::bad_response("capsules", "listed owner without capsule")
                    })?,
                    [] => {
                        return Err(ClientError::input(
                            "--policy",
                            "you own no capsule: name one with --policy",
                        ));
                    }
                    _ => {
                        return Err(ClientError::input(
                            "--policy",
                            "you own several capsules: name one with --policy",
                        ));
                    }
                }
            }
        };
        let capsule = Capsule::from_bytes(&entry.bytes)
            .map_err(|e| ClientError::bad_response("capsule", e.to_string()))?;
        if capsule.capsule_id() != entry.id {
            return Err(ClientError::bad_response(
                "capsule",
                "encodes another capsule id",
            ));
        }
        let meta = std::fs::metadata(path).map_err(|e| ClientError::io(path, e))?;
        if meta.len() > MAX_LOCAL_RECORD {
            return Err(ClientError::input(
                path.display().to_string(),
                format!("larger than {MAX_LOCAL_RECORD} bytes: too large to seal locally"),
            ));
        }
        let plain = Zeroizing::new(std::fs::read(path).map_err(|e| ClientError::io(path, e))?);
        // Keyword keys, when the content is FHIR and the user's attribute key opens the capsule.
        let mut keyword_keys = Zeroizing::new(String::new());
        if let Some(format) = crate::fhir::InputFormat::from_media_type(ctype) {
            let extraction =
                crate::fhir::extract(&plain, format, &crate::fhir::ExtractConfig::default())
                    .map_err(|e| ClientError::input(path.display().to_string(), e.to_string()))?;
            let kws: Vec<_> = extraction.keywords.into_iter().collect();
            match id.abe_key().map(|k| capsule.open(k)) {
                Some(Ok(state)) => {
                    keyword_keys = keyword_keys_header(&state, &search_keywords(&kws))
                }
                _ => eprintln!(
                    "warning: your attribute key does not open the capsule: {} is uploaded without \
                     keywords (it will not be found by search)",
                    path.display()
                ),
            }
        }
        let key =
            DataKey::generate().map_err(|e| ClientError::crypto("data key", e.to_string()))?;
        let sealed = ehr_storage::seal::seal(&key, &seal_context(&entry.id), &plain)
            .map_err(|e| ClientError::crypto("sealing", e.to_string()))?;
        drop(plain);
        let cid = Blockstore::only_hash(&sealed[..])
            .await
            .map_err(|e| ClientError::crypto("computing the CID", e.to_string()))?;
        let wrapped = ehr_search::abe::wrap(
            &consortium.abe_params,
            capsule.policy(),
            key.expose_secret(),
            &record_key_aad(&entry.id, &cid.to_bytes()),
            &mut rand::rngs::OsRng,
        )
        .map_err(|e| ClientError::crypto("wrapping the data key", e.to_string()))?
        .to_bytes();
        let mut headers = vec![
            ("ehr-capsule", hex::encode(entry.id.0)),
            ("ehr-wrapped-key", B64.encode(&wrapped)),
        ];
        if !keyword_keys.is_empty() {
            headers.push(("ehr-keyword-keys", keyword_keys.to_string()));
        }
        let records = api
            .upload(
                sealed.into(),
                "application/vnd.ehr.sealed",
                Some(&entry.id),
                patient,
                &headers,
            )
            .await?;
        if let Some(r) = records.first()
            && r.cid != cid.to_string()
        {
            return Err(ClientError::bad_response(
                "upload",
                format!(
                    "the node registered {} but the envelope's CID is {cid}",
                    r.cid
                ),
            ));
        }
        Ok(records)
    }
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
