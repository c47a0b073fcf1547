//! Thin wrappers over `ecomesh-wire` for the store's own records.

use ecomesh_types::{ContentId, Value};
use ecomesh_wire::{WireError, cid_of_dag_cbor, from_dag_cbor, to_content_id, to_dag_cbor};

use crate::StoreError;

/// Canonical DAG-CBOR bytes of a value the store built itself.
pub(crate) fn encode(v: &Value) -> Result<Vec<u8>, StoreError> {
    to_dag_cbor(v).map_err(|e| StoreError::Encode(e.to_string()))
}

/// Strictly decodes stored DAG-CBOR bytes.
pub(crate) fn decode(bytes: &[u8]) -> Result<Value, WireError> {
    from_dag_cbor(bytes)
}

/// The CIDv1 (dag-cbor, sha2-256) of canonical bytes.
pub(crate) fn cid_of_bytes(bytes: &[u8]) -> ContentId {
    to_content_id(&cid_of_dag_cbor(bytes))
}
