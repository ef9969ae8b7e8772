//! Splitting a table's initial copy into ctid ranges (pure; unit-tested).
//!
//! A large table is copied as several page ranges by several copy workers, all under the same
//! exported snapshot, each range committed on the target with its own "done" mark. `WHERE ctid >=
//! '(a,0)' AND ctid < '(b,0)'` is a TID range scan on PostgreSQL 14 and later; on 13 it would
//! scan the whole table per range, so PG13 sources get one range. The last range is open-ended:
//! the size used for planning may lag behind the table.

/// `[start_page, end_page)`; `end_page` None = to the end of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRange {
    pub start: i64,
    pub end: Option<i64>,
}

pub const BLOCK_SIZE: i64 = 8192;

pub fn plan(
    size_bytes: i64,
    range_bytes: i64,
    source_version_num: i32,
    partitioned: bool,
) -> Vec<PageRange> {
    let whole = vec![PageRange {
        start: 0,
        end: None,
    }];
    if partitioned || source_version_num < 140000 || range_bytes <= 0 {
        return whole;
    }
    let pages = (size_bytes + BLOCK_SIZE - 1) / BLOCK_SIZE;
    let per = (range_bytes / BLOCK_SIZE).max(1);
    let n = (pages + per - 1) / per;
    if n <= 1 {
        return whole;
    }
    (0..n)
        .map(|i| PageRange {
            start: i * per,
            end: if i == n - 1 {
                None
            } else {
                Some((i + 1) * per)
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: i64 = 1 << 20;

    #[test]
    fn small_tables_and_old_sources_get_one_range() {
        assert_eq!(
            plan(10 * MB, 256 * MB, 150000, false),
            vec![PageRange {
                start: 0,
                end: None
            }]
        );
        assert_eq!(plan(10_000 * MB, 256 * MB, 130011, false).len(), 1);
        assert_eq!(plan(10_000 * MB, 256 * MB, 150000, true).len(), 1);
        assert_eq!(plan(0, 256 * MB, 150000, false).len(), 1);
    }

    #[test]
    fn large_tables_are_split_with_an_open_last_range() {
        let r = plan(1000 * MB, 256 * MB, 160000, false);
        assert_eq!(r.len(), 4);
        assert_eq!(
            r[0],
            PageRange {
                start: 0,
                end: Some(32768)
            }
        );
        assert_eq!(
            r[1],
            PageRange {
                start: 32768,
                end: Some(65536)
            }
        );
        assert_eq!(
            r[3],
            PageRange {
                start: 98304,
                end: None
            }
        );
        // Ranges are contiguous.
        for w in r.windows(2) {
            assert_eq!(w[0].end, Some(w[1].start));
        }
    }
}
