//! Packing: sequences grouped into rows of at most `max_len` positions (best-fit decreasing, as TRL's
//! default), attended to as separate documents inside a row.

/// Rows of sequence indices; `lens[i]` is the number of positions sequence `i` occupies. Without
/// packing every sequence is its own row.
pub fn rows(lens: &[usize], packing: bool, max_len: usize) -> Vec<Vec<usize>> {
    if !packing {
        return (0..lens.len()).map(|i| vec![i]).collect();
    }
    let mut by_len: Vec<usize> = (0..lens.len()).collect();
    // Longest first; ties keep the dataset's order, so the packing depends only on the data.
    by_len.sort_by(|&a, &b| lens[b].cmp(&lens[a]).then(a.cmp(&b)));
    let mut bins: Vec<(usize, Vec<usize>)> = Vec::new();
    for i in by_len {
        let len = lens[i].min(max_len);
        // Best fit: the fullest row that still has room.
        let best = bins
            .iter_mut()
            .filter(|(used, _)| used + len <= max_len)
            .max_by_key(|(used, _)| *used);
        match best {
            Some((used, members)) => {
                *used += len;
                members.push(i);
            }
            None => bins.push((len, vec![i])),
        }
    }
    bins.into_iter().map(|(_, members)| members).collect()
}

#[cfg(test)]
mod tests {
    use super::rows;

    #[test]
    fn best_fit_decreasing_fills_rows() {
        let packed = rows(&[5, 3, 4, 2, 6, 1], true, 8);
        for r in &packed {
            let used: usize = r.iter().map(|&i| [5, 3, 4, 2, 6, 1][i]).sum();
            assert!(used <= 8, "{packed:?}");
        }
        assert_eq!(packed.len(), 3, "21 positions in rows of 8: {packed:?}");
        let mut all: Vec<usize> = packed.concat();
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn without_packing_each_sequence_is_a_row() {
        assert_eq!(rows(&[3, 9], false, 4), vec![vec![0], vec![1]]);
    }
}
