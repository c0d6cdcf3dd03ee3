//! Reading JSON secrets without copying them: a field's string decoded once into zeroizing memory, a
//! keystore's members as raw text inside the caller's buffer.

use super::SecretValue;
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// A JSON text read without copying its values: serde_json's `Value` would copy every string of a
/// secret into a `String` that is never zeroed.
pub(super) enum Json<'a> {
    /// The members of an object, each value the raw text inside the caller's buffer (last duplicate
    /// wins, as with `Value`).
    Object(BTreeMap<String, &'a RawValue>),
    /// Valid JSON, but not an object.
    Other,
    Invalid,
}

pub(super) fn json(text: &[u8]) -> Json<'_> {
    match serde_json::from_slice::<BTreeMap<String, &RawValue>>(text) {
        Ok(members) => Json::Object(members),
        // Skipping a value checks it without copying its strings.
        Err(_) if serde_json::from_slice::<serde::de::IgnoredAny>(text).is_ok() => Json::Other,
        Err(_) => Json::Invalid,
    }
}

/// The members of a nested object; none when the value is not an object.
pub(super) fn nested_members(raw: &RawValue) -> BTreeMap<String, &RawValue> {
    match json(raw.get().as_bytes()) {
        Json::Object(members) => members,
        Json::Other | Json::Invalid => BTreeMap::new(),
    }
}

/// A JSON string's bytes, decoded into a buffer allocated once at the literal's length (the decoded
/// text is never longer), so no reallocation leaves a copy behind; the caller wraps it in a zeroizing
/// type. `Ok(None)` when the value is not a string; `Err` for an escape serde_json skipped without
/// judging it (a lone surrogate), which its `Value` refuses.
pub(super) fn json_string(raw: &RawValue) -> Result<Option<Vec<u8>>, ()> {
    let text = raw.get().as_bytes().trim_ascii();
    let Some(inner) = text.strip_prefix(b"\"").and_then(|t| t.strip_suffix(b"\"")) else {
        return Ok(None);
    };
    let hex4 = |at: usize| -> Result<u32, ()> {
        let digits = inner.get(at..at + 4).ok_or(())?;
        digits.iter().try_fold(0u32, |n, d| {
            Ok(n * 16 + char::from(*d).to_digit(16).ok_or(())?)
        })
    };
    let mut out = Vec::with_capacity(inner.len());
    let mut i = 0;
    while i < inner.len() {
        if inner[i] != b'\\' {
            out.push(inner[i]);
            i += 1;
            continue;
        }
        let escaped = *inner.get(i + 1).ok_or(())?;
        i += 2;
        let byte = match escaped {
            b'"' | b'\\' | b'/' => escaped,
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'u' => {
                let mut code = hex4(i)?;
                i += 4;
                if (0xd800..0xdc00).contains(&code) {
                    if inner.get(i..i + 2) != Some(b"\\u") {
                        return Err(());
                    }
                    let low = hex4(i + 2)?;
                    if !(0xdc00..0xe000).contains(&low) {
                        return Err(());
                    }
                    code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00);
                    i += 6;
                }
                let c = char::from_u32(code).ok_or(())?;
                // Encoded in place: no temporary holds the character.
                let at = out.len();
                out.resize(at + c.len_utf8(), 0);
                c.encode_utf8(&mut out[at..]);
                continue;
            }
            _ => return Err(()),
        };
        out.push(byte);
    }
    Ok(Some(out))
}

/// One string field of a JSON secret, copied once, into zeroizing memory.
pub(super) fn json_field(raw: &SecretValue, field: &str) -> Result<SecretValue, String> {
    let not_object = || format!("is not a JSON object, so field {field:?} cannot be read");
    let members = match json(raw.expose()) {
        Json::Object(members) => members,
        Json::Other => return Err(format!("has no field {field:?}")),
        Json::Invalid => return Err(not_object()),
    };
    match members.get(field).map(|v| json_string(v)) {
        Some(Ok(Some(s))) => Ok(SecretValue::new(s)),
        Some(Ok(None)) => Err(format!("field {field:?} is not a string")),
        Some(Err(())) => Err(not_object()),
        None => Err(format!("has no field {field:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_fields_are_extracted_or_named_when_missing() {
        let raw = SecretValue::new(br#"{"password":"pw","n":1}"#.to_vec());
        assert_eq!(json_field(&raw, "password").unwrap().expose(), b"pw");
        assert!(json_field(&raw, "n").unwrap_err().contains("not a string"));
        assert!(json_field(&raw, "x")
            .unwrap_err()
            .contains("no field \"x\""));
        assert!(json_field(&SecretValue::new(b"pw".to_vec()), "x")
            .unwrap_err()
            .contains("not a JSON object"));
    }

    #[test]
    fn json_string_fields_are_decoded_like_serde_json_does() {
        let raw = SecretValue::new(
            br#"{"password":"p\"w\\\/\b\f\n\r\t\u0041\u00e9\ud83d\ude00x"}"#.to_vec(),
        );
        let v = json_field(&raw, "password").unwrap();
        assert_eq!(
            v.expose(),
            "p\"w\\/\u{8}\u{c}\n\r\tA\u{e9}\u{1f600}x".as_bytes()
        );
        // The buffer is sized once, at the literal's length: never reallocated.
        assert!(v.0.capacity() >= v.expose().len());
        // The last of duplicate fields wins, as with serde_json's Value.
        let dup = SecretValue::new(br#"{"password":"one","password":"two"}"#.to_vec());
        assert_eq!(json_field(&dup, "password").unwrap().expose(), b"two");
        // A lone surrogate is not JSON serde_json accepts as a string: refused as before.
        let lone = SecretValue::new(br#"{"password":"\ud83d"}"#.to_vec());
        assert!(json_field(&lone, "password")
            .unwrap_err()
            .contains("not a JSON object"));
        // Valid JSON that is not an object has no fields.
        let list = SecretValue::new(br#"["password"]"#.to_vec());
        assert!(json_field(&list, "password")
            .unwrap_err()
            .contains("no field"));
    }

    proptest::proptest! {
        #[test]
        fn any_string_field_reads_back_exactly(text in proptest::prelude::any::<String>()) {
            let raw = SecretValue::new(serde_json::to_vec(&serde_json::json!({"f": text})).unwrap());
            let read = json_field(&raw, "f").unwrap();
            proptest::prop_assert_eq!(read.expose(), text.as_bytes());
        }
    }
}
