//! The WeChat-family message crypto ("WXBizMsgCrypt"), shared by WeChat Official Accounts,
//! WeChat mini-programs and WeCom (企业微信) callbacks.
//!
//! * URL / plain signature: lower-case hex SHA-1 of the byte-wise sorted, separator-less
//!   concatenation of `[token, timestamp, nonce]` ([`signature`]).
//! * `msg_signature` (safe mode): the same over `[token, timestamp, nonce, Encrypt]`.
//! * AES-256-CBC: key = base64(EncodingAESKey + "=") (43 characters → 32 bytes, decoded
//!   leniently because the 43rd character carries non-zero trailing bits), IV = key\[..16\],
//!   plaintext = 16 random bytes ‖ u32 big-endian length ‖ message ‖ receive id, padded with
//!   PKCS#7 to a **32-byte** block (so the pad is 1..=32 bytes, not 1..=16).
//!
//! The receive id is the AppID for WeChat OA and mini-programs, and the CorpID (or suite id)
//! for WeCom. [`WxCrypto::open`] verifies `msg_signature` *before* decrypting (CBC is
//! unauthenticated), and every decryption failure is the same opaque [`CryptoError::Invalid`]
//! so no padding oracle is exposed.

use std::fmt;

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

/// The PKCS#7 block size WeChat pads to (twice the AES block).
pub const PAD_BLOCK: usize = 32;

/// Length of an `EncodingAESKey`.
pub const ENCODING_AES_KEY_LEN: usize = 43;

/// Base64 decoding that tolerates non-zero trailing bits: needed for the 43-character
/// `EncodingAESKey` only (the ciphertext itself is decoded strictly).
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true),
);

/// Why a WeChat crypto operation failed. Deliberately coarse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The `EncodingAESKey` is not 43 base64 characters decoding to 32 bytes.
    #[error("EncodingAESKey must be 43 base64 characters")]
    BadKey,
    /// A signature did not match (or was missing).
    #[error("signature mismatch")]
    BadSignature,
    /// The ciphertext could not be decrypted and unpacked. Opaque on purpose: base64, length,
    /// padding and framing errors are indistinguishable (no padding oracle).
    #[error("encrypted payload is invalid")]
    Invalid,
    /// Decryption succeeded but the payload is addressed to another receive id (AppID/CorpID).
    #[error("encrypted payload is for another receiver")]
    WrongReceiver,
}

/// Lower-case hex SHA-1 of `parts` sorted byte-wise and concatenated without separator: the
/// WeChat `signature` (`[token, timestamp, nonce]`) and `msg_signature`
/// (`[token, timestamp, nonce, encrypt]`).
pub fn signature(parts: &[&str]) -> String {
    let mut sorted: Vec<&str> = parts.to_vec();
    sorted.sort_unstable();
    let mut hasher = Sha1::new();
    for part in sorted {
        hasher.update(part.as_bytes());
    }
    hex::encode(hasher.finalize())
}

/// Compares a received hex signature with the expected one in constant time
/// (case-insensitive on the received side).
pub fn signature_matches(expected_hex: &str, received: &str) -> bool {
    let received = received.trim().to_ascii_lowercase();
    expected_hex.len() == received.len()
        && bool::from(expected_hex.as_bytes().ct_eq(received.as_bytes()))
}

/// Verifies the plain `signature` over `[token, timestamp, nonce]`.
pub fn verify_signature(
    token: &str,
    timestamp: &str,
    nonce: &str,
    received: &str,
) -> Result<(), CryptoError> {
    if signature_matches(&signature(&[token, timestamp, nonce]), received) {
        Ok(())
    } else {
        Err(CryptoError::BadSignature)
    }
}

/// Decodes an `EncodingAESKey` (43 characters) into the 32-byte AES key.
pub fn decode_aes_key(encoding_aes_key: &str) -> Result<[u8; 32], CryptoError> {
    let trimmed = encoding_aes_key.trim();
    if trimmed.len() != ENCODING_AES_KEY_LEN {
        return Err(CryptoError::BadKey);
    }
    let bytes = LENIENT
        .decode(format!("{trimmed}="))
        .map_err(|_| CryptoError::BadKey)?;
    bytes.try_into().map_err(|_| CryptoError::BadKey)
}

/// The message crypto of one WeChat/WeCom account: token, AES key and receive id.
#[derive(Clone)]
pub struct WxCrypto {
    token: String,
    key: [u8; 32],
    receive_id: String,
}

impl fmt::Debug for WxCrypto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WxCrypto")
            .field("token", &"<redacted>")
            .field("key", &"<redacted>")
            .field("receive_id", &self.receive_id)
            .finish()
    }
}

/// A sealed (encrypted and signed) message, as put in an encrypted reply or a fixture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Base64 ciphertext (`Encrypt`).
    pub encrypt: String,
    /// `msg_signature` over `[token, timestamp, nonce, encrypt]`.
    pub msg_signature: String,
}

impl WxCrypto {
    /// Crypto for the account with `token`, `encoding_aes_key` (43 chars) and `receive_id`
    /// (AppID for WeChat, CorpID for WeCom).
    pub fn new(
        token: impl Into<String>,
        encoding_aes_key: &str,
        receive_id: impl Into<String>,
    ) -> Result<Self, CryptoError> {
        Ok(WxCrypto {
            token: token.into(),
            key: decode_aes_key(encoding_aes_key)?,
            receive_id: receive_id.into(),
        })
    }

    /// The receive id (AppID / CorpID) this crypto expects.
    pub fn receive_id(&self) -> &str {
        &self.receive_id
    }

    /// The token.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// `msg_signature` for `encrypt` at `timestamp`/`nonce`.
    pub fn msg_signature(&self, timestamp: &str, nonce: &str, encrypt: &str) -> String {
        signature(&[&self.token, timestamp, nonce, encrypt])
    }

    /// Verifies the plain `signature` over `[token, timestamp, nonce]`.
    pub fn verify_signature(
        &self,
        timestamp: &str,
        nonce: &str,
        received: &str,
    ) -> Result<(), CryptoError> {
        verify_signature(&self.token, timestamp, nonce, received)
    }

    /// Verifies `msg_signature` over `[token, timestamp, nonce, encrypt]` in constant time.
    pub fn verify_msg_signature(
        &self,
        timestamp: &str,
        nonce: &str,
        encrypt: &str,
        received: &str,
    ) -> Result<(), CryptoError> {
        if signature_matches(&self.msg_signature(timestamp, nonce, encrypt), received) {
            Ok(())
        } else {
            Err(CryptoError::BadSignature)
        }
    }

    /// Verifies `msg_signature`, then decrypts and checks the receive id: the only way inbound
    /// ciphertext should be opened.
    pub fn open(
        &self,
        timestamp: &str,
        nonce: &str,
        encrypt: &str,
        msg_signature: &str,
    ) -> Result<Vec<u8>, CryptoError> {
        self.verify_msg_signature(timestamp, nonce, encrypt, msg_signature)?;
        self.decrypt(encrypt)
    }

    /// Decrypts `encrypt` and checks that the trailing receive id is ours. Call only after the
    /// signature was verified (see [`Self::open`]).
    pub fn decrypt(&self, encrypt: &str) -> Result<Vec<u8>, CryptoError> {
        let (msg, receive_id) = self.decrypt_unchecked(encrypt)?;
        let ours = self.receive_id.as_bytes();
        if receive_id.len() == ours.len() && bool::from(receive_id.ct_eq(ours)) {
            Ok(msg)
        } else {
            Err(CryptoError::WrongReceiver)
        }
    }

    /// Decrypts `encrypt` into `(message, receive id)` without checking the receive id (for
    /// callers whose receive id varies, e.g. WeCom third-party suites).
    pub fn decrypt_unchecked(&self, encrypt: &str) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        let ciphertext = STANDARD
            .decode(encrypt.trim())
            .map_err(|_| CryptoError::Invalid)?;
        if ciphertext.is_empty() || ciphertext.len() % 16 != 0 {
            return Err(CryptoError::Invalid);
        }
        let iv = &self.key[..16];
        let mut plain = Aes256CbcDec::new_from_slices(&self.key, iv)
            .map_err(|_| CryptoError::Invalid)?
            .decrypt_padded_vec_mut::<NoPadding>(&ciphertext)
            .map_err(|_| CryptoError::Invalid)?;
        let pad = usize::from(*plain.last().ok_or(CryptoError::Invalid)?);
        if !(1..=PAD_BLOCK).contains(&pad) || pad > plain.len() {
            return Err(CryptoError::Invalid);
        }
        plain.truncate(plain.len() - pad);
        let len_bytes: [u8; 4] = plain
            .get(16..20)
            .and_then(|b| b.try_into().ok())
            .ok_or(CryptoError::Invalid)?;
        let len =
            usize::try_from(u32::from_be_bytes(len_bytes)).map_err(|_| CryptoError::Invalid)?;
        let rest = plain.get(20..).ok_or(CryptoError::Invalid)?;
        if len > rest.len() {
            return Err(CryptoError::Invalid);
        }
        let (msg, receive_id) = rest.split_at(len);
        Ok((msg.to_vec(), receive_id.to_vec()))
    }

    /// Encrypts `msg` with 16 fresh random bytes; returns base64 ciphertext.
    pub fn encrypt(&self, msg: &[u8]) -> String {
        self.encrypt_with_random(msg, rand::random::<[u8; 16]>())
    }

    /// Encrypts `msg` with the given 16 "random" bytes (deterministic; for fixtures and tests).
    pub fn encrypt_with_random(&self, msg: &[u8], random: [u8; 16]) -> String {
        let id = self.receive_id.as_bytes();
        let mut plain = Vec::with_capacity(16 + 4 + msg.len() + id.len() + PAD_BLOCK);
        plain.extend_from_slice(&random);
        // WeChat messages are far below 4 GiB; a longer one would be refused by the ingress
        // body limit long before it got here.
        let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
        plain.extend_from_slice(&len.to_be_bytes());
        plain.extend_from_slice(msg);
        plain.extend_from_slice(id);
        let pad = PAD_BLOCK - plain.len() % PAD_BLOCK;
        // pad is 1..=32, so it fits in a byte.
        plain.extend(std::iter::repeat_n(pad as u8, pad));
        let iv = &self.key[..16];
        let ciphertext = match Aes256CbcEnc::new_from_slices(&self.key, iv) {
            Ok(enc) => enc.encrypt_padded_vec_mut::<NoPadding>(&plain),
            // Key is 32 bytes and IV 16 by construction.
            Err(_) => Vec::new(),
        };
        STANDARD.encode(ciphertext)
    }

    /// Encrypts `msg` and signs the ciphertext with `timestamp`/`nonce` (encrypted replies,
    /// fixtures).
    pub fn seal(&self, msg: &[u8], timestamp: &str, nonce: &str) -> Sealed {
        self.seal_with_random(msg, timestamp, nonce, rand::random::<[u8; 16]>())
    }

    /// [`Self::seal`] with fixed random bytes.
    pub fn seal_with_random(
        &self,
        msg: &[u8],
        timestamp: &str,
        nonce: &str,
        random: [u8; 16],
    ) -> Sealed {
        let encrypt = self.encrypt_with_random(msg, random);
        let msg_signature = self.msg_signature(timestamp, nonce, &encrypt);
        Sealed {
            encrypt,
            msg_signature,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // wechatpy tests/test_crypto.py (WeCom variant of the same algorithm).
    const TOKEN: &str = "123456";
    const KEY: &str = "kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR";
    const RECEIVE_ID: &str = "wx49f0ab532d5d035a";

    #[test]
    fn official_url_signature_example() {
        // developers.weixin.qq.com mini-program message push worked example.
        assert_eq!(
            signature(&["AAAAA", "1714036504", "1514711492"]),
            "f464b24fc39322e44b38aa78f5edd27bd1441696"
        );
        assert!(
            verify_signature(
                "AAAAA",
                "1714036504",
                "1514711492",
                "f464b24fc39322e44b38aa78f5edd27bd1441696"
            )
            .is_ok()
        );
        assert!(
            verify_signature(
                "AAAAA",
                "1714036504",
                "1514711492",
                "F464B24FC39322E44B38AA78F5EDD27BD1441696"
            )
            .is_ok()
        );
        assert_eq!(
            verify_signature(
                "AAAAB",
                "1714036504",
                "1514711492",
                "f464b24fc39322e44b38aa78f5edd27bd1441696"
            ),
            Err(CryptoError::BadSignature)
        );
    }

    #[test]
    fn key_with_trailing_bits_decodes() {
        assert!(
            STANDARD.decode(format!("{KEY}=")).is_err(),
            "strict decoder rejects it"
        );
        let key = decode_aes_key(KEY).unwrap();
        assert_eq!(key.len(), 32);
        assert_eq!(decode_aes_key("short"), Err(CryptoError::BadKey));
        assert_eq!(
            decode_aes_key(&format!("{}!", &KEY[..42])),
            Err(CryptoError::BadKey)
        );
    }

    #[test]
    fn wechatpy_vector_decrypts() {
        // ciphertext from wechatpy tests/test_crypto.py::test_decrypt_message
        let encrypt = "RgqEoJj5A4EMYlLvWO1F86ioRjZfaex/gePD0gOXTxpsq5Yj4GNglrBb8I2BAJVODGajiFnXBu7mCPatfjsu6IHCrsTyeDXzF6Bv283dGymzxh6ydJRvZsryDyZbLTE7rhnus50qGPMfp2wASFlzEgMW9z1ef/RD8XzaFYgm7iTdaXpXaG4+BiYyolBug/gYNx410cvkKR2/nPwBiT+P4hIiOAQqGp/TywZBtDh1yCF2KOd0gpiMZ5jSw3e29mTvmUHzkVQiMS6td7vXUaWOMZnYZlF3So2SjHnwh4jYFxdgpkHHqIrH/54SNdshoQgWYEvccTKe7FS709/5t6NMxuGhcUGAPOQipvWTT4dShyqio7mlsl5noTrb++x6En749zCpQVhDpbV6GDnTbcX2e8K9QaNWHp91eBdCRxthuL0=";
        let crypto = WxCrypto::new(TOKEN, KEY, RECEIVE_ID).unwrap();
        crypto
            .verify_msg_signature(
                "1411525903",
                "461056294",
                encrypt,
                "74d92dfeb87ba7c714f89d98870ae5eb62dff26d",
            )
            .unwrap();
        let msg = crypto
            .open(
                "1411525903",
                "461056294",
                encrypt,
                "74d92dfeb87ba7c714f89d98870ae5eb62dff26d",
            )
            .unwrap();
        let text = String::from_utf8(msg).unwrap();
        assert!(
            text.contains("<Content><![CDATA[test]]></Content>"),
            "{text}"
        );
        let other = WxCrypto::new(TOKEN, KEY, "wx_other").unwrap();
        assert_eq!(other.decrypt(encrypt), Err(CryptoError::WrongReceiver));
    }

    #[test]
    fn signature_is_checked_before_decrypting() {
        let crypto = WxCrypto::new(TOKEN, KEY, RECEIVE_ID).unwrap();
        let sealed = crypto.seal_with_random(b"<xml/>", "1", "2", [7; 16]);
        assert_eq!(
            crypto.open("1", "2", "garbage", &sealed.msg_signature),
            Err(CryptoError::BadSignature)
        );
        assert_eq!(
            crypto.open("1", "3", &sealed.encrypt, &sealed.msg_signature),
            Err(CryptoError::BadSignature)
        );
        assert_eq!(
            crypto
                .open("1", "2", &sealed.encrypt, &sealed.msg_signature)
                .unwrap(),
            b"<xml/>"
        );
    }

    #[test]
    fn errors_are_opaque() {
        let crypto = WxCrypto::new(TOKEN, KEY, RECEIVE_ID).unwrap();
        let other_key = WxCrypto::new(
            TOKEN,
            "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG",
            RECEIVE_ID,
        )
        .unwrap();
        let ct = crypto.encrypt(b"hello");
        for bad in [
            "",
            "!!!!",
            "AAAA",
            &STANDARD.encode([0u8; 17]),
            &STANDARD.encode([0u8; 32]),
        ] {
            assert_eq!(crypto.decrypt(bad), Err(CryptoError::Invalid), "{bad:?}");
        }
        let wrong = other_key.decrypt(&ct);
        assert!(matches!(
            wrong,
            Err(CryptoError::Invalid) | Err(CryptoError::WrongReceiver)
        ));
    }

    #[test]
    fn pads_reach_32_bytes() {
        // 16 + 4 + msg + 18-byte id: msg of 14 bytes fills exactly 52 -> pad 12; 26 -> 64 -> pad 32.
        let crypto = WxCrypto::new(TOKEN, KEY, RECEIVE_ID).unwrap();
        let mut pads = std::collections::BTreeSet::new();
        for len in 0..64 {
            let msg = vec![b'x'; len];
            let ct = STANDARD.decode(crypto.encrypt(&msg)).unwrap();
            assert_eq!(ct.len() % PAD_BLOCK, 0);
            pads.insert(ct.len() - (16 + 4 + len + RECEIVE_ID.len()));
            assert_eq!(crypto.decrypt(&STANDARD.encode(&ct)).unwrap(), msg);
        }
        assert_eq!(pads, (1..=32).collect());
    }

    fn key_strategy() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            proptest::sample::select(
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".to_vec(),
            ),
            ENCODING_AES_KEY_LEN,
        )
        .prop_map(|v| String::from_utf8(v).unwrap())
    }

    proptest! {
        #[test]
        fn round_trip(
            key in key_strategy(),
            msg in proptest::collection::vec(any::<u8>(), 0..=300),
            receive_id in "[a-z0-9]{0,24}",
            random in any::<[u8; 16]>(),
        ) {
            let crypto = WxCrypto::new("tok", &key, receive_id.clone()).unwrap();
            let sealed = crypto.seal_with_random(&msg, "1700000000", "nonce", random);
            prop_assert_eq!(STANDARD.decode(&sealed.encrypt).unwrap().len() % PAD_BLOCK, 0);
            let opened = crypto.open("1700000000", "nonce", &sealed.encrypt, &sealed.msg_signature).unwrap();
            prop_assert_eq!(opened, msg);
        }
    }
}
