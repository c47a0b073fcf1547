//! The checks the cargo-fuzz targets of this crate's private decoders run, and the
//! genuine inputs their committed seed corpora hold; `tests/fuzz_seeds.rs`
//! replays both under `cargo test`.

/// The `p2p_messages` target: the P2P adapter's mesh messages (anti-entropy
/// envelopes, fetch requests and answers, delta-sync requests and pages) decoded
/// from `data`; no panic, bounds kept, what decodes re-encodes to the same message.
///
/// # Panics
/// When a property does not hold (that is what the fuzzer looks for).
pub fn p2p_messages(data: &[u8]) {
    crate::p2p::fuzz_check(data);
}

/// Genuine messages of each kind from the adapter's encoders, named.
pub fn p2p_message_seeds() -> Vec<(&'static str, Vec<u8>)> {
    crate::p2p::fuzz_seeds()
}

/// The `store_records` target: the records the store keeps on disk, the first byte
/// picking the decoder and the rest its input: `0` a document's state record
/// (`StateRecord`), `1` a version node (`VersionNode`, as `decode_version` reads it),
/// `2` a Merkle trie node (`trie::Node::from_bytes`), `4` the acknowledged-counts
/// witness file (`witness::Counts::decode`), anything else a blob pin.
/// No panic, and whatever decodes re-encodes to exactly the input (a pin to the same
/// pin).
///
/// # Panics
/// When a property does not hold (that is what the fuzzer looks for).
pub fn store_records(data: &[u8]) {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind {
        0 => {
            if let Ok(state) = ecomesh_wire::decode::<crate::StateRecord>(rest) {
                assert_eq!(ecomesh_wire::encode(&state).ok().as_deref(), Some(rest));
            }
        }
        1 => {
            if let Ok(node) = ecomesh_wire::decode::<crate::VersionNode>(rest) {
                assert_eq!(ecomesh_wire::encode(&node).ok().as_deref(), Some(rest));
            }
        }
        2 => {
            if let Ok(node) = crate::trie::Node::from_bytes(rest) {
                assert_eq!(node.to_bytes(), rest);
            }
        }
        4 => {
            if let Some(counts) = crate::witness::Counts::decode(rest) {
                assert_eq!(counts.encode().as_slice(), rest);
            }
        }
        _ => crate::blobs::fuzz_pin(rest),
    }
}

/// Genuine records from the encoders (named, with the selector byte): a state
/// record and the signed version node of one write, a trie bucket, and pins of
/// each kind.
pub fn store_record_seeds() -> Vec<(String, Vec<u8>)> {
    let with = |kind: u8, bytes: Vec<u8>| {
        let mut v = vec![kind];
        v.extend(bytes);
        v
    };
    let identity = ecomesh_identity::Identity::from_secret_bytes(&[3; 32]);
    let ts = ecomesh_types::HlcTimestamp {
        physical_ms: 1_700_000_000_000,
        logical: 1,
        peer: identity.peer_id(),
    };
    let mut fields = ecomesh_types::Map::new();
    fields.insert("title".into(), ecomesh_types::Value::Text("hello".into()));
    fields.insert("n".into(), ecomesh_types::Value::Integer(3));
    let mut out = Vec::new();
    let mut state = crate::StateRecord::default();
    if let Ok(delta) = state.state.set(fields, ts)
        && let Ok(node) = crate::VersionNode::signed(&identity, "notes", "a", Vec::new(), ts, delta)
        && let Ok(bytes) = ecomesh_wire::encode(&node)
    {
        state.heads = vec![ecomesh_wire::cid_of_dag_cbor(&bytes).to_bytes()]
            .into_iter()
            .map(ecomesh_types::ContentId)
            .collect();
        out.push(("version_node".to_owned(), with(1, bytes)));
        if let Ok(bytes) = ecomesh_wire::encode(&state) {
            out.push(("state_record".to_owned(), with(0, bytes)));
        }
    }
    let bucket = crate::trie::Node::Bucket(vec![crate::trie::Entry::new("a", [1; 32])]);
    out.push(("trie_bucket".to_owned(), with(2, bucket.to_bytes())));
    for (i, bytes) in crate::blobs::fuzz_pin_seeds().into_iter().enumerate() {
        out.push((format!("pin_{i}"), with(3, bytes)));
    }
    let counts = crate::witness::Counts {
        versions: 50,
        documents: 50,
        blob_records: 3,
    };
    out.push(("witness".to_owned(), with(4, counts.encode().to_vec())));
    out
}
