//! CARv1 files (`CarReader`): whatever reads writes back (`CarWriter`) to
//! exactly the input (up to the end of the last whole block), and a block that reads either verifies against its
//! CID or is refused with a typed error. Small bounds keep runs fast.
#![no_main]

use ecomesh_wire::{CarLimits, CarReader, CarWriter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let limits = CarLimits {
        max_header: 4096,
        max_block: 4096,
        max_blocks: Some(64),
    };
    let Ok(mut reader) = CarReader::new(data, limits) else {
        return;
    };
    let mut writer = CarWriter::new(Vec::new(), reader.roots()).expect("header re-encodes");
    // The input up to the end of the last block read whole (an error may have
    // consumed part of the next section).
    let mut good = reader.bytes_read();
    while let Ok(Some(block)) = reader.next_block() {
        let _ = block.verify();
        writer
            .write_block(&block.cid, &block.data)
            .expect("block re-encodes");
        good = reader.bytes_read();
    }
    let good = usize::try_from(good).expect("fits");
    assert_eq!(writer.finish().expect("flushes"), &data[..good]);
});
