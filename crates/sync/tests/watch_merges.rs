//! Watch streams under concurrent remote merges: three nodes on the wired
//! transport over loopback (full mesh). W watches a query and one document;
//! X and Y write the same documents at once (counter increments and
//! last-writer-wins fields), seeded and printed. W's streams must end at the
//! converged state every node holds, never show a counter going backwards
//! or a document disappearing, never claim pending writes (W writes nothing);
//! X's own watch must show its writes pending and end with them acknowledged.

#![allow(clippy::unwrap_used, clippy::print_stderr)]

mod loopback;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ecomesh_sync::{Document, Map, Node, Query, SetOptions, Value};
use futures::{Stream, StreamExt};

use loopback::{Rng, config, connect, seed, start, wait_until};

const LIMIT: Duration = Duration::from_secs(30);
const COLLECTION: &str = "counters";
const DOCS: [&str; 3] = ["c1", "c2", "c3"];
/// Writes per writer.
const WRITES: usize = 40;

/// Every snapshot a stream delivered, in order, collected by a task.
struct Log<T>(Arc<Mutex<Vec<T>>>, tokio::task::JoinHandle<()>);

impl<T: Clone + Send + 'static> Log<T> {
    fn collect(mut stream: impl Stream<Item = T> + Unpin + Send + 'static) -> Log<T> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let task = tokio::spawn(async move {
            while let Some(snap) = stream.next().await {
                s.lock().unwrap().push(snap);
            }
        });
        Log(seen, task)
    }

    fn all(&self) -> Vec<T> {
        self.0.lock().unwrap().clone()
    }

    fn last(&self) -> Option<T> {
        self.0.lock().unwrap().last().cloned()
    }
}

impl<T> Drop for Log<T> {
    fn drop(&mut self) {
        self.1.abort();
    }
}

fn counter(doc: &Document) -> i64 {
    match doc.fields.get("n") {
        Some(Value::Integer(n)) => *n,
        None => 0,
        other => panic!("{}/{}: n is {other:?}", doc.collection, doc.id),
    }
}

/// Checks that along `snaps` (each a set of documents) no counter goes down
/// and no document, once seen, disappears.
fn assert_monotonic(what: &str, snaps: &[Vec<Document>]) {
    let mut best: BTreeMap<String, i64> = BTreeMap::new();
    for (k, docs) in snaps.iter().enumerate() {
        for (id, before) in &best {
            let now = docs.iter().find(|d| &d.id == id).map(counter);
            assert!(
                now.is_some_and(|n| n >= *before),
                "{what}: snapshot {k} of {} shows {id}.n = {now:?} after {before}",
                snaps.len()
            );
        }
        for d in docs {
            best.insert(d.id.clone(), counter(d));
        }
    }
}

/// `rounds` writes on `node`: increments of a random document's counter,
/// now and then a last-writer-wins field too. Returns the increments per document.
async fn writer(node: Node, name: &'static str, seed: u64) -> BTreeMap<String, i64> {
    let mut rng = Rng::new(seed);
    let mut added = BTreeMap::new();
    for k in 0..WRITES {
        let id = DOCS[rng.below(DOCS.len() as u64) as usize];
        let doc = node.collection(COLLECTION).doc(id);
        let by = 1 + rng.below(3) as i64;
        doc.increment("n", by).await.unwrap();
        *added.entry(id.to_owned()).or_insert(0) += by;
        if rng.below(4) == 0 {
            let mut f = Map::new();
            f.insert("last".into(), Value::Text(format!("{name}{k}")));
            doc.set(f, SetOptions::MERGE).await.unwrap();
        }
        if rng.below(2) == 0 {
            tokio::task::yield_now().await;
        }
    }
    added
}

/// Waits until every node holds the same documents, with the counters of
/// `expected`; returns how long that took.
async fn converge(nodes: &[Node; 3], expected: &BTreeMap<String, i64>) -> Duration {
    wait_until(LIMIT, "the three nodes converge", || {
        let nodes = nodes.clone();
        let expected = expected.clone();
        async move {
            let on_w = local(&nodes[0]);
            let counts: BTreeMap<String, i64> =
                on_w.iter().map(|d| (d.id.clone(), counter(d))).collect();
            counts == expected && nodes[1..].iter().all(|n| local(n) == on_w)
        }
    })
    .await
}

fn local(node: &Node) -> Vec<Document> {
    node.collection(COLLECTION).list().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_end_at_the_converged_state_under_concurrent_remote_merges() {
    let seed = seed("watch_merges");
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let w = start("W", dirs[0].path(), config()).await;
    let x = start("X", dirs[1].path(), config()).await;
    let y = start("Y", dirs[2].path(), config()).await;
    connect(&x, &w).await;
    connect(&y, &w).await;
    connect(&y, &x).await;

    let on_w_query = Log::collect(w.node.watch_query(COLLECTION, Query::new()).unwrap());
    let on_w_doc = Log::collect(w.node.watch_doc(COLLECTION, "c1").unwrap());
    let on_x_doc = Log::collect(x.node.watch_doc(COLLECTION, "c1").unwrap());

    // X and Y write the same documents at once.
    let started = Instant::now();
    let wx = tokio::spawn(writer(x.node.clone(), "x", seed));
    let wy = tokio::spawn(writer(y.node.clone(), "y", seed.rotate_left(17) ^ 0x9E37));
    let (ax, ay) = (wx.await.unwrap(), wy.await.unwrap());
    let mut expected = ax.clone();
    for (id, n) in &ay {
        *expected.entry(id.clone()).or_insert(0) += n;
    }
    eprintln!(
        "writes done in {} ms: x {ax:?}, y {ay:?}",
        started.elapsed().as_millis()
    );

    // Every node converges to the same documents, with every increment.
    let nodes = [w.node.clone(), x.node.clone(), y.node.clone()];
    let took = converge(&nodes, &expected).await;
    eprintln!("converged {} ms after the last write", took.as_millis());

    // X writes c1 once more, alone: its watch shows the write pending, then
    // (no other change following) the same document acknowledged by a peer.
    let mark = on_x_doc.all().len();
    x.node
        .collection(COLLECTION)
        .doc("c1")
        .increment("n", 1)
        .await
        .unwrap();
    *expected.entry("c1".to_owned()).or_insert(0) += 1;
    converge(&nodes, &expected).await;
    let converged = local(&w.node);
    let c1 = converged.iter().find(|d| d.id == "c1").cloned();

    // The watches end at that state (X's with its writes acknowledged).
    wait_until(LIMIT, "W's query watch shows the converged state", || {
        let last = on_w_query.last();
        let converged = converged.clone();
        async move { last.is_some_and(|s| s.documents == converged) }
    })
    .await;
    wait_until(LIMIT, "W's document watch shows the converged c1", || {
        let last = on_w_doc.last();
        let c1 = c1.clone();
        async move { last.is_some_and(|s| s.document == c1) }
    })
    .await;
    wait_until(
        LIMIT,
        "X's watch shows c1 converged and acknowledged",
        || {
            let last = on_x_doc.last();
            let c1 = c1.clone();
            async move { last.is_some_and(|s| s.document == c1 && !s.has_pending_writes) }
        },
    )
    .await;

    let query_snaps = on_w_query.all();
    let doc_snaps = on_w_doc.all();
    let x_snaps = on_x_doc.all();
    eprintln!(
        "snapshots: W query {}, W c1 {}, X c1 {}",
        query_snaps.len(),
        doc_snaps.len(),
        x_snaps.len()
    );
    assert!(query_snaps.len() > 2, "W's query watch barely fired");
    assert_monotonic(
        "W's query watch",
        &query_snaps
            .iter()
            .map(|s| s.documents.clone())
            .collect::<Vec<_>>(),
    );
    assert_monotonic(
        "W's c1 watch",
        &doc_snaps
            .iter()
            .map(|s| s.document.clone().into_iter().collect())
            .collect::<Vec<_>>(),
    );
    assert_monotonic(
        "X's c1 watch",
        &x_snaps
            .iter()
            .map(|s| s.document.clone().into_iter().collect())
            .collect::<Vec<_>>(),
    );
    assert!(
        query_snaps.iter().all(|s| !s.has_pending_writes)
            && doc_snaps.iter().all(|s| !s.has_pending_writes),
        "W wrote nothing, yet a snapshot claims pending writes"
    );
    let last_write = &x_snaps[mark..];
    let pending_at = last_write
        .iter()
        .position(|s| s.has_pending_writes && s.document == c1)
        .unwrap_or_else(|| panic!("X's last write of c1 never showed pending: {last_write:?}"));
    assert!(
        last_write[pending_at + 1..]
            .iter()
            .any(|s| !s.has_pending_writes && s.document == c1),
        "X's last write of c1 was never shown acknowledged: {last_write:?}"
    );
    for n in &nodes {
        n.shutdown().await.unwrap();
    }
}
