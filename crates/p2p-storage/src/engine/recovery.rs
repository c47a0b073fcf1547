//! Rebuilding the Merkle index after a crash lost deferred writes.
//!
//! The Merkle nodes (`T`) and collection roots (`C`) are derived from the
//! state records (`S`): one entry `(id, heads digest)` per document. A store
//! keeps their latest writes in memory (see
//! [`StoreConfig::deferred_merkle_writes`]) and, in the same atomic batch as
//! the first write whose Merkle changes stayed in memory, persists a stale
//! marker; persisting the deferred writes deletes it in the same batch as
//! the nodes. A marker found at open therefore means the index on disk may
//! lag behind the state records, and the open rebuilds it from them.

use super::*;

/// Replaces every Merkle node and collection root with ones built from the
/// state records, deletes the stale marker `marker`, all in one atomic
/// batch, and flushes.
pub(super) fn rebuild_merkle<B: Backend>(backend: &B, marker: &[u8]) -> Result<(), StoreError> {
    let started = std::time::Instant::now();
    let mut txn = Txn::new(backend);
    for tag in [TRIE, COLLECTION] {
        let start = [tag];
        let end = prefix_end(&start).unwrap_or_default();
        for item in backend.scan(&start, Some(&end)) {
            txn.delete(item?.0);
        }
    }
    let start = [b'S'];
    let end = prefix_end(&start).unwrap_or_default();
    // State keys sort by collection first: build each collection's trie when
    // its records end, holding one collection's entries at a time.
    let mut current: Option<(String, Vec<Entry>)> = None;
    let mut documents = 0_usize;
    for item in backend.scan(&start, Some(&end)) {
        let (k, v) = item?;
        let (c, i) = parse_state_key(&k)?;
        let record = decode_state(&c, &i, &v)?;
        documents += 1;
        let entry = Entry::new(&i, record.heads_digest());
        match &mut current {
            Some((name, entries)) if *name == c => entries.push(entry),
            _ => {
                if let Some((name, entries)) = current.take() {
                    let root = trie::build_into(&mut txn, &name, entries)?;
                    put_collection_root(&mut txn, &name, root)?;
                }
                current = Some((c, vec![entry]));
            }
        }
    }
    if let Some((name, entries)) = current.take() {
        let root = trie::build_into(&mut txn, &name, entries)?;
        put_collection_root(&mut txn, &name, root)?;
    }
    txn.delete(marker.to_vec());
    txn.commit()?;
    backend.flush()?;
    tracing::info!(
        documents,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "Merkle index rebuilt from the state records after an unclean shutdown"
    );
    Ok(())
}
