//! [`Store::verify_integrity`]: every invariant of the store re-derived from
//! scratch, for the crash tests and after a restart.

use super::*;

/// Counts from [`Store::verify_integrity`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct IntegrityReport {
    /// Documents with state (live or tombstoned).
    pub documents: usize,
    /// Live documents.
    pub live_documents: usize,
    /// Version nodes.
    pub versions: usize,
    /// Index entries.
    pub index_entries: usize,
    /// Collections in the Merkle index.
    pub collections: usize,
}

impl<B: Backend> Store<B> {
    /// Checks every invariant of the store from scratch:
    /// each document's materialized fields equal its CRDT state; that state
    /// equals the merge of every version reachable from its heads; every
    /// referenced version is present and every stored version is reachable;
    /// index entries are exactly those the documents imply; each collection's
    /// Merkle index holds exactly one entry per document, with the incrementally
    /// maintained root equal to a root rebuilt from scratch.
    pub fn verify_integrity(&self) -> Result<IntegrityReport, StoreError> {
        let _writer = lock(&self.writer);
        let txn = self.txn();
        let mut report = IntegrityReport::default();
        let mut reachable: BTreeSet<ContentId> = BTreeSet::new();
        let mut expected_index: BTreeSet<Vec<u8>> = BTreeSet::new();
        let mut entries: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        let invariant = |what: String| StoreError::Invariant(what);

        let start = [b'S'];
        let end = prefix_end(&start).unwrap_or_default();
        for item in self.backend.scan(&start, Some(&end)) {
            let (k, v) = item?;
            let (c, i) = parse_state_key(&k)?;
            let record = decode_state(&c, &i, &v)?;
            report.documents += 1;
            let versions = self.ancestors(&record.heads)?;
            let mut merged = DocumentCrdt::new();
            for (cid, node) in &versions {
                if node.collection != c || node.id != i {
                    return Err(invariant(format!(
                        "{c}/{i}: version of {}/{} in its DAG",
                        node.collection, node.id
                    )));
                }
                if node.sealed.is_none() {
                    merged.merge(&node.delta);
                } else if let Some(delta) = self.open_sealed(node) {
                    // A held version was not merged: `open_held` merges it
                    // once its key arrives.
                    let held = keys::held_key(&node.collection, &node.id, &cid.0);
                    if self.backend.get(&held)?.is_none() {
                        merged.merge(&delta);
                    }
                }
            }
            if merged != record.state {
                return Err(invariant(format!(
                    "{c}/{i}: state differs from the merge of its versions"
                )));
            }
            reachable.extend(versions.into_keys());
            let shown = record.state.materialize();
            let stored = self.read_doc(&txn, &c, &i)?.map(|d| d.fields);
            if shown != stored {
                return Err(invariant(format!(
                    "{c}/{i}: document record differs from its CRDT state"
                )));
            }
            if let Some(fields) = &shown {
                report.live_documents += 1;
                expected_index.extend(index_keys(&c, &i, fields));
            }
            entries
                .entry(c.clone())
                .or_default()
                .push(Entry::new(&i, record.heads_digest()));
        }

        // Every live document record has a state record.
        let start = [DOC];
        let end = prefix_end(&start).unwrap_or_default();
        let docs = self.backend.scan(&start, Some(&end)).count();
        if docs != report.live_documents {
            return Err(invariant(format!(
                "{docs} document records for {} live documents",
                report.live_documents
            )));
        }

        let start = [VERSION];
        let end = prefix_end(&start).unwrap_or_default();
        for item in self.backend.scan(&start, Some(&end)) {
            let cid = ContentId(item?.0[1..].to_vec());
            report.versions += 1;
            if !reachable.contains(&cid) {
                return Err(invariant(format!(
                    "version {cid:?} is not reachable from any head"
                )));
            }
        }
        if report.versions != reachable.len() {
            return Err(invariant("a reachable version is missing".into()));
        }

        let mut actual_index = BTreeSet::new();
        for tag in [INDEX, ARRAY_INDEX] {
            let start = [tag];
            let end = prefix_end(&start).unwrap_or_default();
            for item in self.backend.scan(&start, Some(&end)) {
                actual_index.insert(item?.0);
            }
        }
        report.index_entries = actual_index.len();
        if actual_index != expected_index {
            let extra = actual_index.difference(&expected_index).count();
            let missing = expected_index.difference(&actual_index).count();
            return Err(invariant(format!(
                "indexes disagree with documents: {extra} extra, {missing} missing"
            )));
        }

        let collections = self.collections()?;
        if collections != entries.keys().cloned().collect::<Vec<_>>() {
            return Err(invariant(
                "Merkle collections differ from the documents' collections".into(),
            ));
        }
        for (c, mut expected) in entries {
            expected.sort_by_key(|e| e.key_hash);
            let actual = trie::entries(&txn, &c)?;
            if actual != expected {
                return Err(invariant(format!(
                    "{c}: Merkle entries differ from the documents"
                )));
            }
            let stored = self.read_collection_root(&txn, &c)?;
            let rebuilt = trie::recompute_root(&c, expected)?;
            if stored != rebuilt {
                return Err(invariant(format!(
                    "{c}: Merkle root differs from a recomputation"
                )));
            }
        }
        report.collections = collections.len();
        Ok(report)
    }
}
