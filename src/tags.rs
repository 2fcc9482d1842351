//! The tag rules both faces share: what a tag may be, and how a value's tags are joined and
//! bounded for purges by tag.
//!
//! A tag is at most [`MAX_TAG_LEN`] bytes of visible ASCII without commas, and a value's tags
//! at most [`MAX_TAGS_BYTES`] in all (Fastly's limits); what does not fit is dropped and
//! counted in [`Stats::tags_dropped`](crate::Stats), not stored half.

/// The longest tag kept, in bytes.
pub const MAX_TAG_LEN: usize = 1024;

/// The most bytes of tags kept per response (joined by single spaces).
pub const MAX_TAGS_BYTES: usize = 16 * 1024;

/// Whether `tag` may be kept (and purged).
pub(crate) fn valid(tag: &str) -> bool {
    !tag.is_empty()
        && tag.len() <= MAX_TAG_LEN
        && tag.bytes().all(|b| b.is_ascii_graphic() && b != b',')
}

/// `tags` joined by single spaces (sorted, without repeats), and how many were dropped as
/// invalid or past [`MAX_TAGS_BYTES`]: how both faces store a value's tags.
pub(crate) fn join(tags: &[String]) -> (String, u64) {
    if tags.is_empty() {
        return (String::new(), 0);
    }
    let mut sorted: Vec<&str> = tags.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut joined = String::new();
    let mut dropped = 0u64;
    for tag in sorted {
        let fits = joined.len() + usize::from(!joined.is_empty()) + tag.len() <= MAX_TAGS_BYTES;
        if !valid(tag) || !fits {
            dropped += 1;
            continue;
        }
        if !joined.is_empty() {
            joined.push(' ');
        }
        joined.push_str(tag);
    }
    (joined, dropped)
}
