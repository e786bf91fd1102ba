//! RFC 9110 `token` (`tchar`): header names, and keys in W3C trace headers. Checked on every
//! request head, so by table.

const TCHAR: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        i += 1;
    }
    t
};

pub fn is_tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

/// A non-empty token.
pub fn is_token(s: &[u8]) -> bool {
    !s.is_empty() && s.iter().all(|&b| is_tchar(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tchar_is_rfc_9110() {
        let allowed: Vec<u8> = (0..=255u8).filter(|&b| is_tchar(b)).collect();
        let mut want: Vec<u8> = b"!#$%&'*+-.^_`|~".to_vec();
        want.extend(b'0'..=b'9');
        want.extend(b'A'..=b'Z');
        want.extend(b'a'..=b'z');
        want.sort_unstable();
        assert_eq!(allowed, want);
        assert!(is_token(b"X-Request-Id"));
        assert!(!is_token(b""));
        assert!(!is_token(b"a b"));
        assert!(!is_token(b"a:b"));
    }
}
