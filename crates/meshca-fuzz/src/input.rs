//! How targets that read several things at once cut the fuzzer's bytes into them, and how the
//! seed corpus writes them. Every part but the last is preceded by its length (two bytes,
//! little-endian, cut to what is left), so any input splits and every seed round-trips.

use std::collections::BTreeMap;

/// Cuts `data` into `N` parts: each but the last preceded by its length, the last the rest.
/// Parts past the end of the input are empty.
pub fn split<const N: usize>(data: &[u8]) -> [&[u8]; N] {
    let mut parts = [&[][..]; N];
    let mut rest = data;
    for (i, part) in parts.iter_mut().enumerate() {
        if i + 1 == N {
            *part = rest;
        } else {
            let (p, r) = take(rest);
            *part = p;
            rest = r;
        }
    }
    parts
}

/// Writes parts the way [`split`] reads them.
pub fn join(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if i + 1 < parts.len() {
            put(&mut out, part);
        } else {
            out.extend_from_slice(part);
        }
    }
    out
}

/// A folder's files: name and contents in turn, each preceded by its length, until the input
/// ends. A name repeated replaces the earlier file, as in a map.
pub fn files(data: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut rest = data;
    while !rest.is_empty() {
        let (name, r) = take(rest);
        let (contents, r) = take(r);
        rest = r;
        out.insert(
            String::from_utf8_lossy(name).into_owned(),
            contents.to_vec(),
        );
    }
    out
}

/// Writes files the way [`files`] reads them.
pub fn join_files(files: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, contents) in files {
        put(&mut out, name.as_bytes());
        put(&mut out, contents);
    }
    out
}

/// The length-prefixed part at the start of `data`, and the rest.
fn take(data: &[u8]) -> (&[u8], &[u8]) {
    let (len, rest) = match data {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        _ => (0, &[][..]),
    };
    rest.split_at(len.min(rest.len()))
}

fn put(out: &mut Vec<u8>, part: &[u8]) {
    // Seeds are made by meshca and far below 64 KiB a part; longer parts are cut.
    let len = u16::try_from(part.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&part[..usize::from(len)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_and_files_round_trip() {
        let parts: [&[u8]; 3] = [b"one", b"", b"three"];
        assert_eq!(split::<3>(&join(&parts)), parts);
        let files = BTreeMap::from([
            ("ca-cert.pem".to_owned(), b"PEM".to_vec()),
            ("empty".to_owned(), Vec::new()),
        ]);
        assert_eq!(self::files(&join_files(&files)), files);
    }

    #[test]
    fn any_bytes_split() {
        assert_eq!(split::<2>(b""), [b"", b""]);
        assert_eq!(split::<2>(b"\x05"), [b"", b""]);
        assert_eq!(split::<2>(b"\xff\xffab"), [&b"ab"[..], b""]);
        assert_eq!(
            files(b"\x01\x00a"),
            BTreeMap::from([("a".to_owned(), Vec::new())])
        );
    }
}
