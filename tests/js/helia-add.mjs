// Ingest anchor: Helia's `addBytes` of SIZE_MIB MiB of pseudo-random bytes into an fs
// blockstore in DIR, with Kubo's CIDv1 parameters (raw leaves, 256 KiB chunks, 174 links).
// Prints {"cid", "bytes", "ms", "mb_per_s"} (MB = 10^6 bytes). blockstore-fs writes each
// block to a temporary file and renames it, without fsync.
//
// usage: node helia-add.mjs DIR SIZE_MIB
import { randomFillSync } from 'node:crypto'
import { FsBlockstore } from 'blockstore-fs'
import { unixfs } from '@helia/unixfs'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'
import { startHelia } from './helia-node.mjs'

const [dir, sizeMib] = process.argv.slice(2)
if (dir === undefined || sizeMib === undefined) {
  console.error('usage: node helia-add.mjs DIR SIZE_MIB')
  process.exit(2)
}
const data = new Uint8Array(Number(sizeMib) * 1024 * 1024)
for (let off = 0; off < data.length; off += 65536) {
  randomFillSync(data, off, Math.min(65536, data.length - off))
}

const blockstore = new FsBlockstore(dir)
await blockstore.open()
const helia = await startHelia({ blockstore })
try {
  const started = performance.now()
  const cid = await unixfs(helia).addBytes(data, {
    cidVersion: 1,
    rawLeaves: true,
    chunker: fixedSize({ chunkSize: 262144 }),
    layout: balanced({ maxChildrenPerNode: 174 })
  })
  const ms = performance.now() - started
  process.stdout.write(JSON.stringify({ cid: cid.toString(), bytes: data.length, ms, mb_per_s: data.length / 1e6 / (ms / 1e3) }) + '\n')
} finally {
  await helia.stop()
}
