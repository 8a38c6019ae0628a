//! Artifacts (`artifacts[]`): files fetched into the task directory before
//! the task starts, from `http://` or `file://` (https needs a TLS build,
//! which this agent does not include). With `getterOptions.checksum:
//! sha256:<hex>` the content is verified while it streams to a temp file;
//! only a verified, complete file is renamed into place, so a mismatch or a
//! broken download leaves nothing behind. Archives are not unpacked.
//! A robot started with `--require-artifact-checksums` refuses a task with
//! an `http://` artifact that has no checksum before it fetches anything:
//! plain http can be altered on the way (see [`require_checksums`]).
//!
//! Destination: `relativeDest` (default `local/`) is a directory, the file
//! name is `getterOptions.filename` or the last segment of the source; with
//! `getterMode: file`, `relativeDest` is the file path itself.

use super::manifest_paths::{self, PathError, PendingFile};
use crate::api::Artifact;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// A download that takes longer than this fails (and the task with it).
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest artifact a task may download by default (robots have small
/// disks); `K8S4R_ARTIFACT_MAX_SIZE` or `run --artifact-max-size` change it.
pub const MAX_ARTIFACT_BYTES: u64 = 512 << 20;

/// The environment variable that sets the artifact size limit.
pub const MAX_SIZE_ENV: &str = "K8S4R_ARTIFACT_MAX_SIZE";

/// An artifact size limit such as `512Mi` or `1000000` (bytes, > 0).
pub fn parse_max_size(text: &str) -> Result<u64, String> {
    crate::api::Quantity::new(text)
        .units_ceil()
        .and_then(|b| u64::try_from(b).ok())
        .filter(|b| *b > 0)
        .ok_or_else(|| format!("artifact size limit {text:?}: expected a size such as 512Mi or 1000000"))
}

#[derive(Debug)]
pub enum ArtifactError {
    Unsupported(String),
    Path(PathError),
    Fetch {
        source: String,
        message: String,
    },
    Checksum {
        source: String,
        expected: String,
        actual: String,
    },
    /// Plain http without a checksum on a robot that requires one.
    Unverified {
        source: String,
        index: usize,
    },
    Write {
        source: String,
        error: std::io::Error,
    },
}

impl std::fmt::Display for ArtifactError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArtifactError::Unsupported(m) => write!(f, "artifact: {m}"),
            ArtifactError::Path(e) => write!(f, "artifact: {e}"),
            ArtifactError::Fetch { source, message } => write!(f, "artifact {source}: {message}"),
            ArtifactError::Checksum {
                source,
                expected,
                actual,
            } => {
                write!(
                    f,
                    "artifact {source}: checksum mismatch: expected sha256:{expected}, got sha256:{actual}"
                )
            }
            ArtifactError::Write { source, error } => write!(f, "artifact {source}: writing: {error}"),
            ArtifactError::Unverified { source, index } => write!(
                f,
                "artifact {source} (artifacts[{index}]): plain http without getterOptions.checksum, refused by --require-artifact-checksums (K8S4R_REQUIRE_ARTIFACT_CHECKSUMS); nothing was downloaded"
            ),
        }
    }
}

impl std::error::Error for ArtifactError {}

/// Where an artifact lands, relative to the task directory.
pub fn destination(a: &Artifact) -> Result<String, ArtifactError> {
    let dest = a.relative_dest.as_deref().unwrap_or("local/");
    if a.getter_mode.as_deref() == Some("file") {
        return Ok(dest.to_string());
    }
    if a.getter_mode.as_deref() == Some("dir") {
        return Err(ArtifactError::Unsupported(
            "getterMode dir (archive unpacking) is not supported".into(),
        ));
    }
    let name = match a.getter_options.get("filename") {
        Some(n) => n.clone(),
        None => {
            let path = a.getter_source.split(['?', '#']).next().unwrap_or("");
            let name = path.rsplit('/').next().unwrap_or("");
            if name.is_empty() {
                return Err(ArtifactError::Unsupported(format!(
                    "{}: cannot tell a file name from the source; set getterOptions.filename",
                    a.getter_source
                )));
            }
            name.to_string()
        }
    };
    Ok(format!("{}/{name}", dest.trim_end_matches('/')))
}

/// For `--require-artifact-checksums`: the first `http://` artifact
/// without a checksum, as an error. Checked for all of a task's artifacts
/// before any is fetched, so a refused task downloads nothing.
pub fn require_checksums(artifacts: &[Artifact]) -> Result<(), ArtifactError> {
    match artifacts
        .iter()
        .position(|a| a.getter_source.starts_with("http://") && !a.getter_options.contains_key("checksum"))
    {
        Some(index) => Err(ArtifactError::Unverified {
            source: artifacts[index].getter_source.clone(),
            index,
        }),
        None => Ok(()),
    }
}

/// Fetch every artifact of a task, none larger than `max_bytes`.
pub fn fetch_all(
    artifacts: &[Artifact],
    task_dir: &Path,
    alloc_dir: &Path,
    owner: Option<(u32, u32)>,
    max_bytes: u64,
) -> Result<(), ArtifactError> {
    for a in artifacts {
        fetch(a, task_dir, alloc_dir, owner, max_bytes)?;
    }
    Ok(())
}

fn fetch(
    a: &Artifact,
    task_dir: &Path,
    alloc_dir: &Path,
    owner: Option<(u32, u32)>,
    max_bytes: u64,
) -> Result<(), ArtifactError> {
    let source = a.getter_source.clone();
    let expected = match a.getter_options.get("checksum") {
        Some(c) => Some(
            c.strip_prefix("sha256:")
                .filter(|h| h.len() == 64)
                .map(str::to_ascii_lowercase)
                .ok_or_else(|| {
                    ArtifactError::Unsupported(format!("checksum {c:?}: expected sha256:<64 hex digits>"))
                })?,
        ),
        None => None,
    };
    let dest = manifest_paths::resolve(&destination(a)?, task_dir, alloc_dir).map_err(ArtifactError::Path)?;
    // Already there and verified (a restart of the same task): keep it.
    if let Some(want) = &expected {
        if let Ok(bytes) = manifest_paths::read(&dest) {
            if hex(&Sha256::digest(&bytes)) == *want {
                return Ok(());
            }
        }
    }
    let fetch_err = |message: String| ArtifactError::Fetch {
        source: source.clone(),
        message,
    };
    let too_large = |what: String| {
        fetch_err(format!(
            "{what} than the {max_bytes}-byte artifact limit ({MAX_SIZE_ENV})"
        ))
    };
    let mut reader: Box<dyn Read> = if let Some(path) = source.strip_prefix("file://") {
        Box::new(std::fs::File::open(path).map_err(|e| fetch_err(format!("{path}: {e}")))?)
    } else if source.starts_with("http://") {
        let response = crate::http_client::Request::get(&source, FETCH_TIMEOUT)
            .send()
            .map_err(|e| fetch_err(e.to_string()))?;
        if !(200..300).contains(&response.status) {
            return Err(fetch_err(format!("server answered {}", response.status)));
        }
        // Announced too large: refused before a byte is written.
        if let Some(len) = response.content_length().filter(|l| *l > max_bytes) {
            return Err(too_large(format!("{len} bytes announced, more")));
        }
        // Bounded: a runaway or hostile source cannot fill the robot's disk.
        Box::new(response.into_reader().take(max_bytes + 1))
    } else if source.starts_with("https://") {
        return Err(ArtifactError::Unsupported(format!(
            "{source}: https is not available in this agent build (no TLS)"
        )));
    } else {
        return Err(ArtifactError::Unsupported(format!(
            "{source}: only http:// and file:// sources are supported"
        )));
    };
    let mut file = PendingFile::create(&dest, 0o644, owner).map_err(ArtifactError::Path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fetch_err(e.to_string())),
        };
        written += n as u64;
        if written > max_bytes {
            // `file` is dropped on return: its temp name is removed.
            return Err(too_large("larger".into()));
        }
        hasher.update(&buf[..n]);
        file.file.write_all(&buf[..n]).map_err(|error| ArtifactError::Write {
            source: source.clone(),
            error,
        })?;
    }
    let actual = hex(&hasher.finalize());
    if let Some(expected) = expected {
        if actual != expected {
            // `file` is dropped here: its temp name is removed.
            return Err(ArtifactError::Checksum {
                source,
                expected,
                actual,
            });
        }
    }
    file.commit().map_err(|error| ArtifactError::Write { source, error })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(src: &str) -> Artifact {
        Artifact {
            getter_source: src.into(),
            ..Default::default()
        }
    }

    #[test]
    fn destinations() {
        assert_eq!(
            destination(&artifact("http://h/a/tool.bin?x=1")).unwrap(),
            "local/tool.bin"
        );
        let mut a = artifact("http://h/");
        assert!(destination(&a).is_err());
        a.getter_options.insert("filename".into(), "f".into());
        a.relative_dest = Some("bin/".into());
        assert_eq!(destination(&a).unwrap(), "bin/f");
        a.getter_mode = Some("file".into());
        a.relative_dest = Some("bin/exact".into());
        assert_eq!(destination(&a).unwrap(), "bin/exact");
    }

    #[test]
    fn file_source_with_checksum() {
        let src = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(src.path(), b"payload").unwrap();
        let task = tempfile::tempdir().unwrap();
        let mut a = artifact(&format!("file://{}", src.path().display()));
        a.getter_options.insert("filename".into(), "p".into());
        let good = hex(&Sha256::digest(b"payload"));
        a.getter_options.insert("checksum".into(), format!("sha256:{good}"));
        fetch_all(
            std::slice::from_ref(&a),
            task.path(),
            task.path(),
            None,
            MAX_ARTIFACT_BYTES,
        )
        .unwrap();
        assert_eq!(std::fs::read(task.path().join("local/p")).unwrap(), b"payload");

        a.getter_options.insert("filename".into(), "q".into());
        a.getter_options
            .insert("checksum".into(), format!("sha256:{}", "0".repeat(64)));
        let err = fetch_all(
            std::slice::from_ref(&a),
            task.path(),
            task.path(),
            None,
            MAX_ARTIFACT_BYTES,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        let names: Vec<_> = std::fs::read_dir(task.path().join("local"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("p")],
            "nothing half-written may remain"
        );

        // Over the size limit (7 bytes, limit 3): refused, nothing left.
        a.getter_options.insert("filename".into(), "r".into());
        a.getter_options.remove("checksum");
        let err = fetch_all(&[a], task.path(), task.path(), None, 3)
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("larger than the 3-byte artifact limit (K8S4R_ARTIFACT_MAX_SIZE)"),
            "{err}"
        );
        assert_eq!(std::fs::read_dir(task.path().join("local")).unwrap().count(), 1);
    }

    #[test]
    fn only_plain_http_without_a_checksum_is_unverified() {
        let mut checked = artifact("http://h/a.bin");
        checked
            .getter_options
            .insert("checksum".into(), format!("sha256:{}", "a".repeat(64)));
        let local = artifact("file:///etc/hostname");
        assert!(require_checksums(&[checked.clone(), local.clone()]).is_ok());
        let err = require_checksums(&[checked, local, artifact("http://h/b.bin")]).unwrap_err();
        assert!(
            matches!(&err, ArtifactError::Unverified { source, index: 2 } if source == "http://h/b.bin"),
            "{err}"
        );
    }

    #[test]
    fn size_limits_parse() {
        assert_eq!(parse_max_size("1Mi"), Ok(1 << 20));
        assert_eq!(parse_max_size("1000"), Ok(1000));
        assert!(parse_max_size("0").is_err());
        assert!(parse_max_size("lots").is_err());
    }
}
