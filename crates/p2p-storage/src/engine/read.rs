//! The store's reads: documents, states, versions and history, collection roots
//! and Merkle nodes, queries and their index plan. Moved out of `engine.rs`
//! (which passed 1500 lines); another `impl` block of [`Store`].

use super::*;

impl<B: Backend> Store<B> {
    /// Reads a document (its materialized fields), `None` when absent or deleted.
    ///
    /// A document of an encrypted collection that holds versions this store
    /// has no key for is [`StoreError::Sealed`] (never the partial state of
    /// the versions it could open).
    pub fn get(&self, collection: &str, id: &str) -> Result<Option<Document>, StoreError> {
        validate_key(collection, id)?;
        if self.has_held(collection, id)? {
            return Err(StoreError::Sealed {
                collection: collection.to_owned(),
                id: id.to_owned(),
            });
        }
        self.read_doc(&self.txn(), collection, id)
    }

    pub(super) fn read_doc(
        &self,
        txn: &Txn<'_>,
        collection: &str,
        id: &str,
    ) -> Result<Option<Document>, StoreError> {
        match txn.get(&keys::doc_key(collection, id))? {
            None => Ok(None),
            Some(bytes) => Ok(Some(Document::new(
                collection,
                id,
                decode_fields(collection, id, &bytes)?,
            ))),
        }
    }

    pub(super) fn read_state(
        &self,
        txn: &Txn<'_>,
        collection: &str,
        id: &str,
    ) -> Result<StateRecord, StoreError> {
        match txn.get(&state_key(collection, id))? {
            None => Ok(StateRecord::default()),
            Some(bytes) => decode_state(collection, id, &bytes),
        }
    }

    /// The document's CRDT state (empty when never written).
    pub fn crdt_state(&self, collection: &str, id: &str) -> Result<DocumentCrdt, StoreError> {
        validate_key(collection, id)?;
        Ok(self.read_state(&self.txn(), collection, id)?.state)
    }

    /// The document's version heads (several after concurrent remote versions).
    pub fn heads(&self, collection: &str, id: &str) -> Result<Vec<ContentId>, StoreError> {
        validate_key(collection, id)?;
        Ok(self.read_state(&self.txn(), collection, id)?.heads)
    }

    /// The raw bytes of a version node, as stored and hashed.
    pub fn version_bytes(&self, cid: &ContentId) -> Result<Option<Vec<u8>>, StoreError> {
        self.backend.get(&version_key(cid))
    }

    /// A version node by CID (checked against its CID).
    pub fn version(&self, cid: &ContentId) -> Result<Option<VersionNode>, StoreError> {
        let Some(bytes) = self.version_bytes(cid)? else {
            return Ok(None);
        };
        self.decode_version(cid, &bytes).map(Some)
    }

    pub(super) fn decode_version(
        &self,
        cid: &ContentId,
        bytes: &[u8],
    ) -> Result<VersionNode, StoreError> {
        let computed = codec::cid_of_bytes(bytes);
        if &computed != cid {
            return Err(corrupt(
                "",
                &format!("version {cid:?}"),
                "bytes do not match the CID",
            ));
        }
        ecomesh_wire::decode::<VersionNode>(bytes)
            .map_err(|e| corrupt("", &format!("version {cid:?}"), e))
    }

    /// Every version of a document, parents before children.
    pub fn history(&self, collection: &str, id: &str) -> Result<Vec<VersionInfo>, StoreError> {
        let heads = self.heads(collection, id)?;
        let nodes = self.ancestors(&heads)?;
        let dag = VersionDag::from_nodes(
            nodes
                .iter()
                .map(|(cid, n)| ecomesh_crdt::DagNode::from_parts(cid.clone(), n.parents.clone()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| corrupt(collection, id, e))?,
        )
        .map_err(|e| corrupt(collection, id, e))?;
        Ok(dag
            .nodes()
            .into_iter()
            .filter_map(|n| {
                let node = nodes.get(n.id())?;
                Some(VersionInfo {
                    cid: n.id().clone(),
                    parents: node.parents.clone(),
                    timestamp: node.timestamp,
                    author: node.author_peer(),
                })
            })
            .collect())
    }

    /// Every version reachable from `tips` (inclusive), by CID.
    pub(super) fn ancestors(
        &self,
        tips: &[ContentId],
    ) -> Result<BTreeMap<ContentId, VersionNode>, StoreError> {
        let mut seen = BTreeMap::new();
        let mut queue: VecDeque<ContentId> = tips.iter().cloned().collect();
        while let Some(cid) = queue.pop_front() {
            if seen.contains_key(&cid) {
                continue;
            }
            let node = self.version(&cid)?.ok_or_else(|| {
                corrupt(
                    "",
                    &format!("version {cid:?}"),
                    "referenced version is missing",
                )
            })?;
            queue.extend(node.parents.iter().cloned());
            seen.insert(cid, node);
        }
        Ok(seen)
    }

    /// The document's state as of version `cid`: the merge of that version and all its ancestors.
    /// [`StoreError::Sealed`] when one of them is sealed under a key this store does not hold.
    pub fn state_at(&self, cid: &ContentId) -> Result<DocumentCrdt, StoreError> {
        let mut state = DocumentCrdt::new();
        for node in self.ancestors(std::slice::from_ref(cid))?.values() {
            if node.sealed.is_none() {
                state.merge(&node.delta);
            } else {
                let delta = self.open_sealed(node).ok_or_else(|| StoreError::Sealed {
                    collection: node.collection.clone(),
                    id: node.id.clone(),
                })?;
                state.merge(&delta);
            }
        }
        Ok(state)
    }

    /// Root CID of one collection's Merkle index (`None` when empty).
    pub fn collection_root(&self, collection: &str) -> Result<Option<ContentId>, StoreError> {
        Ok(self
            .read_collection_root(&self.txn(), collection)?
            .map(|c| c.cid))
    }

    pub(super) fn read_collection_root(
        &self,
        txn: &Txn<'_>,
        collection: &str,
    ) -> Result<Option<ChildRef>, StoreError> {
        match txn.get(&collection_key(collection))? {
            None => Ok(None),
            Some(bytes) => {
                let v = codec::decode(&bytes).map_err(|e| corrupt(collection, "merkle root", e))?;
                match v {
                    Value::Array(pair) => match pair.as_slice() {
                        [Value::Link(cid), Value::Integer(n)] if *n > 0 => Ok(Some(ChildRef {
                            cid: cid.clone(),
                            count: *n as u64,
                        })),
                        _ => Err(corrupt(collection, "merkle root", "bad root record")),
                    },
                    _ => Err(corrupt(collection, "merkle root", "bad root record")),
                }
            }
        }
    }

    /// The collections that hold documents (live or tombstoned), sorted.
    pub fn collections(&self) -> Result<Vec<String>, StoreError> {
        let start = [COLLECTION];
        let end = prefix_end(&start).unwrap_or_default();
        // The backend's root records, with the deferred ones over them.
        let deferred = crate::txn::overlay_range(&self.derived, &start, &end);
        let mut present = BTreeSet::new();
        for item in self.backend.scan(&start, Some(&end)) {
            let (k, _) = item?;
            if !deferred.contains_key(&k) {
                present.insert(k);
            }
        }
        present.extend(deferred.into_iter().filter_map(|(k, v)| v.map(|_| k)));
        let mut out = Vec::with_capacity(present.len());
        for k in present {
            let (name, _) =
                keys::take_escaped(&k[1..]).ok_or_else(|| corrupt("", "collections", "bad key"))?;
            out.push(String::from_utf8(name).map_err(|_| corrupt("", "collections", "bad key"))?);
        }
        Ok(out)
    }

    /// The one CID of the whole database (seed 5.1): a DAG-CBOR map from each
    /// collection name to its Merkle index root. Equal contents give equal roots.
    pub fn root_cid(&self) -> Result<ContentId, StoreError> {
        let txn = self.txn();
        let mut map = Map::new();
        for collection in self.collections()? {
            if let Some(root) = self.read_collection_root(&txn, &collection)? {
                map.insert(collection, Value::Link(root.cid));
            }
        }
        Ok(codec::cid_of_bytes(&codec::encode(&Value::Map(map))?))
    }

    /// A Merkle index node of `collection` at `path` (nibbles from the root), for
    /// descending from the roots when comparing two stores.
    pub fn merkle_node(
        &self,
        collection: &str,
        path: &[u8],
    ) -> Result<Option<trie::Node>, StoreError> {
        trie::load(&self.txn(), collection, path)
    }

    /// Runs a query over one collection; results equal [`Query::execute`] over all its documents.
    ///
    /// Every top-level field with a scalar value is indexed automatically (and
    /// every scalar element of a top-level array, for `array-contains`): an
    /// `==`, `in`, range, `array-contains` or `array-contains-any` filter on a
    /// top-level field with scalar operands reads only the matching index range.
    /// Filters on dotted paths and `!=` / `not-in` alone scan the collection.
    pub fn query(&self, collection: &str, query: &Query) -> Result<QueryPage, StoreError> {
        if collection.is_empty() {
            return Err(StoreError::InvalidArgument(
                "collection must be non-empty".into(),
            ));
        }
        query.validate()?;
        let txn = self.txn();
        let docs = match self.plan(collection, query)? {
            Some(ids) => {
                let mut docs = Vec::with_capacity(ids.len());
                for id in ids {
                    if let Some(doc) = self.read_doc(&txn, collection, &id)? {
                        docs.push(doc);
                    }
                }
                docs
            }
            None => self.scan_collection(collection)?,
        };
        Ok(query.execute(&docs)?)
    }

    /// How many live documents a collection holds (reads keys only, decodes
    /// no document).
    pub fn count_documents(&self, collection: &str) -> Result<usize, StoreError> {
        let start = keys::key(DOC, &[collection.as_bytes()]);
        let end = prefix_end(&start).unwrap_or_default();
        let mut n = 0;
        for item in self.backend.scan(&start, Some(&end)) {
            item?;
            n += 1;
        }
        Ok(n)
    }

    /// Every live document of a collection.
    pub fn scan_collection(&self, collection: &str) -> Result<Vec<Document>, StoreError> {
        let start = keys::key(DOC, &[collection.as_bytes()]);
        let end = prefix_end(&start).unwrap_or_default();
        let mut docs = Vec::new();
        for item in self.backend.scan(&start, Some(&end)) {
            let (k, v) = item?;
            let (_, id) = keys::parse_doc_key(&k)
                .ok_or_else(|| corrupt(collection, "?", "bad document key"))?;
            docs.push(Document::new(
                collection,
                id.clone(),
                decode_fields(collection, &id, &v)?,
            ));
        }
        Ok(docs)
    }

    /// Candidate ids from the best indexed filter, or `None` for a full scan.
    /// Candidates are a superset of the matches; the caller filters exactly.
    pub(super) fn plan(
        &self,
        collection: &str,
        query: &Query,
    ) -> Result<Option<BTreeSet<String>>, StoreError> {
        let rank = |op: FilterOp| match op {
            FilterOp::Eq => 0,
            FilterOp::In => 1,
            FilterOp::ArrayContains => 2,
            FilterOp::ArrayContainsAny => 3,
            FilterOp::Lt | FilterOp::Le | FilterOp::Gt | FilterOp::Ge => 4,
            _ => 9,
        };
        let mut filters: Vec<_> = query
            .filters
            .iter()
            .filter(|f| !f.field.contains('.') && rank(f.op) < 9)
            .collect();
        filters.sort_by_key(|f| rank(f.op));
        for f in filters {
            let field = f.field.as_bytes();
            let ranges: Option<Vec<IndexRange>> = match f.op {
                FilterOp::Eq => keys::value_key(&f.value).map(|vk| vec![(INDEX, vk, None)]),
                FilterOp::ArrayContains => {
                    keys::value_key(&f.value).map(|vk| vec![(ARRAY_INDEX, vk, None)])
                }
                FilterOp::In | FilterOp::ArrayContainsAny => {
                    let tag = if f.op == FilterOp::In {
                        INDEX
                    } else {
                        ARRAY_INDEX
                    };
                    f.value
                        .as_array()
                        .map(|items| {
                            items
                                .iter()
                                .map(|v| keys::value_key(v).map(|vk| (tag, vk, None)))
                                .collect()
                        })
                        .unwrap_or(None)
                }
                FilterOp::Lt | FilterOp::Le => {
                    match (keys::kind_prefix(&f.value), keys::value_key(&f.value)) {
                        (Some(kind), Some(vk)) => Some(vec![(INDEX, vec![kind], Some(vk))]),
                        _ => None,
                    }
                }
                FilterOp::Gt | FilterOp::Ge => {
                    match (keys::kind_prefix(&f.value), keys::value_key(&f.value)) {
                        (Some(kind), Some(vk)) => Some(vec![(INDEX, vk, Some(vec![kind]))]),
                        _ => None,
                    }
                }
                _ => None,
            };
            let Some(ranges) = ranges else { continue };
            let mut ids = BTreeSet::new();
            for (tag, low, high) in ranges {
                let prefix = keys::key(tag, &[collection.as_bytes(), field]);
                let mut start = prefix.clone();
                let end = match (&f.op, high) {
                    // Exact value: every key starting with prefix+value.
                    (_, None) => {
                        start.extend_from_slice(&low);
                        let mut p = prefix.clone();
                        p.extend_from_slice(&low);
                        prefix_end(&p)
                    }
                    // Upper bound: from the kind's first key to the end of the value's keys.
                    (FilterOp::Lt | FilterOp::Le, Some(upper)) => {
                        start.extend_from_slice(&low);
                        let mut p = prefix.clone();
                        p.extend_from_slice(&upper);
                        prefix_end(&p)
                    }
                    // Lower bound: from the value's keys to the end of the kind.
                    (_, Some(kind)) => {
                        start.extend_from_slice(&low);
                        let mut p = prefix.clone();
                        p.extend_from_slice(&kind);
                        prefix_end(&p)
                    }
                };
                for item in self.backend.scan(&start, end.as_deref()) {
                    let (k, _) = item?;
                    let id = id_from_index_key(&k, prefix.len())
                        .ok_or_else(|| corrupt(collection, "index", "bad index key"))?;
                    ids.insert(id);
                }
            }
            return Ok(Some(ids));
        }
        Ok(None)
    }
}
