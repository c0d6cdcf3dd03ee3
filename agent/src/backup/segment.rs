//! A segment file as geth's `admin_exportChain` writes it: RLP-encoded blocks one after another (gzip
//! when the name ends in `.gz`). Reading one tells what it holds: how many blocks, the first and last
//! block's number and hash (keccak-256 of the header's RLP), that each block's parent is the one before
//! it, and the sha256 of the file's bytes. Only headers are decoded; bodies are skipped whole.

use alloy_rlp::Header;
use sha2::Digest;
use sha3::Keccak256;
use std::io::Read;
use std::path::Path;

/// What a segment file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub blocks: u64,
    pub first: u64,
    pub first_hash: String,
    /// The first block's parent: the last hash of the segment before (or the genesis).
    pub first_parent: String,
    pub last: u64,
    pub last_hash: String,
    /// Of the file's bytes as stored (compressed when `.gz`).
    pub sha256: String,
    pub bytes: u64,
}

/// Reads and checks a segment file. Errors say what is wrong, in one line.
pub fn read(path: &Path) -> Result<Summary, String> {
    let raw = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let sha256 = hex(&sha2::Sha256::digest(&raw));
    let data = if path.extension().is_some_and(|e| e == "gz") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| format!("{}: not gzip: {e}", path.display()))?;
        out
    } else {
        raw.clone()
    };
    let mut s = summarize(&data).map_err(|e| format!("{}: {e}", path.display()))?;
    s.sha256 = sha256;
    s.bytes = raw.len() as u64;
    Ok(s)
}

/// Walks the blocks of an uncompressed export.
pub fn summarize(mut data: &[u8]) -> Result<Summary, String> {
    let mut out: Option<Summary> = None;
    while !data.is_empty() {
        let (number, parent, hash) = block(&mut data)?;
        match &mut out {
            None => {
                out = Some(Summary {
                    blocks: 1,
                    first: number,
                    first_hash: hash.clone(),
                    first_parent: parent,
                    last: number,
                    last_hash: hash,
                    sha256: String::new(),
                    bytes: 0,
                })
            }
            Some(s) => {
                if number != s.last + 1 {
                    return Err(format!(
                        "block #{number} follows #{} (a gap or a repeat)",
                        s.last
                    ));
                }
                if parent != s.last_hash {
                    return Err(format!(
                        "block #{number}'s parent is {parent}, not #{}'s hash {}",
                        s.last, s.last_hash
                    ));
                }
                s.blocks += 1;
                s.last = number;
                s.last_hash = hash;
            }
        }
    }
    out.ok_or_else(|| "no block in it".into())
}

/// One block: its number, its parent's hash and its own hash; advances `data` past it.
fn block(data: &mut &[u8]) -> Result<(u64, String, String), String> {
    let bad = |what: &str| format!("not an RLP block ({what})");
    let outer = Header::decode(data).map_err(|e| bad(&e.to_string()))?;
    if !outer.list || outer.payload_length > data.len() {
        return Err(bad("the block is not a complete list"));
    }
    let (mut body, rest) = data.split_at(outer.payload_length);
    *data = rest;
    let start = body;
    let header = Header::decode(&mut body).map_err(|e| bad(&e.to_string()))?;
    if !header.list || header.payload_length > body.len() {
        return Err(bad("the header is not a complete list"));
    }
    let header_len = start.len() - body.len() + header.payload_length;
    let hash = format!("0x{}", hex(&Keccak256::digest(&start[..header_len])));
    let mut fields = &body[..header.payload_length];
    let mut items = Vec::new();
    while !fields.is_empty() && items.len() < 9 {
        let h = Header::decode(&mut fields).map_err(|e| bad(&e.to_string()))?;
        if h.payload_length > fields.len() {
            return Err(bad("a header field runs past the header"));
        }
        let (value, rest) = fields.split_at(h.payload_length);
        items.push((h.list, value));
        fields = rest;
    }
    let (Some((false, parent)), Some((false, number))) = (items.first(), items.get(8)) else {
        return Err(bad("a header without parent hash and number"));
    };
    if parent.len() != 32 || number.len() > 8 {
        return Err(bad("parent hash or number of the wrong size"));
    }
    let number = number.iter().fold(0u64, |n, b| n << 8 | u64::from(*b));
    Ok((number, format!("0x{}", hex(parent)), hash))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// RLP of a byte string.
    fn string(b: &[u8]) -> Vec<u8> {
        match b {
            [x] if *x < 0x80 => vec![*x],
            _ => [prefix(0x80, b.len()), b.to_vec()].concat(),
        }
    }

    fn prefix(base: u8, len: usize) -> Vec<u8> {
        if len < 56 {
            vec![base + len as u8]
        } else {
            let l: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            [vec![base + 55 + l.len() as u8], l].concat()
        }
    }

    fn list(items: &[Vec<u8>]) -> Vec<u8> {
        let payload = items.concat();
        [prefix(0xc0, payload.len()), payload].concat()
    }

    fn int(n: u64) -> Vec<u8> {
        string(
            &n.to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect::<Vec<_>>(),
        )
    }

    /// A chain of `n` blocks after `parent`, as an export writes them; and the last hash.
    pub fn chain(first: u64, n: u64, mut parent: [u8; 32]) -> (Vec<u8>, String) {
        let mut out = Vec::new();
        let mut last = String::new();
        for number in first..first + n {
            let header = list(&[
                string(&parent),
                string(&[0x1d; 32]),
                string(&[0; 20]),
                string(&[0x11; 32]),
                string(&[0x56; 32]),
                string(&[0x56; 32]),
                string(&[0; 256]),
                int(2),
                int(number),
                int(4_700_000),
                int(0),
                int(1_700_000_000 + number * 5),
                string(&[0xd8; 97]),
                string(&[0; 32]),
                string(&[0; 8]),
            ]);
            let hash: [u8; 32] = Keccak256::digest(&header).into();
            out.extend(list(&[header, list(&[]), list(&[])]));
            parent = hash;
            last = format!("0x{}", hex(&hash));
        }
        (out, last)
    }

    #[test]
    fn a_chain_reads_back_with_its_range_and_hashes() {
        let (data, last) = chain(1, 300, [7; 32]);
        let s = summarize(&data).unwrap();
        assert_eq!((s.blocks, s.first, s.last), (300, 1, 300));
        assert_eq!(s.last_hash, last);
        assert_eq!(s.first_parent, format!("0x{}", "07".repeat(32)));
        assert_eq!(summarize(&chain(42, 1, [0; 32]).0).unwrap().first, 42);
    }

    #[test]
    fn gaps_broken_links_truncation_and_garbage_are_refused() {
        let (a, _) = chain(1, 3, [7; 32]);
        let (b, _) = chain(5, 2, [9; 32]);
        let e = summarize(&[a.clone(), b].concat()).unwrap_err();
        assert!(e.contains("block #5 follows #3"), "{e}");
        let (c, _) = chain(4, 1, [9; 32]);
        let e = summarize(&[a.clone(), c].concat()).unwrap_err();
        assert!(e.contains("block #4's parent is 0x0909"), "{e}");
        assert!(summarize(&a[..a.len() - 1]).is_err());
        assert!(summarize(b"not rlp at all").is_err());
        assert!(summarize(&[]).unwrap_err().contains("no block"));
    }

    #[test]
    fn a_gzip_file_is_read_through_and_hashed_as_stored() {
        use std::io::Write;
        let (data, last) = chain(1, 10, [1; 32]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.rlp.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&data).unwrap();
        let stored = gz.finish().unwrap();
        std::fs::write(&path, &stored).unwrap();
        let s = read(&path).unwrap();
        assert_eq!((s.blocks, s.last_hash.as_str()), (10, last.as_str()));
        assert_eq!(s.sha256, hex(&sha2::Sha256::digest(&stored)));
        assert_eq!(s.bytes, stored.len() as u64);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_a_summary_or_an_error(data in proptest::collection::vec(0u8..=255, 0..400)) {
            let _ = summarize(&data);
        }
    }
}
