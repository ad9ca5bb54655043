//! Whether a string looks generated (a key, a password from a manager) rather
//! than written (a word, an identifier, a path, a number).

/// Shortest value that can count: shorter ones are too often ordinary.
pub const MIN_RANDOM_LEN: usize = 12;

/// Bits per character below which a value is taken as written by hand: a
/// random string of 12 base62 characters averages about 3.4, English words
/// and repeated characters stay well under 3.
const MIN_BITS_PER_CHAR: f64 = 3.0;

/// Shannon entropy of `text`'s bytes, in bits per byte.
pub fn bits_per_byte(text: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in text.bytes() {
        counts[usize::from(b)] += 1;
    }
    let len = text.len() as f64;
    counts
        .iter()
        .filter(|&&n| n > 0)
        .map(|&n| {
            let p = f64::from(n) / len;
            -p * p.log2()
        })
        .sum()
}

/// Whether `value` looks generated: long enough, one token (no spaces, not
/// a URL or a file path), mixing letters with digits or symbols, not a chain
/// of words ([`is_word_chain`]), and varied enough ([`MIN_BITS_PER_CHAR`]).
pub fn looks_random(value: &str) -> bool {
    if value.len() < MIN_RANDOM_LEN
        || !value.is_ascii()
        || value.bytes().any(|b| b.is_ascii_whitespace())
        || value.contains("://")
        || is_file_path(value)
    {
        return false;
    }
    let (mut lower, mut upper, mut digit, mut symbol) = (false, false, false, false);
    for b in value.bytes() {
        match b {
            b'a'..=b'z' => lower = true,
            b'A'..=b'Z' => upper = true,
            b'0'..=b'9' => digit = true,
            _ => symbol = true,
        }
    }
    let letters = lower || upper;
    let classes = [lower, upper, digit, symbol].iter().filter(|c| **c).count();
    if !letters || !(digit || symbol) || classes < 2 {
        return false;
    }
    if is_word_chain(value) {
        return false;
    }
    bits_per_byte(value) >= MIN_BITS_PER_CHAR
}

/// `/run/secrets/db`, `./config/app.yaml`, `~/.aws/credentials`: where a
/// secret is kept, not the secret. Base64 may start with `/` too, but not
/// with lower-case segments only.
fn is_file_path(value: &str) -> bool {
    let Some(rest) = ["/", "./", "../", "~/"]
        .iter()
        .find_map(|start| value.strip_prefix(start))
    else {
        return false;
    };
    rest.split('/').all(|segment| {
        segment
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
    })
}

/// Words joined by `.`, `_`, `-`, `/` or `:`: `settings.OPENAI_API_KEY`,
/// `prod-db-credentials-v2`, `max_tokens_2048`: names people write. A
/// word is letters in one case, Capitalized or camelCase (maybe after an
/// acronym), then at most
/// four digits (`v2`, `sha256`); generators put digits anywhere and mix
/// cases at random.
fn is_word_chain(value: &str) -> bool {
    value.split(['.', '_', '-', '/', ':']).all(is_word)
}

fn is_word(segment: &str) -> bool {
    let letters_end = segment
        .bytes()
        .position(|b| !b.is_ascii_alphabetic())
        .unwrap_or(segment.len());
    let (letters, digits) = segment.split_at(letters_end);
    if digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let all_upper = letters.bytes().all(|b| b.is_ascii_uppercase());
    // camelCase and Capitalized, maybe after an acronym (`HTTPServer`): past
    // the leading upper-case letters, no two upper-case letters in a row.
    let past_acronym = letters.trim_start_matches(|c: char| c.is_ascii_uppercase());
    let camel = !past_acronym
        .as_bytes()
        .windows(2)
        .any(|w| w[0].is_ascii_uppercase() && w[1].is_ascii_uppercase());
    all_upper || camel
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_values_look_random_and_written_ones_do_not() {
        for random in [
            "pXk29sLmQ0vR7tWz",
            "9f8e7d6c5b4a39281706",
            "Zx8!qP2#mL5$wR9&",
            "mcp_Yq3pT8vK2wLx9Rf0Zb7NcHs4Gd1Ja6Ue5Wi3Ok2Pl8",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY",
        ] {
            assert!(looks_random(random), "{random}");
        }
        for written in [
            "short1",
            "correcthorsebatterystaple",
            "settings.OPENAI_API_KEY",
            "self.tokenizer",
            "max_tokens_2048",
            "sha256_hex_digest",
            "aaaaaaaaaaaa1111",
            "/usr/local/bin/python3",
            "2024-01-01T00:00:00",
            "123456789012345",
            "müllerstraße123",
            "https://oauth2.example.com/token",
            "~/.config/gh/hosts.yml",
            "my dog's name 42",
            "prod-db-credentials-v2",
            "getUserSessionToken2",
            "HTTPServer_config_v12",
        ] {
            assert!(!looks_random(written), "{written}");
        }
    }

    #[test]
    fn entropy_grows_with_variety() {
        assert_eq!(bits_per_byte("aaaa"), 0.0);
        assert!((bits_per_byte("abab") - 1.0).abs() < 1e-9);
        assert!(bits_per_byte("abcdefgh") > bits_per_byte("aabbccdd") - 1e-9);
    }
}
