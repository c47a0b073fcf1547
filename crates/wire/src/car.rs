//! CARv1 files ("content addressable archives", the IPLD transport format):
//! a writer and a bounded streaming reader.
//!
//! The layout (<https://ipld.io/specs/transport/car/carv1/>):
//!
//! ```text
//! varint(len(header)) | header | (varint(len(cid) + len(data)) | cid | data)*
//! ```
//!
//! where varints are unsigned LEB128 (the multiformats unsigned-varint), the
//! header is the DAG-CBOR map `{"roots": [links...], "version": 1}` and every
//! CID is in its binary form (a CIDv1, or a CIDv0 as its bare multihash),
//! exactly as the `cid` crate writes it. Files written here are read by IPLD
//! tools (`go-car`, `ipfs dag import`), and theirs are read here.
//!
//! The reader is strict and bounded: the header and each section are limited
//! by [`CarLimits`], the number of blocks optionally too, nothing is allocated
//! for a length prefix before the bytes it announces arrive (at most the
//! bound), and every malformation is a typed [`WireError`]: a truncated
//! header or section ([`WireError::Truncated`] with the file offset), a varint
//! that overflows or is not minimal ([`WireError::CarVarint`]), an oversized
//! length ([`WireError::LengthExceeded`]), a bad CID
//! ([`WireError::InvalidCid`]), a version other than 1
//! ([`WireError::CarVersion`]), a malformed header
//! ([`WireError::UnexpectedKind`], [`WireError::MissingField`],
//! [`WireError::UnknownField`]) or an I/O failure ([`WireError::Io`]).
//! The reader does not hash blocks: [`CarBlock::verify`] checks one.

use std::io::{Read, Write};

use ecomesh_types::{Map, Value};

use crate::cid::{Cid, check_binary_cid};
use crate::error::{Result, WireError};

/// The bounds a [`CarReader`] enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CarLimits {
    /// Largest header (the DAG-CBOR map) in bytes.
    pub max_header: u64,
    /// Largest section (CID and data together) in bytes.
    pub max_block: u64,
    /// Most blocks a file may hold; `None` for no limit.
    pub max_blocks: Option<u64>,
}

impl CarLimits {
    /// 8 MiB of header (about 200,000 roots), 16 MiB per block, any number of blocks.
    pub const DEFAULT: CarLimits = CarLimits {
        max_header: 8 << 20,
        max_block: 16 << 20,
        max_blocks: None,
    };
}

impl Default for CarLimits {
    fn default() -> Self {
        CarLimits::DEFAULT
    }
}

/// Most bytes an unsigned varint of a `u64` takes (the multiformats spec
/// allows 9, i.e. 63 bits; LEB128 of a full `u64` needs 10).
const MAX_VARINT_LEN: usize = 9;

/// Bytes read ahead of a length before they are known to exist.
const READ_CHUNK: u64 = 64 << 10;

/// Appends the unsigned LEB128 varint of `n` to `out`.
pub fn write_varint(n: u64, out: &mut Vec<u8>) {
    let mut n = n;
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// The canonical header bytes (without its length prefix) for `roots`.
pub fn encode_header(roots: &[Cid]) -> Result<Vec<u8>> {
    let mut map = Map::new();
    map.insert(
        "roots".into(),
        Value::Array(roots.iter().map(crate::cid::link).collect()),
    );
    map.insert("version".into(), Value::Integer(1));
    crate::to_dag_cbor(&Value::Map(map))
}

fn io_error(e: &std::io::Error) -> WireError {
    WireError::Io {
        kind: e.kind(),
        message: e.to_string(),
    }
}

/// Writes a CARv1 file: the header at [`CarWriter::new`], then one section
/// per [`CarWriter::write_block`]. The writer does not hash: the caller
/// promises that each CID is the CID of its data.
#[derive(Debug)]
pub struct CarWriter<W: Write> {
    out: W,
    written: u64,
    blocks: u64,
    scratch: Vec<u8>,
}

impl<W: Write> CarWriter<W> {
    /// Writes the header naming `roots` to `out`.
    pub fn new(mut out: W, roots: &[Cid]) -> Result<Self> {
        let header = encode_header(roots)?;
        let mut prefix = Vec::with_capacity(MAX_VARINT_LEN);
        write_varint(header.len() as u64, &mut prefix);
        out.write_all(&prefix).map_err(|e| io_error(&e))?;
        out.write_all(&header).map_err(|e| io_error(&e))?;
        Ok(CarWriter {
            out,
            written: (prefix.len() + header.len()) as u64,
            blocks: 0,
            scratch: Vec::new(),
        })
    }

    /// Appends the section of one block: its CID's binary form, then `data`.
    pub fn write_block(&mut self, cid: &Cid, data: &[u8]) -> Result<()> {
        let cid_bytes = cid.to_bytes();
        self.scratch.clear();
        write_varint((cid_bytes.len() + data.len()) as u64, &mut self.scratch);
        self.scratch.extend_from_slice(&cid_bytes);
        self.out
            .write_all(&self.scratch)
            .and_then(|()| self.out.write_all(data))
            .map_err(|e| io_error(&e))?;
        self.written += (self.scratch.len() + data.len()) as u64;
        self.blocks += 1;
        Ok(())
    }

    /// Bytes written so far, header included.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Blocks written so far.
    pub fn blocks_written(&self) -> u64 {
        self.blocks
    }

    /// Flushes and returns the underlying writer.
    pub fn finish(mut self) -> Result<W> {
        self.out.flush().map_err(|e| io_error(&e))?;
        Ok(self.out)
    }
}

/// One block of a CAR file: a CID and the bytes it names (not yet verified).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CarBlock {
    /// The CID the file gives for the block.
    pub cid: Cid,
    /// The block's bytes.
    pub data: Vec<u8>,
}

impl CarBlock {
    /// Checks that `data` hashes to `cid` ([`crate::verify`]:
    /// [`WireError::CidMismatch`] or [`WireError::UnsupportedHash`] otherwise).
    pub fn verify(&self) -> Result<()> {
        crate::verify(&self.data, &self.cid)
    }
}

/// Reads a CARv1 file from any [`Read`], one block at a time, within
/// [`CarLimits`] (see the module docs for the errors). After an error the
/// reader is done: later calls return `Ok(None)`.
#[derive(Debug)]
pub struct CarReader<R: Read> {
    input: R,
    limits: CarLimits,
    roots: Vec<Cid>,
    offset: u64,
    blocks: u64,
    done: bool,
}

impl<R: Read> CarReader<R> {
    /// Reads and checks the header.
    pub fn new(input: R, limits: CarLimits) -> Result<Self> {
        let mut r = CarReader {
            input,
            limits,
            roots: Vec::new(),
            offset: 0,
            blocks: 0,
            done: false,
        };
        let start = r.offset;
        let len = match r.read_varint()? {
            Some(len) => len,
            None => return Err(WireError::Truncated { offset: 0 }),
        };
        if len > limits.max_header {
            return Err(WireError::LengthExceeded {
                offset: offset_usize(start),
                len,
                max: limits.max_header,
            });
        }
        let header = r.read_exact_bounded(len)?;
        r.roots = parse_header(&header)?;
        Ok(r)
    }

    /// The roots the header names.
    pub fn roots(&self) -> &[Cid] {
        &self.roots
    }

    /// Bytes consumed so far.
    pub fn bytes_read(&self) -> u64 {
        self.offset
    }

    /// Blocks read so far.
    pub fn blocks_read(&self) -> u64 {
        self.blocks
    }

    /// The next block, or `None` at the end of the file (which must fall
    /// between two sections).
    pub fn next_block(&mut self) -> Result<Option<CarBlock>> {
        if self.done {
            return Ok(None);
        }
        let r = self.read_block();
        if !matches!(r, Ok(Some(_))) {
            self.done = true;
        }
        r
    }

    fn read_block(&mut self) -> Result<Option<CarBlock>> {
        let start = self.offset;
        let Some(len) = self.read_varint()? else {
            return Ok(None);
        };
        if len > self.limits.max_block {
            return Err(WireError::LengthExceeded {
                offset: offset_usize(start),
                len,
                max: self.limits.max_block,
            });
        }
        if let Some(max) = self.limits.max_blocks
            && self.blocks >= max
        {
            return Err(WireError::TooManyBlocks { max });
        }
        let cid_start = self.offset;
        let mut section = self.read_exact_bounded(len)?;
        let cid = Cid::try_from(section.as_slice()).map_err(|e| WireError::InvalidCid {
            reason: format!("block at byte {cid_start}: {e}"),
        })?;
        let cid_len = cid.encoded_len();
        let cid_bytes = section.get(..cid_len).unwrap_or_default();
        check_binary_cid(cid_bytes).map_err(|reason| WireError::InvalidCid {
            reason: format!("block at byte {cid_start}: {reason}"),
        })?;
        section.drain(..cid_len);
        self.blocks += 1;
        Ok(Some(CarBlock { cid, data: section }))
    }

    /// One unsigned varint; `None` on a clean end of input before its first byte.
    fn read_varint(&mut self) -> Result<Option<u64>> {
        let start = self.offset;
        let mut value: u64 = 0;
        for i in 0..MAX_VARINT_LEN {
            let mut byte = [0_u8; 1];
            match read_some(&mut self.input, &mut byte)? {
                0 if i == 0 => return Ok(None),
                0 => {
                    return Err(WireError::Truncated {
                        offset: offset_usize(start),
                    });
                }
                _ => {}
            }
            self.offset += 1;
            let b = byte[0];
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                if b == 0 && i > 0 {
                    return Err(WireError::CarVarint {
                        offset: offset_usize(start),
                        reason: "not minimal",
                    });
                }
                return Ok(Some(value));
            }
        }
        Err(WireError::CarVarint {
            offset: offset_usize(start),
            reason: "longer than 9 bytes",
        })
    }

    /// Exactly `len` bytes (already checked against a limit), grown as they
    /// arrive rather than allocated up front.
    fn read_exact_bounded(&mut self, len: u64) -> Result<Vec<u8>> {
        let start = self.offset;
        let mut buf = Vec::with_capacity(usize::try_from(len.min(READ_CHUNK)).unwrap_or(0));
        let got = (&mut self.input)
            .take(len)
            .read_to_end(&mut buf)
            .map_err(|e| io_error(&e))?;
        self.offset += got as u64;
        if (got as u64) < len {
            return Err(WireError::Truncated {
                offset: offset_usize(start),
            });
        }
        Ok(buf)
    }
}

impl<R: Read> Iterator for CarReader<R> {
    type Item = Result<CarBlock>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_block().transpose()
    }
}

fn read_some(input: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    loop {
        match input.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_error(&e)),
        }
    }
}

fn offset_usize(offset: u64) -> usize {
    usize::try_from(offset).unwrap_or(usize::MAX)
}

const HEADER: &str = "CAR header";

/// The roots of a header, checking it is `{"roots": [links], "version": 1}`.
fn parse_header(bytes: &[u8]) -> Result<Vec<Cid>> {
    let value = crate::from_dag_cbor(bytes)?;
    let Value::Map(map) = value else {
        return Err(WireError::UnexpectedKind {
            offset: 0,
            expected: "a map (CAR header)",
        });
    };
    match map.get("version") {
        Some(Value::Integer(1)) => {}
        Some(Value::Integer(v)) => return Err(WireError::CarVersion { version: *v }),
        Some(_) => {
            return Err(WireError::InvalidField {
                context: HEADER,
                field: "version",
                reason: "not an integer",
            });
        }
        None => {
            return Err(WireError::MissingField {
                context: HEADER,
                field: "version",
            });
        }
    }
    if let Some(k) = map.keys().find(|k| *k != "roots" && *k != "version") {
        return Err(WireError::UnknownField {
            context: HEADER,
            field: k.clone(),
        });
    }
    let Some(Value::Array(roots)) = map.get("roots") else {
        return Err(match map.get("roots") {
            None => WireError::MissingField {
                context: HEADER,
                field: "roots",
            },
            Some(_) => WireError::InvalidField {
                context: HEADER,
                field: "roots",
                reason: "not an array",
            },
        });
    };
    roots
        .iter()
        .map(|r| match r {
            Value::Link(id) => crate::from_content_id(id),
            _ => Err(WireError::InvalidField {
                context: HEADER,
                field: "roots",
                reason: "an element is not a link",
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample() -> (Vec<Cid>, Vec<(Cid, Vec<u8>)>) {
        let blocks: Vec<(Cid, Vec<u8>)> = (0..3_u8)
            .map(|i| {
                let data = crate::to_dag_cbor(&Value::Integer(i64::from(i) * 1000)).unwrap();
                (crate::cid_of_dag_cbor(&data), data)
            })
            .collect();
        (vec![blocks[2].0], blocks)
    }

    fn write(roots: &[Cid], blocks: &[(Cid, Vec<u8>)]) -> Vec<u8> {
        let mut w = CarWriter::new(Vec::new(), roots).unwrap();
        for (c, d) in blocks {
            w.write_block(c, d).unwrap();
        }
        let n = w.bytes_written();
        let out = w.finish().unwrap();
        assert_eq!(n, out.len() as u64);
        out
    }

    fn read_all(bytes: &[u8], limits: CarLimits) -> Result<(Vec<Cid>, Vec<CarBlock>)> {
        let mut r = CarReader::new(bytes, limits)?;
        let roots = r.roots().to_vec();
        let blocks = r.by_ref().collect::<Result<Vec<_>>>()?;
        assert_eq!(r.bytes_read(), bytes.len() as u64);
        Ok((roots, blocks))
    }

    #[test]
    fn round_trip() {
        let (roots, blocks) = sample();
        let file = write(&roots, &blocks);
        let (r, b) = read_all(&file, CarLimits::DEFAULT).unwrap();
        assert_eq!(r, roots);
        assert_eq!(b.len(), 3);
        for (got, (cid, data)) in b.iter().zip(&blocks) {
            assert_eq!(&got.cid, cid);
            assert_eq!(&got.data, data);
            got.verify().unwrap();
        }
    }

    #[test]
    fn every_truncation_is_a_typed_error() {
        let (roots, blocks) = sample();
        let file = write(&roots, &blocks);
        let mut boundaries = vec![];
        let mut r = CarReader::new(file.as_slice(), CarLimits::DEFAULT).unwrap();
        boundaries.push(r.bytes_read());
        while r.next_block().unwrap().is_some() {
            boundaries.push(r.bytes_read());
        }
        for cut in 0..file.len() {
            let res = read_all(&file[..cut], CarLimits::DEFAULT);
            if boundaries.contains(&(cut as u64)) {
                assert!(res.is_ok(), "cut {cut}");
            } else {
                assert!(
                    matches!(res, Err(WireError::Truncated { .. })),
                    "cut {cut}: {res:?}"
                );
            }
        }
    }

    #[test]
    fn oversized_lengths_are_refused_before_reading() {
        let (roots, blocks) = sample();
        let file = write(&roots, &blocks);
        let header_len = u64::from(file[0]);
        let small_header = CarLimits {
            max_header: header_len - 1,
            ..CarLimits::DEFAULT
        };
        assert!(matches!(
            read_all(&file, small_header),
            Err(WireError::LengthExceeded { offset: 0, .. })
        ));
        let small_block = CarLimits {
            max_block: 10,
            ..CarLimits::DEFAULT
        };
        assert!(matches!(
            read_all(&file, small_block),
            Err(WireError::LengthExceeded { .. })
        ));
        let two_blocks = CarLimits {
            max_blocks: Some(2),
            ..CarLimits::DEFAULT
        };
        assert_eq!(
            read_all(&file, two_blocks).unwrap_err(),
            WireError::TooManyBlocks { max: 2 }
        );
        // A huge announced length with nothing behind it: refused by the bound,
        // and under a huge bound a truncation, without allocating it.
        let mut huge = file[..=usize::try_from(header_len).unwrap()].to_vec();
        huge.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        assert!(matches!(
            read_all(&huge, CarLimits::DEFAULT),
            Err(WireError::LengthExceeded { .. })
        ));
        let unbounded = CarLimits {
            max_block: u64::MAX,
            ..CarLimits::DEFAULT
        };
        assert!(matches!(
            read_all(&huge, unbounded),
            Err(WireError::Truncated { .. })
        ));
    }

    #[test]
    fn bad_varints_versions_and_cids() {
        let overflow = [0xff_u8; 10];
        assert!(matches!(
            CarReader::new(&overflow[..], CarLimits::DEFAULT).map(|_| ()),
            Err(WireError::CarVarint { .. })
        ));
        assert!(matches!(
            CarReader::new(&[0x80, 0x00][..], CarLimits::DEFAULT).map(|_| ()),
            Err(WireError::CarVarint { .. })
        ));
        // {"version": 2} (a CARv2 pragma).
        let mut v2 = Map::new();
        v2.insert("version".into(), Value::Integer(2));
        let h = crate::to_dag_cbor(&Value::Map(v2)).unwrap();
        let mut file = vec![h.len() as u8];
        file.extend_from_slice(&h);
        assert_eq!(
            CarReader::new(file.as_slice(), CarLimits::DEFAULT).map(|_| ()),
            Err(WireError::CarVersion { version: 2 })
        );
        // A section whose CID is garbage.
        let mut file = write(&[], &[]);
        file.extend_from_slice(&[3, 0x01, 0x71, 0x12]);
        assert!(matches!(
            read_all(&file, CarLimits::DEFAULT),
            Err(WireError::InvalidCid { .. })
        ));
    }

    #[test]
    fn cid_v0_blocks_use_the_bare_multihash() {
        let data = b"hello".to_vec();
        let v1 = crate::cid_for_bytes(crate::cid::RAW, crate::HashAlg::Sha2_256, &data);
        let v0 = Cid::new_v0(*v1.hash()).unwrap();
        let file = write(&[v0], &[(v0, data.clone())]);
        let (roots, blocks) = read_all(&file, CarLimits::DEFAULT).unwrap();
        assert_eq!(roots, vec![v0]);
        assert_eq!(blocks[0].cid, v0);
        assert_eq!(v0.to_bytes().len(), 34);
        blocks[0].verify().unwrap();
    }
}
