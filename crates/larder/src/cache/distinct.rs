//! A batch's ids without repeats: `get_many` reads each id once, however
//! often it was asked for, and answers every key in the order given.
//!
//! Repeats are looked for among the hashes of the ids first (a batch
//! without two equal hashes has no repeat: the common case, settled
//! without a set), and only then found exactly, with a set of borrowed
//! ids. Hashed with foldhash: a batch is bounded, so collisions chosen by
//! a client cost little (the set's hasher is seeded per process all the
//! same), and a collision of the first pass only sends the batch to the
//! exact one.

use std::collections::HashMap;
use std::hash::BuildHasher;

/// Where a batch's answers go: straight back when no id repeats (the
/// common case, which copies nothing), or spread over the repeats.
pub(super) struct Distinct<'a> {
    /// With repeats: the distinct ids in first-seen order, and for each id
    /// asked for, the place of its answer among them.
    repeats: Option<(Vec<&'a str>, Vec<usize>)>,
}

impl<'a> Distinct<'a> {
    /// The distinct ids of `ids`.
    pub(super) fn of(ids: &[&'a str]) -> Self {
        if ids.len() < 2 || !may_repeat(ids) {
            return Self { repeats: None };
        }
        let mut seen: HashMap<&str, usize, foldhash::fast::RandomState> =
            HashMap::with_capacity_and_hasher(ids.len(), Default::default());
        let mut unique = Vec::with_capacity(ids.len());
        let mut places = Vec::with_capacity(ids.len());
        for &id in ids {
            let next = unique.len();
            let place = *seen.entry(id).or_insert(next);
            if place == next {
                unique.push(id);
            }
            places.push(place);
        }
        let repeats = (unique.len() < ids.len()).then_some((unique, places));
        Self { repeats }
    }

    /// The ids to read: `ids` itself when nothing repeats.
    pub(super) fn ids<'s>(&'s self, ids: &'s [&'a str]) -> &'s [&'a str] {
        match &self.repeats {
            Some((unique, _)) => unique,
            None => ids,
        }
    }

    /// The answers to the ids asked for, in their order, from the answers
    /// to [`Distinct::ids`] (an answer cloned for each repeat).
    pub(super) fn spread<T: Clone>(&self, answers: Vec<T>) -> Vec<T> {
        match &self.repeats {
            Some((_, places)) => places.iter().map(|&at| answers[at].clone()).collect(),
            None => answers,
        }
    }
}

/// Whether two of `ids` may be the same: two of their hashes are (found
/// in an open-addressed table at most half full, which costs a fraction
/// of sorting the hashes).
fn may_repeat(ids: &[&str]) -> bool {
    let hasher = foldhash::fast::FixedState::default();
    let mask = (ids.len() * 2).next_power_of_two() - 1;
    let mut table = vec![0u64; mask + 1];
    for id in ids {
        // Never 0, which marks a free slot.
        let hash = hasher.hash_one(id) | 1;
        // The high bits pick the slot: foldhash mixes them best.
        let mut at = (hash >> 32) as usize & mask;
        loop {
            match table[at] {
                0 => {
                    table[at] = hash;
                    break;
                }
                seen if seen == hash => return true,
                _ => at = (at + 1) & mask,
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_read_once_and_answered_everywhere() {
        let ids = ["b", "a", "b", "c", "a"];
        let batch = Distinct::of(&ids);
        assert_eq!(batch.ids(&ids), ["b", "a", "c"]);
        let answers = vec!["B", "A", "C"];
        assert_eq!(batch.spread(answers), ["B", "A", "B", "C", "A"]);
    }

    #[test]
    fn without_repeats_the_ids_are_the_batch() {
        for ids in [&["x", "y", "z"][..], &["x"], &[]] {
            let batch = Distinct::of(ids);
            assert!(batch.repeats.is_none());
            assert_eq!(batch.ids(ids), ids);
        }
    }
}
