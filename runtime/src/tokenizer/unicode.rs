//! Character classes for the pre-tokenizers and GPT-2's byte ↔ character map.
//!
//! The pre-tokenizer regexes of HF `tokenizers` (Oniguruma) and llama.cpp
//! (`unicode.cpp`) use `\p{L}` / `\p{N}` / `\p{M}` (Unicode general
//! categories) and `\s` (the Unicode `White_Space` property). Categories come
//! from the `unicode-general-category` crate (Unicode 16); `White_Space` is
//! the fixed list below, the same one llama.cpp's `unicode-data.cpp` uses.

use unicode_general_category::{GeneralCategory, get_general_category};

/// `\p{L}`: any letter.
pub(crate) const LETTER: u8 = 1;
/// `\p{N}`: any number.
pub(crate) const NUMBER: u8 = 2;
/// `\s`: the `White_Space` property.
pub(crate) const WHITESPACE: u8 = 4;
/// `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]` (the Llama 4 / GPT-4o "upper" class).
pub(crate) const UPPERISH: u8 = 8;
/// `[\p{Ll}\p{Lm}\p{Lo}\p{M}]` (the Llama 4 / GPT-4o "lower" class).
pub(crate) const LOWERISH: u8 = 16;
/// `\r` or `\n`.
pub(crate) const CR_OR_LF: u8 = 32;
/// `\p{P}`: any punctuation.
pub(crate) const PUNCT: u8 = 64;

/// Whether `c` has the Unicode `White_Space` property (what `\s` matches in
/// Oniguruma and in llama.cpp).
pub(crate) fn is_white_space(c: char) -> bool {
    matches!(
        c,
        '\u{9}'..='\u{d}'
            | ' '
            | '\u{85}'
            | '\u{a0}'
            | '\u{1680}'
            | '\u{2000}'..='\u{200a}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202f}'
            | '\u{205f}'
            | '\u{3000}'
    )
}

/// The class bits of `c` (a combination of the constants above).
#[inline]
pub(crate) fn char_flags(c: char) -> u8 {
    if c.is_ascii() {
        return ASCII_FLAGS[c as usize];
    }
    let mut f = if is_white_space(c) { WHITESPACE } else { 0 };
    use GeneralCategory as G;
    f |= match get_general_category(c) {
        G::UppercaseLetter | G::TitlecaseLetter => LETTER | UPPERISH,
        G::LowercaseLetter => LETTER | LOWERISH,
        G::ModifierLetter | G::OtherLetter => LETTER | UPPERISH | LOWERISH,
        G::NonspacingMark | G::SpacingMark | G::EnclosingMark => UPPERISH | LOWERISH,
        G::DecimalNumber | G::LetterNumber | G::OtherNumber => NUMBER,
        G::ConnectorPunctuation
        | G::DashPunctuation
        | G::OpenPunctuation
        | G::ClosePunctuation
        | G::InitialPunctuation
        | G::FinalPunctuation
        | G::OtherPunctuation => PUNCT,
        _ => 0,
    };
    f
}

const fn ascii_flags() -> [u8; 128] {
    let mut t = [0u8; 128];
    let mut i = 0;
    while i < 128 {
        let c = i as u8;
        t[i] = if c.is_ascii_uppercase() {
            LETTER | UPPERISH
        } else if c.is_ascii_lowercase() {
            LETTER | LOWERISH
        } else if c.is_ascii_digit() {
            NUMBER
        } else if c == b'\r' || c == b'\n' {
            WHITESPACE | CR_OR_LF
        } else if c == b' ' || (c >= 0x09 && c <= 0x0d) {
            WHITESPACE
        } else if c.is_ascii_punctuation() && !is_ascii_symbol(c) {
            PUNCT
        } else {
            0
        };
        i += 1;
    }
    t
}

/// The ASCII characters in the Unicode symbol categories (`\p{S}`), which
/// `is_ascii_punctuation` includes but `\p{P}` does not.
const fn is_ascii_symbol(c: u8) -> bool {
    matches!(
        c,
        b'$' | b'+' | b'<' | b'=' | b'>' | b'^' | b'`' | b'|' | b'~'
    )
}

static ASCII_FLAGS: [u8; 128] = ascii_flags();

/// GPT-2's reversible map from bytes to printable characters: the printable
/// Latin-1 bytes map to themselves, the other 68 to U+0100.. in byte order.
pub(crate) const fn byte_to_char_table() -> [char; 256] {
    let mut t = ['\0'; 256];
    let mut n = 0u32;
    let mut b = 0usize;
    while b < 256 {
        let printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
        t[b] = if printable {
            match char::from_u32(b as u32) {
                Some(c) => c,
                None => '\0',
            }
        } else {
            let c = match char::from_u32(256 + n) {
                Some(c) => c,
                None => '\0',
            };
            n += 1;
            c
        };
        b += 1;
    }
    t
}

/// Byte `b` as its GPT-2 byte-level character.
pub(crate) static BYTE_TO_CHAR: [char; 256] = byte_to_char_table();

/// The byte a GPT-2 byte-level character stands for, if it is one.
#[inline]
pub(crate) fn char_to_byte(c: char) -> Option<u8> {
    let u = c as u32;
    match u {
        0x21..=0x7e | 0xa1..=0xac | 0xae..=0xff => Some(u as u8),
        0x100..=0x143 => Some(NON_PRINTABLE[(u - 0x100) as usize]),
        _ => None,
    }
}

const fn non_printable_bytes() -> [u8; 68] {
    let mut t = [0u8; 68];
    let mut n = 0;
    let mut b = 0usize;
    while b < 256 {
        let printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae);
        if !printable {
            t[n] = b as u8;
            n += 1;
        }
        b += 1;
    }
    t
}

static NON_PRINTABLE: [u8; 68] = non_printable_bytes();

/// Decodes a byte-level token text to the bytes it stands for; `None` if a
/// character is outside the byte-level alphabet.
pub(crate) fn byte_level_decode(text: &str) -> Option<Vec<u8>> {
    text.chars().map(char_to_byte).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_is_a_bijection() {
        let mut seen = std::collections::HashSet::new();
        for b in 0..=255u8 {
            let c = BYTE_TO_CHAR[b as usize];
            assert!(seen.insert(c));
            assert_eq!(char_to_byte(c), Some(b));
        }
        assert_eq!(BYTE_TO_CHAR[b' ' as usize], 'Ġ');
        assert_eq!(BYTE_TO_CHAR[b'\n' as usize], 'Ċ');
        assert_eq!(BYTE_TO_CHAR[b'a' as usize], 'a');
        assert_eq!(char_to_byte('\u{144}'), None);
        assert_eq!(char_to_byte(' '), None);
    }

    #[test]
    fn classes() {
        assert_eq!(char_flags('a'), LETTER | LOWERISH);
        assert_eq!(char_flags('É'), LETTER | UPPERISH);
        assert_eq!(char_flags('中'), LETTER | UPPERISH | LOWERISH);
        assert_eq!(char_flags('٣'), NUMBER);
        assert_eq!(char_flags('\u{301}'), UPPERISH | LOWERISH);
        assert_eq!(char_flags('\u{a0}'), WHITESPACE);
        assert_eq!(char_flags('\u{200b}'), 0);
        assert_eq!(char_flags('\n'), WHITESPACE | CR_OR_LF);
        assert_eq!(char_flags('😀'), 0);
        assert_eq!(char_flags('$'), 0);
        assert_eq!(char_flags('!'), PUNCT);
        assert_eq!(char_flags('_'), PUNCT);
        assert_eq!(char_flags('—'), PUNCT);
        assert_eq!(char_flags('。'), PUNCT);
        for c in ['\u{85}', '\u{2028}', '\u{3000}', '\t', '\u{b}'] {
            assert!(char_flags(c) & WHITESPACE != 0, "{c:?}");
        }
    }
}
