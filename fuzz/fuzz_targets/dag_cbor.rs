//! Whatever decodes as DAG-CBOR re-encodes to exactly the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = ecomesh_wire::from_dag_cbor(data) {
        let again = ecomesh_wire::to_dag_cbor(&v).expect("a decoded value encodes");
        assert_eq!(again, data, "re-encoding differs from the accepted input");
        // The CID of the value is the CID of the accepted bytes.
        let cid = ecomesh_wire::cid_of(&v).expect("cid");
        ecomesh_wire::verify(data, &cid).expect("verify");
    }
});
