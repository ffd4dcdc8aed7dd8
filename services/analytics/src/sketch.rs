//! Distinct-visitor sketches: HyperLogLog with 2^12 registers (standard error
//! about 1.6 %), kept exact while small. A sketch holds up to [`SPARSE_MAX`]
//! visitor hashes as a sorted list — an exact set — and turns into registers
//! when it grows past that; merging two sketches is their union either way.
//!
//! Encoding: a tag byte (0 = sparse, 1 = dense), then eight little-endian
//! bytes per hash (sparse) or one byte per register (dense).

/// Register index bits.
const P: u32 = 12;
/// Registers.
const M: usize = 1 << P;
/// Hashes kept exactly before switching to registers (the same 4 KiB as the registers).
pub const SPARSE_MAX: usize = M / 8;

/// A set of visitor hashes, exact while small, HyperLogLog beyond.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sketch {
    /// Sorted, distinct hashes.
    Sparse(Vec<u64>),
    /// `M` registers: the longest run of leading zeros seen, plus one.
    Dense(Vec<u8>),
}

impl Default for Sketch {
    fn default() -> Self {
        Self::Sparse(Vec::new())
    }
}

/// The 64-bit hash of a visitor id (its first 16 hex digits; the id is already
/// an HMAC). Anything else is hashed with FNV-1a and mixed.
pub fn visitor_hash(visitor: &str) -> u64 {
    if visitor.len() >= 16
        && let Ok(h) = u64::from_str_radix(&visitor[..16], 16)
    {
        return h;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in visitor.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    // splitmix64 finalizer: spread FNV's weak high bits.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn register(hash: u64) -> (usize, u8) {
    let index = (hash >> (64 - P)) as usize;
    let rest = (hash << P) | (1 << (P - 1));
    (index, rest.leading_zeros() as u8 + 1)
}

impl Sketch {
    /// Decodes a stored sketch; anything unreadable counts as empty.
    pub fn decode(bytes: &[u8]) -> Self {
        match bytes.split_first() {
            Some((1, regs)) if regs.len() == M => Self::Dense(regs.to_vec()),
            Some((0, list)) if list.len() % 8 == 0 => {
                let mut v: Vec<u64> = list
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect();
                v.sort_unstable();
                v.dedup();
                Self::Sparse(v)
            }
            _ => Self::default(),
        }
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Sparse(v) => {
                let mut out = Vec::with_capacity(1 + v.len() * 8);
                out.push(0);
                for h in v {
                    out.extend_from_slice(&h.to_le_bytes());
                }
                out
            }
            Self::Dense(regs) => {
                let mut out = Vec::with_capacity(1 + M);
                out.push(1);
                out.extend_from_slice(regs);
                out
            }
        }
    }

    /// Adds hashes.
    pub fn extend(&mut self, hashes: impl IntoIterator<Item = u64>) {
        match self {
            Self::Sparse(v) => {
                v.extend(hashes);
                v.sort_unstable();
                v.dedup();
                if v.len() > SPARSE_MAX {
                    let dense = Self::densify(v);
                    *self = dense;
                }
            }
            Self::Dense(regs) => {
                for h in hashes {
                    let (i, r) = register(h);
                    regs[i] = regs[i].max(r);
                }
            }
        }
    }

    fn densify(hashes: &[u64]) -> Self {
        let mut regs = vec![0u8; M];
        for &h in hashes {
            let (i, r) = register(h);
            regs[i] = regs[i].max(r);
        }
        Self::Dense(regs)
    }

    /// Adds everything in `other`.
    pub fn merge(&mut self, other: &Self) {
        match (&mut *self, other) {
            (_, Self::Sparse(v)) => self.extend(v.iter().copied()),
            (Self::Dense(a), Self::Dense(b)) => {
                for (x, y) in a.iter_mut().zip(b) {
                    *x = (*x).max(*y);
                }
            }
            (Self::Sparse(v), Self::Dense(b)) => {
                let mut regs = b.clone();
                for &h in v.iter() {
                    let (i, r) = register(h);
                    regs[i] = regs[i].max(r);
                }
                *self = Self::Dense(regs);
            }
        }
    }

    /// Whether the count is exact.
    pub fn is_exact(&self) -> bool {
        matches!(self, Self::Sparse(_))
    }

    /// The number of distinct visitors: exact for a sparse sketch, else the
    /// HyperLogLog estimate with linear counting for small cardinalities.
    pub fn count(&self) -> u64 {
        match self {
            Self::Sparse(v) => v.len() as u64,
            Self::Dense(regs) => {
                let m = M as f64;
                let alpha = 0.7213 / (1.0 + 1.079 / m);
                let sum: f64 = regs.iter().map(|&r| 2f64.powi(-i32::from(r))).sum();
                let raw = alpha * m * m / sum;
                let zeros = regs.iter().filter(|&&r| r == 0).count();
                let estimate = if raw <= 2.5 * m && zeros > 0 { m * (m / zeros as f64).ln() } else { raw };
                estimate.round() as u64
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(range: std::ops::Range<u64>) -> impl Iterator<Item = u64> {
        range.map(|i| visitor_hash(&format!("visitor-{i}")))
    }

    #[test]
    fn small_sets_are_counted_exactly_and_survive_encoding() {
        let mut s = Sketch::default();
        s.extend(hashes(0..100));
        s.extend(hashes(50..150));
        assert_eq!(s.count(), 150);
        assert!(s.is_exact());
        assert_eq!(Sketch::decode(&s.encode()), s);
    }

    #[test]
    fn large_sets_are_estimated_within_five_percent_and_merge_as_a_union() {
        let mut a = Sketch::default();
        a.extend(hashes(0..60_000));
        let mut b = Sketch::default();
        b.extend(hashes(40_000..100_000));
        a.merge(&b);
        let n = a.count() as f64;
        assert!((n - 100_000.0).abs() / 100_000.0 < 0.05, "estimated {n}");
        assert!(!a.is_exact());
        assert_eq!(Sketch::decode(&a.encode()), a);
        // A sparse sketch merged into a dense one, and the other way round.
        let mut small = Sketch::default();
        small.extend(hashes(0..10));
        let mut c = small.clone();
        c.merge(&a);
        small.merge(&a);
        assert_eq!(c, small);
        assert!((c.count() as f64 - 100_000.0).abs() / 100_000.0 < 0.05);
    }

    #[test]
    fn medium_sets_use_linear_counting_accurately() {
        let mut s = Sketch::default();
        s.extend(hashes(0..2_000));
        let n = s.count() as f64;
        assert!((n - 2_000.0).abs() / 2_000.0 < 0.03, "estimated {n}");
    }

    #[test]
    fn routing_visitor_ids_hash_to_their_leading_bits() {
        assert_eq!(visitor_hash("00000000000000ff0123456789abcdef"), 0xff);
        assert_ne!(visitor_hash("short"), visitor_hash("shorT"));
    }
}
