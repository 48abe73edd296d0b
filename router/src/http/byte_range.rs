//! Byte ranges of proxied media (`Range: bytes=…`, RFC 9110 §14). Platforms hand the media
//! proxy whole files, so a range is cut from the streamed body: the bytes before it are read and
//! dropped, and the platform's download is dropped after it. Media of chat platforms are small
//! (tens of MB at most), and this is what lets browsers seek in a video, and Safari play one.

use std::ops::RangeInclusive;

use axum::http::{HeaderMap, header};
use bytes::Bytes;
use futures_util::stream::{self, Stream, StreamExt};

/// What to answer a request for a body of known or unknown length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requested {
    /// The whole body (no range asked, or one this server ignores).
    Whole,
    /// One range of a body of `total` bytes: 206.
    Part {
        /// The bytes, first and last included.
        range: RangeInclusive<u64>,
        /// The body's length.
        total: u64,
    },
    /// A range outside a body of `total` bytes: 416.
    Unsatisfiable {
        /// The body's length.
        total: u64,
    },
}

/// What `headers` ask of a body of `length` bytes (`None`: not known). Ranges are honoured for
/// bodies of known length only, one range at a time; several ranges, a malformed `Range` (which
/// RFC 9110 lets a server ignore) and any `If-Range` (there is no validator to compare it with)
/// get the whole body.
pub fn requested(headers: &HeaderMap, length: Option<u64>) -> Requested {
    let (Some(total), Some(value)) = (length, headers.get(header::RANGE)) else {
        return Requested::Whole;
    };
    if headers.contains_key(header::IF_RANGE) {
        return Requested::Whole;
    }
    let Some(parsed) = value
        .to_str()
        .ok()
        .and_then(|v| http_range_header::parse_range_header(v).ok())
    else {
        return Requested::Whole;
    };
    match parsed.validate(total) {
        Ok(ranges) => match ranges.as_slice() {
            [range] => Requested::Part {
                range: range.clone(),
                total,
            },
            _ => Requested::Whole,
        },
        Err(_) => Requested::Unsatisfiable { total },
    }
}

/// The `Content-Range` of a part.
pub fn content_range(range: &RangeInclusive<u64>, total: u64) -> String {
    format!("bytes {}-{}/{total}", range.start(), range.end())
}

/// The bytes of `range` out of `body`: chunks before it skipped, the ones across its edges cut,
/// and `body` dropped (its download ended) once the range is complete. An error ends the stream
/// after it is passed on.
pub fn slice<S, E>(body: S, range: RangeInclusive<u64>) -> impl Stream<Item = Result<Bytes, E>>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    let (first, last) = (*range.start(), *range.end());
    stream::unfold(Some((body, 0u64)), move |state| async move {
        let (mut body, mut offset) = state?;
        while offset <= last {
            let chunk = match body.next().await? {
                Ok(chunk) => chunk,
                Err(e) => return Some((Err(e), None)),
            };
            let len = chunk.len() as u64;
            // The part of this chunk inside the range, as offsets into the chunk.
            let from = first.saturating_sub(offset).min(len);
            let to = (last + 1).saturating_sub(offset).min(len);
            offset = offset.saturating_add(len);
            if from < to {
                // Both are at most the chunk's length, so they fit in usize.
                let part = chunk.slice(from as usize..to as usize);
                return Some((Ok(part), Some((body, offset))));
            }
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(name.clone(), HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn one_range_of_a_known_length_is_honoured_and_the_rest_served_whole() {
        let range = |v: &str| headers(&[(header::RANGE, v)]);
        assert_eq!(
            requested(&range("bytes=2-5"), Some(10)),
            Requested::Part {
                range: 2..=5,
                total: 10
            }
        );
        assert_eq!(
            requested(&range("bytes=7-"), Some(10)),
            Requested::Part {
                range: 7..=9,
                total: 10
            }
        );
        assert_eq!(
            requested(&range("bytes=-3"), Some(10)),
            Requested::Part {
                range: 7..=9,
                total: 10
            },
            "a suffix"
        );
        assert_eq!(
            requested(&range("bytes=10-"), Some(10)),
            Requested::Unsatisfiable { total: 10 }
        );
        assert_eq!(requested(&HeaderMap::new(), Some(10)), Requested::Whole);
        assert_eq!(
            requested(&range("bytes=2-5"), None),
            Requested::Whole,
            "length unknown"
        );
        assert_eq!(
            requested(&range("bytes=0-1, 4-5"), Some(10)),
            Requested::Whole,
            "several ranges"
        );
        assert_eq!(
            requested(&range("pages=1-2"), Some(10)),
            Requested::Whole,
            "not bytes"
        );
        assert_eq!(
            requested(
                &headers(&[(header::RANGE, "bytes=2-5"), (header::IF_RANGE, "\"x\"")]),
                Some(10)
            ),
            Requested::Whole,
            "If-Range"
        );
        assert_eq!(content_range(&(2..=5), 10), "bytes 2-5/10");
    }

    async fn sliced(chunks: &[&'static [u8]], range: RangeInclusive<u64>) -> Vec<u8> {
        let body = stream::iter(
            chunks
                .iter()
                .map(|c| Ok::<_, String>(Bytes::from_static(c)))
                .collect::<Vec<_>>(),
        );
        let parts: Vec<Result<Bytes, String>> = slice(body, range).collect().await;
        parts
            .into_iter()
            .flat_map(|p| p.unwrap().to_vec())
            .collect()
    }

    #[tokio::test]
    async fn a_slice_crosses_chunks_and_stops_at_its_end() {
        let chunks: &[&'static [u8]] = &[b"0123", b"4567", b"89"];
        assert_eq!(sliced(chunks, 2..=5).await, b"2345");
        assert_eq!(sliced(chunks, 0..=9).await, b"0123456789");
        assert_eq!(sliced(chunks, 4..=7).await, b"4567", "exactly one chunk");
        assert_eq!(sliced(chunks, 9..=9).await, b"9");
        assert_eq!(sliced(chunks, 3..=3).await, b"3");
        assert_eq!(sliced(&[b"", b"01", b"", b"23"], 1..=2).await, b"12");
    }

    #[tokio::test]
    async fn the_body_is_not_read_past_the_range_and_errors_pass() {
        let body = stream::iter(vec![
            Ok(Bytes::from_static(b"0123")),
            Err("must not be read".to_owned()),
        ]);
        let parts: Vec<_> = slice(body, 1..=2).collect().await;
        assert_eq!(parts, [Ok(Bytes::from_static(b"12"))]);
        let body = stream::iter(vec![Ok(Bytes::from_static(b"01")), Err("cut".to_owned())]);
        let parts: Vec<_> = slice(body, 1..=5).collect().await;
        assert_eq!(parts, [Ok(Bytes::from_static(b"1")), Err("cut".to_owned())]);
    }
}
