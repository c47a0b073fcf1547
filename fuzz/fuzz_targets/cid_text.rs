//! Whatever parses as CID text prints back as exactly the input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(cid) = ecomesh_wire::parse_cid(text)
    {
        assert_eq!(ecomesh_wire::cid_to_text(&cid), text);
        let id = ecomesh_wire::to_content_id(&cid);
        assert_eq!(ecomesh_wire::from_content_id(&id).expect("binary"), cid);
    }
    // The binary form too.
    if let Ok(cid) = ecomesh_wire::cid::cid_from_binary(data) {
        assert_eq!(cid.to_bytes(), data);
    }
});
