// A js-libp2p peer for the ecomesh interop test (crates/transport-internet/tests/interop.rs).
//
// Usage: node peer.mjs <rust node multiaddr ending in /p2p/<id>> <gossipsub topic>
//
// Dials the Rust node over TCP (Noise, Yamux), waits for identify, subscribes to the topic,
// then publishes "js-hello" every 300 ms. Prints one JSON object per line on stdout:
//   {"event":"identified","peer":...,"agent":...,"protocols":[...]}
//   {"event":"message","from":...,"data":...}   for each GossipSub message received
// Exits when stdin closes (the Rust test ends it) or after 120 s.
import './polyfill.mjs'
import { createLibp2p } from 'libp2p'
import { tcp } from '@libp2p/tcp'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { identify } from '@libp2p/identify'
import { ping } from '@libp2p/ping'
import { gossipsub } from '@libp2p/gossipsub'
import { multiaddr } from '@multiformats/multiaddr'

const [target, topic] = process.argv.slice(2)
if (!target || !topic) {
  console.error('usage: node peer.mjs <multiaddr> <topic>')
  process.exit(2)
}
const out = (o) => process.stdout.write(JSON.stringify(o) + '\n')

const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    ping: ping(),
    pubsub: gossipsub({ emitSelf: false, allowPublishToZeroTopicPeers: true })
  }
})

const remote = multiaddr(target)
const remotePeer = remote.getComponents().find((c) => c.name === 'p2p')?.value

node.addEventListener('peer:identify', (evt) => {
  const d = evt.detail
  if (d.peerId.toString() === remotePeer) {
    out({ event: 'identified', peer: d.peerId.toString(), agent: d.agentVersion, protocols: d.protocols })
  }
})

node.services.pubsub.subscribe(topic)
node.services.pubsub.addEventListener('message', (evt) => {
  const m = evt.detail
  out({
    event: 'message',
    topic: m.topic,
    from: m.type === 'signed' ? m.from.toString() : null,
    data: new TextDecoder().decode(m.data)
  })
})

await node.start()
out({ event: 'started', peer: node.peerId.toString() })
await node.dial(remote)

const timer = setInterval(() => {
  node.services.pubsub.publish(topic, new TextEncoder().encode('js-hello')).catch(() => {})
}, 300)

const finish = async () => {
  clearInterval(timer)
  await node.stop()
  process.exit(0)
}
process.stdin.on('end', finish)
process.stdin.on('close', finish)
process.stdin.resume()
setTimeout(finish, 120_000)
