//! Block exchange between the consortium's nodes: one block per request over a libp2p
//! request-response protocol, [`PROTOCOL`], beside bitswap.
//!
//! Why not bitswap alone: rust-ipfs 0.16's bitswap keeps one session per peer in a keyed
//! stream map whose `remove` leaves the key behind. After a peer's last connection closes (the
//! peer restarted, a link dropped), the key still answers "present" while the session is gone,
//! so no new session is ever made for that peer: this node neither asks it for blocks nor
//! answers its requests again until this process restarts. A node that restarts would never
//! exchange blocks with the others again, and replication would stop. Request-response keeps
//! no per-peer state beyond one request, so a reconnect is just a reconnect.
//!
//! Wire format (version 1): the request is the binary CID of one block (CIDv1, raw or dag-pb
//! codec, at most [`MAX_REQUEST`] bytes); the response is one tag byte, `1` followed by the
//! block's bytes, or `0` when the block is not held (an empty response cannot be sent). The
//! requester hash-checks every block against its CID before storing it, so a lying peer can
//! only withhold, never corrupt. Bitswap stays: it serves other IPFS implementations (Kubo,
//! Helia), and a fetch falls back to it when no peer answers here.

use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use rust_ipfs::{Ipfs, PeerId, RequestResponseConfig};
use tokio::sync::Semaphore;
use tracing::debug;

use super::{Cid, Inner, dag};
use crate::error::StoreError;

/// The protocol name.
pub const PROTOCOL: &str = "/ehr/blocks/1.0.0";
/// Largest request: a CIDv1 with a 64-byte digest takes under 80 bytes.
const MAX_REQUEST: usize = 128;
/// Largest response: a tag byte and a block of up to 2 MiB (the IPFS block-size limit Kubo
/// and bitswap use; this store writes 256 KiB leaves and much smaller DAG-PB nodes).
const MAX_RESPONSE: usize = 1 + 2 * 1024 * 1024;
/// How long one request may take before the next provider is asked.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests served at once; more wait (the requester's timeout bounds the wait).
const SERVE_CONCURRENCY: usize = 32;

const FOUND: u8 = 1;
const NOT_FOUND: u8 = 0;

/// The protocol's configuration for the swarm builder.
pub(super) fn config() -> RequestResponseConfig {
    RequestResponseConfig::new(PROTOCOL)
        .set_timeout(REQUEST_TIMEOUT)
        .set_max_request_size(MAX_REQUEST)
        .set_max_response_size(MAX_RESPONSE)
}

/// Parses a request: one CID of a codec this store holds.
fn parse_request(bytes: &[u8]) -> Option<Cid> {
    let cid = Cid::try_from(bytes).ok()?;
    dag::check_file_codec(&cid).ok().map(|()| cid)
}

/// Encodes a response.
fn response(block: Option<&[u8]>) -> Bytes {
    match block {
        Some(data) => {
            let mut out = Vec::with_capacity(1 + data.len());
            out.push(FOUND);
            out.extend_from_slice(data);
            Bytes::from(out)
        }
        None => Bytes::from_static(&[NOT_FOUND]),
    }
}

/// Decodes a response to a request for `cid`: the block's bytes, checked against the CID, or
/// `None` when the peer does not hold it.
fn parse_response(cid: &Cid, bytes: &Bytes) -> Result<Option<Bytes>, StoreError> {
    match bytes.split_first() {
        Some((&FOUND, data)) => {
            dag::verify_block(cid, data)?;
            // the block shares the response's buffer (no copy)
            Ok(Some(bytes.slice(1..)))
        }
        Some((&NOT_FOUND, [])) => Ok(None),
        _ => Err(StoreError::Network(format!(
            "a peer answered a request for {cid} with a malformed response"
        ))),
    }
}

/// Answers every request on `requests` with the local block, while the store lives.
pub(super) async fn serve(
    inner: Weak<Inner>,
    mut requests: BoxStream<'static, (PeerId, rust_ipfs::InboundRequestId, Bytes)>,
) {
    let slots = Arc::new(Semaphore::new(SERVE_CONCURRENCY));
    while let Some((peer, id, request)) = requests.next().await {
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        tokio::spawn(async move {
            let block = match parse_request(&request) {
                Some(cid) => match inner.ipfs.repo().get_block_now(cid).await {
                    Ok(Some(b)) if dag::verify_block(&cid, b.data()).is_ok() => Some(b),
                    Ok(_) => None,
                    Err(e) => {
                        debug!(%cid, error = %e, "cannot read a requested block");
                        None
                    }
                },
                None => {
                    debug!(%peer, "malformed block request");
                    None
                }
            };
            let answer = response(block.as_ref().map(|b| b.data()));
            if let Err(e) = inner.ipfs.send_response(peer, id, (PROTOCOL, answer)).await {
                debug!(%peer, error = %e, "cannot answer a block request");
            }
            drop(permit);
        });
    }
}

/// Asks `providers` in turn for the block `cid` and returns its (hash-checked) bytes from the
/// first that holds it.
pub(super) async fn fetch(
    ipfs: &Ipfs,
    cid: &Cid,
    providers: &[PeerId],
) -> Result<Bytes, StoreError> {
    let mut last = String::from("no connected peer to ask");
    for peer in providers {
        let request = Bytes::from(cid.to_bytes());
        match ipfs.send_request(*peer, (PROTOCOL, request)).await {
            Ok(bytes) => match parse_response(cid, &bytes) {
                Ok(Some(data)) => return Ok(data),
                Ok(None) => last = format!("{peer} does not hold it"),
                Err(e) => last = format!("{peer}: {e}"),
            },
            Err(e) => last = format!("{peer}: {e}"),
        }
    }
    Err(StoreError::Network(format!(
        "no peer served block {cid}: {last}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dag::raw_cid;
    use multihash_codetable::{Code, MultihashDigest};

    #[test]
    fn requests_name_one_block_of_a_stored_codec() {
        let cid = raw_cid(b"x");
        assert_eq!(parse_request(&cid.to_bytes()), Some(cid));
        assert_eq!(parse_request(b""), None);
        assert_eq!(parse_request(&[0xff; 40]), None);
        let cbor = Cid::new_v1(0x71, Code::Sha2_256.digest(b"x"));
        assert_eq!(
            parse_request(&cbor.to_bytes()),
            None,
            "dag-cbor is not stored here"
        );
        assert!(cid.to_bytes().len() <= MAX_REQUEST);
    }

    #[test]
    fn responses_round_trip_and_are_hash_checked() {
        let data = b"sealed bytes";
        let cid = raw_cid(data);
        let got = parse_response(&cid, &response(Some(data))).expect("valid");
        assert_eq!(got.as_deref(), Some(&data[..]));
        assert_eq!(parse_response(&cid, &response(None)).expect("valid"), None);

        let lie = response(Some(b"other bytes"));
        assert!(matches!(
            parse_response(&cid, &lie),
            Err(StoreError::HashMismatch { .. })
        ));
        for bad in [&[][..], &[0, 1][..], &[2, 1, 2][..]] {
            assert!(
                matches!(
                    parse_response(&cid, &Bytes::copy_from_slice(bad)),
                    Err(StoreError::Network(_))
                ),
                "{bad:?}"
            );
        }
    }
}
