//! Base58 with the Bitcoin alphabet, the text form of [`PeerId`](crate::PeerId).
//!
//! Written in-crate so that `ecomesh-types` keeps zero required dependencies.
//! Leading zero bytes map to leading `'1'` characters and back, as in Bitcoin.

use crate::Error;

const ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

const fn build_index() -> [u8; 128] {
    let mut index = [0xFF_u8; 128];
    let mut i = 0;
    while i < ALPHABET.len() {
        index[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    index
}

const INDEX: [u8; 128] = build_index();

/// Encodes `bytes` as Base58 (Bitcoin alphabet).
pub fn encode(bytes: &[u8]) -> String {
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    // log(256) / log(58) < 1.366; digits are little-endian base-58.
    let mut digits: Vec<u8> = Vec::with_capacity(bytes.len() * 138 / 100 + 1);
    for &byte in &bytes[zeros..] {
        let mut carry = u32::from(byte);
        for digit in digits.iter_mut() {
            carry += u32::from(*digit) << 8;
            *digit = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let mut out = String::with_capacity(zeros + digits.len());
    out.extend(std::iter::repeat_n('1', zeros));
    out.extend(
        digits
            .iter()
            .rev()
            .map(|&d| ALPHABET[usize::from(d)] as char),
    );
    out
}

/// Encodes 32 bytes as Base58 into a stack buffer without allocating; returns
/// the buffer and the text length (at most 44 characters).
pub(crate) fn encode_32(bytes: &[u8; 32]) -> ([u8; 44], usize) {
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    // Little-endian base-58 digits of the non-zero part; 32 bytes need at most 44.
    let mut digits = [0_u8; 44];
    let mut len = 0;
    for &byte in &bytes[zeros..] {
        let mut carry = u32::from(byte);
        for digit in digits[..len].iter_mut() {
            carry += u32::from(*digit) << 8;
            *digit = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits[len] = (carry % 58) as u8;
            len += 1;
            carry /= 58;
        }
    }
    let mut out = [b'1'; 44];
    for (slot, &d) in out[zeros..zeros + len]
        .iter_mut()
        .zip(digits[..len].iter().rev())
    {
        *slot = ALPHABET[usize::from(d)];
    }
    (out, zeros + len)
}

/// Decodes Base58 text (Bitcoin alphabet).
///
/// Returns [`Error::InvalidBase58`] for a character outside the alphabet, or when
/// the decoded value would be longer than `max_len` bytes (checked before any
/// allocation proportional to the input is made beyond `max_len`).
pub fn decode(text: &str, max_len: usize) -> Result<Vec<u8>, Error> {
    let input = text.as_bytes();
    let zeros = input.iter().take_while(|&&c| c == b'1').count();
    if zeros > max_len {
        return Err(Error::InvalidBase58 {
            reason: "value too long",
        });
    }
    // Little-endian base-256 bytes of the non-zero part.
    let mut bytes: Vec<u8> = Vec::with_capacity(max_len.min(input.len()));
    for &c in &input[zeros..] {
        let value = INDEX.get(usize::from(c)).copied().unwrap_or(0xFF);
        if value == 0xFF {
            return Err(Error::InvalidBase58 {
                reason: "character outside the Base58 alphabet",
            });
        }
        let mut carry = u32::from(value);
        for byte in bytes.iter_mut() {
            carry += u32::from(*byte) * 58;
            *byte = (carry & 0xFF) as u8;
            carry >>= 8;
        }
        while carry > 0 {
            if zeros + bytes.len() >= max_len {
                return Err(Error::InvalidBase58 {
                    reason: "value too long",
                });
            }
            bytes.push((carry & 0xFF) as u8);
            carry >>= 8;
        }
    }
    let mut out = vec![0_u8; zeros];
    out.extend(bytes.iter().rev());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// Vectors from Bitcoin Core's `src/test/data/base58_encode_decode.json`.
    const VECTORS: &[(&str, &str)] = &[
        ("", ""),
        ("61", "2g"),
        ("626262", "a3gV"),
        ("636363", "aPEr"),
        (
            "73696d706c792061206c6f6e6720737472696e67",
            "2cFupjhnEsSn59qHXstmK2ffpLv2",
        ),
        (
            "00eb15231dfceb60925886b67d065299925915aeb172c06647",
            "1NS17iag9jJgTHD1VXjvLCEnZuQ3rJDE9L",
        ),
        ("516b6fcd0f", "ABnLTmg"),
        ("bf4f89001e670274dd", "3SEo3LWLoPntC"),
        ("572e4794", "3EFU7m"),
        ("ecac89cad93923c02321", "EJDM8drfXA6uyA"),
        ("10c8511e", "Rt5zm"),
        ("00000000000000000000", "1111111111"),
        (
            "00000000000000000000000000000000000000000000000000000000000000000000000000000001",
            "1111111111111111111111111111111111111112",
        ),
        (
            "000111d38e5fc9071ffcd20b4a763cc9ae4f252bb4e48fd66a835e252ada93ff480d6dd43dc62a641155a5",
            "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz",
        ),
        ("271F359E", "zzzzy"),
        ("271F359F", "zzzzz"),
        ("271F35A0", "211111"),
        ("271F35A1", "211112"),
    ];

    #[test]
    fn bitcoin_vectors_encode_and_decode() {
        for (h, text) in VECTORS {
            let bytes = hex(h);
            assert_eq!(encode(&bytes), *text, "encode {h}");
            assert_eq!(decode(text, 1024).unwrap(), bytes, "decode {text}");
        }
    }

    #[test]
    fn rejects_bad_characters_and_overlong_values() {
        for bad in ["0", "O", "I", "l", "abc!", "é"] {
            assert!(decode(bad, 64).is_err(), "{bad}");
        }
        assert!(decode("zzzzz", 3).is_err());
        assert_eq!(decode("zzzzz", 4).unwrap(), hex("271F359F"));
        assert!(decode("11111", 4).is_err());
    }

    proptest::proptest! {
        #[test]
        fn prop_stack_encoding_equals_encode(bytes in proptest::array::uniform32(proptest::num::u8::ANY), zeros in 0_usize..33) {
            let mut bytes = bytes;
            bytes[..zeros].fill(0);
            let (buf, len) = encode_32(&bytes);
            let text = encode(&bytes);
            proptest::prop_assert_eq!(&buf[..len], text.as_bytes());
        }

        #[test]
        fn prop_round_trip(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let text = encode(&bytes);
            proptest::prop_assert_eq!(decode(&text, 80).unwrap(), bytes);
        }
    }
}
