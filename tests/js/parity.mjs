// CID parity reference: prints, one per line, the CID that the JS reference importer
// (ipfs-unixfs-importer) gives each file with Kubo's `ipfs add --cid-version=1` parameters:
// CIDv1, raw leaves, fixed 256 KiB chunks, balanced DAG of 174 links.
//
// usage: node parity.mjs FILE...
import { createReadStream } from 'node:fs'
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'

// Blocks are hashed, then dropped: only the root CID matters here.
const discard = {
  async put (cid) { return cid },
  async has () { return false }
}

const options = {
  cidVersion: 1,
  rawLeaves: true,
  chunker: fixedSize({ chunkSize: 262144 }),
  layout: balanced({ maxChildrenPerNode: 174 }),
  reduceSingleLeafToSelf: true,
  wrapWithDirectory: false
}

for (const path of process.argv.slice(2)) {
  let root
  for await (const entry of importer([{ content: createReadStream(path, { highWaterMark: 1 << 20 }) }], discard, options)) {
    root = entry.cid
  }
  if (root === undefined) throw new Error(`importer produced no root for ${path}`)
  process.stdout.write(`${root.toString()}\n`)
}
