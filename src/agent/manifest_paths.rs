//! Paths written in manifests (template destinations, artifact
//! destinations) resolved strictly inside the task directory.
//!
//! The lexical rules (relative, or below ${K8S4R_TASK_DIR} /
//! ${K8S4R_ALLOC_DIR}, or Nomad's `/local`, `/secrets` (the task
//! directory's) and `/alloc` (the group's), no `..`) are the API's
//! validation. On disk a path can still escape through a symlink planted
//! by an earlier task (`local -> /etc`), so every directory is opened one
//! component at a time with `openat(O_NOFOLLOW | O_DIRECTORY)` and files
//! are created with `O_NOFOLLOW | O_EXCL` under a temp name and renamed
//! into place: a symlink anywhere on the way is refused, never followed.
//!
//! Directories on the way are created 0755, except the task directory's
//! `secrets/` (however the path spells it): 0700. Spawn creates `local/`
//! and `secrets/` before templates and artifacts are written, owned by the
//! task's user; should the task have removed `secrets/` since, it comes
//! back private here.

use crate::api::validate::{check_task_relative_path, nomad_root};
use rustix::fd::OwnedFd;
use rustix::fs::{AtFlags, Mode, OFlags};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub enum PathError {
    /// Refused by the lexical rules (absolute, `..`, empty).
    Invalid(String, String),
    /// A component is a symlink or not a directory.
    Escape(String, String),
    Io(String, io::Error),
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathError::Invalid(p, why) => write!(f, "path {p:?} refused: {why}"),
            PathError::Escape(p, why) => write!(f, "path {p:?} refused: {why}"),
            PathError::Io(p, e) => write!(f, "{p}: {e}"),
        }
    }
}

impl std::error::Error for PathError {}

/// A manifest path split into the directory it is relative to and its
/// components (the last one is the file name).
#[derive(Debug, PartialEq)]
pub struct Beneath {
    pub root: PathBuf,
    pub parents: Vec<String>,
    pub name: String,
    /// The path as the manifest wrote it, for messages.
    pub original: String,
    /// The first parent is the task directory's `secrets/`: created 0700.
    pub secret: bool,
}

/// The task directory's private subdirectory (Nomad's `/secrets`).
pub const SECRETS_DIR: &str = "secrets";

impl Beneath {
    /// The resolved path (for messages and for reading back in tests).
    pub fn full_path(&self) -> PathBuf {
        let mut p = self.root.clone();
        p.extend(&self.parents);
        p.join(&self.name)
    }
}

/// Resolve `path` against the task directory (relative paths,
/// ${K8S4R_TASK_DIR}, `/local/...`, `/secrets/...`) or the group's shared
/// directory (${K8S4R_ALLOC_DIR}, `/alloc/...`).
pub fn resolve(path: &str, task_dir: &Path, alloc_dir: &Path) -> Result<Beneath, PathError> {
    check_task_relative_path(path).map_err(|why| PathError::Invalid(path.into(), why))?;
    // Nomad's `/local/x` is the task directory's `local/x` (its root is
    // kept); its `/alloc/x` is the alloc directory's `x`.
    let (root, rest) = if let Some(r) = path
        .strip_prefix("${K8S4R_ALLOC_DIR}")
        .or_else(|| path.strip_prefix("$K8S4R_ALLOC_DIR"))
    {
        (alloc_dir, r)
    } else if let Some(r) = path
        .strip_prefix("${K8S4R_TASK_DIR}")
        .or_else(|| path.strip_prefix("$K8S4R_TASK_DIR"))
    {
        (task_dir, r)
    } else if let Some((root, r)) = nomad_root(path) {
        match root {
            "/alloc" => (alloc_dir, r),
            _ => (task_dir, &path[1..]),
        }
    } else {
        (task_dir, path)
    };
    if rest.ends_with('/') {
        return Err(PathError::Invalid(path.into(), "names a directory, not a file".into()));
    }
    let mut comps: Vec<String> = rest
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(String::from)
        .collect();
    let Some(name) = comps.pop() else {
        return Err(PathError::Invalid(path.into(), "names a directory, not a file".into()));
    };
    let secret = root == task_dir && comps.first().is_some_and(|c| c == SECRETS_DIR);
    Ok(Beneath {
        root: root.to_path_buf(),
        parents: comps,
        name,
        original: path.into(),
        secret,
    })
}

/// Open (creating when `create`) the directory holding `target`, one
/// component at a time, refusing symlinks.
pub fn open_parent(target: &Beneath, create: bool) -> Result<OwnedFd, PathError> {
    let io_err = |e: rustix::io::Errno| PathError::Io(target.original.clone(), e.into());
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let mut dir = rustix::fs::open(&target.root, dir_flags, Mode::empty())
        .map_err(|e| PathError::Io(target.root.display().to_string(), e.into()))?;
    for (i, comp) in target.parents.iter().enumerate() {
        if create {
            let mode = if i == 0 && target.secret { 0o700 } else { 0o755 };
            match rustix::fs::mkdirat(&dir, comp.as_str(), Mode::from_raw_mode(mode)) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(io_err(e)),
            }
        }
        dir = match rustix::fs::openat(&dir, comp.as_str(), dir_flags | OFlags::NOFOLLOW, Mode::empty()) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::LOOP) | Err(rustix::io::Errno::NOTDIR) => {
                return Err(PathError::Escape(
                    target.original.clone(),
                    format!(
                        "{comp:?} is a symlink or not a directory; links out of the task directory are not followed"
                    ),
                ))
            }
            Err(e) => return Err(io_err(e)),
        };
    }
    Ok(dir)
}

/// A new file beneath a directory, written under a temp name and renamed
/// into place only when complete.
pub struct PendingFile {
    dir: OwnedFd,
    tmp: String,
    name: String,
    pub file: File,
    committed: bool,
}

impl PendingFile {
    /// `owner` (uid, gid): the task's user when the agent switches users,
    /// so the task can read what was written for it.
    pub fn create(target: &Beneath, mode: u32, owner: Option<(u32, u32)>) -> Result<PendingFile, PathError> {
        let dir = open_parent(target, true)?;
        // Unique per writer: two tasks may fetch into the shared alloc dir at once.
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = format!(".{}.k8s4r-tmp.{}.{seq}", target.name, std::process::id());
        // A leftover temp file from a crash is ours to replace.
        let _ = rustix::fs::unlinkat(&dir, tmp.as_str(), AtFlags::empty());
        let fd = rustix::fs::openat(
            &dir,
            tmp.as_str(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(mode),
        )
        .map_err(|e| PathError::Io(target.original.clone(), e.into()))?;
        // The umask must not weaken or strengthen the manifest's perms.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))
            .map_err(|e| PathError::Io(target.original.clone(), e.into()))?;
        if let Some((uid, gid)) = owner {
            let (uid, gid) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
            rustix::fs::fchown(&fd, Some(uid), Some(gid))
                .map_err(|e| PathError::Io(target.original.clone(), e.into()))?;
        }
        Ok(PendingFile {
            dir,
            tmp,
            name: target.name.clone(),
            file: File::from(fd),
            committed: false,
        })
    }

    /// fsync and rename over the destination (a symlink there is replaced,
    /// not followed).
    pub fn commit(mut self) -> io::Result<()> {
        self.file.sync_all()?;
        rustix::fs::renameat(&self.dir, self.tmp.as_str(), &self.dir, self.name.as_str())?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for PendingFile {
    /// Nothing half-written is left behind.
    fn drop(&mut self) {
        if !self.committed {
            let _ = rustix::fs::unlinkat(&self.dir, self.tmp.as_str(), AtFlags::empty());
        }
    }
}

/// Read a file beneath the task directory without following symlinks.
pub fn read(target: &Beneath) -> Result<Vec<u8>, PathError> {
    use std::io::Read;
    let dir = open_parent(target, false)?;
    let fd = rustix::fs::openat(
        &dir,
        target.name.as_str(),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP => PathError::Escape(target.original.clone(), "is a symlink".into()),
        e => PathError::Io(target.original.clone(), e.into()),
    })?;
    let mut out = Vec::new();
    File::from(fd)
        .read_to_end(&mut out)
        .map_err(|e| PathError::Io(target.original.clone(), e))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn resolves_relative_and_rooted_paths() {
        let t = Path::new("/d/task");
        let a = Path::new("/d/alloc");
        let r = resolve("local/conf/app.yaml", t, a).unwrap();
        assert_eq!(r.full_path(), Path::new("/d/task/local/conf/app.yaml"));
        assert_eq!(
            resolve("${K8S4R_ALLOC_DIR}/x", t, a).unwrap().full_path(),
            Path::new("/d/alloc/x")
        );
        assert_eq!(
            resolve("$K8S4R_TASK_DIR/./y", t, a).unwrap().full_path(),
            Path::new("/d/task/y")
        );
        for bad in [
            "/etc/passwd",
            "../x",
            "local/../../x",
            "",
            "${K8S4R_TASK_DIR}/",
            "/local/",
            "/localx/y",
        ] {
            assert!(resolve(bad, t, a).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn nomad_task_paths_map_into_the_task_and_alloc_directories() {
        let t = Path::new("/d/task");
        let a = Path::new("/d/alloc");
        for (path, want) in [
            ("/local/app.conf", "/d/task/local/app.conf"),
            ("/local/conf/x/y.yaml", "/d/task/local/conf/x/y.yaml"),
            ("/secrets/token", "/d/task/secrets/token"),
            ("/alloc/data/shared.txt", "/d/alloc/data/shared.txt"),
        ] {
            assert_eq!(resolve(path, t, a).unwrap().full_path(), Path::new(want), "{path}");
        }
        assert!(resolve("/secrets/token", t, a).unwrap().secret);
        assert!(resolve("secrets/token", t, a).unwrap().secret, "however it is spelled");
        assert!(!resolve("/local/token", t, a).unwrap().secret);
        assert!(!resolve("/alloc/secrets/x", t, a).unwrap().secret, "not the task's");
    }

    #[test]
    fn secrets_is_created_private() {
        use std::os::unix::fs::PermissionsExt;
        let task = tempfile::tempdir().unwrap();
        let target = resolve("/secrets/api/token", task.path(), task.path()).unwrap();
        let mut f = PendingFile::create(&target, 0o600, None).unwrap();
        f.file.write_all(b"s3cret").unwrap();
        f.commit().unwrap();
        let mode = |p: &str| std::fs::metadata(task.path().join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("secrets"), 0o700);
        assert_eq!(
            std::fs::read_to_string(task.path().join("secrets/api/token")).unwrap(),
            "s3cret"
        );
    }

    #[test]
    fn symlinked_directories_are_refused_and_nothing_is_written_outside() {
        let task = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), task.path().join("local")).unwrap();
        let target = resolve("local/evil.txt", task.path(), task.path()).unwrap();
        let err = PendingFile::create(&target, 0o644, None).err().unwrap().to_string();
        assert!(err.contains("symlink"), "{err}");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_symlink_at_the_destination_is_replaced_not_followed() {
        let task = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, task.path().join("out.txt")).unwrap();
        let target = resolve("out.txt", task.path(), task.path()).unwrap();
        let mut f = PendingFile::create(&target, 0o600, None).unwrap();
        f.file.write_all(b"new").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(std::fs::read_to_string(task.path().join("out.txt")).unwrap(), "new");
        // And reading through a symlink is refused.
        std::os::unix::fs::symlink(&victim, task.path().join("link")).unwrap();
        assert!(read(&resolve("link", task.path(), task.path()).unwrap()).is_err());
    }

    #[test]
    fn an_abandoned_pending_file_leaves_nothing() {
        let task = tempfile::tempdir().unwrap();
        let target = resolve("a/b.bin", task.path(), task.path()).unwrap();
        let mut f = PendingFile::create(&target, 0o644, None).unwrap();
        f.file.write_all(b"partial").unwrap();
        drop(f);
        assert_eq!(std::fs::read_dir(task.path().join("a")).unwrap().count(), 0);
    }
}
