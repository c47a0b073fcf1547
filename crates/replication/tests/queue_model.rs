//! The sync queue against a model: a seeded random mix of enqueues, per-peer
//! acknowledgements, completions and reopenings; after every step the queue
//! holds exactly what the model holds. The seed is printed and can be replayed
//! with `ECOMESH_QUEUE_SEED`.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::{BTreeMap, BTreeSet};

use ecomesh_replication::queue::{AckOutcome, MAX_PAGE, SyncItem, SyncQueue};
use ecomesh_types::{ContentId, PeerId};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn peer(n: u8) -> PeerId {
    PeerId::from_digest([n; 32])
}

fn all_pending(q: &SyncQueue, page: usize) -> BTreeMap<u64, (SyncItem, BTreeSet<PeerId>)> {
    let mut out = BTreeMap::new();
    let mut from = 0;
    loop {
        let p = q.pending(from, page).unwrap();
        assert!(p.items.len() <= page.clamp(1, MAX_PAGE));
        for item in p.items {
            assert!(item.seq >= from);
            out.insert(item.seq, (item.item, item.acked_by));
        }
        match p.next {
            Some(n) => {
                assert!(n > from);
                from = n;
            }
            None => return out,
        }
    }
}

#[test]
fn queue_matches_its_model() {
    let seed: u64 = std::env::var("ECOMESH_QUEUE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("queue model test: seed {seed} (replay with ECOMESH_QUEUE_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut q = SyncQueue::open(dir.path()).unwrap();
    let mut model: BTreeMap<u64, (SyncItem, BTreeSet<PeerId>)> = BTreeMap::new();
    let mut last_seq = 0;
    for step in 0..600 {
        let ctx = format!("step {step} (seed {seed})");
        match rng.below(10) {
            0..=3 => {
                let n = rng.next();
                let factor = 1 + rng.below(4) as u32;
                let item = if n.is_multiple_of(2) {
                    SyncItem::Replicate {
                        collection: format!("c{}", n % 5),
                        id: format!("d{n}"),
                        version: ContentId(n.to_be_bytes().to_vec()),
                        factor,
                    }
                } else {
                    SyncItem::PushBlob {
                        blob: ContentId(n.to_le_bytes().to_vec()),
                        collection: "files".into(),
                        id: n.is_multiple_of(3).then(|| format!("f{n}")),
                        factor,
                    }
                };
                let seq = q.enqueue(item.clone()).unwrap();
                assert!(seq > last_seq, "{ctx}: sequence {seq} after {last_seq}");
                last_seq = seq;
                model.insert(seq, (item, BTreeSet::new()));
            }
            4..=7 => {
                // Mostly a live item, sometimes one that is gone or never was.
                let seq = if model.is_empty() || rng.below(8) == 0 {
                    rng.below(last_seq + 3)
                } else {
                    *model
                        .keys()
                        .nth(rng.below(model.len() as u64) as usize)
                        .unwrap()
                };
                let p = peer(rng.below(5) as u8);
                let got = q.ack(seq, p).unwrap();
                let want = match model.get_mut(&seq) {
                    None => AckOutcome::Unknown,
                    Some((item, acked)) => {
                        acked.insert(p);
                        if acked.len() >= item.factor() as usize {
                            model.remove(&seq);
                            AckOutcome::Done
                        } else {
                            AckOutcome::Partial {
                                acked: acked.len(),
                                factor: item.factor(),
                            }
                        }
                    }
                };
                assert_eq!(got, want, "{ctx}: ack {seq}");
            }
            8 => {
                let seq = rng.below(last_seq + 2);
                assert_eq!(
                    q.complete(seq).unwrap(),
                    model.remove(&seq).is_some(),
                    "{ctx}: complete {seq}"
                );
            }
            _ => {
                drop(q);
                q = SyncQueue::open(dir.path()).unwrap();
            }
        }
        assert_eq!(q.len(), model.len(), "{ctx}: length");
        if step % 25 == 0 {
            let page = 1 + rng.below(7) as usize;
            assert_eq!(all_pending(&q, page), model, "{ctx}: contents");
        }
    }
    drop(q);
    let q = SyncQueue::open(dir.path()).unwrap();
    assert_eq!(
        all_pending(&q, MAX_PAGE),
        model,
        "after the last reopen (seed {seed})"
    );
    assert!(
        q.enqueue(SyncItem::PushBlob {
            blob: ContentId(vec![1]),
            collection: "files".into(),
            id: None,
            factor: 1
        })
        .unwrap()
            > last_seq
    );
}
