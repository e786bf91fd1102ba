//! Path checks: the path the gateway routes on is the path it forwards.
//!
//! Nothing is normalised or merged. A path that different servers could read differently
//! (encoded separators or dots, dot segments, empty segments, `;` parameters, backslashes,
//! control characters, double-encoded separators) is refused with 400 instead, so routing,
//! policy and the upstream always agree on what was asked for.

/// Why a path was refused; the text is sent to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must start with '/'")]
    NotOriginForm,
    #[error("path contains a character that must be percent-encoded")]
    BadChar,
    #[error("path contains ';' (path parameters are not accepted)")]
    Semicolon,
    #[error("path contains a backslash")]
    Backslash,
    #[error("path contains a malformed percent-encoding")]
    BadPercent,
    #[error("path contains an encoded '/', '\\', '.', ';' or control character")]
    EncodedSeparator,
    #[error("path contains a double-encoded '/', '\\', '.', ';' or NUL")]
    DoubleEncoded,
    #[error("path contains a '.' or '..' segment")]
    DotSegment,
    #[error("path contains an empty segment ('//')")]
    EmptySegment,
}

/// Checks an origin-form path (without query). Allocation-free, one pass.
pub fn check_path(path: &str) -> Result<(), PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotOriginForm);
    }
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'/' => {
                let seg_start = i + 1;
                let seg_end = bytes[seg_start..]
                    .iter()
                    .position(|&c| c == b'/')
                    .map_or(bytes.len(), |p| seg_start + p);
                let segment = &bytes[seg_start..seg_end];
                if segment.is_empty() && seg_end != bytes.len() {
                    return Err(PathError::EmptySegment);
                }
                if segment == b"." || segment == b".." {
                    return Err(PathError::DotSegment);
                }
                i += 1;
            }
            b'%' => {
                let decoded = decode_pair(bytes.get(i + 1..i + 3))?;
                match decoded {
                    b'/' | b'\\' | b'.' | b';' | 0x00..=0x1f | 0x7f => {
                        return Err(PathError::EncodedSeparator);
                    }
                    b'%' => {
                        // `%25xx`: one more decode by a lenient upstream would yield `xx`.
                        if let Ok(b'/' | b'\\' | b'.' | b';' | 0) =
                            decode_pair(bytes.get(i + 3..i + 5))
                        {
                            return Err(PathError::DoubleEncoded);
                        }
                    }
                    _ => {}
                }
                i += 3;
            }
            b';' => return Err(PathError::Semicolon),
            b'\\' => return Err(PathError::Backslash),
            b'a'..=b'z'
            | b'A'..=b'Z'
            | b'0'..=b'9'
            | b'-'
            | b'.'
            | b'_'
            | b'~'
            | b'!'
            | b'$'
            | b'&'
            | b'\''
            | b'('
            | b')'
            | b'*'
            | b'+'
            | b','
            | b'='
            | b':'
            | b'@' => i += 1,
            _ => return Err(PathError::BadChar),
        }
    }
    Ok(())
}

fn decode_pair(pair: Option<&[u8]>) -> Result<u8, PathError> {
    let pair = pair.ok_or(PathError::BadPercent)?;
    let hi = hex(pair[0]).ok_or(PathError::BadPercent)?;
    let lo = hex(pair[1]).ok_or(PathError::BadPercent)?;
    Ok(hi << 4 | lo)
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether `path` falls under `prefix` on a segment boundary (`/api` covers `/api` and
/// `/api/x`, never `/apix`). A prefix ending in `/` covers everything below it.
pub fn has_prefix(path: &str, prefix: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_paths_pass_unchanged() {
        for p in [
            "/",
            "/platform/app.git/info/refs",
            "/platform/app.git/",
            "/api/v1/repos/o/r/raw/a%20b.txt",
            "/user/login",
            "/v1/traces",
            "/a-b_c~d/e!$&'()*+,=:@",
            "/file.tar.gz",
            "/.well-known/x",
            "/100%25",
        ] {
            assert_eq!(check_path(p), Ok(()), "{p}");
        }
    }

    #[test]
    fn ambiguous_paths_are_refused() {
        let cases = [
            ("", PathError::NotOriginForm),
            ("*", PathError::NotOriginForm),
            ("/a/../b", PathError::DotSegment),
            ("/a/./b", PathError::DotSegment),
            ("/..", PathError::DotSegment),
            ("/a/..", PathError::DotSegment),
            ("/a//b", PathError::EmptySegment),
            ("//evil", PathError::EmptySegment),
            ("/a%2fb", PathError::EncodedSeparator),
            ("/a%2Fb", PathError::EncodedSeparator),
            ("/a%5cb", PathError::EncodedSeparator),
            ("/a/%2e%2e/b", PathError::EncodedSeparator),
            ("/a/%2E/b", PathError::EncodedSeparator),
            ("/a%00", PathError::EncodedSeparator),
            ("/a%0d%0a", PathError::EncodedSeparator),
            ("/a%3bb", PathError::EncodedSeparator),
            ("/a/%252e%252e/b", PathError::DoubleEncoded),
            ("/a%252fb", PathError::DoubleEncoded),
            ("/a%255Cb", PathError::DoubleEncoded),
            ("/a%2500", PathError::DoubleEncoded),
            ("/a;jsessionid=1", PathError::Semicolon),
            ("/a\\b", PathError::Backslash),
            ("/a%zz", PathError::BadPercent),
            ("/a%2", PathError::BadPercent),
            ("/a%", PathError::BadPercent),
            ("/a b", PathError::BadChar),
            ("/a\u{e9}", PathError::BadChar),
            ("/a\"b", PathError::BadChar),
            ("/a#b", PathError::BadChar),
            ("/a?b", PathError::BadChar),
        ];
        for (input, want) in cases {
            assert_eq!(check_path(input), Err(want), "{input:?}");
        }
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(has_prefix("/api", "/api"));
        assert!(has_prefix("/api/v1", "/api"));
        assert!(!has_prefix("/apix", "/api"));
        assert!(has_prefix("/anything", "/"));
        assert!(has_prefix("/api/v1", "/api/"));
        assert!(!has_prefix("/api", "/api/"));
    }
}
