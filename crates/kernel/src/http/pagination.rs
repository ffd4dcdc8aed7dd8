//! Cursor pagination: `?limit=&cursor=` → `{items, next_cursor}`.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::problem::Problem;

/// Default page size.
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest page size.
pub const MAX_LIMIT: u32 = 200;

/// The raw query parameters.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PageParams {
    /// Items per page, 1..=200.
    pub limit: Option<u32>,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// A validated page request; `C` is the service's position type (e.g. `(created_at, id)`).
#[derive(Debug, Clone)]
pub struct PageRequest<C> {
    /// Items per page.
    pub limit: u32,
    /// Where to continue, if anywhere.
    pub after: Option<C>,
}

impl PageParams {
    /// Validates the limit and decodes the cursor; bad values are 400/422 problems.
    pub fn parse<C: DeserializeOwned>(&self) -> Result<PageRequest<C>, Problem> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(Problem::validation("limit", format!("must be between 1 and {MAX_LIMIT}")));
        }
        let after = match self.cursor.as_deref() {
            None | Some("") => None,
            Some(c) => Some(decode_cursor(c).ok_or_else(|| Problem::bad_request("cursor is not valid"))?),
        };
        Ok(PageRequest { limit, after })
    }
}

/// One page of a list.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items, in list order.
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from up to `limit + 1` fetched items: the extra one only says
    /// that there is more, and the cursor points after the last item shown.
    pub fn from_overfetch<C: Serialize>(mut items: Vec<T>, limit: u32, position: impl Fn(&T) -> C) -> Self {
        let limit = limit as usize;
        let more = items.len() > limit;
        items.truncate(limit);
        let next_cursor = if more { items.last().map(|last| encode_cursor(&position(last))) } else { None };
        Self { items, next_cursor }
    }
}

/// Opaque, URL-safe cursor text for a position.
pub fn encode_cursor<C: Serialize>(position: &C) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(position).unwrap_or_default())
}

/// The position of a cursor, if it is one of ours.
pub fn decode_cursor<C: DeserializeOwned>(cursor: &str) -> Option<C> {
    if cursor.len() > 1024 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overfetch_sets_cursor_only_when_more_remain() {
        let p = Page::from_overfetch(vec![1, 2, 3], 2, |x| *x);
        assert_eq!(p.items, vec![1, 2]);
        let next: Option<i32> = p.next_cursor.as_deref().and_then(decode_cursor);
        assert_eq!(next, Some(2));
        let last = Page::from_overfetch(vec![1, 2], 2, |x| *x);
        assert!(last.next_cursor.is_none());
    }

    #[test]
    fn bad_limit_and_cursor_are_client_errors() {
        let p = PageParams { limit: Some(0), cursor: None };
        assert_eq!(p.parse::<i32>().err().map(|p| p.status().as_u16()), Some(422));
        let p = PageParams { limit: None, cursor: Some("!!!".into()) };
        assert_eq!(p.parse::<i32>().err().map(|p| p.status().as_u16()), Some(400));
    }
}
