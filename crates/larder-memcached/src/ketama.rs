//! Ketama consistent hashing, compatible with libketama and libmemcached's
//! ketama distribution (for servers on non-default ports), so that larder
//! and other ketama clients agree on which server holds a key.
//!
//! Each server gets 160 points on a 32-bit ring: 40 MD5 digests of
//! `"host:port-i"`, 4 little-endian 32-bit points from each. A key goes to
//! the first point at or after the first 4 bytes (little-endian) of its MD5,
//! wrapping around. Vectors from an independent implementation are checked
//! in `tests/ketama.rs`.

use md5::{Digest, Md5};

const DIGESTS_PER_SERVER: usize = 40;
const POINTS_PER_DIGEST: usize = 4;

/// A continuum over server indices.
#[derive(Debug, Clone)]
pub struct Ring {
    points: Vec<(u32, usize)>,
}

fn point(digest: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([
        digest[i * 4],
        digest[i * 4 + 1],
        digest[i * 4 + 2],
        digest[i * 4 + 3],
    ])
}

impl Ring {
    /// Builds the ring for `(server label, index)` pairs; the label is the
    /// server's `host:port` as configured.
    pub fn new<'a>(servers: impl IntoIterator<Item = (&'a str, usize)>) -> Ring {
        let mut points = Vec::new();
        for (label, index) in servers {
            for i in 0..DIGESTS_PER_SERVER {
                let digest = Md5::digest(format!("{label}-{i}").as_bytes());
                for p in 0..POINTS_PER_DIGEST {
                    points.push((point(&digest, p), index));
                }
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// The index of the server for `key`, `None` on an empty ring.
    pub fn server_for(&self, key: &[u8]) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let h = point(&Md5::digest(key), 0);
        let at = self.points.partition_point(|(p, _)| *p < h);
        Some(self.points[at % self.points.len()].1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_server_gets_160_points() {
        let ring = Ring::new([("a:1", 0), ("b:1", 1)]);
        assert_eq!(ring.points.len(), 320);
        assert_eq!(ring.points.iter().filter(|(_, i)| *i == 1).count(), 160);
    }

    #[test]
    fn removing_a_server_moves_only_its_keys() {
        let three = Ring::new([("a:1", 0), ("b:1", 1), ("c:1", 2)]);
        let two = Ring::new([("a:1", 0), ("c:1", 2)]);
        for i in 0..2000 {
            let key = format!("k{i}");
            let before = three.server_for(key.as_bytes()).unwrap();
            let after = two.server_for(key.as_bytes()).unwrap();
            if before != 1 {
                assert_eq!(before, after, "{key} moved though its server stayed");
            }
        }
    }

    #[test]
    fn empty_ring_has_no_server() {
        assert_eq!(Ring::new([]).server_for(b"k"), None);
    }
}
