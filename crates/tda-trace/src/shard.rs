//! `--shard i/n`: the slice of a corpus one task of a sharded job reads. Documents are dealt out
//! round-robin by their ordinal in the source (`d mod n = i`), so no task needs the corpus size in
//! advance, a document is never split across shards (its windows, and its per-document score,
//! stay together), and shards differ in size by at most one document.

use serde::{Deserialize, Serialize};

/// Shard `index` of `count` (0-based; `0/1` = everything).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// The whole source.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    pub fn is_all(&self) -> bool {
        self.count == 1
    }

    /// Whether the document of ordinal `doc` belongs to this shard.
    pub fn contains(&self, doc: u64) -> bool {
        doc % self.count as u64 == self.index as u64
    }
}

impl Default for Shard {
    fn default() -> Self {
        Self::ALL
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    /// `i/n` with `0 ≤ i < n` (Slurm's `$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT`).
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("shard {s:?}: expected i/n with 0 ≤ i < n, e.g. 3/8");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count): (usize, usize) = (
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_deals_documents_round_robin() {
        let s: Shard = "2/7".parse().unwrap();
        assert_eq!((s.index, s.count), (2, 7));
        assert_eq!(s.to_string(), "2/7");
        for bad in ["7/7", "1", "a/2", "0/0", "-1/3", "1/2/3"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        // Every document is in exactly one shard.
        for d in 0..50u64 {
            let owners = (0..7)
                .filter(|&i| Shard { index: i, count: 7 }.contains(d))
                .count();
            assert_eq!(owners, 1);
        }
        assert!((0..9).all(|d| Shard::ALL.contains(d)));
    }
}
