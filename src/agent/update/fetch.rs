//! Download a release binary into `<data-dir>/update/<sha256>.part`: one
//! sequential append (flash-friendly), resumed where an earlier attempt or
//! an earlier agent stopped (`Range` for http://, a seek for file://),
//! never more than the signed size, fsynced, and checked against the
//! signed size and SHA-256 before the caller may use it. A wrong size or
//! checksum removes the file; a broken transfer keeps it to resume.

use super::{fault, record};
use crate::api::agent_release::ReleaseBinary;
use crate::api::hex;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Each connect, read and write of a download must finish within this.
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, PartialEq)]
pub enum FetchError {
    /// The source or the link failed: retry later (the part is kept).
    Transport(String),
    /// What arrived is not the signed binary (size or checksum): the part
    /// is removed and the release refused.
    Mismatch(String),
    /// The robot's own disk failed (full, read-only): refused.
    Local(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Transport(m) | FetchError::Mismatch(m) | FetchError::Local(m) => f.write_str(m),
        }
    }
}

/// Fetch (or finish fetching) `binary`; the verified file's path.
pub fn fetch(data_dir: &Path, binary: &ReleaseBinary) -> Result<PathBuf, FetchError> {
    let path = record::part_path(data_dir, &binary.sha256);
    let local = |e: std::io::Error| FetchError::Local(format!("{}: {e}", path.display()));
    std::fs::create_dir_all(record::dir(data_dir)).map_err(local)?;
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc_nofollow())
            .open(&path)
            .map_err(local)?
    };
    // What an earlier attempt left: hashed again (cheap next to a download).
    let mut have = file.metadata().map_err(local)?.len();
    if have > binary.size {
        file.set_len(0).map_err(local)?;
        have = 0;
    }
    let mut hasher = Sha256::new();
    std::io::copy(&mut (&file).take(have), &mut HashWriter(&mut hasher)).map_err(local)?;
    if have < binary.size {
        let (reader, from) = open_source(&binary.url, have)?;
        if from == 0 && have > 0 {
            // The source cannot resume: start over.
            file.set_len(0).map_err(local)?;
            hasher = Sha256::new();
            have = 0;
        }
        file.seek(SeekFrom::Start(have)).map_err(local)?;
        let result = append(&mut file, reader, &mut hasher, have, binary.size);
        file.sync_all().map_err(local)?;
        if let Err(e) = result {
            if matches!(e, FetchError::Mismatch(_)) {
                let _ = std::fs::remove_file(&path);
            }
            return Err(e);
        }
    }
    let actual = hex::encode(&hasher.finalize());
    if actual != binary.sha256 {
        let _ = std::fs::remove_file(&path);
        return Err(FetchError::Mismatch(format!(
            "{}: sha256 {actual}, the release says {}",
            binary.url, binary.sha256
        )));
    }
    Ok(path)
}

/// O_NOFOLLOW: the part's name is never a link planted in the data dir.
fn libc_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The source from byte `from` on; the offset it really starts at (0 when
/// an http server ignores the range).
fn open_source(url: &str, from: u64) -> Result<(Box<dyn Read>, u64), FetchError> {
    let transport = |m: String| FetchError::Transport(format!("{url}: {m}"));
    if let Some(path) = url.strip_prefix("file://") {
        let mut f = File::open(path).map_err(|e| transport(e.to_string()))?;
        f.seek(SeekFrom::Start(from)).map_err(|e| transport(e.to_string()))?;
        return Ok((Box::new(f), from));
    }
    let range = format!("bytes={from}-");
    let headers = [("Range", range.as_str())];
    let mut req = crate::http_client::Request::get(url, TIMEOUT);
    if from > 0 {
        req.headers = &headers;
    }
    let resp = req.send().map_err(|e| transport(e.to_string()))?;
    match resp.status {
        200 => Ok((resp.into_reader(), 0)),
        206 if resp
            .header("content-range")
            .is_some_and(|r| r.starts_with(&format!("bytes {from}-"))) =>
        {
            Ok((resp.into_reader(), from))
        }
        code => Err(transport(format!("server answered {code}"))),
    }
}

/// Append the source's bytes up to `size`; more is a mismatch, fewer a
/// broken transfer.
fn append(
    file: &mut File,
    reader: Box<dyn Read>,
    hasher: &mut Sha256,
    mut have: u64,
    size: u64,
) -> Result<(), FetchError> {
    let mut reader = reader.take(size - have + 1);
    let mut buf = vec![0u8; 64 * 1024];
    let half = size / 2;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(FetchError::Transport(format!("after {have} of {size} bytes: {e}"))),
        };
        let before = have;
        have += n as u64;
        if have > size {
            return Err(FetchError::Mismatch(format!(
                "the download is larger than the signed size of {size} bytes"
            )));
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n])
            .map_err(|e| FetchError::Local(format!("writing the download: {e}")))?;
        if before < half && have >= half && fault::armed("kill-mid-download") {
            let _ = file.sync_all();
            fault::at("kill-mid-download");
        }
    }
    if have < size {
        return Err(FetchError::Transport(format!(
            "the download ended after {have} of {size} bytes (resumed next time)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binary_for(bytes: &[u8], url: String) -> ReleaseBinary {
        ReleaseBinary {
            arch: "x86_64".into(),
            url,
            size: bytes.len() as u64,
            sha256: hex::encode(&Sha256::digest(bytes)),
            signature: String::new(),
        }
    }

    #[test]
    fn resumes_where_a_part_ends_and_checks_the_whole() {
        let data = tempfile::tempdir().unwrap();
        let src = data.path().join("src.bin");
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&src, &bytes).unwrap();
        let b = binary_for(&bytes, format!("file://{}", src.display()));
        // An earlier attempt stopped after 70,000 bytes.
        std::fs::create_dir_all(record::dir(data.path())).unwrap();
        std::fs::write(record::part_path(data.path(), &b.sha256), &bytes[..70_000]).unwrap();
        let got = fetch(data.path(), &b).unwrap();
        assert_eq!(std::fs::read(got).unwrap(), bytes);
    }

    #[test]
    fn a_wrong_size_or_checksum_leaves_nothing() {
        let data = tempfile::tempdir().unwrap();
        let src = data.path().join("src.bin");
        std::fs::write(&src, b"the real bytes").unwrap();
        let mut b = binary_for(b"the real bytes", format!("file://{}", src.display()));
        b.sha256 = hex::encode(&Sha256::digest(b"other bytes!!!"));
        assert!(matches!(fetch(data.path(), &b), Err(FetchError::Mismatch(m)) if m.contains("sha256")));
        let mut small = binary_for(b"the real", format!("file://{}", src.display()));
        small.size = 8;
        assert!(matches!(fetch(data.path(), &small), Err(FetchError::Mismatch(m)) if m.contains("larger")));
        let mut long = binary_for(b"the real bytes and more", format!("file://{}", src.display()));
        long.size = 23;
        assert!(matches!(fetch(data.path(), &long), Err(FetchError::Transport(m)) if m.contains("14 of 23")));
        let left: Vec<_> = std::fs::read_dir(record::dir(data.path()))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "only the truncated one stays, to resume: {left:?}");
    }
}
