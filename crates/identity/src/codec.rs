//! Length-prefixed, domain-separated binary framing shared by every encoding of this crate.
//!
//! Rules (all integers big-endian):
//! - a variable-length field is a `u32` byte count followed by the bytes;
//! - fixed-size fields (keys, signatures, nonces, integers) have no prefix;
//! - bytes that get signed or hashed start with the length-prefixed domain string of
//!   their purpose (see [`crate::domain`]), so bytes signed for one purpose never
//!   verify for another;
//! - an encoded object starts with a kind byte and a version byte.
//!
//! The [`Reader`] checks every length against what remains *before* slicing, never
//! allocates from a length prefix, and rejects trailing bytes.

use crate::error::{Error, Result};

/// Builds framed bytes.
#[derive(Debug, Default)]
pub(crate) struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    pub(crate) fn new() -> Self {
        Writer { buf: Vec::new() }
    }

    /// Starts bytes to be signed or hashed for `domain`.
    pub(crate) fn with_domain(domain: &str) -> Self {
        let mut w = Writer::new();
        w.var(domain.as_bytes());
        w
    }

    /// Starts an encoded object with its kind and version bytes.
    pub(crate) fn object(kind: u8, version: u8) -> Self {
        let mut w = Writer::new();
        w.u8(kind);
        w.u8(version);
        w
    }

    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_be_bytes());
        self
    }

    pub(crate) fn fixed(&mut self, bytes: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(bytes);
        self
    }

    /// A `u32` length prefix then the bytes. Callers bound lengths well below `u32::MAX`
    /// (every public constructor checks its limits); a longer slice saturates the prefix,
    /// which no decoder accepts.
    pub(crate) fn var(&mut self, bytes: &[u8]) -> &mut Self {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(bytes);
        self
    }

    pub(crate) fn finish(self) -> Vec<u8> {
        self.buf
    }
}

/// Reads framed bytes with bounds checks; every error is typed.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8], what: &'static str) -> Self {
        Reader { buf, what }
    }

    /// Reads and checks the kind byte and the version byte of an object.
    pub(crate) fn object(buf: &'a [u8], what: &'static str, kind: u8, version: u8) -> Result<Self> {
        let mut r = Reader::new(buf, what);
        let k = r.u8()?;
        if k != kind {
            return Err(Error::Decode {
                what,
                reason: "wrong kind byte",
            });
        }
        let v = r.u8()?;
        if v != version {
            return Err(Error::UnsupportedVersion { what, version: v });
        }
        Ok(r)
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.buf.len() {
            return Err(Error::Truncated {
                what: self.what,
                needed: n,
                available: self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0_u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    /// A `u32`-prefixed field of at most `max` bytes.
    pub(crate) fn var(&mut self, max: usize, field: &'static str) -> Result<&'a [u8]> {
        let len = u32::from_be_bytes(self.array()?);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > max {
            return Err(Error::TooLarge {
                what: field,
                len,
                max,
            });
        }
        self.take(len)
    }

    /// The rest of the input.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Fails if bytes remain.
    pub(crate) fn finish(self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(Error::Decode {
                what: self.what,
                reason: "trailing bytes",
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_bounds() {
        let mut w = Writer::object(7, 1);
        w.u64(42).var(b"abc").fixed(&[9; 4]);
        let bytes = w.finish();
        let mut r = Reader::object(&bytes, "test", 7, 1).unwrap();
        assert_eq!(r.u64().unwrap(), 42);
        assert_eq!(r.var(3, "f").unwrap(), b"abc");
        assert_eq!(r.array::<4>().unwrap(), [9; 4]);
        r.finish().unwrap();

        assert!(matches!(
            Reader::object(&bytes, "test", 8, 1),
            Err(Error::Decode { .. })
        ));
        assert!(matches!(
            Reader::object(&bytes, "test", 7, 2),
            Err(Error::UnsupportedVersion { version: 1, .. })
        ));
        let mut r = Reader::object(&bytes, "test", 7, 1).unwrap();
        r.u64().unwrap();
        assert!(matches!(r.var(2, "f"), Err(Error::TooLarge { len: 3, .. })));
        // A huge length prefix is rejected without allocating.
        let mut r = Reader::new(&[0xFF, 0xFF, 0xFF, 0xFF, 1], "t");
        assert!(matches!(
            r.var(usize::MAX, "f"),
            Err(Error::Truncated { .. })
        ));
        let mut r = Reader::new(&[1, 2], "t");
        assert!(matches!(
            r.u64(),
            Err(Error::Truncated {
                needed: 8,
                available: 2,
                ..
            })
        ));
        let r = Reader::new(&[1], "t");
        assert!(matches!(r.finish(), Err(Error::Decode { .. })));
    }

    #[test]
    fn domain_prefix_separates() {
        let a = Writer::with_domain("ab").finish();
        let b = Writer::with_domain("a").finish();
        assert_ne!(a[..4], b[..4]);
    }
}
