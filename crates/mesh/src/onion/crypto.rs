//! The cryptography of onion circuits: the per-hop handshake and the layers.
//!
//! Handshake (one per hop, ntor-like): the client sends an ephemeral X25519 key
//! `X`; the hop answers with its own ephemeral `Y` and an authenticator. Both
//! derive
//!
//! ```text
//! master = blake3::derive_key(HANDSHAKE, X || Y || B || DH(x, B) || DH(x, Y))
//! ```
//!
//! where `B` is the hop's static X25519 key (the Montgomery form of its Ed25519
//! identity, so only the peer the client chose can answer) and the ephemeral
//! `DH(x, Y)` gives forward secrecy once both sides forget their ephemerals.
//! Five 32-byte keys are expanded from `master` (blake3 XOF): the
//! authenticator, the forward AEAD key, the forward filler key, the backward
//! AEAD key and the backward stream key.
//!
//! Layers keep every cell body exactly [`BODY_LEN`] bytes at every hop:
//!
//! - **Forward** (client to hops): a body is `tag (16) || ciphertext`, one
//!   XChaCha20-Poly1305 layer per hop. A hop checks and removes its layer and
//!   appends 16 filler bytes derived from its filler key and the cell's
//!   counter, so the next hop gets [`BODY_LEN`] bytes again. The client knows
//!   every key, so it computes those fillers in advance (Sphinx-style) and
//!   builds the layers so that every hop's tag verifies: every hop
//!   authenticates what it receives, and a tampered or replayed cell is
//!   refused by the first honest hop after the tamperer.
//! - **Backward** (hops to client): the hop that writes a cell seals it with
//!   its backward AEAD key; every hop on the way back adds a size-preserving
//!   XChaCha20 layer with its backward stream key. The client removes layers
//!   from the first hop on and checks, at each hop, whether that hop's AEAD
//!   opens the cell: the one that does wrote it.
//!
//! Nonces are per-hop, per-direction counters (`direction || 0.. || counter`),
//! never sent: a hop accepts only the next counter, so a replayed, reordered
//! or dropped cell fails its tag.

use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, Zeroizing};

use super::cell::BODY_LEN;

/// Bytes of an AEAD tag (one per forward layer).
pub const TAG_LEN: usize = 16;
/// The plaintext of one layer: a body without its tag.
pub const INNER_LEN: usize = BODY_LEN - TAG_LEN;

const HANDSHAKE_DOMAIN: &str = "ecomesh 2026 onion circuit handshake v1";
const FILLER_DOMAIN: &str = "ecomesh 2026 onion forward filler v1";

/// The keys one hop shares with the client of a circuit.
#[derive(Clone)]
pub(crate) struct HopKeys {
    /// Proves the hop knew its static secret (sent in CREATED / EXTENDED).
    pub(crate) auth: [u8; 32],
    fwd: [u8; 32],
    filler: [u8; 32],
    back: [u8; 32],
    back_stream: [u8; 32],
}

impl Drop for HopKeys {
    fn drop(&mut self) {
        self.auth.zeroize();
        self.fwd.zeroize();
        self.filler.zeroize();
        self.back.zeroize();
        self.back_stream.zeroize();
    }
}

impl std::fmt::Debug for HopKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HopKeys(..)")
    }
}

/// The keys of a hop from the handshake's public values and the two shared secrets.
pub(crate) fn derive(
    x: &[u8; 32],
    y: &[u8; 32],
    b: &[u8; 32],
    dh_static: &[u8; 32],
    dh_ephemeral: &[u8; 32],
) -> HopKeys {
    let mut material = Zeroizing::new([0_u8; 160]);
    material[..32].copy_from_slice(x);
    material[32..64].copy_from_slice(y);
    material[64..96].copy_from_slice(b);
    material[96..128].copy_from_slice(dh_static);
    material[128..].copy_from_slice(dh_ephemeral);
    let master = Zeroizing::new(blake3::derive_key(HANDSHAKE_DOMAIN, &*material));
    let mut out = Zeroizing::new([0_u8; 160]);
    blake3::Hasher::new_keyed(&master)
        .finalize_xof()
        .fill(&mut *out);
    let take = |i: usize| -> [u8; 32] {
        let mut k = [0_u8; 32];
        k.copy_from_slice(&out[i * 32..(i + 1) * 32]);
        k
    };
    HopKeys {
        auth: take(0),
        fwd: take(1),
        filler: take(2),
        back: take(3),
        back_stream: take(4),
    }
}

/// Constant-time equality of two authenticators.
pub(crate) fn auth_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    blake3::Hash::from_bytes(*a) == blake3::Hash::from_bytes(*b)
}

fn nonce(backward: bool, counter: u64) -> XNonce {
    let mut n = [0_u8; 24];
    n[0] = u8::from(backward);
    n[16..].copy_from_slice(&counter.to_be_bytes());
    XNonce::from(n)
}

fn cipher(key: &[u8; 32]) -> XChaCha20Poly1305 {
    XChaCha20Poly1305::new(&(*key).into())
}

/// XORs the XChaCha20 keystream of (key, nonce) into `buf` (AEAD encryption
/// without its tag; the cipher's length limits are far above a cell).
fn xor_stream(key: &[u8; 32], nonce: &XNonce, buf: &mut [u8]) {
    // Cannot fail: the buffer is a cell body, far below the cipher's limit.
    let _ = cipher(key).encrypt_inout_detached(nonce, b"", buf.into());
}

fn seal(key: &[u8; 32], nonce: &XNonce, aad: &[u8], buf: &mut [u8]) -> [u8; TAG_LEN] {
    match cipher(key).encrypt_inout_detached(nonce, aad, buf.into()) {
        Ok(tag) => tag.into(),
        // Unreachable for cell-sized buffers; a zero tag then fails to open.
        Err(_) => [0; TAG_LEN],
    }
}

fn open(key: &[u8; 32], nonce: &XNonce, aad: &[u8], buf: &mut [u8], tag: &[u8]) -> bool {
    let Ok(tag) = Tag::try_from(tag) else {
        return false;
    };
    cipher(key)
        .decrypt_inout_detached(nonce, aad, buf.into(), &tag)
        .is_ok()
}

impl HopKeys {
    /// The 16 bytes this hop appends to a forward body it peeled at `counter`.
    fn filler(&self, counter: u64) -> [u8; TAG_LEN] {
        let mut h = blake3::Hasher::new_derive_key(FILLER_DOMAIN);
        h.update(&self.filler).update(&counter.to_be_bytes());
        let mut out = [0_u8; TAG_LEN];
        out.copy_from_slice(&h.finalize().as_bytes()[..TAG_LEN]);
        out
    }

    /// The forward keystream this hop applies at `counter` (over [`INNER_LEN`] bytes).
    fn forward_keystream(&self, counter: u64) -> Vec<u8> {
        let mut ks = vec![0_u8; INNER_LEN];
        xor_stream(&self.fwd, &nonce(false, counter), &mut ks);
        ks
    }

    /// At a hop: checks and removes this hop's forward layer of `body` (cell
    /// counter `counter`, cell kind `aad`) and returns the body for the next hop
    /// (the inner bytes and this hop's filler); `None` when the tag is wrong.
    pub(crate) fn peel_forward(
        &self,
        counter: u64,
        aad: &[u8],
        body: &[u8; BODY_LEN],
    ) -> Option<[u8; BODY_LEN]> {
        let mut out = [0_u8; BODY_LEN];
        out[..INNER_LEN].copy_from_slice(&body[TAG_LEN..]);
        if !open(
            &self.fwd,
            &nonce(false, counter),
            aad,
            &mut out[..INNER_LEN],
            &body[..TAG_LEN],
        ) {
            return None;
        }
        out[INNER_LEN..].copy_from_slice(&self.filler(counter));
        Some(out)
    }

    /// At the hop that writes a backward cell: seals `content` ([`INNER_LEN`] bytes).
    pub(crate) fn seal_backward(
        &self,
        counter: u64,
        aad: &[u8],
        content: &[u8; INNER_LEN],
    ) -> [u8; BODY_LEN] {
        let mut body = [0_u8; BODY_LEN];
        body[TAG_LEN..].copy_from_slice(content);
        let tag = seal(&self.back, &nonce(true, counter), aad, &mut body[TAG_LEN..]);
        body[..TAG_LEN].copy_from_slice(&tag);
        body
    }

    /// At a hop relaying a backward cell toward the client: adds its stream layer.
    pub(crate) fn wrap_backward(&self, counter: u64, body: &mut [u8; BODY_LEN]) {
        xor_stream(&self.back_stream, &nonce(true, counter), body);
    }

    /// At the client: opens `body` if this hop wrote it (its backward AEAD).
    fn open_backward(&self, counter: u64, aad: &[u8], body: &[u8; BODY_LEN]) -> Option<Vec<u8>> {
        let mut inner = body[TAG_LEN..].to_vec();
        open(
            &self.back,
            &nonce(true, counter),
            aad,
            &mut inner,
            &body[..TAG_LEN],
        )
        .then_some(inner)
    }
}

/// At the client: the forward body for the last of `hops` (each with its next
/// forward counter), carrying `content`, which must fit
/// [`capacity`]`(hops.len())` bytes (the rest of the layer is random-looking).
/// Returns `None` for an empty path or content too long.
pub(crate) fn wrap_forward(
    hops: &[(&HopKeys, u64)],
    aad: &[u8],
    content: &[u8],
) -> Option<[u8; BODY_LEN]> {
    let (&(last, last_counter), before) = hops.split_last()?;
    if content.len() > capacity(hops.len()) {
        return None;
    }
    // The bytes the hops before the last append and transform (Sphinx filler):
    // they end up as the tail of the last hop's body.
    let mut phi: Vec<u8> = Vec::with_capacity(TAG_LEN * before.len());
    for (keys, counter) in before {
        let ks = keys.forward_keystream(*counter);
        let start = INNER_LEN - phi.len();
        for (p, k) in phi.iter_mut().zip(&ks[start..]) {
            *p ^= k;
        }
        phi.extend_from_slice(&keys.filler(*counter));
    }
    // The last hop's plaintext: the content, then whatever makes its
    // ciphertext end with `phi`.
    let ks = last.forward_keystream(last_counter);
    let mut inner = [0_u8; INNER_LEN];
    inner[..content.len()].copy_from_slice(content);
    let tail = INNER_LEN - phi.len();
    for (i, p) in phi.iter().enumerate() {
        inner[tail + i] = p ^ ks[tail + i];
    }
    let mut body = [0_u8; BODY_LEN];
    body[TAG_LEN..].copy_from_slice(&inner);
    let tag = seal(
        &last.fwd,
        &nonce(false, last_counter),
        aad,
        &mut body[TAG_LEN..],
    );
    body[..TAG_LEN].copy_from_slice(&tag);
    for (keys, counter) in before.iter().rev() {
        let mut next = [0_u8; BODY_LEN];
        next[TAG_LEN..].copy_from_slice(&body[..INNER_LEN]);
        let tag = seal(
            &keys.fwd,
            &nonce(false, *counter),
            aad,
            &mut next[TAG_LEN..],
        );
        next[..TAG_LEN].copy_from_slice(&tag);
        body = next;
    }
    Some(body)
}

/// Bytes of content a forward cell carries to the `n`-th hop of a circuit
/// (each hop before it costs [`TAG_LEN`] of filler): `INNER_LEN - 16 (n - 1)`.
pub fn capacity(n: usize) -> usize {
    INNER_LEN.saturating_sub(TAG_LEN.saturating_mul(n.saturating_sub(1)))
}

/// At the client: finds which hop wrote a backward `body` (removing the
/// stream layers of the hops before it) given each hop's next backward
/// counter. Returns the hop's index and its content; `None` if no hop's AEAD
/// opens it (tampered, replayed or out of order).
pub(crate) fn unwrap_backward(
    hops: &[(&HopKeys, u64)],
    aad: &[u8],
    body: &[u8; BODY_LEN],
) -> Option<(usize, Vec<u8>)> {
    let mut cur = *body;
    for (i, (keys, counter)) in hops.iter().enumerate() {
        if let Some(content) = keys.open_backward(*counter, aad, &cur) {
            return Some((i, content));
        }
        xor_stream(&keys.back_stream, &nonce(true, *counter), &mut cur);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(i: u8) -> HopKeys {
        derive(
            &[i; 32],
            &[i + 1; 32],
            &[i + 2; 32],
            &[i + 3; 32],
            &[i + 4; 32],
        )
    }

    #[test]
    fn forward_layers_peel_to_the_content_at_every_depth() {
        let hops: Vec<HopKeys> = (0..9).map(|i| keys(i * 7)).collect();
        for n in 1..=hops.len() {
            let path: Vec<(&HopKeys, u64)> = hops[..n]
                .iter()
                .enumerate()
                .map(|(i, k)| (k, i as u64 * 3))
                .collect();
            let content: Vec<u8> = (0..capacity(n)).map(|i| i as u8).collect();
            let mut body = wrap_forward(&path, b"r", &content).unwrap();
            for (i, (k, c)) in path.iter().enumerate() {
                let next = k.peel_forward(*c, b"r", &body).unwrap_or_else(|| {
                    panic!("hop {i} of {n} refused its layer");
                });
                if i + 1 == n {
                    assert_eq!(&next[..content.len()], &content[..]);
                }
                body = next;
            }
        }
    }

    proptest::proptest! {
        /// Any path of 1 to 9 hops, any counters, any content that fits: every
        /// hop opens its layer and the last gets the content; any flipped byte
        /// is refused by the first hop.
        #[test]
        fn layers_round_trip_and_any_flip_is_refused(
            seeds in proptest::collection::vec(proptest::prelude::any::<u8>(), 1..=9),
            counters in proptest::collection::vec(0_u64..1_000_000, 9),
            content in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..=875),
            flip in 0..BODY_LEN,
        ) {
            let hops: Vec<HopKeys> = seeds.iter().map(|s| keys(*s / 2)).collect();
            let path: Vec<(&HopKeys, u64)> = hops.iter().zip(&counters).map(|(k, c)| (k, *c)).collect();
            let body = wrap_forward(&path, b"r", &content).unwrap();
            let mut bad = body;
            bad[flip] ^= 0x40;
            proptest::prop_assert!(path[0].0.peel_forward(path[0].1, b"r", &bad).is_none());
            let mut cur = body;
            for (k, c) in &path {
                cur = k.peel_forward(*c, b"r", &cur).unwrap();
            }
            proptest::prop_assert_eq!(&cur[..content.len()], &content[..]);
        }
    }

    #[test]
    fn a_flipped_bit_or_a_wrong_counter_fails_the_first_hop() {
        let hops = [keys(1), keys(2)];
        let path = [(&hops[0], 0), (&hops[1], 0)];
        let body = wrap_forward(&path, b"r", b"hello").unwrap();
        let mut bad = body;
        bad[100] ^= 1;
        assert!(hops[0].peel_forward(0, b"r", &bad).is_none());
        assert!(hops[0].peel_forward(1, b"r", &body).is_none());
        assert!(hops[0].peel_forward(0, b"x", &body).is_none());
        assert!(hops[0].peel_forward(0, b"r", &body).is_some());
    }

    #[test]
    fn backward_cells_open_at_the_client_from_any_hop() {
        let hops: Vec<HopKeys> = (0..4).map(|i| keys(i * 11)).collect();
        let path: Vec<(&HopKeys, u64)> = hops.iter().map(|k| (k, 5)).collect();
        for writer in 0..hops.len() {
            let mut content = [0_u8; INNER_LEN];
            content[..3].copy_from_slice(b"abc");
            content[3] = writer as u8;
            let mut body = hops[writer].seal_backward(5, b"b", &content);
            for k in hops[..writer].iter().rev() {
                k.wrap_backward(5, &mut body);
            }
            let (i, got) = unwrap_backward(&path, b"b", &body).unwrap();
            assert_eq!(i, writer);
            assert_eq!(&got[..4], &content[..4]);
            body[40] ^= 0x80;
            assert!(unwrap_backward(&path, b"b", &body).is_none());
        }
    }
}
