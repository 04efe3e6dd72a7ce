//! Big blobs made on the fly, never stored: a 1 MiB pseudo-random block repeated, shared
//! by the benchmark (benches/bench.rs) and the large-layer test (tests/proxy_loopback.rs).

use std::io::{Read, Write};

const MIB: u64 = 1024 * 1024;

/// `len` bytes: one 1 MiB pseudo-random block (xorshift, fixed seed) over and over.
pub struct Blob {
    block: Vec<u8>,
    pos: u64,
    len: u64,
}

impl Blob {
    pub fn new(len: u64) -> Blob {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut block = Vec::with_capacity(MIB as usize);
        while block.len() < MIB as usize {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            block.extend_from_slice(&x.to_le_bytes());
        }
        Blob { block, pos: 0, len }
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
