//! The payloads of the adapter's mesh messages: anti-entropy envelopes,
//! fetch requests and answers, and delta-sync requests and pages (DAG-CBOR maps).

use ecomesh_replication::stream::{MAX_DELTA, Position};
use ecomesh_types::{Map, Value};
use ecomesh_wire::Limits;

/// Largest fetch request accepted, in bytes.
const MAX_FETCH_REQUEST: usize = 64 << 10;

/// The envelope of one part of one anti-entropy protocol message.
pub(super) struct Envelope {
    pub(super) sid: u64,
    pub(super) seq: u64,
    pub(super) part: u64,
    pub(super) parts: u64,
    pub(super) frames: Vec<Vec<u8>>,
}

fn int_of(m: &Map, k: &str) -> Option<u64> {
    match m.get(k) {
        Some(Value::Integer(i)) => u64::try_from(*i).ok(),
        _ => None,
    }
}

pub(super) fn encode_envelope(e: &Envelope) -> Vec<u8> {
    let int = |v: u64| Value::Integer(i64::try_from(v).unwrap_or(i64::MAX));
    let mut m = Map::new();
    m.insert("s".into(), int(e.sid));
    m.insert("n".into(), int(e.seq));
    m.insert("k".into(), int(e.part));
    m.insert("t".into(), int(e.parts));
    m.insert(
        "f".into(),
        Value::Array(e.frames.iter().cloned().map(Value::Bytes).collect()),
    );
    ecomesh_wire::to_dag_cbor(&Value::Map(m)).unwrap_or_default()
}

/// The DAG-CBOR map of a protocol message of at most `max_len` bytes of
/// content (and `MAX_FETCH_REQUEST` of framing), or `None`.
fn decode_map(bytes: &[u8], max_len: usize) -> Option<Map> {
    if bytes.len() > max_len.saturating_add(MAX_FETCH_REQUEST) {
        return None;
    }
    let limits = Limits {
        max_depth: 4,
        max_len: max_len as u64,
    };
    match ecomesh_wire::from_dag_cbor_with(bytes, &limits) {
        Ok(Value::Map(m)) => Some(m),
        _ => None,
    }
}

/// The byte strings of the array under `key`, at most `max` of them.
fn bytes_list(m: &Map, key: &str, max: usize) -> Option<Vec<Vec<u8>>> {
    let Some(Value::Array(items)) = m.get(key) else {
        return None;
    };
    if items.len() > max {
        return None;
    }
    items
        .iter()
        .map(|v| match v {
            Value::Bytes(b) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

pub(super) fn decode_envelope(bytes: &[u8]) -> Option<Envelope> {
    let m = decode_map(bytes, MAX_PART_BYTES)?;
    let frames = bytes_list(&m, "f", usize::MAX)?;
    let e = Envelope {
        sid: int_of(&m, "s")?,
        seq: int_of(&m, "n")?,
        part: int_of(&m, "k")?,
        parts: int_of(&m, "t")?,
        frames,
    };
    (e.parts >= 1 && e.part < e.parts && e.parts <= MAX_PARTS).then_some(e)
}

/// Largest envelope payload (frames of one part), in bytes: below the wired
/// transport's 16 MiB message limit with room for the mesh's own fields.
pub(super) const MAX_PART_BYTES: usize = 8 << 20;
/// Most parts one protocol message may be split into.
const MAX_PARTS: u64 = 64;

pub(super) fn encode_fetch(req: u64, collection: &str, id: &str) -> Vec<u8> {
    let mut m = Map::new();
    m.insert(
        "r".into(),
        Value::Integer(i64::try_from(req).unwrap_or(i64::MAX)),
    );
    m.insert("c".into(), Value::Text(collection.to_owned()));
    m.insert("i".into(), Value::Text(id.to_owned()));
    ecomesh_wire::to_dag_cbor(&Value::Map(m)).unwrap_or_default()
}

pub(super) fn decode_fetch(bytes: &[u8]) -> Option<(i64, String, String)> {
    if bytes.len() > MAX_FETCH_REQUEST {
        return None;
    }
    let limits = Limits {
        max_depth: 4,
        max_len: MAX_FETCH_REQUEST as u64,
    };
    let Ok(Value::Map(m)) = ecomesh_wire::from_dag_cbor_with(bytes, &limits) else {
        return None;
    };
    match (m.get("r"), m.get("c"), m.get("i")) {
        (Some(Value::Integer(r)), Some(Value::Text(c)), Some(Value::Text(i)))
            if !c.is_empty() && !i.is_empty() =>
        {
            Some((*r, c.clone(), i.clone()))
        }
        _ => None,
    }
}

pub(super) fn encode_fetched(req: i64, versions: Vec<Vec<u8>>) -> Vec<u8> {
    let mut m = Map::new();
    m.insert("r".into(), Value::Integer(req));
    m.insert(
        "v".into(),
        Value::Array(versions.into_iter().map(Value::Bytes).collect()),
    );
    ecomesh_wire::to_dag_cbor(&Value::Map(m)).unwrap_or_default()
}

pub(super) fn decode_fetched(bytes: &[u8], max: usize) -> Option<(u64, Vec<Vec<u8>>)> {
    let m = decode_map(bytes, max)?;
    Some((int_of(&m, "r")?, bytes_list(&m, "v", usize::MAX)?))
}

/// A page of a peer's stream as it travels.
pub(super) struct DeltaPage {
    /// The position to ask from next time.
    pub(super) next: Position,
    /// True when more entries follow `next`.
    pub(super) more: bool,
    /// Version node bytes, in stream order.
    pub(super) versions: Vec<Vec<u8>>,
}

pub(super) fn encode_since(since: Position) -> Vec<u8> {
    let mut m = Map::new();
    m.insert(
        "p".into(),
        Value::Integer(i64::try_from(since).unwrap_or(i64::MAX)),
    );
    ecomesh_wire::to_dag_cbor(&Value::Map(m)).unwrap_or_default()
}

pub(super) fn decode_since(bytes: &[u8]) -> Option<Position> {
    if bytes.len() > 64 {
        return None;
    }
    let limits = Limits {
        max_depth: 2,
        max_len: 64,
    };
    match ecomesh_wire::from_dag_cbor_with(bytes, &limits) {
        Ok(Value::Map(m)) => int_of(&m, "p"),
        _ => None,
    }
}

pub(super) fn encode_delta(page: &DeltaPage) -> Vec<u8> {
    let mut m = Map::new();
    m.insert(
        "n".into(),
        Value::Integer(i64::try_from(page.next).unwrap_or(i64::MAX)),
    );
    m.insert("m".into(), Value::Bool(page.more));
    m.insert(
        "v".into(),
        Value::Array(page.versions.iter().cloned().map(Value::Bytes).collect()),
    );
    ecomesh_wire::to_dag_cbor(&Value::Map(m)).unwrap_or_default()
}

pub(super) fn decode_delta(bytes: &[u8], max: usize) -> Option<DeltaPage> {
    let m = decode_map(bytes, max)?;
    let more = match m.get("m") {
        Some(Value::Bool(b)) => *b,
        _ => return None,
    };
    Some(DeltaPage {
        next: int_of(&m, "n")?,
        more,
        versions: bytes_list(&m, "v", MAX_DELTA)?,
    })
}

/// The check of the `p2p_messages` fuzz target (see [`crate::fuzzing`]): every
/// decoder of the adapter's mesh messages on `data`; no panic, what decodes stays
/// within its bounds and re-encodes to bytes that decode to the same message.
pub(crate) fn fuzz_check(data: &[u8]) {
    const MAX: usize = 1 << 20;
    if let Some(e) = decode_envelope(data) {
        assert!(e.parts >= 1 && e.part < e.parts && e.parts <= MAX_PARTS);
        let again = decode_envelope(&encode_envelope(&e))
            .map(|d| (d.sid, d.seq, d.part, d.parts, d.frames));
        assert_eq!(again, Some((e.sid, e.seq, e.part, e.parts, e.frames)));
    }
    if let Some((req, collection, id)) = decode_fetch(data)
        && let Ok(r) = u64::try_from(req)
    {
        assert_eq!(
            decode_fetch(&encode_fetch(r, &collection, &id)),
            Some((req, collection, id))
        );
    }
    if let Some((req, versions)) = decode_fetched(data, MAX) {
        let r = i64::try_from(req).unwrap_or(i64::MAX);
        assert_eq!(
            decode_fetched(&encode_fetched(r, versions.clone()), MAX),
            Some((req, versions))
        );
    }
    if let Some(since) = decode_since(data) {
        assert_eq!(decode_since(&encode_since(since)), Some(since));
    }
    if let Some(page) = decode_delta(data, MAX) {
        assert!(page.versions.len() <= MAX_DELTA);
        let again = decode_delta(&encode_delta(&page), MAX).map(|p| (p.next, p.more, p.versions));
        assert_eq!(again, Some((page.next, page.more, page.versions)));
    }
}

/// Genuine messages from the encoders, named, for the fuzz target's seed corpus.
pub(crate) fn fuzz_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let envelope = Envelope {
        sid: 7,
        seq: 3,
        part: 1,
        parts: 2,
        frames: vec![b"frame one".to_vec(), Vec::new()],
    };
    let page = DeltaPage {
        next: 42,
        more: true,
        versions: vec![b"version node".to_vec()],
    };
    vec![
        ("envelope", encode_envelope(&envelope)),
        ("fetch", encode_fetch(5, "notes", "doc-1")),
        ("fetched", encode_fetched(5, vec![b"version node".to_vec()])),
        ("since", encode_since(41)),
        ("delta", encode_delta(&page)),
    ]
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn prop_protocol_messages_round_trip(
            sid in any::<u64>(), seq in any::<u64>(), parts in 1_u64..=MAX_PARTS,
            frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..5),
            since in 0_u64..i64::MAX as u64, more in any::<bool>(),
        ) {
            let e = Envelope { sid: sid >> 1, seq: seq >> 1, part: parts - 1, parts, frames: frames.clone() };
            let d = decode_envelope(&encode_envelope(&e)).unwrap();
            prop_assert_eq!((d.sid, d.seq, d.part, d.parts, d.frames), (e.sid, e.seq, e.part, e.parts, frames.clone()));
            prop_assert_eq!(decode_since(&encode_since(since)), Some(since));
            let page = DeltaPage { next: since, more, versions: frames.clone() };
            let got = decode_delta(&encode_delta(&page), 1 << 20).unwrap();
            prop_assert_eq!((got.next, got.more, got.versions), (since, more, frames.clone()));
            let (r, vs) = decode_fetched(&encode_fetched(since as i64, frames.clone()), 1 << 20).unwrap();
            prop_assert_eq!((r, vs), (since, frames));
        }

        /// Whatever a peer sends, the decoders answer without panicking.
        #[test]
        fn prop_protocol_decoders_survive_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_envelope(&bytes);
            let _ = decode_since(&bytes);
            let _ = decode_delta(&bytes, 1 << 10);
            let _ = decode_fetch(&bytes);
            let _ = decode_fetched(&bytes, 1 << 10);
        }
    }

    #[test]
    fn malformed_and_oversized_pages_are_refused() {
        let page = DeltaPage {
            next: 3,
            more: false,
            versions: vec![vec![0; 100]],
        };
        let bytes = encode_delta(&page);
        assert!(decode_delta(&bytes, 1 << 10).is_some());
        assert!(decode_delta(&bytes, 10).is_none(), "over the size limit");
        let too_many = DeltaPage {
            next: 3,
            more: false,
            versions: vec![Vec::new(); MAX_DELTA + 1],
        };
        assert!(decode_delta(&encode_delta(&too_many), 1 << 20).is_none());
        assert!(decode_since(&encode_fetch(1, "c", "i")).is_none());
        assert!(decode_since(&[0xff; 100]).is_none());
    }
}
