//! Special tokens found in text: llama.cpp's `tokenizer_st_partition`.
//!
//! llama.cpp takes the special tokens longest first and, for each, splits
//! every not-yet-claimed piece of raw text at each of its occurrences, left
//! to right. Here all occurrences of all candidate tokens are found in one
//! pass with a byte trie, then claimed in that same order (token by token,
//! longest first; within a token left to right; an occurrence overlapping an
//! earlier claim is skipped) — the same partition without rescanning the
//! text once per special token.

use std::collections::BTreeMap;

/// A piece of the partitioned text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    /// `text[start..end]`, to be tokenized.
    Text(usize, usize),
    /// A special token.
    Token(u32),
}

#[derive(Default)]
struct Node {
    /// (byte, child index), sorted by byte.
    children: Vec<(u8, u32)>,
    /// The token whose text ends here: (id, rank in the matching order,
    /// matched only when parsing specials).
    token: Option<(u32, u32, bool)>,
}

/// The special tokens of a vocabulary in llama.cpp's matching order, with a
/// trie over their texts.
pub(crate) struct SpecialMatcher {
    nodes: Vec<Node>,
}

impl SpecialMatcher {
    /// `tokens`: (id, text, matched only when `parse_special`), in any order.
    pub(crate) fn new<'a>(
        tokens: impl IntoIterator<Item = (u32, &'a str, bool)>,
    ) -> SpecialMatcher {
        let mut list: Vec<(u32, &str, bool)> = tokens
            .into_iter()
            .filter(|(_, t, _)| !t.is_empty())
            .collect();
        // Longest first; ties by id (llama.cpp's std::sort leaves them unspecified).
        list.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then(a.0.cmp(&b.0)));
        let mut m = SpecialMatcher {
            nodes: vec![Node::default()],
        };
        for (r, &(id, text, parse_only)) in list.iter().enumerate() {
            let mut node = 0usize;
            for &b in text.as_bytes() {
                let next = match m.nodes[node].children.binary_search_by_key(&b, |c| c.0) {
                    Ok(i) => m.nodes[node].children[i].1 as usize,
                    Err(i) => {
                        let new = m.nodes.len();
                        m.nodes.push(Node::default());
                        m.nodes[node].children.insert(i, (b, new as u32));
                        new
                    }
                };
                node = next;
            }
            // Two tokens with the same text cannot exist (the vocabulary
            // refuses duplicates), so this never overwrites.
            m.nodes[node]
                .token
                .get_or_insert((id, r as u32, parse_only));
        }
        m
    }

    /// Whether there are no special tokens.
    pub(crate) fn is_empty(&self) -> bool {
        self.nodes.len() == 1
    }

    /// Splits `text` into raw text and special tokens. With `parse_special`
    /// false only user-defined tokens are matched (as in llama.cpp).
    pub(crate) fn partition(&self, text: &str, parse_special: bool, out: &mut Vec<Fragment>) {
        out.clear();
        if text.is_empty() {
            return;
        }
        let bytes = text.as_bytes();
        let root = &self.nodes[0];
        // (rank, start, len, id) of every occurrence.
        let mut found: Vec<(u32, usize, usize, u32)> = Vec::new();
        if !self.is_empty() {
            for start in 0..bytes.len() {
                if root
                    .children
                    .binary_search_by_key(&bytes[start], |c| c.0)
                    .is_err()
                {
                    continue;
                }
                let mut node = root;
                let mut i = start;
                while i < bytes.len() {
                    match node.children.binary_search_by_key(&bytes[i], |c| c.0) {
                        Ok(k) => node = &self.nodes[node.children[k].1 as usize],
                        Err(_) => break,
                    }
                    i += 1;
                    if let Some((id, rank, parse_only)) = node.token {
                        if parse_special || !parse_only {
                            found.push((rank, start, i - start, id));
                        }
                    }
                }
            }
        }
        if found.is_empty() {
            out.push(Fragment::Text(0, text.len()));
            return;
        }
        found.sort_unstable();
        // Claimed intervals: start → (end, id).
        let mut claimed: BTreeMap<usize, (usize, u32)> = BTreeMap::new();
        for &(_, start, len, id) in &found {
            let end = start + len;
            let overlaps = claimed
                .range(..end)
                .next_back()
                .is_some_and(|(_, &(e, _))| e > start);
            if !overlaps {
                claimed.insert(start, (end, id));
            }
        }
        let mut pos = 0;
        for (&start, &(end, id)) in &claimed {
            if start > pos {
                out.push(Fragment::Text(pos, start));
            }
            out.push(Fragment::Token(id));
            pos = end;
        }
        if pos < text.len() {
            out.push(Fragment::Text(pos, text.len()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(m: &SpecialMatcher, text: &str, parse: bool) -> Vec<String> {
        let mut out = Vec::new();
        m.partition(text, parse, &mut out);
        out.iter()
            .map(|f| match *f {
                Fragment::Text(a, b) => text[a..b].to_string(),
                Fragment::Token(id) => format!("#{id}"),
            })
            .collect()
    }

    #[test]
    fn longest_token_claims_first() {
        let m = SpecialMatcher::new([
            (1, "<s>", true),
            (2, "</s>", true),
            (3, "ab", true),
            (4, "bcd", true),
        ]);
        assert_eq!(parts(&m, "x<s>y</s>", true), ["x", "#1", "y", "#2"]);
        assert_eq!(parts(&m, "x<s>y</s>", false), ["x<s>y</s>"]);
        // llama.cpp order: "bcd" (longer) is claimed before "ab".
        assert_eq!(parts(&m, "abcd", true), ["a", "#4"]);
        assert_eq!(parts(&m, "abab", true), ["#3", "#3"]);
        assert_eq!(parts(&m, "<s><s>", true), ["#1", "#1"]);
        assert_eq!(parts(&m, "", true), Vec::<String>::new());
    }

    #[test]
    fn user_defined_always_matched() {
        let m = SpecialMatcher::new([(7, "<user>", false), (8, "<ctl>", true)]);
        assert_eq!(parts(&m, "a<user>b<ctl>", false), ["a", "#7", "b<ctl>"]);
        assert_eq!(parts(&m, "a<user>b<ctl>", true), ["a", "#7", "b", "#8"]);
    }

    #[test]
    fn self_overlap_left_to_right() {
        let m = SpecialMatcher::new([(5, "aa", true)]);
        assert_eq!(parts(&m, "aaa", true), ["#5", "a"]);
    }
}
