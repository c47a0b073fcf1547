//! Whatever imports as DAG-JSON exports, and the export imports to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = ecomesh_wire::from_dag_json_bytes(data) {
        let text = ecomesh_wire::to_dag_json(&v).expect("an imported value exports");
        let back = ecomesh_wire::from_dag_json(&text).expect("the export imports");
        assert_eq!(back, v, "export/import changed the value");
        assert_eq!(ecomesh_wire::to_dag_json(&back).expect("export"), text);
        // And it has a DAG-CBOR form that decodes to the same value.
        let cbor = ecomesh_wire::to_dag_cbor(&v).expect("DAG-CBOR");
        assert_eq!(ecomesh_wire::from_dag_cbor(&cbor).expect("decode"), v);
    }
});
