// A minimal Helia node as a real IPFS peer: TCP, noise, yamux, identify, ping and bitswap.
import { createHeliaLight } from 'helia'
import { withLibp2pLight } from '@helia/libp2p'
import { withBitswap } from '@helia/bitswap'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'

/** Creates and starts a Helia node; `blockstore` is optional (memory by default). */
export async function startHelia ({ blockstore } = {}) {
  let helia = createHeliaLight(blockstore === undefined ? {} : { blockstore })
  helia = withLibp2pLight(helia, {
    addresses: { listen: [] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    services: { identify: identify(), ping: ping() }
  })
  helia = withBitswap(helia)
  await helia.start()
  return helia
}
