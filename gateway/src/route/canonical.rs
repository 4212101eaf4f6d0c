//! The one request-path canonicaliser: every route decision (API, operation,
//! throttling) and the path sent to the backend use its output.
//!
//! Backends disagree about what a path means (Tomcat and Spring strip
//! `;params` before resolving `..`, some servers decode `%2F` into a
//! separator or decode twice, IIS treats `\` as `/`). A path that any of them
//! could resolve differently from the gateway is refused with 400 instead of
//! being guessed at:
//!
//! - malformed percent-encoding (`%` not followed by two hex digits);
//! - a segment that is `.` or `..` once decoded, also before a `;` parameter
//!   (`..;x`, `%2e%2e`, `.%2E;jsessionid=1`) and after a second decoding
//!   (`%252e%252e`);
//! - an encoded separator or control character in a segment (`%2F`, `%5C`,
//!   `%00`, also double-encoded) and a literal `\`;
//! - an empty segment other than a trailing slash (`/a//b`).
//!
//! What passes is normalised as RFC 3986 section 6.2.2 allows: percent-encoded
//! unreserved characters are decoded (`%61` -> `a`) and the remaining
//! escapes use upper-case hex, so equivalent spellings route alike. The query
//! string is not touched.

use percent_encoding::percent_decode;

/// Why a path is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    MalformedEncoding,
    DotSegment,
    EncodedSeparator,
    ControlCharacter,
    Backslash,
    EmptySegment,
}

impl Refusal {
    /// The message of the 400 answer.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::MalformedEncoding => "the request path has malformed percent-encoding",
            Refusal::DotSegment => "request paths may not contain . or .. segments (also encoded or before ;)",
            Refusal::EncodedSeparator => "request paths may not contain encoded / or \\ in a segment",
            Refusal::ControlCharacter => "request paths may not contain control characters",
            Refusal::Backslash => "request paths may not contain \\",
            Refusal::EmptySegment => "request paths may not contain empty segments (//)",
        }
    }

    /// A short label for metrics and logs.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::MalformedEncoding => "malformed_encoding",
            Refusal::DotSegment => "dot_segment",
            Refusal::EncodedSeparator => "encoded_separator",
            Refusal::ControlCharacter => "control_character",
            Refusal::Backslash => "backslash",
            Refusal::EmptySegment => "empty_segment",
        }
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Checks that every `%` starts a valid escape.
fn well_formed(seg: &[u8]) -> bool {
    let mut i = 0;
    while i < seg.len() {
        if seg[i] == b'%' {
            if i + 2 >= seg.len() {
                return false;
            }
            if hex_value(seg[i + 1]).is_none() || hex_value(seg[i + 2]).is_none() {
                return false;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    true
}

fn is_dot(decoded: &[u8]) -> bool {
    let name = decoded.split(|b| *b == b';').next().unwrap_or_default();
    name == b"." || name == b".."
}

/// Checks one decoded form of a segment.
fn check_decoded(decoded: &[u8]) -> Result<(), Refusal> {
    if decoded.iter().any(|b| *b == b'/' || *b == b'\\') {
        return Err(Refusal::EncodedSeparator);
    }
    if decoded.iter().any(|b| *b < 0x20 || *b == 0x7f) {
        return Err(Refusal::ControlCharacter);
    }
    if is_dot(decoded) {
        return Err(Refusal::DotSegment);
    }
    Ok(())
}

/// Appends the normalised form of a well-formed raw segment.
fn push_normalised(out: &mut String, seg: &[u8]) {
    let mut i = 0;
    while i < seg.len() {
        if seg[i] == b'%' {
            let b = (hex_value(seg[i + 1]).unwrap_or(0) << 4) | hex_value(seg[i + 2]).unwrap_or(0);
            if is_unreserved(b) {
                out.push(b as char);
            } else {
                out.push('%');
                out.push(seg[i + 1].to_ascii_uppercase() as char);
                out.push(seg[i + 2].to_ascii_uppercase() as char);
            }
            i += 3;
        } else {
            out.push(seg[i] as char);
            i += 1;
        }
    }
}

/// The canonical form of a request path (as sent: starts with `/`, still
/// percent-encoded), or why it is refused.
pub fn canonicalise(raw: &str) -> Result<String, Refusal> {
    if raw.contains('\\') {
        return Err(Refusal::Backslash);
    }
    if !raw.is_ascii() {
        // http::Uri only admits ASCII; anything else is not a request path.
        return Err(Refusal::MalformedEncoding);
    }
    let body = raw.strip_prefix('/').unwrap_or(raw);
    let segments: Vec<&str> = body.split('/').collect();
    let last = segments.len() - 1;
    let mut out = String::with_capacity(raw.len() + 1);
    for (i, seg) in segments.iter().enumerate() {
        let bytes = seg.as_bytes();
        if bytes.is_empty() && i != last {
            return Err(Refusal::EmptySegment);
        }
        if !well_formed(bytes) {
            return Err(Refusal::MalformedEncoding);
        }
        let once: Vec<u8> = percent_decode(bytes).collect();
        check_decoded(&once)?;
        if once.contains(&b'%') && well_formed(&once) {
            let twice: Vec<u8> = percent_decode(&once).collect();
            check_decoded(&twice)?;
        }
        out.push('/');
        push_normalised(&mut out, bytes);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn path_strategy() -> impl Strategy<Value = String> {
        // Segments built from the characters that matter, plus anything.
        let piece = prop_oneof![
            Just(".".to_string()),
            Just("..".to_string()),
            Just("%2e".to_string()),
            Just("%2E".to_string()),
            Just("%25".to_string()),
            Just("%2f".to_string()),
            Just("%5c".to_string()),
            Just(";".to_string()),
            Just("%3b".to_string()),
            Just("%".to_string()),
            Just("/".to_string()),
            "[a-z0-9~_-]{0,3}",
            "%[0-9a-fA-F]{2}",
            any::<String>(),
        ];
        prop::collection::vec(piece, 0..12).prop_map(|v| format!("/{}", v.concat()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn canonical_paths_are_fixed_points_without_dot_segments(raw in path_strategy()) {
            if let Ok(c) = canonicalise(&raw) {
                prop_assert_eq!(canonicalise(&c), Ok(c.clone()), "idempotent");
                prop_assert!(c.starts_with('/'));
                for seg in c.split('/').skip(1) {
                    let once: Vec<u8> = percent_decode(seg.as_bytes()).collect();
                    prop_assert!(!is_dot(&once), "dot segment {:?} in {:?} from {:?}", seg, c, raw);
                    prop_assert!(!once.contains(&b'/') && !once.contains(&b'\\'));
                    let twice: Vec<u8> = percent_decode(&once).collect();
                    prop_assert!(!is_dot(&twice), "double-decoded dot segment {:?} in {:?}", seg, c);
                }
            }
        }

        #[test]
        fn never_panics_on_any_input(raw in any::<String>()) {
            let _ = canonicalise(&raw);
        }
    }

    #[test]
    fn refuses_what_a_backend_could_resolve_differently() {
        for (path, why) in [
            ("/a/../b", Refusal::DotSegment),
            ("/a/./b", Refusal::DotSegment),
            ("/a/..", Refusal::DotSegment),
            ("/a/%2E%2e/b", Refusal::DotSegment),
            ("/a/.%2e/b", Refusal::DotSegment),
            ("/a/..;/b", Refusal::DotSegment),
            ("/a/..;jsessionid=1/b", Refusal::DotSegment),
            ("/a/%2e%2e;x=1/b", Refusal::DotSegment),
            ("/a/..%3b/b", Refusal::DotSegment),
            ("/a/%252e%252e/b", Refusal::DotSegment),
            ("/a/x%2Fy", Refusal::EncodedSeparator),
            ("/a/x%2fy", Refusal::EncodedSeparator),
            ("/a/x%5Cy", Refusal::EncodedSeparator),
            ("/a/x%252Fy", Refusal::EncodedSeparator),
            ("/a\\..\\b", Refusal::Backslash),
            ("/a/x%00y", Refusal::ControlCharacter),
            ("/a/x%0ay", Refusal::ControlCharacter),
            ("/a/%zz", Refusal::MalformedEncoding),
            ("/a/%2", Refusal::MalformedEncoding),
            ("/a/%", Refusal::MalformedEncoding),
            ("/a//b", Refusal::EmptySegment),
            ("//a", Refusal::EmptySegment),
        ] {
            assert_eq!(canonicalise(path), Err(why), "{path}");
        }
    }

    #[test]
    fn passes_and_normalises_the_rest() {
        for (path, want) in [
            ("/", "/"),
            ("/a/b/", "/a/b/"),
            ("/a/.well-known/x", "/a/.well-known/x"),
            ("/a/b..c/...", "/a/b..c/..."),
            ("/a/%61ccounts", "/a/accounts"),
            ("/a/x%2dy%7E", "/a/x-y~"),
            ("/a/caf%c3%a9", "/a/caf%C3%A9"),
            ("/a/x;v=1", "/a/x;v=1"),
            ("/a/%3Bx", "/a/%3Bx"),
            ("/a/%25", "/a/%25"),
        ] {
            assert_eq!(canonicalise(path).as_deref(), Ok(want), "{path}");
        }
    }
}
