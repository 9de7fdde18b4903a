//! The client commands users run against a node: `keygen`, `participant`, `attributes`,
//! `grant`, `revoke`, and the shared flags and plumbing of `upload`, `search`, `get`, `ledger`.
//!
//! Exit codes: 0 ok, 1 usage or local input, 2 refused by the node (4xx), 3 node or network
//! failure (and answers that fail verification).

use std::path::PathBuf;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ehr_ledger::tx::{ParticipantId, TxBody, TxKind};
use ehr_search::abe::PartialKey;

use crate::client::api::Api;
use crate::client::crypto::abe_user_id;
use crate::client::identity::parse_participant;
use crate::client::{ClientError, Consortium, Identity, IdentityRole, NodeClient};

/// Flags every client command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Your identity file (JSON, mode 0600; made by `ehr keygen`).
    #[arg(long, env = "EHR_IDENTITY", value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// The node's base URL. Default: the `node` named in the identity file.
    #[arg(long, env = "EHR_NODE", value_name = "URL")]
    pub node: Option<String>,
    /// The consortium file (the validators' keys and the CP-ABE parameters; your trust anchor).
    #[arg(long, env = "EHR_CONSORTIUM", value_name = "FILE")]
    pub consortium: Option<PathBuf>,
}

impl Common {
    /// Loads the identity file.
    pub fn identity(&self) -> Result<(Identity, PathBuf), ClientError> {
        let path = self
            .identity
            .clone()
            .ok_or_else(|| ClientError::input("--identity", "required (or set EHR_IDENTITY)"))?;
        Ok((Identity::load(&path)?, path))
    }

    /// Loads the consortium file.
    pub fn consortium(&self) -> Result<Consortium, ClientError> {
        let path = self.consortium.as_deref().ok_or_else(|| {
            ClientError::input("--consortium", "required (or set EHR_CONSORTIUM)")
        })?;
        Consortium::load(path)
    }

    /// An API client for the chosen node, authenticated as `id`.
    pub fn api(&self, id: &Identity) -> Result<Api, ClientError> {
        let url = self.node.as_deref().or(id.node()).ok_or_else(|| {
            ClientError::input(
                "--node",
                "required: the identity file names no node (or set EHR_NODE)",
            )
        })?;
        Ok(Api::new(NodeClient::new(
            url,
            id.signing_key(),
            id.chain_id(),
        )?))
    }
}

/// Runs an async command on a small runtime of its own.
pub fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(f)
}

/// Signs `kind` as `id` with its next nonce, submits it and waits for it to commit.
pub async fn sign_and_submit(
    api: &Api,
    id: &Identity,
    kind: TxKind,
) -> Result<crate::client::api::TxOutcome, ClientError> {
    let nonce = api.next_nonce(&id.participant()).await?;
    let tx = TxBody::new(id.chain_id(), id.participant(), nonce, kind).sign(id.signing_key());
    let out = api.submit(&tx).await?;
    out.applied()?;
    Ok(out)
}

fn participant_arg(field: &str, text: &str) -> Result<ParticipantId, ClientError> {
    parse_participant(text).map_err(|r| ClientError::input(field, r))
}

// ---------------------------------------------------------------------------------------------
// keygen
// ---------------------------------------------------------------------------------------------

/// Arguments of `ehr keygen`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Examples:
  # A new identity (prints only your public participant id; give it to the authority):
  ehr keygen --out alice.json --role researcher --label alice --consortium consortium.json \\
      --node http://127.0.0.1:8080
  # Once the authority registered you and assigned attributes, fetch your attribute key:
  ehr keygen --abe --identity alice.json --consortium consortium.json

With --abe, each validator checks your attributes on the ledger and returns a partial key;
each one is verified against the consortium's public parameters before t of them are combined
into your attribute key, which is stored in the identity file and never leaves your machine.")]
pub struct KeygenArgs {
    /// Fetch and combine an attribute (CP-ABE) key into an existing identity instead.
    #[arg(long, requires = "identity")]
    pub abe: bool,
    /// Where to write the new identity (mode 0600; never overwrites).
    #[arg(
        long,
        value_name = "FILE",
        required_unless_present = "abe",
        conflicts_with = "abe"
    )]
    pub out: Option<PathBuf>,
    /// The new participant's role.
    #[arg(long, value_enum, required_unless_present = "abe")]
    pub role: Option<IdentityRole>,
    /// A short public label (a-z 0-9 . _ : @ -).
    #[arg(long, default_value = "")]
    pub label: String,
    /// The chain id (default: the consortium file's).
    #[arg(long, value_name = "ID")]
    pub chain_id: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

/// Runs `ehr keygen`.
pub fn run_keygen(args: KeygenArgs) -> anyhow::Result<()> {
    if args.abe {
        return block_on(keygen_abe(args.common));
    }
    let out = args.out.expect("clap: --out is required without --abe");
    let role = args.role.expect("clap: --role is required without --abe");
    let chain_id = match (&args.chain_id, &args.common.consortium) {
        (Some(c), _) => c.clone(),
        (None, Some(_)) => args.common.consortium()?.chain_id,
        (None, None) => {
            return Err(ClientError::input(
                "--chain-id",
                "give --chain-id or --consortium FILE (the chain the identity belongs to)",
            )
            .into());
        }
    };
    let id = Identity::generate(role, &args.label, &chain_id, args.common.node.clone())?;
    id.save_new(&out)?;
    eprintln!(
        "identity written to {} (mode 0600; keep it secret)",
        out.display()
    );
    println!("{}", id.participant());
    Ok(())
}

async fn keygen_abe(common: Common) -> anyhow::Result<()> {
    let (mut id, path) = common.identity()?;
    let consortium = common.consortium()?;
    if consortium.chain_id != id.chain_id() {
        return Err(ClientError::input(
            "--consortium",
            format!(
                "is for chain `{}` but the identity is for `{}`",
                consortium.chain_id,
                id.chain_id()
            ),
        )
        .into());
    }
    let pp = &consortium.abe_params;
    let user_id = abe_user_id(&id.participant());
    let mut partials: Vec<PartialKey> = Vec::new();
    let mut attrs: Option<Vec<String>> = None;
    let mut failures = Vec::new();
    for v in &consortium.validators {
        if partials.len() == consortium.threshold {
            break;
        }
        let who = format!("validator {} ({})", v.id, v.http_url);
        let api = match NodeClient::new(&v.http_url, id.signing_key(), id.chain_id()) {
            Ok(c) => Api::new(c),
            Err(e) => {
                failures.push(format!("{who}: {e}"));
                continue;
            }
        };
        let answer = match api.partial_key().await {
            Ok(a) => a,
            Err(e) => {
                eprintln!("{who}: {e}");
                failures.push(format!("{who}: {e}"));
                continue;
            }
        };
        let checked = (|| {
            let bytes = zeroize::Zeroizing::new(
                B64.decode(answer.partial.trim())
                    .map_err(|_| "the partial key is not base64url".to_owned())?,
            );
            let p = PartialKey::from_bytes(&bytes).map_err(|e| e.to_string())?;
            if p.index() != v.id + 1 {
                return Err(format!(
                    "answered with share {} but validator {} holds share {}",
                    p.index(),
                    v.id,
                    v.id + 1
                ));
            }
            pp.verify_partial(&user_id, &answer.attributes, &p)
                .map_err(|e| e.to_string())?;
            Ok(p)
        })();
        match checked {
            Ok(p) => {
                let mut a = answer.attributes.clone();
                a.sort();
                a.dedup();
                match &attrs {
                    Some(prev) if *prev != a => {
                        let msg = format!(
                            "{who}: issued for attributes {a:?} but another validator for {prev:?} \
                             (the ledger changed meanwhile? try again)"
                        );
                        eprintln!("{msg}");
                        failures.push(msg);
                    }
                    _ => {
                        eprintln!("{who}: partial key verified");
                        attrs = Some(a);
                        partials.push(p);
                    }
                }
            }
            Err(reason) => {
                let msg = format!("{who}: invalid partial key: {reason}");
                eprintln!("{msg}");
                failures.push(msg);
            }
        }
    }
    if partials.len() < consortium.threshold {
        return Err(ClientError::crypto(
            "attribute key",
            format!(
                "only {} of the {} verified partial keys needed; failures: {}",
                partials.len(),
                consortium.threshold,
                failures.join("; ")
            ),
        )
        .into());
    }
    let attrs = attrs.unwrap_or_default();
    let key = ehr_search::abe::combine(pp, &user_id, &attrs, &partials)
        .map_err(|e| ClientError::crypto("combining the partial keys", e.to_string()))?;
    id.set_abe_key(key);
    id.save(&path)?;
    eprintln!(
        "attribute key for {} attribute(s) stored in {}",
        attrs.len(),
        path.display()
    );
    for a in &attrs {
        println!("{a}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// participant, attributes
// ---------------------------------------------------------------------------------------------

/// `ehr participant ...` (attribute authority).
#[derive(Debug, clap::Subcommand)]
pub enum ParticipantCmd {
    /// Register a participant on the ledger (signed locally by the authority's identity).
    #[command(after_long_help = "\
Example:
  ehr participant register --identity authority.json --id <64 hex> --role researcher --label alice")]
    Register(RegisterArgs),
    /// Show a participant as the ledger knows it.
    Show(ShowArgs),
}

/// Arguments of `ehr participant register`.
#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// The new participant's id (its public key, as `ehr keygen` printed it).
    #[arg(long, value_name = "HEX")]
    pub id: String,
    /// Its role.
    #[arg(long, value_enum)]
    pub role: IdentityRole,
    /// Its public label.
    #[arg(long, default_value = "")]
    pub label: String,
    #[command(flatten)]
    pub common: Common,
}

/// Arguments of `ehr participant show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The participant id (default: yours).
    #[arg(value_name = "HEX")]
    pub id: Option<String>,
    #[command(flatten)]
    pub common: Common,
}

/// Runs `ehr participant ...`.
pub fn run_participant(cmd: ParticipantCmd) -> anyhow::Result<()> {
    block_on(async move {
        match cmd {
            ParticipantCmd::Register(a) => {
                let key = participant_arg("--id", &a.id)?;
                let (id, _) = a.common.identity()?;
                let api = a.common.api(&id)?;
                let kind = TxKind::RegisterParticipant {
                    key: key.0,
                    role: a.role.ledger_role(),
                    label: a.label.clone(),
                };
                let out = sign_and_submit(&api, &id, kind).await?;
                eprintln!(
                    "registered {} as {} at height {} (tx {})",
                    key,
                    a.role.name(),
                    out.height,
                    out.tx_id
                );
                println!("{key}");
            }
            ParticipantCmd::Show(a) => {
                let (id, _) = a.common.identity()?;
                let who = match &a.id {
                    Some(t) => participant_arg("id", t)?,
                    None => id.participant(),
                };
                let v = a.common.api(&id)?.participant(&who).await?;
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
        }
        Ok(())
    })
}

/// `ehr attributes ...` (attribute authority).
#[derive(Debug, clap::Subcommand)]
pub enum AttributesCmd {
    /// Assign attributes to a participant.
    #[command(after_long_help = "\
Example:
  ehr attributes assign --identity authority.json --participant <64 hex> role:researcher irb:study-42

The participant then runs `ehr keygen --abe` to get the matching attribute key.")]
    Assign(AssignArgs),
    /// Revoke attributes from a participant (keys already issued keep working on old capsule
    /// epochs; hospitals rotate their capsules to cut off new records).
    Revoke(RevokeAttrArgs),
}

/// Arguments of `ehr attributes assign`.
#[derive(Debug, clap::Args)]
pub struct AssignArgs {
    /// Who receives the attributes.
    #[arg(long, value_name = "HEX")]
    pub participant: String,
    /// The attributes (such as `role:researcher`).
    #[arg(required = true, value_name = "ATTRIBUTE")]
    pub attributes: Vec<String>,
    /// The first ledger height at which they no longer hold.
    #[arg(long, value_name = "HEIGHT")]
    pub expiry_height: Option<u64>,
    #[command(flatten)]
    pub common: Common,
}

/// Arguments of `ehr attributes revoke`.
#[derive(Debug, clap::Args)]
pub struct RevokeAttrArgs {
    /// Whose attributes.
    #[arg(long, value_name = "HEX")]
    pub participant: String,
    /// The attributes to remove.
    #[arg(required = true, value_name = "ATTRIBUTE")]
    pub attributes: Vec<String>,
    #[command(flatten)]
    pub common: Common,
}

fn check_attributes(attrs: &[String]) -> Result<(), ClientError> {
    for a in attrs {
        ehr_ledger::tx::check_attribute(a)
            .map_err(|e| ClientError::input(format!("attribute `{a}`"), e.reason))?;
    }
    Ok(())
}

/// Runs `ehr attributes ...`.
pub fn run_attributes(cmd: AttributesCmd) -> anyhow::Result<()> {
    block_on(async move {
        let (common, participant, attributes, kind_name) = match &cmd {
            AttributesCmd::Assign(a) => (&a.common, &a.participant, &a.attributes, "assigned"),
            AttributesCmd::Revoke(a) => (&a.common, &a.participant, &a.attributes, "revoked"),
        };
        let who = participant_arg("--participant", participant)?;
        check_attributes(attributes)?;
        let (id, _) = common.identity()?;
        let api = common.api(&id)?;
        let kind = match &cmd {
            AttributesCmd::Assign(a) => TxKind::AssignAttributes {
                participant: who,
                attributes: a.attributes.clone(),
                expiry_height: a.expiry_height,
            },
            AttributesCmd::Revoke(a) => TxKind::RevokeAttributes {
                participant: who,
                attributes: a.attributes.clone(),
            },
        };
        let out = sign_and_submit(&api, &id, kind).await?;
        eprintln!(
            "{kind_name} {} attribute(s) for {who} at height {} (tx {})",
            attributes.len(),
            out.height,
            out.tx_id
        );
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// grant, revoke
// ---------------------------------------------------------------------------------------------

/// Arguments of `ehr grant`.
#[derive(Debug, clap::Args)]
#[command(after_long_help = "\
Example:
  ehr grant bafy... --to <64 hex participant id> --expires-in-blocks 1000 --identity hospital.json

Only the record's owner hospital (through its own node) or its patient may grant. The node
rewraps the record's data key for the grantee alone; the grantee reads it with `ehr get`.")]
pub struct GrantArgs {
    /// The record's CID.
    pub cid: String,
    /// Who may read it.
    #[arg(long, value_name = "HEX")]
    pub to: String,
    /// How many blocks the grant lasts.
    #[arg(long, value_name = "N", default_value_t = 100_000)]
    pub expires_in_blocks: u64,
    /// The first ledger height at which the grant no longer holds (instead of
    /// --expires-in-blocks).
    #[arg(long, value_name = "HEIGHT", conflicts_with = "expires_in_blocks")]
    pub expiry_height: Option<u64>,
    #[command(flatten)]
    pub common: Common,
}

/// Arguments of `ehr revoke`.
#[derive(Debug, clap::Args)]
pub struct RevokeArgs {
    /// The grant id (as `ehr grant` printed it).
    #[arg(value_name = "GRANT")]
    pub grant: String,
    #[command(flatten)]
    pub common: Common,
}

fn check_cid(cid: &str) -> Result<Vec<u8>, ClientError> {
    let c = ehr_storage::blockstore::Cid::try_from(cid.trim())
        .map_err(|e| ClientError::input("CID", format!("`{cid}` is not a CID: {e}")))?;
    Ok(c.to_bytes())
}

/// Parses a CID argument into its binary form.
pub fn cid_bytes(cid: &str) -> Result<Vec<u8>, ClientError> {
    check_cid(cid)
}

/// Runs `ehr grant`.
pub fn run_grant(a: GrantArgs) -> anyhow::Result<()> {
    block_on(async move {
        check_cid(&a.cid)?;
        let grantee = participant_arg("--to", &a.to)?;
        let (id, _) = a.common.identity()?;
        let out = a
            .common
            .api(&id)?
            .grant(a.cid.trim(), &grantee, a.expiry_height, a.expires_in_blocks)
            .await?;
        eprintln!("granted at height {} (tx {})", out.height, out.tx_id);
        println!("{}", out.grant);
        Ok(())
    })
}

/// Runs `ehr revoke`.
pub fn run_revoke(a: RevokeArgs) -> anyhow::Result<()> {
    block_on(async move {
        let g = a.grant.trim();
        if g.len() != 64 || !g.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ClientError::input("GRANT", "must be 64 hex digits (a grant id)").into());
        }
        let (id, _) = a.common.identity()?;
        let v = a.common.api(&id)?.revoke_grant(g).await?;
        match v.get("height").and_then(|h| h.as_u64()) {
            Some(h) => eprintln!("grant {g} revoked at height {h}"),
            None => eprintln!("grant {g} revoked"),
        }
        Ok(())
    })
}
