//! Canonical encodings of ecomesh: DAG-CBOR, CIDs, DAG-JSON and the wire codecs.
//!
//! - [`to_dag_cbor`] / [`from_dag_cbor`]: canonical DAG-CBOR for
//!   [`Value`](ecomesh_types::Value), exactly as the IPLD DAG-CBOR
//!   specification's strictness section asks (see [`dag_cbor`]). The same
//!   document built in any field order gives the same bytes.
//! - [`cid_of`], [`verify`], [`parse_cid`]: CIDv1 (dag-cbor, sha2-256 by
//!   default, blake3 as an option), base32-lower text, conversions to and from
//!   [`ContentId`](ecomesh_types::ContentId) (see [`mod@cid`]).
//! - [`to_dag_json`] / [`from_dag_json`]: the IPLD DAG-JSON form for people and
//!   tools (see [`dag_json`]).
//! - [`encode_message`] / [`encode_message_compact`]: [`NetworkMessage`](ecomesh_types::NetworkMessage)
//!   in full DAG-CBOR and in a compact form for LoRa/BLE (see [`message`]).
//! - [`encode_delta_compact`] / [`decode_delta_compact`]: the compact wire
//!   form of CRDT deltas and states beside the canonical one (actor table,
//!   timestamps relative to a base; see [`compact`]).
//! - [`CarWriter`] / [`CarReader`]: CARv1 files (IPLD's archive of blocks),
//!   read as a bounded stream (see [`car`]).
//!
//! # Decoders
//!
//! Every decoder is strict and bounded: non-canonical input is a typed
//! [`WireError`], nothing panics, nesting depth and lengths are limited by
//! [`Limits`], and no buffer is allocated for a length prefix before the bytes
//! it announces are present. For every accepted input, re-encoding the decoded
//! value gives back exactly the input (the fuzz targets in `fuzz/` check this).
//!
//! # Why a hand-written codec and where `serde_cbor` fits
//!
//! The design names `serde_cbor`. It is a good general CBOR codec but it cannot
//! enforce DAG-CBOR's canonical form on decode (key order, shortest heads,
//! 64-bit floats), it shrinks floats to 16/32 bits on encode, and it allocates
//! from length prefixes. So the codec here is hand-written, and `serde_cbor`
//! serves as the independent implementation the tests cross-check against:
//! it must decode every canonical encoding this crate writes to the same data,
//! and for float-free values its own canonical encoder must produce the same
//! bytes.

#![forbid(unsafe_code)]

pub mod car;
pub mod cbor;
pub mod cid;
pub mod codec;
pub mod compact;
pub mod compact_state;
pub mod dag_cbor;
pub mod dag_json;
mod error;
pub mod message;

pub use crate::car::{CarBlock, CarLimits, CarReader, CarWriter};
pub use crate::cbor::{Limits, Reader, Writer};
pub use crate::cid::{
    Cid, HashAlg, cid_for_bytes, cid_of, cid_of_dag_cbor, cid_of_with, cid_to_text,
    decode_verified, encode_block, from_content_id, link, parse_cid, to_content_id, verify,
};
pub use crate::codec::{Canonical, cid_of_canonical, decode, decode_with, encode, encode_with};
pub use crate::compact::{decode_delta_compact, encode_delta_compact};
pub use crate::compact_state::{
    decode_document_compact, decode_state_compact, encode_document_compact, encode_state_compact,
};
pub use crate::dag_cbor::{from_dag_cbor, from_dag_cbor_with, to_dag_cbor, to_dag_cbor_with};
pub use crate::dag_json::{
    from_dag_json, from_dag_json_bytes, from_dag_json_canonical, from_dag_json_with, to_dag_json,
};
pub use crate::error::{Result, WireError};
pub use crate::message::{
    decode_message, decode_message_compact, decode_message_compact_with, decode_message_with,
    encode_message, encode_message_compact, encoded_message_len,
};
