//! Fresh random IVs for sealing, drawn from the operating system in blocks.

use super::error::EnvelopeError;
use super::format::IV_LEN;

/// IVs drawn from the OS CSPRNG in blocks rather than one `getrandom` call per row: the
/// block doubles from 1 up to 256 IVs, so a single seal draws 12 bytes and a rotation one call
/// per 256 rows. Each IV is handed out once (`next` only moves forward until a refill draws a
/// whole new block). IVs are public, written next to the ciphertext: buffering them exposes
/// nothing, and a used one is left in the buffer rather than wiped, as wiping would protect
/// nothing.
/// The pool belongs to one `Cipher`, which lives within one call of one process: no IV can be
/// shared with a forked child.
#[derive(Default)]
pub struct IvPool {
    pub(super) buffer: Vec<u8>,
    next: usize,
}

pub const IV_POOL_MAX: usize = 256;

impl IvPool {
    pub fn take(&mut self) -> Result<[u8; IV_LEN], EnvelopeError> {
        if self.next * IV_LEN >= self.buffer.len() {
            let ivs = (self.buffer.len() / IV_LEN * 2).clamp(1, IV_POOL_MAX);
            self.buffer.resize(ivs * IV_LEN, 0);
            getrandom::getrandom(&mut self.buffer).map_err(|_| EnvelopeError::Random)?;
            self.next = 0;
        }
        let range = self.next * IV_LEN..(self.next + 1) * IV_LEN;
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&self.buffer[range]);
        self.next += 1;
        Ok(iv)
    }
}
