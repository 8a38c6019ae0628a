//! The robot's accounts: who a name or uid is (/etc/passwd, /etc/group),
//! and what such an account can reach on disk. Used when the agent (root)
//! starts a task or a proxy as another user: the proxy's files and the
//! Envoy binary must be reachable by the proxy's user, and a clear message
//! beats Envoy failing later with "permission denied".

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// An account from /etc/passwd.
#[derive(Clone, Debug, PartialEq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
    /// Primary and supplementary groups (filled from /etc/group).
    pub groups: Vec<u32>,
}

/// Look `user` (a name or a numeric uid) up in passwd-format `text`.
pub fn lookup_user(text: &str, user: &str) -> Option<Account> {
    let numeric = user.parse::<u32>().ok();
    text.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        let (uid, gid) = (f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?);
        (f[0] == user || numeric == Some(uid)).then(|| Account {
            name: f[0].to_string(),
            uid,
            gid,
            home: f.get(5).unwrap_or(&"/").to_string(),
            groups: vec![gid],
        })
    })
}

/// The primary group plus every group of group-format `text` that lists
/// `user` as a member.
pub fn supplementary_groups(text: &str, user: &str, primary: u32) -> Vec<u32> {
    let mut groups = vec![primary];
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let f: Vec<&str> = line.split(':').collect();
        let (Some(gid), Some(members)) = (f.get(2).and_then(|g| g.parse::<u32>().ok()), f.get(3)) else {
            continue;
        };
        if members.split(',').any(|m| m.trim() == user) && !groups.contains(&gid) {
            groups.push(gid);
        }
    }
    groups
}

/// `user` from /etc/passwd with its groups from /etc/group.
pub fn lookup(user: &str) -> Result<Account, String> {
    Ok(lookup_all(&[user])?.remove(0))
}

/// [`lookup`] for several users, reading the files once.
pub fn lookup_all(users: &[&str]) -> Result<Vec<Account>, String> {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    // Device access on robots is often by group (dialout, video, gpio).
    let group_file = std::fs::read_to_string("/etc/group").unwrap_or_default();
    users
        .iter()
        .map(|user| {
            let mut account =
                lookup_user(&passwd, user).ok_or_else(|| format!("user {user:?} not found in /etc/passwd"))?;
            account.groups = supplementary_groups(&group_file, &account.name, account.gid);
            Ok(account)
        })
        .collect()
}

impl Account {
    /// The permission bits of `meta` that apply to this account.
    fn bits(&self, meta: &std::fs::Metadata) -> u32 {
        let mode = meta.mode();
        if self.uid == 0 {
            0o7
        } else if meta.uid() == self.uid {
            (mode >> 6) & 0o7
        } else if meta.gid() == self.gid || self.groups.contains(&meta.gid()) {
            (mode >> 3) & 0o7
        } else {
            mode & 0o7
        }
    }

    /// Can it search every directory above `path`?
    pub fn can_reach(&self, path: &Path) -> bool {
        path.ancestors()
            .skip(1)
            .filter_map(|dir| std::fs::metadata(dir).ok())
            .all(|meta| self.bits(&meta) & 0o1 != 0)
    }

    /// Can it run `path` (reach it, and an execute bit applies to it)?
    pub fn can_execute(&self, path: &Path) -> bool {
        let Ok(meta) = std::fs::metadata(path) else {
            return false;
        };
        let exec = if self.uid == 0 {
            meta.mode() & 0o111 != 0
        } else {
            self.bits(&meta) & 0o1 != 0
        };
        meta.is_file() && exec && self.can_reach(path)
    }

    /// The first `bin` on `search` (a PATH value) this account can run, or
    /// `bin` itself when it is a path.
    pub fn find_executable(&self, bin: &Path, search: &std::ffi::OsStr) -> Option<PathBuf> {
        find_on_path(bin, search, |p| self.can_execute(p))
    }
}

/// `bin` itself when it is a path, else the first `<dir>/bin` of `search`
/// (a PATH value), that `usable` accepts.
pub fn find_on_path(bin: &Path, search: &std::ffi::OsStr, usable: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    if bin.components().count() > 1 || bin.is_absolute() {
        return usable(bin).then(|| bin.to_path_buf());
    }
    std::env::split_paths(search).map(|d| d.join(bin)).find(|p| usable(p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn looks_up_users_by_name_and_uid() {
        let passwd = "# comment\nroot:x:0:0:root:/root:/bin/sh\nbot:x:1001:1002::/home/bot:/bin/sh\nbroken\n";
        let bot = lookup_user(passwd, "bot").unwrap();
        assert_eq!(
            (bot.name.as_str(), bot.uid, bot.gid, bot.home.as_str()),
            ("bot", 1001, 1002, "/home/bot")
        );
        assert_eq!(lookup_user(passwd, "0").unwrap().home, "/root");
        assert_eq!(lookup_user(passwd, "nobody"), None);
    }

    #[test]
    fn supplementary_groups_come_from_membership_lists() {
        let group = "root:x:0:\ndialout:x:20:bot,other\nvideo:x:44:bot\nbots:x:1002:\nbad\n";
        assert_eq!(supplementary_groups(group, "bot", 1002), vec![1002, 20, 44]);
        assert_eq!(supplementary_groups(group, "bo", 1002), vec![1002]);
    }

    #[test]
    fn reach_and_execute_follow_the_modes_on_the_way() {
        let nobody = Account {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
            home: "/".into(),
            groups: vec![65534],
        };
        let dir = tempfile::tempdir().unwrap();
        let private = dir.path().join("private");
        std::fs::create_dir(&private).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
        let bin = private.join("envoy");
        std::fs::write(&bin, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let public = dir.path().join("envoy");
        std::fs::write(&public, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&public, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The files belong to whoever runs the test: meaningful unless that is nobody.
        if rustix::process::geteuid().as_raw() != 65534 {
            assert!(!nobody.can_reach(&bin));
            assert!(!nobody.can_execute(&bin));
            assert!(nobody.can_execute(&public));
            let search = std::env::join_paths([&private, &dir.path().to_path_buf()]).unwrap();
            assert_eq!(
                nobody.find_executable(Path::new("envoy"), &search),
                Some(public.clone())
            );
        }
    }
}
