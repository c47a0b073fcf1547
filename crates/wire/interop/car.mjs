// The IPLD reference CAR implementation (@ipld/car) against ecomesh-wire's files:
//   node car.mjs read FILE...   prints one JSON line per file: its version, roots
//                               (CID text) and blocks (CID text, length, and whether
//                               a sha2-256 block's bytes hash to its CID)
//   node car.mjs write FILE     writes a CAR with a dag-cbor root block and a raw
//                               block, and prints them as JSON
import fs from 'node:fs'
import { CarReader, CarWriter } from '@ipld/car'
import { CID } from 'multiformats/cid'
import { sha256 } from 'multiformats/hashes/sha2'

const [cmd, ...args] = process.argv.slice(2)
const same = (a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)) === 0

if (cmd === 'read') {
  for (const f of args) {
    const r = await CarReader.fromBytes(fs.readFileSync(f))
    const blocks = []
    for await (const { cid, bytes } of r.blocks()) {
      let verified = null
      if (cid.multihash.code === sha256.code) {
        verified = same((await sha256.digest(bytes)).digest, cid.multihash.digest)
      }
      blocks.push({ cid: cid.toString(), len: bytes.length, verified })
    }
    const roots = (await r.getRoots()).map(String)
    console.log(JSON.stringify({ file: f, version: r.version, roots, blocks }))
  }
} else if (cmd === 'write') {
  // {"a": 1} in DAG-CBOR, and three raw bytes.
  const cbor = Uint8Array.from([0xa1, 0x61, 0x61, 0x01])
  const raw = Uint8Array.from([1, 2, 3])
  const c1 = CID.create(1, 0x71, await sha256.digest(cbor))
  const c2 = CID.create(1, 0x55, await sha256.digest(raw))
  const { writer, out } = CarWriter.create([c1])
  const chunks = []
  const drained = (async () => { for await (const c of out) chunks.push(c) })()
  await writer.put({ cid: c1, bytes: cbor })
  await writer.put({ cid: c2, bytes: raw })
  await writer.close()
  await drained
  fs.writeFileSync(args[0], Buffer.concat(chunks))
  console.log(JSON.stringify({ roots: [c1.toString()], blocks: [c1.toString(), c2.toString()] }))
} else {
  console.error('usage: node car.mjs read FILE... | write FILE')
  process.exit(2)
}
