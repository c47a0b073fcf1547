//! Every CRDT-state decoder: whatever decodes re-encodes to exactly the input.
//! The first byte picks the type, the rest is the encoding.
#![no_main]

use ecomesh_crdt::{
    DagNode, DocumentCrdt, GSet, LwwRegister, OrSet, PnCounter, VectorClock, VersionDag,
};
use ecomesh_types::{ContentId, HlcTimestamp, Value};
use ecomesh_wire::{Canonical, decode, encode};
use libfuzzer_sys::fuzz_target;

fn check<T: Canonical>(bytes: &[u8]) {
    if let Ok(v) = decode::<T>(bytes) {
        assert_eq!(encode(&v).expect("a decoded state encodes"), bytes);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 9 {
        0 => check::<HlcTimestamp>(bytes),
        1 => check::<VectorClock>(bytes),
        2 => check::<LwwRegister<Value>>(bytes),
        3 => check::<GSet<Value>>(bytes),
        4 => check::<OrSet<Value>>(bytes),
        5 => check::<PnCounter>(bytes),
        6 => check::<DocumentCrdt>(bytes),
        7 => check::<DagNode<ContentId>>(bytes),
        _ => check::<VersionDag<ContentId>>(bytes),
    }
});
