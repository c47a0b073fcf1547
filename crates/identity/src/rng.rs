//! Randomness from the operating system through `getrandom`.
//!
//! rand_core 0.10 has no `OsRng`; keys and nonces are drawn with [`fill`], and APIs
//! that want a `rand_core` generator get [`OsRandom`], which never panics: a failure
//! of the OS source is remembered and reported by [`OsRandom::check`], and the caller
//! discards whatever was generated.

use std::convert::Infallible;

use rand_core::{TryCryptoRng, TryRng};

use crate::error::{Error, Result};

/// Fills `buf` from the OS random source.
pub(crate) fn fill(buf: &mut [u8]) -> Result<()> {
    getrandom::fill(buf).map_err(Error::Random)
}

/// `N` random bytes.
pub(crate) fn array<const N: usize>() -> Result<[u8; N]> {
    let mut out = [0_u8; N];
    fill(&mut out)?;
    Ok(out)
}

/// A `rand_core` 0.10 cryptographic generator over `getrandom`.
#[derive(Debug, Default)]
pub(crate) struct OsRandom {
    failure: Option<getrandom::Error>,
}

impl OsRandom {
    /// Whether every draw succeeded; the output must be discarded otherwise.
    pub(crate) fn check(self) -> Result<()> {
        match self.failure {
            None => Ok(()),
            Some(e) => Err(Error::Random(e)),
        }
    }
}

impl TryRng for OsRandom {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        let mut b = [0_u8; 4];
        self.try_fill_bytes(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        let mut b = [0_u8; 8];
        self.try_fill_bytes(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        if let Err(e) = getrandom::fill(dst) {
            dst.fill(0);
            self.failure.get_or_insert(e);
        }
        Ok(())
    }
}

impl TryCryptoRng for OsRandom {}
