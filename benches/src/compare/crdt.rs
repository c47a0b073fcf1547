//! The `crdt` rows of the compare report: dmonad's crdt-benchmarks map
//! workloads B3.1-B3.4 (N = 6000) on `DocumentCrdt` deltas in the compact wire
//! form of `ecomesh-wire`, beside yrs, automerge and loro (feature `anchors`)
//! in the same process.
//!
//! - **B3.1**: 20√N = 1549 clients each set a distinct key to a number; one
//!   replica merges every update.
//! - **B3.2**: the same with an object value (`{name, address}`) per key.
//! - **B3.3**: one client makes N sets over 1000 keys, each its own update;
//!   a replica applies them all.
//! - **B3.4**: two replicas make N/2 sets each (over 1000 keys) and sync both ways.
//!
//! Bytes: update bytes are the sum of every update as it travels on its own
//! from its writer to the receiver (for ecomesh the compact state of the
//! delta, `encode_state_compact`, with the writer as the known author: the
//! link authenticated the sender, so its 32-byte peer id is supplied by the
//! link and not repeated in the update; the receiver decodes with that peer
//! id and nothing else. A context row shows the same updates naming their
//! author in full, as a relayed update would); document bytes the merged document
//! (ecomesh: compact state; yrs: state as update; automerge: `save`; loro:
//! snapshot); sync bytes everything both sides send. Time is one whole
//! workload: the writes, encoding, decoding and merging at the receiver.
//! Context rows (no target) show the compact form against the canonical
//! DAG-CBOR of the same deltas.

use std::time::Duration;

use ecomesh_crdt::{DocumentCrdt, Merge};
use ecomesh_types::{HlcTimestamp, Map, PeerId, Value};
use ecomesh_wire::{
    Limits, decode_document_compact, decode_state_compact, encode, encode_document_compact,
    encode_state_compact,
};
use sha2::{Digest, Sha256};

use super::{Options, Row, Target, seconds_per_call};

/// N of the workloads.
const N: usize = 6000;
/// 20√N clients.
const CLIENTS: usize = 1549;
/// Keys of B3.3 and B3.4.
const KEYS: usize = 1000;
/// Physical time of the first write.
const T0: u64 = 1_767_225_600_000;

/// What one workload produced, in bytes.
#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    updates: usize,
    /// Updates naming their author in full (ecomesh only).
    standalone: usize,
    document: usize,
    sync: usize,
}

/// The workloads.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Workload {
    B31,
    B32,
    B33,
    B34,
}

impl Workload {
    const ALL: [Workload; 4] = [Workload::B31, Workload::B32, Workload::B33, Workload::B34];

    fn name(self) -> &'static str {
        match self {
            Workload::B31 => "B3.1",
            Workload::B32 => "B3.2",
            Workload::B33 => "B3.3",
            Workload::B34 => "B3.4",
        }
    }
}

/// A deterministic 64-bit id for client `i` (as random ids look to a varint).
fn client_hash(i: usize) -> [u8; 32] {
    Sha256::digest((i as u64).to_be_bytes()).into()
}

fn peer(i: usize) -> PeerId {
    PeerId::from_digest(client_hash(i))
}

fn object(i: usize) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), Value::Text(i.to_string()));
    m.insert("address".into(), Value::Text("here".into()));
    Value::Map(m)
}

/// The value client/step `i` writes in workload `w`.
fn ecomesh_value(w: Workload, i: usize) -> Value {
    if w == Workload::B32 {
        object(i)
    } else {
        Value::Integer(i as i64)
    }
}

fn key(w: Workload, i: usize) -> String {
    match w {
        Workload::B31 | Workload::B32 => format!("v{i}"),
        Workload::B33 | Workload::B34 => format!("k{}", i % KEYS),
    }
}

/// Applies `bytes` (a standalone compact state) at a receiver.
fn receive(state: &mut DocumentCrdt, bytes: &[u8]) {
    let delta = decode_document_compact(bytes, &Limits::DEFAULT).expect("own encoding decodes");
    state.merge(&delta);
}

/// Applies `bytes` (an update in compact form) received from `sender`, the
/// peer the link authenticated.
fn receive_from(state: &mut DocumentCrdt, bytes: &[u8], sender: &PeerId) {
    let delta =
        decode_state_compact(bytes, Some(sender), &Limits::DEFAULT).expect("own encoding decodes");
    state.merge(&delta);
}

fn one_write(doc: &mut DocumentCrdt, k: String, v: Value, ts: HlcTimestamp) -> DocumentCrdt {
    let mut m = Map::new();
    m.insert(k, v);
    doc.update(m, ts).expect("a plain write succeeds")
}

/// Runs workload `w` on ecomesh; `canonical` also sums the canonical
/// DAG-CBOR sizes (for the context rows).
fn ecomesh(w: Workload, canonical: bool) -> (Figures, Figures) {
    let mut f = Figures::default();
    let mut c = Figures::default();
    let count = |f: &mut Figures, c: &mut Figures, delta: &DocumentCrdt, author: &PeerId| {
        let bytes = encode_state_compact(delta, Some(author)).expect("encodes");
        f.updates += bytes.len();
        if canonical {
            c.updates += encode(delta).expect("encodes").len();
            f.standalone += encode_document_compact(delta).expect("encodes").len();
        }
        bytes
    };
    let mut receiver = DocumentCrdt::new();
    match w {
        Workload::B31 | Workload::B32 => {
            for i in 0..CLIENTS {
                let mut doc = DocumentCrdt::new();
                let me = peer(i);
                let ts = HlcTimestamp::new(T0 + i as u64, 0, me);
                let delta = one_write(&mut doc, key(w, i), ecomesh_value(w, i), ts);
                let bytes = count(&mut f, &mut c, &delta, &me);
                receive_from(&mut receiver, &bytes, &me);
            }
        }
        Workload::B33 => {
            let mut doc = DocumentCrdt::new();
            let me = peer(0);
            for i in 0..N {
                let ts = HlcTimestamp::new(T0 + i as u64, 0, me);
                let delta = one_write(&mut doc, key(w, i), ecomesh_value(w, i), ts);
                let bytes = count(&mut f, &mut c, &delta, &me);
                receive_from(&mut receiver, &bytes, &me);
            }
        }
        Workload::B34 => {
            let (mut a, mut b) = (DocumentCrdt::new(), DocumentCrdt::new());
            for i in 0..N / 2 {
                let t = T0 + i as u64;
                one_write(
                    &mut a,
                    key(w, i),
                    ecomesh_value(w, i),
                    HlcTimestamp::new(t, 0, peer(0)),
                );
                one_write(
                    &mut b,
                    key(w, i + 7),
                    ecomesh_value(w, i + 7),
                    HlcTimestamp::new(t, 0, peer(1)),
                );
            }
            // Neither side has anything of the other's: each sends its state.
            let to_b = encode_document_compact(&a).expect("encodes");
            let to_a = encode_document_compact(&b).expect("encodes");
            f.sync = to_a.len() + to_b.len();
            if canonical {
                c.sync = encode(&a).expect("encodes").len() + encode(&b).expect("encodes").len();
            }
            receive(&mut a, &to_a);
            receive(&mut b, &to_b);
            assert_eq!(a, b, "B3.4 replicas converge");
            receiver = a;
        }
    }
    f.document = encode_document_compact(&receiver).expect("encodes").len();
    if canonical {
        c.document = encode(&receiver).expect("encodes").len();
    }
    (f, c)
}

#[cfg(feature = "anchors")]
mod anchors {
    //! The same workloads on yrs, automerge and loro.

    use super::{CLIENTS, Figures, N, Workload, client_hash, key};

    fn u64_id(i: usize) -> u64 {
        let h = client_hash(i);
        u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])
    }

    pub(super) mod yrs_ {
        use yrs::updates::decoder::Decode;
        use yrs::updates::encoder::Encode;
        use yrs::{Doc, Map, MapPrelim, ReadTxn, StateVector, Transact, Update};

        use super::*;

        fn write(doc: &Doc, w: Workload, i: usize) -> Vec<u8> {
            let map = doc.get_or_insert_map("map");
            let mut txn = doc.transact_mut();
            if w == Workload::B32 {
                map.insert(
                    &mut txn,
                    key(w, i),
                    MapPrelim::from([("name", i.to_string()), ("address", "here".to_owned())]),
                );
            } else {
                map.insert(&mut txn, key(w, i), i as i64);
            }
            txn.encode_update_v1()
        }

        fn apply(doc: &Doc, bytes: &[u8]) {
            let update = Update::decode_v1(bytes).expect("own update decodes");
            doc.transact_mut().apply_update(update).expect("applies");
        }

        fn document(doc: &Doc) -> usize {
            doc.transact()
                .encode_state_as_update_v1(&StateVector::default())
                .len()
        }

        pub(crate) fn run(w: Workload) -> Figures {
            let mut f = Figures::default();
            let receiver = Doc::with_client_id(u64_id(usize::MAX) & 0xffff_ffff);
            match w {
                Workload::B31 | Workload::B32 => {
                    for i in 0..CLIENTS {
                        let doc = Doc::with_client_id(u64_id(i) & 0xffff_ffff);
                        let u = write(&doc, w, i);
                        f.updates += u.len();
                        apply(&receiver, &u);
                    }
                    f.document = document(&receiver);
                }
                Workload::B33 => {
                    let doc = Doc::with_client_id(u64_id(0) & 0xffff_ffff);
                    for i in 0..N {
                        let u = write(&doc, w, i);
                        f.updates += u.len();
                        apply(&receiver, &u);
                    }
                    f.document = document(&receiver);
                }
                Workload::B34 => {
                    let a = Doc::with_client_id(u64_id(0) & 0xffff_ffff);
                    let b = Doc::with_client_id(u64_id(1) & 0xffff_ffff);
                    for i in 0..N / 2 {
                        write(&a, w, i);
                        write(&b, w, i + 7);
                    }
                    let sv_a = a.transact().state_vector().encode_v1();
                    let sv_b = b.transact().state_vector().encode_v1();
                    let to_a = b
                        .transact()
                        .encode_diff_v1(&StateVector::decode_v1(&sv_a).expect("own state vector"));
                    let to_b = a
                        .transact()
                        .encode_diff_v1(&StateVector::decode_v1(&sv_b).expect("own state vector"));
                    f.sync = sv_a.len() + sv_b.len() + to_a.len() + to_b.len();
                    apply(&a, &to_a);
                    apply(&b, &to_b);
                    f.document = document(&a);
                }
            }
            f
        }
    }

    pub(super) mod automerge_ {
        use automerge::sync::{Message, State, SyncDoc};
        use automerge::transaction::Transactable;
        use automerge::{ActorId, AutoCommit, ObjType, ROOT};

        use super::*;

        fn new_doc(i: usize) -> AutoCommit {
            let h = client_hash(i);
            let mut actor = [0u8; 16];
            actor.copy_from_slice(&h[..16]);
            AutoCommit::new().with_actor(ActorId::from(actor))
        }

        fn write(doc: &mut AutoCommit, w: Workload, i: usize) {
            if w == Workload::B32 {
                let obj = doc
                    .put_object(ROOT, key(w, i), ObjType::Map)
                    .expect("writes");
                doc.put(&obj, "name", i.to_string()).expect("writes");
                doc.put(&obj, "address", "here").expect("writes");
            } else {
                doc.put(ROOT, key(w, i), i as i64).expect("writes");
            }
            doc.commit();
        }

        pub(crate) fn run(w: Workload) -> Figures {
            let mut f = Figures::default();
            let mut receiver = new_doc(usize::MAX);
            match w {
                Workload::B31 | Workload::B32 => {
                    for i in 0..CLIENTS {
                        let mut doc = new_doc(i);
                        write(&mut doc, w, i);
                        let u = doc.save_incremental();
                        f.updates += u.len();
                        receiver.load_incremental(&u).expect("applies");
                    }
                    f.document = receiver.save().len();
                }
                Workload::B33 => {
                    let mut doc = new_doc(0);
                    for i in 0..N {
                        write(&mut doc, w, i);
                        let u = doc.save_incremental();
                        f.updates += u.len();
                        receiver.load_incremental(&u).expect("applies");
                    }
                    f.document = receiver.save().len();
                }
                Workload::B34 => {
                    let mut a = new_doc(0);
                    let mut b = new_doc(1);
                    for i in 0..N / 2 {
                        write(&mut a, w, i);
                        write(&mut b, w, i + 7);
                    }
                    let (mut sa, mut sb) = (State::new(), State::new());
                    // The sync protocol until neither side has anything to send.
                    for _ in 0..64 {
                        let ma = a.sync().generate_sync_message(&mut sa);
                        let mb = b.sync().generate_sync_message(&mut sb);
                        if ma.is_none() && mb.is_none() {
                            break;
                        }
                        if let Some(m) = ma {
                            let bytes = m.encode();
                            f.sync += bytes.len();
                            let m = Message::decode(&bytes).expect("own message");
                            b.sync().receive_sync_message(&mut sb, m).expect("syncs");
                        }
                        if let Some(m) = mb {
                            let bytes = m.encode();
                            f.sync += bytes.len();
                            let m = Message::decode(&bytes).expect("own message");
                            a.sync().receive_sync_message(&mut sa, m).expect("syncs");
                        }
                    }
                    f.document = a.save().len();
                }
            }
            f
        }
    }

    pub(super) mod loro_ {
        use loro::{ExportMode, LoroDoc, LoroMap, VersionVector};

        use super::*;

        fn new_doc(i: usize) -> LoroDoc {
            let doc = LoroDoc::new();
            doc.set_peer_id(u64_id(i) >> 1).expect("peer id");
            doc
        }

        fn write(doc: &LoroDoc, w: Workload, i: usize) {
            let map = doc.get_map("map");
            if w == Workload::B32 {
                let obj = map
                    .insert_container(&key(w, i), LoroMap::new())
                    .expect("writes");
                obj.insert("name", i.to_string()).expect("writes");
                obj.insert("address", "here").expect("writes");
            } else {
                map.insert(&key(w, i), i as i64).expect("writes");
            }
            doc.commit();
        }

        pub(crate) fn run(w: Workload) -> Figures {
            let mut f = Figures::default();
            let receiver = new_doc(usize::MAX);
            match w {
                Workload::B31 | Workload::B32 => {
                    for i in 0..CLIENTS {
                        let doc = new_doc(i);
                        write(&doc, w, i);
                        let u = doc.export(ExportMode::all_updates()).expect("exports");
                        f.updates += u.len();
                        receiver.import(&u).expect("applies");
                    }
                }
                Workload::B33 => {
                    let doc = new_doc(0);
                    for i in 0..N {
                        let before = doc.oplog_vv();
                        write(&doc, w, i);
                        let u = doc.export(ExportMode::updates(&before)).expect("exports");
                        f.updates += u.len();
                        receiver.import(&u).expect("applies");
                    }
                }
                Workload::B34 => {
                    let a = new_doc(0);
                    let b = new_doc(1);
                    for i in 0..N / 2 {
                        write(&a, w, i);
                        write(&b, w, i + 7);
                    }
                    let vv_a = a.oplog_vv().encode();
                    let vv_b = b.oplog_vv().encode();
                    let to_a = b
                        .export(ExportMode::updates(
                            &VersionVector::decode(&vv_a).expect("own vv"),
                        ))
                        .expect("exports");
                    let to_b = a
                        .export(ExportMode::updates(
                            &VersionVector::decode(&vv_b).expect("own vv"),
                        ))
                        .expect("exports");
                    f.sync = vv_a.len() + vv_b.len() + to_a.len() + to_b.len();
                    a.import(&to_a).expect("applies");
                    b.import(&to_b).expect("applies");
                    f.document = a.export(ExportMode::Snapshot).expect("exports").len();
                    return f;
                }
            }
            f.document = receiver
                .export(ExportMode::Snapshot)
                .expect("exports")
                .len();
            f
        }
    }
}

/// The anchors compiled in: name and workload runner.
type Runner = fn(Workload) -> Figures;

/// Which figure a row reads.
type Pick = fn(&Figures) -> usize;

fn anchors() -> Vec<(&'static str, Runner)> {
    #[cfg(feature = "anchors")]
    {
        vec![
            ("yrs", anchors::yrs_::run as Runner),
            ("automerge", anchors::automerge_::run as Runner),
            ("loro", anchors::loro_::run as Runner),
        ]
    }
    #[cfg(not(feature = "anchors"))]
    {
        Vec::new()
    }
}

/// The best (smallest) of the anchors' figures by `pick`, with its name.
fn best(
    figs: &[(&'static str, Figures)],
    pick: impl Fn(&Figures) -> usize,
) -> Option<(&'static str, f64)> {
    figs.iter()
        .map(|(n, f)| (*n, pick(f) as f64))
        .min_by(|a, b| a.1.total_cmp(&b.1))
}

/// The rows of this area.
pub fn rows(options: &Options) -> Vec<Row> {
    let (budget, rounds) = if options.quick {
        (Duration::from_millis(300), 1)
    } else {
        (Duration::from_secs(2), 3)
    };
    let anchors = anchors();
    let mut rows = Vec::new();
    for w in Workload::ALL {
        let name = w.name();
        let (mine, canonical) = ecomesh(w, true);
        let figs: Vec<(&'static str, Figures)> =
            anchors.iter().map(|(n, run)| (*n, run(w))).collect();
        let byte_rows: [(&str, Pick); 3] = [
            ("update bytes", |f| f.updates),
            ("document bytes", |f| f.document),
            ("sync bytes", |f| f.sync),
        ];
        for (what, pick) in byte_rows {
            if pick(&mine) == 0 {
                continue; // not a figure of this workload
            }
            rows.push(Row {
                goal: format!("1 {name}"),
                what: format!("{what}, compact vs canonical DAG-CBOR"),
                value: pick(&mine) as f64,
                baseline: pick(&canonical) as f64,
                baseline_what: "ecomesh canonical".into(),
                unit: "B",
                target: Target::Info,
            });
            if what == "update bytes" && mine.standalone > 0 {
                rows.push(Row {
                    goal: format!("1 {name}"),
                    what: "update bytes naming the author in full (relayed), vs sent by the author"
                        .into(),
                    value: mine.standalone as f64,
                    baseline: pick(&mine) as f64,
                    baseline_what: "sent by the author".into(),
                    unit: "B",
                    target: Target::Info,
                });
            }
            if let Some((anchor, b)) = best(&figs, pick) {
                rows.push(Row {
                    goal: format!("1 {name}"),
                    what: format!("{what} (ecomesh compact)"),
                    value: pick(&mine) as f64,
                    baseline: b,
                    baseline_what: format!("best anchor ({anchor})"),
                    unit: "B",
                    target: Target::AtMost(1.0),
                });
            }
        }
        if !anchors.is_empty() {
            let t_mine = seconds_per_call(budget, rounds, || {
                ecomesh(w, false);
            });
            let times: Vec<(&'static str, f64)> = anchors
                .iter()
                .map(|(n, run)| {
                    (
                        *n,
                        seconds_per_call(budget, rounds, || {
                            run(w);
                        }),
                    )
                })
                .collect();
            if let Some((anchor, t)) = times.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1)) {
                rows.push(Row {
                    goal: format!("1 {name}"),
                    what: "time of the whole workload".into(),
                    value: t_mine * 1e3,
                    baseline: t * 1e3,
                    baseline_what: format!("fastest anchor ({anchor})"),
                    unit: "ms",
                    target: Target::AtMost(1.0),
                });
            }
        }
    }
    rows
}
