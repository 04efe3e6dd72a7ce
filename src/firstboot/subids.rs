//! Subordinate id ranges (/etc/subuid, /etc/subgid), pure: parsing the `NAME:START:COUNT`
//! lines and choosing a range for the service user that overlaps no existing one.
//!
//! The guide adds 100000-165535 blindly, which collides with the first normal user that
//! useradd gave the same range. Here an existing range of the user with 65536 ids or more
//! is kept; otherwise the lowest free start at or above 100000 is taken (what shadow's
//! useradd does), and the line is appended, leaving every other line as it was.

use anyhow::{bail, Result};

/// Ids per range: what rootless Podman needs for images that use uids up to 65535.
pub const SUBID_COUNT: u64 = 65536;
/// The lowest start (shadow's SUB_UID_MIN / SUB_GID_MIN default).
pub const FIRST_SUBID: u64 = 100_000;
/// One past the last usable id: 4294967295 is (uid_t)-1, never a real id.
const ID_END: u64 = u32::MAX as u64;

/// One parsed line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubIdRange {
    /// A user name, or a numeric uid (shadow accepts both).
    pub owner: String,
    pub start: u64,
    pub count: u64,
}

impl SubIdRange {
    fn end(&self) -> u64 {
        self.start.saturating_add(self.count)
    }

    fn belongs_to(&self, user: &str, uid: u32) -> bool {
        self.owner == user || self.owner == uid.to_string()
    }
}

/// The lines of a subuid/subgid file that parse; comments, blank and malformed lines are
/// left out (and kept in the file as they are).
pub fn parse(text: &str) -> Vec<SubIdRange> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                return None;
            }
            let mut parts = line.split(':');
            let (Some(owner), Some(start), Some(count), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                tracing::warn!("ignoring a malformed subordinate id line: {line:?}");
                return None;
            };
            match (start.parse::<u64>(), count.parse::<u64>()) {
                (Ok(start), Ok(count)) if !owner.is_empty() => Some(SubIdRange {
                    owner: owner.to_string(),
                    start,
                    count,
                }),
                _ => {
                    tracing::warn!("ignoring a malformed subordinate id line: {line:?}");
                    None
                }
            }
        })
        .collect()
}

/// The lowest `start >= first` such that `[start, start + count)` overlaps none of
/// `existing` and stays below 2^32 - 1; `None` when there is no such room.
pub fn allocate(existing: &[SubIdRange], count: u64, first: u64) -> Option<u64> {
    let mut taken: Vec<(u64, u64)> = existing
        .iter()
        .filter(|r| r.count > 0)
        .map(|r| (r.start, r.end()))
        .collect();
    taken.sort_unstable();
    let mut candidate = first;
    for (start, end) in taken {
        if end <= candidate {
            continue;
        }
        if start >= candidate.saturating_add(count) {
            break;
        }
        candidate = end;
    }
    (candidate.checked_add(count)? <= ID_END).then_some(candidate)
}

/// What to do with one file for one user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubIdPlan {
    /// The user's range: the kept one or the new one.
    pub range: SubIdRange,
    /// The whole new file text when a line must be added; `None`: keep the file as it is.
    pub new_text: Option<String>,
}

/// Keeps the user's existing range of at least [`SUBID_COUNT`] ids, or appends a new one at
/// the lowest free start.
pub fn plan(text: &str, user: &str, uid: u32) -> Result<SubIdPlan> {
    let ranges = parse(text);
    if let Some(range) = ranges
        .iter()
        .find(|r| r.belongs_to(user, uid) && r.count >= SUBID_COUNT)
    {
        return Ok(SubIdPlan {
            range: range.clone(),
            new_text: None,
        });
    }
    let Some(start) = allocate(&ranges, SUBID_COUNT, FIRST_SUBID) else {
        bail!(
            "no free range of {SUBID_COUNT} subordinate ids at or above {FIRST_SUBID} is left for {user}; \
             the existing ranges cover the rest"
        );
    };
    let range = SubIdRange {
        owner: user.to_string(),
        start,
        count: SUBID_COUNT,
    };
    let mut new_text = text.to_string();
    if !new_text.is_empty() && !new_text.ends_with('\n') {
        new_text.push('\n');
    }
    new_text.push_str(&format!(
        "{}:{}:{}\n",
        range.owner, range.start, range.count
    ));
    Ok(SubIdPlan {
        range,
        new_text: Some(new_text),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may panic; see STYLE.md
mod tests {
    use super::*;

    fn start_for(text: &str) -> u64 {
        plan(text, "registry", 998).unwrap().range.start
    }

    fn overlaps(a: &SubIdRange, b: &SubIdRange) -> bool {
        a.start < b.end() && b.start < a.end()
    }

    /// The new range overlaps no other range, and the old lines are all still there.
    fn check_plan(text: &str) -> SubIdPlan {
        let p = plan(text, "registry", 998).unwrap();
        let new_text = p.new_text.clone().unwrap();
        assert!(new_text.starts_with(text.trim_end_matches('\n')));
        for other in parse(text) {
            assert!(!overlaps(&p.range, &other), "{p:?} overlaps {other:?}");
        }
        assert!(p.range.start >= FIRST_SUBID);
        assert_eq!(p.range.count, SUBID_COUNT);
        // Planning again on the result keeps it.
        let again = plan(&new_text, "registry", 998).unwrap();
        assert_eq!(again.new_text, None);
        assert_eq!(again.range, p.range);
        p
    }

    #[test]
    fn empty_file_gets_the_first_range() {
        let p = check_plan("");
        assert_eq!(p.range.start, 100_000);
        assert_eq!(p.new_text.unwrap(), "registry:100000:65536\n");
    }

    #[test]
    fn host_format_with_useradd_ranges() {
        // What Debian's useradd writes for the first two normal users.
        let text = "ubuntu:100000:65536\nalice:165536:65536\n";
        let p = check_plan(text);
        assert_eq!(p.range.start, 231_072);
        assert_eq!(
            p.new_text.unwrap(),
            "ubuntu:100000:65536\nalice:165536:65536\nregistry:231072:65536\n"
        );
    }

    #[test]
    fn adjacent_overlapping_and_unsorted_ranges() {
        // Adjacent ranges leave no gap.
        assert_eq!(start_for("a:100000:65536\nb:165536:10\n"), 165_546);
        // Overlapping ranges: the later end wins.
        assert_eq!(start_for("a:100000:100000\nb:150000:65536\n"), 215_536);
        // Unsorted lines, a gap big enough between them is used.
        assert_eq!(start_for("b:300000:65536\na:100000:65536\n"), 165_536);
        // A gap one id too small is skipped.
        assert_eq!(start_for("a:100000:65536\nb:231071:5\n"), 231_076);
        // A gap exactly big enough is used.
        assert_eq!(start_for("a:100000:65536\nb:231072:5\n"), 165_536);
        // A range reaching up from below the first start.
        assert_eq!(start_for("root:0:150000\n"), 150_000);
        // Zero-length ranges take nothing.
        assert_eq!(start_for("z:100000:0\n"), 100_000);
        // Ranges far above leave the low space free.
        assert_eq!(start_for("big:1000000:1000000\n"), 100_000);
        for text in [
            "a:100000:65536\nb:165536:10\n",
            "a:100000:100000\nb:150000:65536\n",
            "b:300000:65536\na:100000:65536\n",
            "root:0:150000\n",
        ] {
            check_plan(text);
        }
    }

    #[test]
    fn huge_ranges() {
        // Room left only at the very top.
        let top = u32::MAX as u64 - SUBID_COUNT;
        let text = format!("huge:0:{top}\n");
        assert_eq!(start_for(&text), top);
        check_plan(&text);
        // One id less room: nothing fits, and the error says why.
        let full = format!("huge:0:{}\n", top + 1);
        let e = plan(&full, "registry", 998).unwrap_err().to_string();
        assert!(e.contains("no free range") && e.contains("registry"), "{e}");
        // Absurd counts do not overflow.
        assert!(plan("x:4294967290:18446744073709551615\n", "r", 1).is_ok());
        assert!(allocate(
            &parse("x:0:18446744073709551615\n"),
            SUBID_COUNT,
            FIRST_SUBID
        )
        .is_none());
    }

    #[test]
    fn same_choice_as_shadows_useradd() {
        // Debian 12's useradd (shadow 4.13, `useradd --prefix DIR` on copies of these files)
        // gave a new normal user exactly these starts.
        for (text, want) in [
            ("", 100_000),
            ("ubuntu:100000:65536\nother:200000:10\n", 200_010),
            ("a:100000:65536\nb:231071:5\n", 231_076),
            ("root:0:150000\n", 150_000),
            ("b:300000:65536\na:100000:65536\n", 165_536),
            ("a:100000:100000\nb:150000:65536\n", 215_536),
        ] {
            assert_eq!(check_plan(text).range.start, want, "{text:?}");
        }
    }

    #[test]
    fn existing_sufficient_range_is_kept_by_name_or_uid() {
        let text = "ubuntu:100000:65536\nregistry:165536:65536\n";
        let p = plan(text, "registry", 998).unwrap();
        assert_eq!(p.new_text, None);
        assert_eq!(p.range.start, 165_536);
        let by_uid = plan("998:500000:70000\n", "registry", 998).unwrap();
        assert_eq!(by_uid.new_text, None);
        assert_eq!(by_uid.range.start, 500_000);
    }

    #[test]
    fn too_small_range_gets_a_new_one_beside_it() {
        let text = "registry:100000:1000\n";
        let p = check_plan(text);
        assert_eq!(p.range.start, 101_000);
        assert_eq!(
            p.new_text.unwrap(),
            "registry:100000:1000\nregistry:101000:65536\n"
        );
    }

    #[test]
    fn comments_malformed_lines_and_missing_newline_survive() {
        let text = "# managed by hand\nbroken line\nx:y:z\nubuntu:100000:65536";
        let p = check_plan(text);
        assert_eq!(p.range.start, 165_536);
        assert_eq!(
            p.new_text.unwrap(),
            "# managed by hand\nbroken line\nx:y:z\nubuntu:100000:65536\nregistry:165536:65536\n"
        );
    }
}
