//! Compressing the rotated files the shipper is done with (every rotated file when nothing ships), on a
//! thread of its own, one gzip at a time.

use super::shared::ChainFile;
use super::Writer;
use crate::logs::checkpoint::FileId;
use std::path::{Path, PathBuf};

/// Rotated files that may be compressed: every one but the active file when nothing ships them, else
/// those before the shipper's checkpoint file (it never needs them again).
pub fn compressible(files: &[FileId], acked: Option<FileId>, shipping: bool) -> Vec<FileId> {
    let rotated = &files[..files.len().saturating_sub(1)];
    let done = if shipping {
        acked
            .and_then(|a| files.iter().position(|f| *f == a))
            .unwrap_or(0)
            .min(rotated.len())
    } else {
        rotated.len()
    };
    rotated[..done].to_vec()
}

impl Writer {
    pub(super) fn wait_compressor(&mut self) {
        if let Some(c) = self.compressor.take() {
            let _ = c.join();
        }
    }

    /// Starts compressing the rotated files the shipper is done with, when there are any.
    pub fn compress_shipped(&mut self) {
        if !self.rotation.compress {
            return;
        }
        if let Some(c) = &self.compressor {
            if !c.is_finished() {
                return;
            }
            self.wait_compressor();
        }
        let todo: Vec<ChainFile> = {
            let s = self.shared.lock();
            let key = Some((s.acked, s.rotations, s.files.len()));
            if key == self.last_check {
                return;
            }
            self.last_check = key;
            let ids: Vec<FileId> = s.files.iter().map(|f| f.id).collect();
            let ok = compressible(&ids, s.acked, s.shipping);
            s.files
                .iter()
                .filter(|f| ok.contains(&f.id))
                .cloned()
                .collect()
        };
        if todo.is_empty() {
            return;
        }
        let shared = self.shared.clone();
        self.compressor = std::thread::Builder::new()
            .name("log-gzip".into())
            .spawn(move || {
                for f in todo {
                    match gzip(&f.path) {
                        Ok(()) => shared.lock().files.retain(|c| c.id != f.id),
                        Err(e) => {
                            tracing::warn!(file = %f.path.display(), error = %e, "cannot compress old log file; keeping it as is")
                        }
                    }
                }
            })
            .ok();
    }
}

/// `<path>` → `<path>.gz` (temp + fsync + rename), then removes `<path>`.
fn gzip(path: &Path) -> std::io::Result<()> {
    let mut gz_path = path.as_os_str().to_owned();
    gz_path.push(".gz");
    let gz_path = PathBuf::from(gz_path);
    let mut src = std::fs::File::open(path)?;
    crate::sys::replace::replace(&gz_path, 0o640, |out| {
        let mut enc = flate2::write::GzEncoder::new(
            std::io::BufWriter::new(out),
            flate2::Compression::default(),
        );
        std::io::copy(&mut src, &mut enc)?;
        enc.finish()?.into_inner().map_err(|e| e.into_error())?;
        Ok(())
    })?;
    std::fs::remove_file(path)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{id, read_all, writer};
    use super::*;

    #[test]
    fn only_files_the_shipper_is_done_with_are_compressed() {
        let files = [id(1), id(2), id(3), id(4)];
        assert_eq!(compressible(&files, Some(id(3)), true), [id(1), id(2)]);
        assert_eq!(
            compressible(&files, Some(id(4)), true),
            [id(1), id(2), id(3)]
        );
        assert_eq!(compressible(&files, Some(id(1)), true), []);
        assert_eq!(compressible(&files, None, true), []);
        // The active file never is, and without shipping every old file is.
        assert_eq!(compressible(&files, None, false), [id(1), id(2), id(3)]);
        assert_eq!(compressible(&[id(9)], Some(id(9)), true), []);
    }

    #[test]
    fn rotated_files_are_compressed_only_once_shipped() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, shared) = writer(dir.path(), 1000, 5, true);
        shared.lock().shipping = true;
        let first = shared.lock().files[0].id;
        shared.lock().reading = Some(first);
        shared.lock().acked = Some(first);
        for i in 0..30 {
            w.add(format!("line {i:03} {}", "x".repeat(40)).as_bytes(), 0);
            w.flush();
        }
        w.wait_compressor();
        assert!(dir.path().join("geth.log.2").exists() && dir.path().join("geth.log.1").exists());
        assert!(
            !dir.path().join("geth.log.2.gz").exists(),
            "not shipped yet"
        );
        // The shipper moves on to the newest file: both old ones are done.
        let newest = shared.lock().files.last().unwrap().id;
        shared.lock().acked = Some(newest);
        w.compress_shipped();
        w.close();
        assert!(!dir.path().join("geth.log.2").exists());
        let text = read_all(&dir.path().join("geth.log.2.gz"))
            + &read_all(&dir.path().join("geth.log.1.gz"));
        assert_eq!(text.lines().count(), 26);
        assert!(text
            .lines()
            .next()
            .unwrap()
            .ends_with(&format!("line 000 {}", "x".repeat(40))));
        assert_eq!(shared.lock().files.len(), 1);
    }
}
