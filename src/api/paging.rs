//! Pages of every listing: a page holds at most `page_size` items (default 100, at
//! most 1000) and at most `limits.max_page_bytes` encoded bytes, whichever comes first,
//! so a page always fits in a message; and page tokens are opaque (base64url of a
//! versioned key tagged with its listing): a client passes `next_page_token` back
//! unchanged, and a token of another listing, or one it made up, is INVALID_ARGUMENT.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::ApiError;

/// Items per page when `page_size` is 0.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Most items per page.
pub const MAX_PAGE_SIZE: u32 = 1000;
/// Token format version.
const VERSION: &str = "p1";
/// Longest token accepted (the keys it carries are record ids of at most 64
/// characters, or numbers).
const MAX_TOKEN_CHARS: usize = 200;

/// The item count of a page for a requested `page_size`.
pub fn page_size(requested: u32) -> u32 {
    match requested {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// The opaque token of the position after `key` in `listing`.
pub fn token(listing: &str, key: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{VERSION}\n{listing}\n{key}"))
}

/// INVALID_ARGUMENT for a token `listing` did not issue.
pub fn invalid(listing: &str) -> ApiError {
    ApiError::InvalidArgument(format!(
        "page_token is not one this listing ({listing}) issued: pass next_page_token back unchanged, or leave it empty for the first page"
    ))
}

/// The key a token of `listing` names; None for an empty token (the first page).
pub fn key_of(listing: &str, token: &str) -> Result<Option<String>, ApiError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || invalid(listing);
    if token.len() > MAX_TOKEN_CHARS {
        return Err(invalid());
    }
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    let mut parts = text.splitn(3, '\n');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(VERSION), Some(l), Some(key)) if l == listing => Ok(Some(key.to_string())),
        _ => Err(invalid()),
    }
}

/// Of `rows` read one past `limit` (to tell whether another page follows), keeps
/// `limit` and returns the key to continue after when there were more.
pub fn one_past<T>(rows: &mut Vec<T>, limit: u32, key: impl Fn(&T) -> String) -> Option<String> {
    if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(key)
    } else {
        None
    }
}

/// Cuts `items` (with their keys) to `max_bytes` of encoded size, keeping at least one
/// item; returns them with the key to continue after: the last kept item's when the
/// page was cut, else `next` (the store's, when it has more).
pub fn bounded<W: prost::Message>(
    items: Vec<(W, String)>,
    next: Option<String>,
    max_bytes: usize,
) -> (Vec<W>, Option<String>) {
    let mut kept = Vec::with_capacity(items.len());
    let mut bytes = 0usize;
    let mut last_key = None;
    let total = items.len();
    for (item, key) in items {
        // The length prefix and tag of a repeated entry take a few bytes more.
        let size = item.encoded_len() + 6;
        if !kept.is_empty() && bytes + size > max_bytes {
            return (kept, last_key);
        }
        bytes += size;
        kept.push(item);
        last_key = Some(key);
    }
    debug_assert_eq!(kept.len(), total);
    (kept, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;
    use prost::Message as _;

    #[test]
    fn tokens_are_opaque_and_bound_to_their_listing() {
        let t = token("orders", "O-17");
        assert!(!t.contains("O-17"));
        assert_eq!(key_of("orders", &t).ok().flatten().as_deref(), Some("O-17"));
        assert!(key_of("workers", &t).is_err());
        assert!(key_of("orders", "17").is_err());
        assert!(key_of("orders", "!!").is_err());
        assert!(key_of("orders", &token("orders", &"k".repeat(1000))).is_err());
        assert_eq!(key_of("orders", "").ok(), Some(None));
        assert_eq!(page_size(0), 100);
        assert_eq!(page_size(5000), 1000);
    }

    #[test]
    fn pages_are_cut_by_bytes_and_resume_after_the_last_kept() {
        let item = |id: &str| proto::Rejection {
            id: id.into(),
            message: "m".repeat(100),
            ..Default::default()
        };
        let items: Vec<_> = (0..10)
            .map(|i| (item(&format!("R{i}")), format!("{i}")))
            .collect();
        let one = item("R0").encoded_len() + 6;
        let (kept, next) = bounded(items.clone(), None, one * 3);
        assert_eq!(kept.len(), 3);
        assert_eq!(next.as_deref(), Some("2"));
        let (kept, next) = bounded(items.clone(), Some("9".into()), usize::MAX);
        assert_eq!((kept.len(), next.as_deref()), (10, Some("9")));
        let (kept, _) = bounded(items, None, 1);
        assert_eq!(kept.len(), 1, "a page always makes progress");
    }
}
