//! The upload pipeline and the other operations the HTTP API calls.
//!
//! Upload: keywords (extracted by [`crate::fhir`]) → seal under a fresh data key, with the
//! capsule id as the seal context → add to the blockstore (pinned) → wrap the data key under
//! the capsule's policy (with the node's current CP-ABE wrapped key-encryption key, see
//! [`crate::recordkey`]), the associated data binding capsule and CID → labels from
//! the capsule's epoch key and the counters → the data key, encrypted, into the owner key store
//! → a `RegisterRecord` transaction → its commit. A failure after the add unpins the DAG (GC
//! collects it): the ledger never names a record whose blocks this node does not hold, and no
//! record is left half registered. Plaintext lives only in memory.
//!
//! [`NodeCtx::upload_plain_atomic`] does the same for several records at once (a FHIR
//! transaction Bundle) and registers them in ONE `RegisterRecords` transaction: the ledger
//! applies all of them or none, and a failure anywhere unpins every DAG of the request.
//!
//! # From FHIR keywords to search keywords
//! The search layer knows two fields. [`search_keywords`] maps each extracted FHIR keyword:
//! - a `system|code` token (codings, identifiers) → `Keyword::code("system|code")` (the same
//!   token found in any element: search `http://loinc.org|1234-5`);
//! - a primitive code without a system (`Patient.gender` = `female`, `_type` = `Observation`)
//!   → `Keyword::code("<field>|<value>")`, e.g. `Patient.gender|female`, `_type|Observation`;
//! - a normalised text (`...:text` fields) → one `Keyword::text(word)` per word.

use ehr_ledger::app::TxOutcome;
use ehr_ledger::tx::{
    Cid as LedgerCid, MAX_RECORDS_PER_TX, MAX_TX_BYTES, NewRecord, ParticipantId, TxKind,
};
use ehr_search::sse::{self, Keyword, Trapdoor};
use ehr_storage::blockstore::Cid;
use ehr_storage::seal::{self, DataKey, SealContext};

use super::NodeCtx;
use crate::blocking;
use crate::ledger_net::{Committed, NetError};
use crate::recordkey::{Encapsulated, Kek};

/// Domain separation of a record data key's associated data (shared with clients).
pub const RECORD_KEY_AAD_PREFIX: &[u8] = b"ehr/record-key/v1";

/// The associated data binding a wrapped data key to its capsule and CID.
pub fn record_key_aad(capsule: &[u8; 32], cid: &[u8]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(RECORD_KEY_AAD_PREFIX.len() + 32 + cid.len());
    aad.extend_from_slice(RECORD_KEY_AAD_PREFIX);
    aad.extend_from_slice(capsule);
    aad.extend_from_slice(cid);
    aad
}

/// Why an operation failed; the HTTP layer maps each kind to a status.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// The request is wrong: which field and why (400).
    #[error("{field}: {reason}")]
    Input {
        /// The field.
        field: String,
        /// Why.
        reason: String,
    },
    /// Not allowed (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such thing (404).
    #[error("{0}")]
    NotFound(String),
    /// The ledger refused or rejected the transaction (409 / 422).
    #[error("{code}: {reason}")]
    Rejected {
        /// The ledger's reject code.
        code: String,
        /// Its reason.
        reason: String,
    },
    /// Temporarily unavailable (503).
    #[error("{0}")]
    Unavailable(String),
    /// The request is too large to handle as one unit (413): what and the limit.
    #[error("{0}")]
    TooLarge(String),
    /// A failure inside the node (500); details are logged, not returned.
    #[error("{0}")]
    Internal(String),
    /// A transaction was submitted but its commit was not seen (503): it may still commit, so
    /// nothing it refers to may be discarded.
    #[error("{0}")]
    OutcomeUnknown(String),
}

impl OpError {
    /// An input error.
    pub fn input(field: impl Into<String>, reason: impl Into<String>) -> Self {
        OpError::Input {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// Whether the operation may still take effect on the ledger (its transaction was
    /// submitted and its commit not seen): an upload must then keep its blocks pinned, or the
    /// ledger could name a record that no node stores.
    pub fn may_have_committed(&self) -> bool {
        matches!(self, OpError::OutcomeUnknown(_))
    }
}

impl From<NetError> for OpError {
    fn from(e: NetError) -> Self {
        match e {
            NetError::Refused(r) => OpError::Rejected {
                code: "refused".into(),
                reason: r,
            },
            NetError::Overloaded => OpError::Unavailable("the ledger is overloaded".into()),
            NetError::Timeout(d) => OpError::OutcomeUnknown(format!(
                "the ledger did not commit within {d:?} (the transaction may still commit)"
            )),
            NetError::DriverStopped => OpError::OutcomeUnknown(
                "the ledger driver stopped (a submitted transaction may still commit)".into(),
            ),
            other => OpError::Unavailable(other.to_string()),
        }
    }
}

/// A registered record.
#[derive(Debug, Clone)]
pub struct Uploaded {
    /// The CID.
    pub cid: Cid,
    /// The committing height.
    pub height: u64,
    /// The transaction id.
    pub tx_id: [u8; 32],
    /// The capsule.
    pub capsule: [u8; 32],
    /// The epoch of its labels.
    pub epoch: u64,
    /// How many labels it carries.
    pub labels: usize,
    /// Sealed size in bytes.
    pub size: u64,
}

/// Maps FHIR keywords to search keywords (see the module docs). Keywords the search layer
/// refuses (too long) are skipped.
pub fn search_keywords(kws: &[crate::fhir::Keyword]) -> Vec<Keyword> {
    let mut out = Vec::with_capacity(kws.len());
    for k in kws {
        if k.field.ends_with(":text") {
            out.extend(
                k.value
                    .split_whitespace()
                    .filter_map(|w| Keyword::text(w).ok()),
            );
        } else if k.value.contains('|') {
            out.extend(Keyword::code(&k.value).ok());
        } else {
            let mut t =
                zeroize::Zeroizing::new(String::with_capacity(k.field.len() + 1 + k.value.len()));
            t.push_str(&k.field);
            t.push('|');
            t.push_str(&k.value);
            out.extend(Keyword::code(&t).ok());
        }
    }
    out
}

/// A record of an atomic upload, stored and wrapped, waiting to be registered.
struct Prepared {
    cid: Cid,
    key: DataKey,
    wrapped: Vec<u8>,
    labels: Vec<[u8; 16]>,
    size: u64,
}

fn committed_outcome(c: Committed) -> Result<Committed, OpError> {
    match &c.outcome {
        TxOutcome::Applied => Ok(c),
        TxOutcome::Rejected(r) => Err(OpError::Rejected {
            code: r.code.to_owned(),
            reason: r.reason.clone(),
        }),
    }
}

impl NodeCtx {
    /// Checks the `policy` (capsule id) a request names: only this hospital's capsule.
    pub fn resolve_capsule(&self, policy: Option<&str>) -> Result<[u8; 32], OpError> {
        if !self
            .capsule_published
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(OpError::Unavailable(
                "the hospital's capsule is not published yet".into(),
            ));
        }
        match policy {
            None => Ok(self.capsule.id),
            Some(p) => {
                let mut id = [0u8; 32];
                hex::decode_to_slice(p, &mut id).map_err(|_| {
                    OpError::input("policy", "must be a capsule id (64 hex digits)")
                })?;
                if id != self.capsule.id {
                    return Err(OpError::input(
                        "policy",
                        "not a capsule of this node's hospital",
                    ));
                }
                Ok(id)
            }
        }
    }

    /// Seals, stores, wraps, indexes and registers one plaintext record.
    pub async fn upload_plain(
        &self,
        plaintext: Vec<u8>,
        keywords: Vec<Keyword>,
        capsule: [u8; 32],
        patient: Option<ParticipantId>,
    ) -> Result<Uploaded, OpError> {
        let (key, added) = self.seal_and_store(plaintext, capsule).await?;
        let cid = added.cid;
        let result = self
            .wrap_label_register(cid, key, keywords, capsule, added.size, patient)
            .await;
        self.settle_failed(result, &[cid]).await
    }

    /// Seals, stores, wraps and indexes every plaintext of `docs`, then registers them all in
    /// one `RegisterRecords` transaction: all are registered, or none (every DAG unpinned).
    pub async fn upload_plain_atomic(
        &self,
        docs: Vec<(Vec<u8>, Vec<Keyword>)>,
        capsule: [u8; 32],
        patient: Option<ParticipantId>,
    ) -> Result<Vec<Uploaded>, OpError> {
        if docs.is_empty() {
            return Err(OpError::input("body", "holds no resource"));
        }
        if docs.len() > MAX_RECORDS_PER_TX {
            return Err(OpError::TooLarge(format!(
                "a transaction registers at most {MAX_RECORDS_PER_TX} records atomically, this \
                 one has {}: split it, or send a batch Bundle (entries registered one by one)",
                docs.len()
            )));
        }
        let prepared = futures::future::join_all(
            docs.into_iter()
                .map(|(plaintext, keywords)| self.prepare_plain(plaintext, keywords, capsule)),
        )
        .await;
        let mut ready = Vec::with_capacity(prepared.len());
        let mut first_err = None;
        for p in prepared {
            match p {
                Ok(p) => ready.push(p),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            self.unpin_all(&ready).await;
            return Err(e);
        }
        let result = self.register_prepared(&ready, capsule, patient).await;
        let cids: Vec<Cid> = ready.iter().map(|p| p.cid).collect();
        self.settle_failed(result, &cids).await
    }

    /// Seals `plaintext` under a fresh data key (on a blocking thread; the plaintext is dropped
    /// there) and adds the envelope to the blockstore, pinned.
    async fn seal_and_store(
        &self,
        plaintext: Vec<u8>,
        capsule: [u8; 32],
    ) -> Result<(DataKey, ehr_storage::blockstore::AddResult), OpError> {
        let (key, sealed) = tokio::task::spawn_blocking(move || {
            let key = DataKey::generate().map_err(|e| OpError::Internal(e.to_string()))?;
            let sealed = seal::seal(&key, &SealContext::new(capsule.to_vec()), &plaintext)
                .map_err(|e| OpError::Internal(format!("sealing: {e}")))?;
            drop(plaintext);
            Ok::<_, OpError>((key, sealed))
        })
        .await
        .map_err(|e| OpError::Internal(e.to_string()))??;
        self.metrics.upload_bytes.inc_by(sealed.len() as u64);
        let added = self
            .blockstore
            .add_bytes(&sealed)
            .await
            .map_err(|e| OpError::Unavailable(format!("storing the sealed record: {e}")))?;
        Ok((key, added))
    }

    /// One record of [`Self::upload_plain_atomic`], stored (pinned) and wrapped, not yet
    /// registered. On failure nothing of it stays pinned.
    async fn prepare_plain(
        &self,
        plaintext: Vec<u8>,
        keywords: Vec<Keyword>,
        capsule: [u8; 32],
    ) -> Result<Prepared, OpError> {
        let (key, added) = self.seal_and_store(plaintext, capsule).await?;
        let cid_bytes = added.cid.to_bytes();
        let wrapped = self.encapsulate(capsule, &cid_bytes, &key).await;
        let labels = wrapped.and_then(|w| {
            blocking(|| {
                self.capsule
                    .epoch_key
                    .labels_for(&keywords, &mut self.counters.counter())
            })
            .map(|l| (w, l))
            .map_err(|e| OpError::Internal(format!("label counters: {e}")))
        });
        drop(keywords);
        match labels {
            Ok((wrapped, labels)) => Ok(Prepared {
                cid: added.cid,
                key,
                wrapped,
                labels: labels.into_iter().map(|l| l.0).collect(),
                size: added.size,
            }),
            Err(e) => {
                self.unpin_quietly(added.cid).await;
                Err(e)
            }
        }
    }

    /// Registers prepared records in one transaction (see [`Self::upload_plain_atomic`]).
    async fn register_prepared(
        &self,
        ready: &[Prepared],
        capsule: [u8; 32],
        patient: Option<ParticipantId>,
    ) -> Result<Vec<Uploaded>, OpError> {
        let epoch = u64::from(self.capsule.epoch_key.epoch());
        let kind = TxKind::RegisterRecords {
            capsule: ehr_ledger::tx::CapsuleId(capsule),
            epoch,
            records: ready
                .iter()
                .map(|p| NewRecord {
                    cid: LedgerCid(p.cid.to_bytes()),
                    wrapped_key: p.wrapped.clone(),
                    search_labels: p.labels.clone(),
                    size: p.size,
                    patient,
                })
                .collect(),
        };
        // Chain id, sender, nonce, version and signature take well under this.
        const ENVELOPE: usize = 512;
        let len = postcard::to_stdvec(&kind)
            .map_err(|e| OpError::Internal(format!("encoding the transaction: {e}")))?
            .len();
        if len + ENVELOPE > MAX_TX_BYTES {
            return Err(OpError::TooLarge(format!(
                "the {} records make a {len}-byte ledger transaction, more than one transaction \
                 may carry ({MAX_TX_BYTES} bytes): send fewer entries per transaction Bundle, or \
                 a batch Bundle (entries registered one by one)",
                ready.len()
            )));
        }
        let keys: Vec<(Vec<u8>, &DataKey)> =
            ready.iter().map(|p| (p.cid.to_bytes(), &p.key)).collect();
        blocking(|| self.owner_keys.put_many(&keys))
            .map_err(|e| OpError::Internal(e.to_string()))?;
        let committed = committed_outcome(self.hospital.submit(kind).await?)?;
        self.metrics.records_uploaded.inc_by(ready.len() as u64);
        Ok(ready
            .iter()
            .map(|p| Uploaded {
                cid: p.cid,
                height: committed.height,
                tx_id: committed.tx_id,
                capsule,
                epoch,
                labels: p.labels.len(),
                size: p.size,
            })
            .collect())
    }

    /// Wraps a new record's data key under the capsule's policy with the current KEK
    /// ([`crate::recordkey`]), first making a new KEK (one CP-ABE wrap, on a blocking thread)
    /// when there is none or it is used up.
    async fn encapsulate(
        &self,
        capsule: [u8; 32],
        cid: &[u8],
        key: &DataKey,
    ) -> Result<Vec<u8>, OpError> {
        let mut slot = self.kek.lock().await;
        let usable = slot
            .as_ref()
            .is_some_and(|k| k.is_fresh() && k.capsule() == &capsule);
        if !usable {
            let pp = self.consortium.abe_params.clone();
            let policy = self.capsule.policy.clone();
            let kek = tokio::task::spawn_blocking(move || {
                Kek::generate(&pp, &policy, capsule, &mut rand::rngs::OsRng)
                    .map_err(|e| OpError::Internal(format!("wrapping a key-encryption key: {e}")))
            })
            .await
            .map_err(|e| OpError::Internal(e.to_string()))??;
            *slot = Some(kek);
        }
        let kek = slot
            .as_mut()
            .expect("invariant: a usable KEK was just ensured");
        Ok(kek.wrap(cid, key.expose_secret(), &mut rand::rngs::OsRng))
    }

    /// After a registration attempt: on a definite failure the stored DAGs of `cids` are
    /// unpinned (garbage); when the transaction may still commit they stay pinned (the ledger
    /// may name them) and the error tells the client which records to look up before uploading
    /// again.
    async fn settle_failed<T>(
        &self,
        result: Result<T, OpError>,
        cids: &[Cid],
    ) -> Result<T, OpError> {
        match result {
            Ok(v) => Ok(v),
            Err(OpError::OutcomeUnknown(d)) => {
                tracing::warn!(
                    records = cids.len(),
                    first = %cids.first().map(|c| c.to_string()).unwrap_or_default(),
                    "registration outcome unknown; the stored records stay pinned"
                );
                let which = match cids {
                    [one] => format!("record {one} stays stored; look it up"),
                    [first, ..] => format!(
                        "{} records (the first is {first}) stay stored; look them up",
                        cids.len()
                    ),
                    [] => "upload stored nothing; look it up".to_owned(),
                };
                Err(OpError::OutcomeUnknown(format!(
                    "{d}: the {which} (GET /v1/records/{{cid}}) before uploading again"
                )))
            }
            Err(e) => {
                for cid in cids {
                    self.unpin_quietly(*cid).await;
                }
                Err(e)
            }
        }
    }

    async fn unpin_all(&self, prepared: &[Prepared]) {
        for p in prepared {
            self.unpin_quietly(p.cid).await;
        }
    }

    async fn unpin_quietly(&self, cid: Cid) {
        if let Err(e) = self.blockstore.unpin(cid).await {
            tracing::warn!(%cid, error = %e, "cannot unpin an unregistered upload");
        }
    }

    async fn wrap_label_register(
        &self,
        cid: Cid,
        key: DataKey,
        keywords: Vec<Keyword>,
        capsule: [u8; 32],
        size: u64,
        patient: Option<ParticipantId>,
    ) -> Result<Uploaded, OpError> {
        let cid_bytes = cid.to_bytes();
        let wrapped = self.encapsulate(capsule, &cid_bytes, &key).await?;
        let labels = blocking(|| {
            self.capsule
                .epoch_key
                .labels_for(&keywords, &mut self.counters.counter())
        })
        .map_err(|e| OpError::Internal(format!("label counters: {e}")))?;
        drop(keywords);
        blocking(|| self.owner_keys.put(&cid_bytes, &key))
            .map_err(|e| OpError::Internal(e.to_string()))?;
        drop(key);
        let labels: Vec<[u8; 16]> = labels.into_iter().map(|l| l.0).collect();
        self.register(cid, wrapped, labels, capsule, size, patient)
            .await
    }

    async fn register(
        &self,
        cid: Cid,
        wrapped_key: Vec<u8>,
        labels: Vec<[u8; 16]>,
        capsule: [u8; 32],
        size: u64,
        patient: Option<ParticipantId>,
    ) -> Result<Uploaded, OpError> {
        let epoch = u64::from(self.capsule.epoch_key.epoch());
        let n = labels.len();
        let committed = self
            .hospital
            .submit(TxKind::RegisterRecord {
                cid: LedgerCid(cid.to_bytes()),
                capsule: ehr_ledger::tx::CapsuleId(capsule),
                epoch,
                wrapped_key,
                search_labels: labels,
                size,
                patient,
            })
            .await?;
        let c = committed_outcome(committed)?;
        self.metrics.records_uploaded.inc();
        Ok(Uploaded {
            cid,
            height: c.height,
            tx_id: c.tx_id,
            capsule,
            epoch,
            labels: n,
            size,
        })
    }

    /// Registers a record the client sealed itself: `sealed` (an envelope), its data key
    /// already wrapped under the capsule's policy, and the keyword keys `K_{w,e}` of its
    /// keywords (the node allocates counters and derives labels; it never learns keywords).
    pub async fn upload_sealed(
        &self,
        sealed: Vec<u8>,
        wrapped_key: Vec<u8>,
        keyword_keys: Vec<zeroize::Zeroizing<[u8; 32]>>,
        capsule: [u8; 32],
        patient: Option<ParticipantId>,
    ) -> Result<Uploaded, OpError> {
        if sealed.len() < seal::HEADER_LEN || sealed[..8] != seal::MAGIC {
            return Err(OpError::input("body", "not a sealed envelope (bad magic)"));
        }
        let wk = Encapsulated::parse(&wrapped_key)
            .map_err(|e| OpError::input("ehr-wrapped-key", e.to_string()))?;
        if wk.policy().to_string() != self.capsule.policy_text {
            return Err(OpError::input(
                "ehr-wrapped-key",
                "not wrapped under the capsule's policy",
            ));
        }
        let epoch = self.capsule.epoch_key.epoch();
        let mut keys = Vec::with_capacity(keyword_keys.len());
        for (i, k) in keyword_keys.iter().enumerate() {
            let mut enc = zeroize::Zeroizing::new(Vec::with_capacity(sse::TRAPDOOR_ENCODED_LEN));
            enc.push(1);
            enc.extend_from_slice(&capsule);
            enc.extend_from_slice(&epoch.to_be_bytes());
            enc.extend_from_slice(&k[..]);
            let t = Trapdoor::from_bytes(&enc)
                .map_err(|e| OpError::input(format!("ehr-keyword-keys[{i}]"), e.to_string()))?;
            keys.push(t.key().clone());
        }
        let mut ids: Vec<_> = keyword_keys.iter().map(|k| **k).collect();
        ids.sort_unstable();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return Err(OpError::input("ehr-keyword-keys", "a key appears twice"));
        }
        self.metrics.upload_bytes.inc_by(sealed.len() as u64);
        let added = self
            .blockstore
            .add_bytes(&sealed)
            .await
            .map_err(|e| OpError::Unavailable(format!("storing the sealed record: {e}")))?;
        let reserved = {
            let refs: Vec<&sse::KeywordKey> = keys.iter().collect();
            blocking(|| self.counters.reserve(&refs))
        };
        let labels = match reserved {
            Ok(cs) => {
                let mut l: Vec<[u8; 16]> = keys.iter().zip(cs).map(|(k, c)| k.label(c).0).collect();
                l.sort_unstable();
                l
            }
            Err(e) => {
                self.unpin_quietly(added.cid).await;
                return Err(OpError::Internal(format!("label counters: {e}")));
            }
        };
        let r = self
            .register(added.cid, wrapped_key, labels, capsule, added.size, patient)
            .await;
        self.settle_failed(r, &[added.cid]).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::Keyword as F;

    #[test]
    fn fhir_keywords_map_to_search_keywords() {
        let got = search_keywords(&[
            F::new("Condition.code", "http://snomed.info/sct|44054006"),
            F::new("Patient.gender", "female"),
            F::new("Condition.code:text", "type 2 diabetes"),
            F::new("_type", "Condition"),
        ]);
        let want = [
            Keyword::code("http://snomed.info/sct|44054006").unwrap(),
            Keyword::code("Patient.gender|female").unwrap(),
            Keyword::text("type").unwrap(),
            Keyword::text("2").unwrap(),
            Keyword::text("diabetes").unwrap(),
            Keyword::code("_type|Condition").unwrap(),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn record_key_aad_binds_capsule_and_cid() {
        let a = record_key_aad(&[1; 32], b"cid");
        assert!(a.starts_with(RECORD_KEY_AAD_PREFIX));
        assert_ne!(a, record_key_aad(&[2; 32], b"cid"));
        assert_ne!(a, record_key_aad(&[1; 32], b"cie"));
    }
}
