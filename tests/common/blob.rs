//! Big blobs made on the fly, never stored: a 1 MiB pseudo-random block repeated, shared
//! by the benchmark (benches/bench.rs) and the blob tests (tests/proxy_loopback.rs,
//! tests/day2_loopback.rs), with their digest taken on the way out.

use std::io::{Read, Write};
use std::process::{Command, Stdio};

const MIB: u64 = 1024 * 1024;

/// `len` bytes: one 1 MiB pseudo-random block (xorshift, fixed seed) over and over.
pub struct Blob {
    block: Vec<u8>,
    pos: u64,
    len: u64,
}

impl Blob {
    pub fn new(len: u64) -> Blob {
        Blob::seeded(len, 0)
    }

    /// Another blob for each `seed` (two uploads in one registry that must not share bytes).
    pub fn seeded(len: u64, seed: u64) -> Blob {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x2545_f491_4f6c_dd1d);
        let mut block = Vec::with_capacity(MIB as usize);
        while block.len() < MIB as usize {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            block.extend_from_slice(&x.to_le_bytes());
        }
        Blob { block, pos: 0, len }
    }

    /// The whole length in bytes.
    pub fn size(&self) -> u64 {
        self.len
    }

    /// The next piece (at most 1 MiB, never across the block's end); empty at the end.
    pub fn next_piece(&mut self) -> &[u8] {
        let at = (self.pos % MIB) as usize;
        let n = (self.block.len() - at).min((self.len - self.pos) as usize);
        self.pos += n as u64;
        &self.block[at..at + n]
    }

    /// Writes the rest of the blob to `w` in 1 MiB writes; returns the bytes written.
    pub fn write_to(&mut self, w: &mut impl Write) -> std::io::Result<u64> {
        let start = self.pos;
        loop {
            let piece = self.next_piece();
            if piece.is_empty() {
                return Ok(self.pos - start);
            }
            w.write_all(piece)?;
        }
    }
}

impl Read for Blob {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.len - self.pos;
        if left == 0 {
            return Ok(0);
        }
        let at = (self.pos % MIB) as usize;
        let n = buf.len().min(self.block.len() - at).min(left as usize);
        buf[..n].copy_from_slice(&self.block[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

/// Writes the rest of `blob` to `w` (a child's stdin, which is closed at the end) and to
/// `openssl dgst` on the way; returns the bytes written and the digest (`sha256:HEX`).
pub fn write_digested(blob: &mut Blob, w: impl Write) -> (std::io::Result<u64>, String) {
    let mut dgst = Command::new("openssl")
        .args(["dgst", "-sha256", "-r"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting openssl dgst");
    let mut tee = Tee(w, dgst.stdin.take().expect("openssl's stdin"));
    let written = blob.write_to(&mut tee);
    drop(tee);
    let sum = dgst.wait_with_output().expect("waiting for openssl");
    (written, digest_of(&sum.stdout))
}

/// `sha256:HEX` from the output of `openssl dgst -sha256 -r`.
pub fn digest_of(dgst_stdout: &[u8]) -> String {
    let text = String::from_utf8_lossy(dgst_stdout);
    format!("sha256:{}", text.split_whitespace().next().unwrap_or(""))
}

/// Every write goes to both.
struct Tee<A, B>(A, B);

impl<A: Write, B: Write> Write for Tee<A, B> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(buf)?;
        self.1.write_all(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()?;
        self.1.flush()
    }
}
