//! Ed25519 identities: generation, the key file, public keys and peer ids.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use ecomesh_types::{PeerId, Signature};
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::rng;

/// The peer id of a 32-byte Ed25519 public key: its SHA-256 digest (seed 4.2), exactly
/// the bytes `ecomesh_types::PeerId` carries.
pub fn peer_id_of(public_key: &[u8; 32]) -> PeerId {
    PeerId::from_digest(Sha256::digest(public_key).into())
}

/// A validated Ed25519 public key.
///
/// Construction rejects encodings that are not curve points and the weak (small-order)
/// keys, so everything that holds a `PublicKey` can verify with it. Ordered, compared
/// and hashed by its 32 bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Length of the encoding in bytes.
    pub const LEN: usize = 32;

    /// Parses a compressed Edwards point; invalid or weak keys are [`Error::InvalidPublicKey`].
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self> {
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| Error::InvalidPublicKey)?;
        if key.is_weak() {
            return Err(Error::InvalidPublicKey);
        }
        Ok(PublicKey(key))
    }

    /// Like [`from_bytes`](Self::from_bytes) for a slice; a wrong length is [`Error::InvalidPublicKey`].
    pub fn from_slice(bytes: &[u8]) -> Result<Self> {
        let arr: &[u8; 32] = bytes.try_into().map_err(|_| Error::InvalidPublicKey)?;
        Self::from_bytes(arr)
    }

    /// The 32-byte encoding.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// The 32-byte encoding, by value.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The peer id of this key (SHA-256 of the 32 bytes).
    pub fn peer_id(&self) -> PeerId {
        peer_id_of(self.as_bytes())
    }

    /// The X25519 public key of the same secret: the Montgomery form of this Edwards point.
    ///
    /// It is what sealed boxes encrypt to and the Noise static key of the identity.
    pub fn to_x25519(&self) -> [u8; 32] {
        self.0.to_montgomery().to_bytes()
    }

    /// Verifies a signature over `message` with the strict rules (no malleable `S`,
    /// no small-order `R`).
    pub(crate) fn verify(&self, message: &[u8], signature: &Signature) -> Result<()> {
        let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
        self.0
            .verify_strict(message, &sig)
            .map_err(|_| Error::BadSignature)
    }

    pub(crate) fn dalek(&self) -> &VerifyingKey {
        &self.0
    }
}

impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.peer_id())
    }
}

/// A node's long-term Ed25519 identity (seed 4.2): the signing key and what derives from it.
///
/// The secret is zeroized on drop and never printed (`Debug` shows the peer id).
#[derive(Clone)]
pub struct Identity {
    signing: SigningKey,
    public: PublicKey,
}

/// Magic, version and layout of the key file: `MAGIC (8) || secret seed (32) || public key (32)`.
const FILE_MAGIC: [u8; 8] = *b"ECMSHID\x01";
/// Size of an identity key file in bytes.
pub const KEY_FILE_LEN: u64 = 72;

impl Identity {
    /// A new identity from 32 bytes of the OS random source.
    pub fn generate() -> Result<Self> {
        let seed = Zeroizing::new(rng::array::<32>()?);
        Ok(Self::from_secret_bytes(&seed))
    }

    /// The identity of a 32-byte Ed25519 secret seed (RFC 8032 private key).
    pub fn from_secret_bytes(seed: &[u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(seed);
        let public = PublicKey(signing.verifying_key());
        Identity { signing, public }
    }

    /// The public key.
    pub fn public_key(&self) -> &PublicKey {
        &self.public
    }

    /// The 32-byte Ed25519 secret seed ([`from_secret_bytes`](Self::from_secret_bytes)
    /// gives this identity back), for handing the same key to another protocol stack
    /// such as libp2p. Zeroized when dropped; never log or send it.
    pub fn secret_seed(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(*self.signing.as_bytes())
    }

    /// The peer id (SHA-256 of the public key).
    pub fn peer_id(&self) -> PeerId {
        self.public.peer_id()
    }

    /// Signs raw bytes. Crate-internal: every caller prefixes a domain string.
    pub(crate) fn sign(&self, message: &[u8]) -> Signature {
        Signature(self.signing.sign(message).to_bytes())
    }

    /// The X25519 secret of this identity: the clamped Ed25519 secret scalar, whose
    /// public key is [`PublicKey::to_x25519`].
    pub(crate) fn x25519_secret(&self) -> StaticSecret {
        StaticSecret::from(*self.x25519_secret_bytes())
    }

    /// X25519 Diffie-Hellman between this identity's static X25519 secret (the one
    /// whose public key is [`PublicKey::to_x25519`]) and `their_public`, for protocols
    /// that authenticate a peer by its identity key (the mesh's onion circuits).
    /// Fails with [`Error::InvalidPublicKey`] when the result is all zeros (a
    /// low-order `their_public`), so a caller never derives keys from a non-secret.
    pub fn x25519_agree(&self, their_public: &[u8; 32]) -> Result<Zeroizing<[u8; 32]>> {
        let shared = self
            .x25519_secret()
            .diffie_hellman(&x25519_dalek::PublicKey::from(*their_public));
        if !shared.was_contributory() {
            return Err(Error::InvalidPublicKey);
        }
        Ok(Zeroizing::new(shared.to_bytes()))
    }

    /// The raw X25519 secret bytes (X25519 clamps them when used).
    pub(crate) fn x25519_secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.signing.to_scalar_bytes())
    }

    /// Writes the identity to `path` atomically: a temporary file created with mode 0600 in
    /// the same directory, written, fsynced, renamed over `path`, then the directory fsynced.
    /// An existing file at `path` is replaced.
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut contents = Zeroizing::new([0_u8; KEY_FILE_LEN as usize]);
        contents[..8].copy_from_slice(&FILE_MAGIC);
        contents[8..40].copy_from_slice(self.signing.as_bytes());
        contents[40..].copy_from_slice(self.public.as_bytes());

        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .ok_or(Error::InvalidArgument("identity path has no file name"))?;
        let suffix = rng::array::<8>()?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp{:016x}", u64::from_le_bytes(suffix)));
        let tmp = dir.join(tmp_name);

        let result = (|| {
            let mut file = create_private(&tmp).map_err(io_err("create", &tmp))?;
            file.write_all(&contents[..])
                .map_err(io_err("write", &tmp))?;
            file.sync_all().map_err(io_err("fsync", &tmp))?;
            drop(file);
            fs::rename(&tmp, path).map_err(io_err("rename", path))?;
            sync_dir(&dir).map_err(io_err("fsync directory", &dir))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        tracing::debug!(path = %path.display(), peer = %self.peer_id(), "identity saved");
        result
    }

    /// Reads an identity written by [`save`](Self::save).
    ///
    /// Refuses (with errors naming the path and the fix) a file that is not a regular file,
    /// whose permissions are wider than 0600 (Unix), whose length is not
    /// [`KEY_FILE_LEN`], or whose content is not a consistent identity.
    pub fn load(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(io_err("open", path))?;
        let meta = file.metadata().map_err(io_err("stat", path))?;
        if !meta.is_file() {
            return Err(Error::KeyFileInvalid {
                path: path.to_path_buf(),
                reason: "not a regular file",
            });
        }
        check_permissions(path, &meta)?;
        if meta.len() != KEY_FILE_LEN {
            return Err(Error::KeyFileLength {
                path: path.to_path_buf(),
                len: meta.len(),
                expected: KEY_FILE_LEN,
            });
        }
        let mut contents = Zeroizing::new([0_u8; KEY_FILE_LEN as usize]);
        file.read_exact(&mut contents[..])
            .map_err(io_err("read", path))?;
        // A file that grew between stat and read is refused too.
        let mut probe = [0_u8; 1];
        if file.read(&mut probe).map_err(io_err("read", path))? != 0 {
            return Err(Error::KeyFileLength {
                path: path.to_path_buf(),
                len: KEY_FILE_LEN + 1,
                expected: KEY_FILE_LEN,
            });
        }
        Self::from_file_contents(&contents).map_err(|reason| Error::KeyFileInvalid {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Loads the identity at `path`, or generates and saves a new one if no file exists.
    pub fn load_or_generate(path: &Path) -> Result<Self> {
        match Self::load(path) {
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                let id = Self::generate()?;
                id.save(path)?;
                tracing::info!(path = %path.display(), peer = %id.peer_id(), "generated a new identity");
                Ok(id)
            }
            other => other,
        }
    }

    fn from_file_contents(contents: &[u8; KEY_FILE_LEN as usize]) -> Result<Self, &'static str> {
        if contents[..8] != FILE_MAGIC {
            return Err("wrong magic bytes");
        }
        let mut seed = Zeroizing::new([0_u8; 32]);
        seed.copy_from_slice(&contents[8..40]);
        let id = Self::from_secret_bytes(&seed);
        if id.public.as_bytes()[..] != contents[40..] {
            return Err("stored public key does not match the secret key");
        }
        Ok(id)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.peer_id())
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error + use<> {
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}

#[cfg(unix)]
fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

#[cfg(not(unix))]
fn create_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().write(true).create_new(true).open(path)
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(unix)]
fn check_permissions(path: &Path, meta: &fs::Metadata) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & !0o600 != 0 {
        return Err(Error::KeyFilePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_path: &Path, _meta: &fs::Metadata) -> Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_seed_gives_the_same_identity_back() {
        let id = Identity::generate().unwrap();
        let again = Identity::from_secret_bytes(&id.secret_seed());
        assert_eq!(again.peer_id(), id.peer_id());
        assert_eq!(again.public_key(), id.public_key());
    }

    #[test]
    fn peer_id_is_sha256_of_key() {
        let id = Identity::from_secret_bytes(&[7; 32]);
        let digest: [u8; 32] = Sha256::digest(id.public_key().as_bytes()).into();
        assert_eq!(id.peer_id(), PeerId::from_digest(digest));
    }

    #[test]
    fn rfc8032_test_vector_1() {
        // RFC 8032 section 7.1, TEST 1.
        let seed = hex32("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
        let id = Identity::from_secret_bytes(&seed);
        assert_eq!(
            id.public_key().to_bytes(),
            hex32("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
        );
        let sig = id.sign(b"");
        assert_eq!(
            sig.0[..32],
            hex32("e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155")
        );
    }

    #[test]
    fn x25519_of_identity_matches_montgomery_public() {
        let id = Identity::from_secret_bytes(&[42; 32]);
        let derived = x25519_dalek::PublicKey::from(&id.x25519_secret()).to_bytes();
        assert_eq!(derived, id.public_key().to_x25519());
    }

    #[test]
    fn x25519_agree_is_symmetric_and_refuses_low_order_points() {
        let (a, b) = (
            Identity::from_secret_bytes(&[1; 32]),
            Identity::from_secret_bytes(&[2; 32]),
        );
        let ab = a.x25519_agree(&b.public_key().to_x25519()).unwrap();
        let ba = b.x25519_agree(&a.public_key().to_x25519()).unwrap();
        assert_eq!(*ab, *ba);
        let c = Identity::from_secret_bytes(&[3; 32]);
        assert_ne!(*ab, *a.x25519_agree(&c.public_key().to_x25519()).unwrap());
        assert!(matches!(
            a.x25519_agree(&[0; 32]),
            Err(Error::InvalidPublicKey)
        ));
    }

    #[test]
    fn invalid_and_weak_public_keys_are_refused() {
        // The identity point (small order) encodes as 1 followed by zeros.
        let mut identity_point = [0_u8; 32];
        identity_point[0] = 1;
        assert!(matches!(
            PublicKey::from_bytes(&identity_point),
            Err(Error::InvalidPublicKey)
        ));
        assert!(PublicKey::from_slice(&[1; 31]).is_err());
    }

    fn hex32(s: &str) -> [u8; 32] {
        let mut out = [0_u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }
}

/// The identity crate's own domain strings, which [`Identity::sign_with_domain`] refuses
/// so that no other crate can obtain a signature valid in this crate's protocols.
const RESERVED_DOMAINS: &[&str] = &[
    crate::domain::NETWORK_MESSAGE,
    crate::domain::E2EE_KDF,
    crate::domain::E2EE_SENDER,
    crate::domain::GROUP_DATA_KDF,
    crate::domain::GROUP_KEY_CHECK,
    crate::domain::CAPABILITY,
    crate::domain::COLLECTION_KEY_EPOCH,
    crate::domain::DEVICE_LINK,
    crate::domain::AUTH,
    crate::domain::NOISE_PROLOGUE,
    crate::domain::NOISE_IDENTITY,
];

fn domain_framed(domain: &str, payload: &[u8]) -> Result<Vec<u8>> {
    if domain.is_empty() || RESERVED_DOMAINS.contains(&domain) {
        return Err(Error::InvalidArgument(
            "domain string is empty or reserved by ecomesh-identity",
        ));
    }
    let mut w = crate::codec::Writer::with_domain(domain);
    w.var(payload);
    Ok(w.finish())
}

impl Identity {
    /// Signs `payload` for another crate's record type, named by `domain` (for example
    /// `"ecomesh 2026 version-node signature v1"`). The signature covers the
    /// length-prefixed domain string then the length-prefixed payload, so it verifies only
    /// for that domain. The identity crate's own domains are refused
    /// ([`Error::InvalidArgument`]), as is an empty one.
    pub fn sign_with_domain(&self, domain: &str, payload: &[u8]) -> Result<Signature> {
        Ok(self.sign(&domain_framed(domain, payload)?))
    }
}

impl PublicKey {
    /// Verifies a signature made by [`Identity::sign_with_domain`] with the same domain,
    /// with the strict rules of Ed25519 verification.
    pub fn verify_with_domain(
        &self,
        domain: &str,
        payload: &[u8],
        signature: &Signature,
    ) -> Result<()> {
        self.verify(&domain_framed(domain, payload)?, signature)
    }
}

#[cfg(test)]
mod domain_signature_tests {
    use super::*;

    #[test]
    fn signature_binds_the_domain_and_payload() {
        let id = Identity::from_secret_bytes(&[7; 32]);
        let sig = id.sign_with_domain("test domain v1", b"payload").unwrap();
        let key = id.public_key();
        assert!(
            key.verify_with_domain("test domain v1", b"payload", &sig)
                .is_ok()
        );
        assert!(
            key.verify_with_domain("test domain v2", b"payload", &sig)
                .is_err()
        );
        assert!(
            key.verify_with_domain("test domain v1", b"payloaD", &sig)
                .is_err()
        );
        assert!(
            id.sign_with_domain(crate::domain::CAPABILITY, b"x")
                .is_err()
        );
        assert!(id.sign_with_domain("", b"x").is_err());
    }
}
