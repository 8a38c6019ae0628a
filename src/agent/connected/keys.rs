//! The robot's own key pair (`<data dir>/robot.key`): created at first
//! start, kept across re-registrations (the server binds the robot's name
//! to it), never sent anywhere. The file is 0600, written atomically, and
//! read without following a symlink. A damaged or exposed key file is an
//! error naming the problem, never silently replaced: a new key would lose
//! the robot's name to a 409 until an operator resets it.

use crate::api::hex;
use crate::api::robot_channel::KeyPair;
use crate::atomic_file;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

pub const FILE: &str = "robot.key";
/// A key file is about 150 bytes; anything much larger is not ours.
const MAX_FILE: u64 = 4096;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    sign: String,
    seal: String,
}

#[derive(Debug)]
pub enum KeyError {
    Read(PathBuf, io::Error),
    /// Group or others may read it: the robot's identity may have leaked.
    Exposed(PathBuf, u32),
    /// What is wrong with the content.
    Damaged(PathBuf, String),
    Write(PathBuf, io::Error),
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyError::Read(p, e) => write!(f, "reading the robot key {}: {e}", p.display()),
            KeyError::Exposed(p, mode) => write!(
                f,
                "the robot key {} has mode {mode:04o}: others may have read it; `chmod 600` it if it is still secret, \
                 else remove it and let an operator run `k8s4r robot reset NAME`",
                p.display()
            ),
            KeyError::Damaged(p, why) => write!(
                f,
                "the robot key {} is damaged ({why}); remove it to make a new one, then an operator runs \
                 `k8s4r robot reset NAME` so the new key may take the robot's name",
                p.display()
            ),
            KeyError::Write(p, e) => write!(f, "writing the robot key {}: {e}", p.display()),
        }
    }
}

impl std::error::Error for KeyError {}

/// Read a small private file without following a symlink; None when it is
/// not there. Returns the bytes and the file's permission bits.
pub fn read_private(path: &Path, limit: u64) -> io::Result<Option<(Vec<u8>, u32)>> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(path);
    let file = match file {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(Some((bytes, meta.mode() & 0o7777)))
}

/// The robot's key pair from `data_dir`, made and saved on first use.
pub fn load_or_create(data_dir: &Path) -> Result<KeyPair, KeyError> {
    let path = data_dir.join(FILE);
    match read_private(&path, MAX_FILE).map_err(|e| KeyError::Read(path.clone(), e))? {
        Some((bytes, mode)) => {
            if mode & 0o077 != 0 {
                return Err(KeyError::Exposed(path, mode));
            }
            parse(&bytes).map_err(|why| KeyError::Damaged(path, why))
        }
        None => {
            let keys = KeyPair::generate();
            let (sign, seal) = keys.secret();
            let file = KeyFile {
                sign: hex::encode(&sign),
                seal: hex::encode(&seal),
            };
            let bytes = serde_json::to_vec(&file).map_err(|e| KeyError::Write(path.clone(), io::Error::other(e)))?;
            atomic_file::write(&path, &bytes, 0o600).map_err(|e| KeyError::Write(path, e))?;
            Ok(keys)
        }
    }
}

fn parse(bytes: &[u8]) -> Result<KeyPair, String> {
    let file: KeyFile = serde_json::from_slice(bytes).map_err(|e| format!("not the key JSON: {e}"))?;
    let sign = hex::decode::<32>(&file.sign).ok_or("sign is not 64 hex digits")?;
    let seal = hex::decode::<32>(&file.seal).ok_or("seal is not 64 hex digits")?;
    KeyPair::from_secret(&sign, &seal).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_is_made_once_0600_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create(dir.path()).unwrap().public();
        let path = dir.path().join(FILE);
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(
            load_or_create(dir.path()).unwrap().public(),
            first,
            "a restart keeps the key"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temp file left");
    }

    #[test]
    fn damaged_exposed_or_linked_keys_are_errors_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        load_or_create(dir.path()).unwrap();
        let good = std::fs::read(&path).unwrap();

        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load_or_create(dir.path()).err().unwrap();
        assert!(matches!(e, KeyError::Exposed(_, 0o644)), "{e}");
        assert!(e.to_string().contains("chmod 600"), "{e}");

        for (bad, why) in [
            (&b"{\"sign\":\"00\",\"seal\":\"00\"}"[..], "sign is not 64 hex digits"),
            (b"garbage", "not the key JSON"),
        ] {
            atomic_file::write(&path, bad, 0o600).unwrap();
            let e = load_or_create(dir.path()).err().unwrap().to_string();
            assert!(e.contains(why) && e.contains("robot reset"), "{e}");
            assert_eq!(std::fs::read(&path).unwrap(), bad, "a damaged key is never overwritten");
        }

        // A symlink planted in place of the key is not followed.
        let elsewhere = dir.path().join("elsewhere");
        std::fs::write(&elsewhere, &good).unwrap();
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &path).unwrap();
        assert!(matches!(load_or_create(dir.path()), Err(KeyError::Read(..))));
    }
}
