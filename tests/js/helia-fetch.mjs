// Live interop: a Helia node dials the given peer over TCP and fetches each CID over bitswap
// (UnixFS cat, which verifies every block). Prints one JSON line per CID:
// {"cid", "bytes", "sha256", "ms"}; exits non-zero on any failure or timeout.
//
// usage: node helia-fetch.mjs MULTIADDR TIMEOUT_MS CID...
import { createHash } from 'node:crypto'
import { multiaddr } from '@multiformats/multiaddr'
import { unixfs } from '@helia/unixfs'
import { CID } from 'multiformats/cid'
import { startHelia } from './helia-node.mjs'

const [addr, timeoutMs, ...cids] = process.argv.slice(2)
if (addr === undefined || cids.length === 0) {
  console.error('usage: node helia-fetch.mjs MULTIADDR TIMEOUT_MS CID...')
  process.exit(2)
}

const helia = await startHelia()
try {
  const signal = AbortSignal.timeout(Number(timeoutMs))
  await helia.libp2p.dial(multiaddr(addr), { signal })
  const fs = unixfs(helia)
  for (const text of cids) {
    const started = performance.now()
    const hash = createHash('sha256')
    let bytes = 0
    for await (const buf of fs.cat(CID.parse(text), { signal })) {
      hash.update(buf)
      bytes += buf.byteLength
    }
    const ms = performance.now() - started
    process.stdout.write(JSON.stringify({ cid: text, bytes, sha256: hash.digest('hex'), ms }) + '\n')
  }
} finally {
  await helia.stop()
}
