//! Routing keys: building them from words, escaping, the 255-byte cut, and binding matches.
//!
//! Every tool that publishes builds its routing keys here, so the escaping rules of the
//! contract (SPEC §3) live in one place: `.` `#` `*` and `%` inside a word are
//! percent-escaped, the reserved word `all` (used for the totals) is written `%all` when it is
//! a real name, and a key never exceeds AMQP's 255-byte limit.

/// AMQP's limit on a routing key (a `shortstr`), in bytes.
pub const MAX_KEY_BYTES: usize = 255;

/// Escape one word of a topic so that it stays one word and cannot act as a wildcard.
///
/// `%` is escaped too (as `%25`), so that escaping is reversible and a name that is literally
/// `%all` cannot be confused with an escaped `all`.
pub fn escape_word(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.chars() {
        match c {
            '%' => out.push_str("%25"),
            '.' => out.push_str("%2E"),
            '#' => out.push_str("%23"),
            '*' => out.push_str("%2A"),
            _ => out.push(c),
        }
    }
    out
}

/// Escape a client or source name for use as the last word of a speedo topic: like
/// [`escape_word`], and the reserved total name `all` becomes `%all`.
pub fn escape_name(name: &str) -> String {
    if name == "all" {
        "%all".to_string()
    } else {
        escape_word(name)
    }
}

/// Cut `key` to at most [`MAX_KEY_BYTES`] bytes on a UTF-8 character boundary.
pub fn cut(key: &str) -> &str {
    if key.len() <= MAX_KEY_BYTES {
        return key;
    }
    let mut end = MAX_KEY_BYTES;
    while !key.is_char_boundary(end) {
        end -= 1;
    }
    &key[..end]
}

/// A source's exchange from a template (`log_{source}`, `xr_{source}`), cut to 255 bytes as
/// every name is: the one rule dd_log2source, dd_speedo and dd_web share.
pub fn source_exchange(template: &str, source: &str) -> String {
    cut(&template.replace("{source}", source)).to_string()
}

/// Build a routing key: `prefix` (already a valid topic, e.g. `v01.speedo.client`) followed by
/// each of `words` escaped, joined by `.`, cut to the 255-byte limit.
pub fn build(prefix: &str, words: &[&str]) -> String {
    let mut key = String::from(prefix);
    for w in words {
        if !key.is_empty() {
            key.push('.');
        }
        key.push_str(&escape_word(w));
    }
    cut(&key).to_string()
}

/// Does routing key `key` match AMQP topic binding `binding` (`*` one word, `#` zero or more)?
///
/// The broker does this matching itself; tools use it to check a `--topic` binding before
/// declaring it and in tests.
pub fn matches(binding: &str, key: &str) -> bool {
    let pattern: Vec<&str> = binding.split('.').collect();
    let words: Vec<&str> = key.split('.').collect();
    match_words(&pattern, &words)
}

fn match_words(pattern: &[&str], words: &[&str]) -> bool {
    match pattern.split_first() {
        None => words.is_empty(),
        Some((&"#", rest)) => (0..=words.len()).any(|skip| match_words(rest, &words[skip..])),
        Some((p, rest)) => match words.split_first() {
            Some((w, wrest)) => (*p == "*" || p == w) && match_words(rest, wrest),
            None => false,
        },
    }
}

/// The class of a status code (SPEC §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusClass {
    /// `1xx`: informational (`102` = transfer started).
    Informational,
    /// `2xx`: the product was delivered.
    Good,
    /// `3xx`: neither good nor bad (e.g. 304 not modified).
    Neutral,
    /// `4xx` and `5xx`: an error.
    Error,
}

impl StatusClass {
    /// Class of a three-digit status code; `None` outside 100..=599.
    pub fn of(code: u16) -> Option<StatusClass> {
        match code {
            100..=199 => Some(StatusClass::Informational),
            200..=299 => Some(StatusClass::Good),
            300..=399 => Some(StatusClass::Neutral),
            400..=599 => Some(StatusClass::Error),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn escapes_wildcards_and_dots() {
        assert_eq!(escape_word("a.b#c*d%e"), "a%2Eb%23c%2Ad%25e");
        assert_eq!(escape_name("all"), "%all");
        assert_eq!(escape_name("%all"), "%25all");
        assert_eq!(escape_name("allison"), "allison");
    }

    #[test]
    fn builds_keys() {
        assert_eq!(
            build("v01.speedo.client", &["ssc.ddsr"]),
            "v01.speedo.client.ssc%2Eddsr"
        );
        assert_eq!(build("", &["a", "b"]), "a.b");
    }

    #[test]
    fn cuts_on_char_boundary() {
        let long = "é".repeat(200); // 400 bytes
        let key = build("v01", &[&long]);
        assert!(key.len() <= MAX_KEY_BYTES);
        assert_eq!(key.len(), 254); // "v01." + 125 two-byte chars
        assert!(key.is_char_boundary(key.len()));
    }

    #[test]
    fn binding_matches() {
        assert!(matches("#", "v02.log.a.b"));
        assert!(matches("v02.log.#", "v02.log"));
        assert!(matches("v02.*.a.#", "v02.log.a.b.c"));
        assert!(!matches("v02.*.a", "v02.log.b"));
        assert!(matches("v01.speedo.client.*", "v01.speedo.client.x"));
        assert!(!matches("v01.speedo.client.*", "v01.speedo.client"));
    }

    #[test]
    fn status_classes() {
        assert_eq!(StatusClass::of(102), Some(StatusClass::Informational));
        assert_eq!(StatusClass::of(201), Some(StatusClass::Good));
        assert_eq!(StatusClass::of(304), Some(StatusClass::Neutral));
        assert_eq!(StatusClass::of(499), Some(StatusClass::Error));
        assert_eq!(StatusClass::of(503), Some(StatusClass::Error));
        assert_eq!(StatusClass::of(99), None);
        assert_eq!(StatusClass::of(600), None);
    }

    proptest! {
        #[test]
        fn escaped_word_is_one_word_without_wildcards(w in "\\PC{0,40}") {
            let e = escape_name(&w);
            prop_assert!(!e.contains('.') && !e.contains('#') && !e.contains('*'));
            prop_assert!(e != "all");
        }

        #[test]
        fn built_key_never_exceeds_limit(words in proptest::collection::vec("\\PC{0,80}", 0..8)) {
            let refs: Vec<&str> = words.iter().map(String::as_str).collect();
            let key = build("v01.speedo.client", &refs);
            prop_assert!(key.len() <= MAX_KEY_BYTES);
        }

        #[test]
        fn key_matches_itself_and_hash(words in proptest::collection::vec("[a-z0-9]{1,8}", 1..6)) {
            let key = words.join(".");
            prop_assert!(matches(&key, &key));
            prop_assert!(matches("#", &key));
            let star = vec!["*"; words.len()].join(".");
            prop_assert!(matches(&star, &key));
        }
    }
}
