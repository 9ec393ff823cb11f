//! The archive's keys and sealing (docs/archive-format.md, "Keys" and "Sealing"): a
//! 64-byte master key (data key for XChaCha20-Poly1305, id key for keyed BLAKE3), sealed
//! in key files by passphrases through argon2id; every block and object sealed with a
//! random 24-byte nonce and associated data that says what it is.

use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::ArchiveError;

const NONCE: usize = 24;
const TAG: usize = 16;

/// The repository's master key. Never written in the clear, never printed.
#[derive(Clone)]
pub struct MasterKey {
    data: [u8; 32],
    id: [u8; 32],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    rand::fill(&mut bytes);
    bytes
}

impl MasterKey {
    pub fn generate() -> MasterKey {
        MasterKey {
            data: random(),
            id: random(),
        }
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305 { key: self.data }
    }

    /// A block's id: keyed BLAKE3 of its bytes (reveals nothing without the key).
    pub fn block_id(&self, bytes: &[u8]) -> BlockId {
        BlockId(*blake3::keyed_hash(&self.id, bytes).as_bytes())
    }

    /// A keyed hash of `parts` (joined with NUL), for names that must not reveal what
    /// they name (manifest ids).
    pub fn name(&self, parts: &[&str]) -> String {
        let mut hasher = blake3::Hasher::new_keyed(&self.id);
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                hasher.update(&[0]);
            }
            hasher.update(part.as_bytes());
        }
        hex(&hasher.finalize().as_bytes()[..16])
    }

    /// `nonce || ciphertext || tag` of `plaintext`, bound to `aad`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        self.cipher().seal(plaintext, aad)
    }

    /// The plaintext of `sealed`, if it was sealed with this key and `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8], what: &str) -> Result<Vec<u8>, ArchiveError> {
        self.cipher()
            .open(sealed, aad)
            .ok_or_else(|| ArchiveError::Damaged {
                what: what.to_string(),
                why: "it does not authenticate (changed, truncated, or sealed with another key)"
                    .into(),
            })
    }

    /// As [`MasterKey::open`], decrypting in place: the plaintext is the returned part of
    /// `sealed` (no copy; a restore opens every block it downloads this way).
    pub fn open_in_place<'a>(
        &self,
        sealed: &'a mut [u8],
        aad: &[u8],
        what: &str,
    ) -> Result<&'a [u8], ArchiveError> {
        self.cipher()
            .open_in_place(sealed, aad)
            .ok_or_else(|| ArchiveError::Damaged {
                what: what.to_string(),
                why: "it does not authenticate (changed, truncated, or sealed with another key)"
                    .into(),
            })
    }

    fn to_bytes(&self) -> [u8; 64] {
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&self.data);
        bytes[32..].copy_from_slice(&self.id);
        bytes
    }

    fn from_bytes(bytes: &[u8]) -> Option<MasterKey> {
        if bytes.len() != 64 {
            return None;
        }
        let mut data = [0u8; 32];
        let mut id = [0u8; 32];
        data.copy_from_slice(&bytes[..32]);
        id.copy_from_slice(&bytes[32..]);
        Some(MasterKey { data, id })
    }
}

/// XChaCha20-Poly1305 (draft-irtf-cfrg-xchacha): ChaCha20-Poly1305 (RFC 8439) under
/// the subkey HChaCha20(key, first 16 bytes of the nonce), with the nonce's last 8 bytes
/// after four zero bytes. ring does the ChaCha20-Poly1305 (twice the speed of a portable
/// implementation, which matters on every byte a push or restore moves), the `chacha20`
/// crate the HChaCha20; a test holds the result to the `chacha20poly1305` crate's.
struct XChaCha20Poly1305 {
    key: [u8; 32],
}

impl XChaCha20Poly1305 {
    /// The RFC 8439 key and nonce for `nonce`.
    fn for_nonce(&self, nonce: &[u8; NONCE]) -> (ring::aead::LessSafeKey, ring::aead::Nonce) {
        let (head, tail) = nonce.split_at(16);
        let head: [u8; 16] = head.try_into().expect("16 bytes");
        let subkey = chacha20::hchacha::<chacha20::R20>(&self.key.into(), &head.into());
        let key = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, subkey.as_slice())
            .expect("a 32-byte key");
        let mut short = [0u8; 12];
        short[4..].copy_from_slice(tail);
        (
            ring::aead::LessSafeKey::new(key),
            ring::aead::Nonce::assume_unique_for_key(short),
        )
    }

    /// `nonce || ciphertext || tag` of `plaintext` under a fresh random nonce.
    fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let nonce: [u8; NONCE] = random();
        let mut out = Vec::with_capacity(NONCE + plaintext.len() + TAG);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let (key, short) = self.for_nonce(&nonce);
        let tag = key
            .seal_in_place_separate_tag(short, ring::aead::Aad::from(aad), &mut out[NONCE..])
            .expect("sealing into memory cannot fail");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// The plaintext of `sealed`, if it authenticates.
    fn open(&self, sealed: &[u8], aad: &[u8]) -> Option<Vec<u8>> {
        let mut copy = sealed.to_vec();
        let len = self.open_in_place(&mut copy, aad)?.len();
        copy.copy_within(NONCE..NONCE + len, 0);
        copy.truncate(len);
        Some(copy)
    }

    /// The plaintext of `sealed`, decrypted in place, if it authenticates.
    fn open_in_place<'a>(&self, sealed: &'a mut [u8], aad: &[u8]) -> Option<&'a [u8]> {
        if sealed.len() < NONCE + TAG {
            return None;
        }
        let (nonce, rest) = sealed.split_at_mut(NONCE);
        let nonce: [u8; NONCE] = (&*nonce).try_into().ok()?;
        let (key, short) = self.for_nonce(&nonce);
        key.open_in_place(short, ring::aead::Aad::from(aad), rest)
            .ok()
            .map(|plain| &*plain)
    }
}

/// A block's id (32 bytes; 64 hex digits in JSON and names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockId(pub [u8; 32]);

impl BlockId {
    pub fn hex(&self) -> String {
        hex(&self.0)
    }
}

impl Serialize for BlockId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.hex())
    }
}

impl<'de> Deserialize<'de> for BlockId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = unhex(&text)
            .filter(|b| b.len() == 32)
            .ok_or_else(|| serde::de::Error::custom(format!("bad block id {text:?}")))?;
        let mut id = [0u8; 32];
        id.copy_from_slice(&bytes);
        Ok(BlockId(id))
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// How a passphrase becomes a key-sealing key.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Kdf {
    /// `argon2id`.
    pub algorithm: String,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    /// Base64, 16 bytes.
    pub salt: String,
}

impl Kdf {
    /// argon2id with 64 MiB, 3 passes, one lane: about a quarter second here, and
    /// expensive to guess at.
    fn new() -> Kdf {
        Kdf {
            algorithm: "argon2id".into(),
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
            salt: b64().encode(random::<16>()),
        }
    }

    fn derive(&self, passphrase: &[u8]) -> Result<XChaCha20Poly1305, ArchiveError> {
        let bad = |why: String| ArchiveError::Format {
            what: "key file".into(),
            why,
        };
        if self.algorithm != "argon2id" {
            return Err(bad(format!("unknown kdf {:?}", self.algorithm)));
        }
        // Bounds a hostile key file's cost: at most 4 GiB and 100 passes.
        if self.memory_kib > 4 * 1024 * 1024 || self.iterations > 100 || self.parallelism > 64 {
            return Err(bad("kdf parameters beyond any this version writes".into()));
        }
        let params = Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
            .map_err(|e| bad(format!("kdf parameters: {e}")))?;
        let salt = b64()
            .decode(&self.salt)
            .map_err(|e| bad(format!("salt: {e}")))?;
        let mut key = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(passphrase, &salt, &mut key)
            .map_err(|e| bad(format!("kdf: {e}")))?;
        Ok(XChaCha20Poly1305 { key })
    }
}

/// `keys/<id>`: the master key sealed by one passphrase.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyFile {
    pub kdf: Kdf,
    /// Base64 of nonce || sealed master key || tag.
    pub sealed: String,
    pub created_ms: i64,
    #[serde(default)]
    pub label: String,
}

fn key_aad(repository: &str) -> Vec<u8> {
    format!("shadowcopy-archive key v1 {repository}").into_bytes()
}

impl KeyFile {
    /// Seals `master` for repository `repository` under `passphrase`.
    pub fn seal(
        master: &MasterKey,
        passphrase: &[u8],
        repository: &str,
        label: &str,
        created_ms: i64,
    ) -> Result<KeyFile, ArchiveError> {
        let kdf = Kdf::new();
        let cipher = kdf.derive(passphrase)?;
        let sealed = cipher.seal(&master.to_bytes(), &key_aad(repository));
        Ok(KeyFile {
            kdf,
            sealed: b64().encode(sealed),
            created_ms,
            label: label.to_string(),
        })
    }

    /// The master key, if `passphrase` is this key file's.
    pub fn open(&self, passphrase: &[u8], repository: &str) -> Result<MasterKey, ArchiveError> {
        let cipher = self.kdf.derive(passphrase)?;
        let sealed = b64()
            .decode(&self.sealed)
            .map_err(|e| ArchiveError::Format {
                what: "key file".into(),
                why: format!("sealed: {e}"),
            })?;
        cipher
            .open(&sealed, &key_aad(repository))
            .and_then(|bytes| MasterKey::from_bytes(&bytes))
            .ok_or(ArchiveError::WrongPassphrase)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_opens_with_its_passphrase_only_and_for_its_repository_only() {
        let master = MasterKey::generate();
        let file = KeyFile::seal(&master, b"correct horse", "repo-1", "ops", 0).unwrap();
        let opened = file.open(b"correct horse", "repo-1").unwrap();
        assert_eq!(opened.to_bytes(), master.to_bytes());
        assert!(matches!(
            file.open(b"wrong horse", "repo-1"),
            Err(ArchiveError::WrongPassphrase)
        ));
        assert!(matches!(
            file.open(b"correct horse", "repo-2"),
            Err(ArchiveError::WrongPassphrase)
        ));
        let text = serde_json::to_string(&file).unwrap();
        assert!(!text.contains("correct horse"));
    }

    #[test]
    fn the_sealing_is_xchacha20_poly1305_as_the_chacha20poly1305_crate_makes_it() {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let key = MasterKey::generate();
        let theirs = chacha20poly1305::XChaCha20Poly1305::new_from_slice(&key.data).unwrap();
        for len in [0usize, 1, 63, 64, 65, 4096, 1 << 20] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7 % 256) as u8).collect();
            // Ours sealed, theirs opens.
            let sealed = key.seal(&plain, b"block 1");
            let nonce = chacha20poly1305::XNonce::try_from(&sealed[..NONCE]).unwrap();
            let opened = theirs
                .decrypt(
                    &nonce,
                    Payload {
                        msg: &sealed[NONCE..],
                        aad: b"block 1",
                    },
                )
                .unwrap();
            assert_eq!(opened, plain, "{len} bytes");
            // Theirs sealed (same nonce: the same bytes), ours opens.
            let again = theirs
                .encrypt(
                    &nonce,
                    Payload {
                        msg: &plain,
                        aad: b"block 1",
                    },
                )
                .unwrap();
            assert_eq!(again, sealed[NONCE..], "{len} bytes");
            let mut mine = sealed.clone();
            assert_eq!(
                key.open_in_place(&mut mine, b"block 1", "b").unwrap(),
                plain
            );
        }
    }

    #[test]
    fn sealed_things_open_only_as_what_they_were_sealed_as() {
        let key = MasterKey::generate();
        let sealed = key.seal(b"a block", b"block 1");
        assert_eq!(key.open(&sealed, b"block 1", "block").unwrap(), b"a block");
        assert!(key.open(&sealed, b"block 2", "block").is_err());
        let mut flipped = sealed.clone();
        flipped[30] ^= 1;
        assert!(key.open(&flipped, b"block 1", "block").is_err());
        assert!(key.open(&sealed[..20], b"block 1", "block").is_err());
        // In place: the same plaintext, and the same refusals.
        let mut copy = sealed.clone();
        assert_eq!(
            key.open_in_place(&mut copy, b"block 1", "block").unwrap(),
            b"a block"
        );
        let mut copy = sealed.clone();
        assert!(key.open_in_place(&mut copy, b"block 2", "block").is_err());
        let mut copy = flipped.clone();
        assert!(key.open_in_place(&mut copy, b"block 1", "block").is_err());
        assert!(key
            .open_in_place(&mut sealed.clone()[..20], b"block 1", "block")
            .is_err());
        assert!(MasterKey::generate()
            .open(&sealed, b"block 1", "block")
            .is_err());
        // Two seals of the same bytes differ (random nonces); ids of equal bytes agree.
        assert_ne!(key.seal(b"x", b""), key.seal(b"x", b""));
        assert_eq!(key.block_id(b"x"), key.block_id(b"x"));
        assert_ne!(key.block_id(b"x"), MasterKey::generate().block_id(b"x"));
        assert_eq!(format!("{key:?}"), "MasterKey(..)");
    }
}
