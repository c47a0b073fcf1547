// A js-libp2p Kademlia peer (@libp2p/kad-dht, the IPFS DHT protocol /ipfs/kad/1.0.0) for
// the ecomesh DHT interop test (crates/transport-internet/tests/dht_interop.rs).
//
// Usage: node dht-peer.mjs <rust node multiaddr ending in /p2p/<id>> <cid to find> <cid to provide>
//
// Dials the Rust node over TCP (Noise, Yamux) and runs the DHT in server mode with
// loopback addresses kept. Then, until stdin closes (or 120 s pass):
// - announces itself as provider of <cid to provide>, printing
//     {"event":"provided","cid":...}   once the announcement completed;
// - asks the DHT for providers of <cid to find> every 500 ms, printing
//     {"event":"providers","cid":...,"peers":[...]}   for each answer with providers.
// Other lines: {"event":"started","peer":...}, {"event":"error","what":...,"message":...}.
import './polyfill.mjs'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { kadDHT, passthroughMapper } from '@libp2p/kad-dht'
import { multiaddr } from '@multiformats/multiaddr'
import { CID } from 'multiformats/cid'

const [target, findText, provideText] = process.argv.slice(2)
if (!target || !findText || !provideText) {
  console.error('usage: node dht-peer.mjs <multiaddr> <cid to find> <cid to provide>')
  process.exit(2)
}
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')
const toFind = CID.parse(findText)
const toProvide = CID.parse(provideText)

const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    ping: ping(),
    dht: kadDHT({
      protocol: '/ipfs/kad/1.0.0',
      clientMode: false,
      peerInfoMapper: passthroughMapper
    })
  }
})

await node.start()
out({ event: 'started', peer: node.peerId.toString() })
await node.dial(multiaddr(target))

let stopped = false
let provided = false
const loop = async () => {
  while (!stopped) {
    if (!provided) {
      try {
        await node.contentRouting.provide(toProvide, { signal: AbortSignal.timeout(5000) })
        provided = true
        out({ event: 'provided', cid: toProvide.toString() })
      } catch (e) {
        out({ event: 'error', what: 'provide', message: String(e?.message ?? e) })
      }
    }
    try {
      const peers = []
      for await (const p of node.contentRouting.findProviders(toFind, { signal: AbortSignal.timeout(5000) })) {
        peers.push(p.id.toString())
      }
      if (peers.length > 0) {
        out({ event: 'providers', cid: toFind.toString(), peers })
      }
    } catch (e) {
      out({ event: 'error', what: 'findProviders', message: String(e?.message ?? e) })
    }
    await new Promise((resolve) => setTimeout(resolve, 500))
  }
}
loop()

const finish = async () => {
  stopped = true
  await node.stop()
  process.exit(0)
}
process.stdin.on('end', finish)
process.stdin.on('close', finish)
process.stdin.resume()
setTimeout(finish, 120_000)
