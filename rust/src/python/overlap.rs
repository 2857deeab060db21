//! Disjointness of the arrays of an in-place call.

use pyo3::PyResult;
use pyo3::exceptions::PyValueError;

use super::buffers::Buf;

thread_local! {
    /// The byte ranges (in list order) of the last list this thread found pairwise disjoint.
    /// Training loops clip the same buffers every step: an identical list needs no sort.
    static DISJOINT: std::cell::RefCell<Vec<(usize, usize)>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The sort buffer of the last list this thread checked, kept (empty) for the next one.
    static SPARE_RANGES: std::cell::Cell<Vec<(usize, usize, usize)>> =
        const { std::cell::Cell::new(Vec::new()) };
}

/// In-place calls must not receive two arrays that share memory: the shared elements would be
/// scaled twice. Byte ranges are compared (a strided view counts its whole extent).
pub(super) fn check_disjoint(
    bufs: &[Buf],
    name: &str,
    at: &dyn Fn(usize) -> usize,
) -> PyResult<()> {
    let same = DISJOINT.with_borrow(|last| {
        let mut it = last.iter();
        bufs.iter()
            .filter(|b| b.len > 0)
            .all(|b| it.next() == Some(&b.byte_range()))
            && it.next().is_none()
    });
    if same {
        return Ok(());
    }
    let mut ranges = SPARE_RANGES.take();
    ranges.clear();
    ranges.extend(
        bufs.iter()
            .enumerate()
            .filter(|(_, b)| b.len > 0)
            .map(|(i, b)| {
                let (lo, hi) = b.byte_range();
                (lo, hi, i)
            }),
    );
    if !ranges.is_sorted() {
        // arrays allocated one after another come nearly sorted (a few long runs), which the
        // stable sort merges in about linear time; the tuples are distinct, so the order is the
        // one the unstable sort gave
        ranges.sort();
    }
    let mut reach: Option<(usize, usize)> = None; // (furthest end so far, its index)
    for &(lo, hi, i) in &ranges {
        if let Some((end, j)) = reach
            && lo < end
        {
            let (a, b) = (at(i.min(j)), at(i.max(j)));
            return Err(PyValueError::new_err(format!(
                "{name}[{a}] and {name}[{b}] share memory (their byte ranges overlap; interleaved strided views count too); an in-place call would modify it twice. Pass each buffer once"
            )));
        }
        if reach.is_none_or(|(end, _)| hi > end) {
            reach = Some((hi, i));
        }
    }
    SPARE_RANGES.set(ranges);
    DISJOINT.with_borrow_mut(|last| {
        last.clear();
        last.extend(bufs.iter().filter(|b| b.len > 0).map(Buf::byte_range));
    });
    Ok(())
}
