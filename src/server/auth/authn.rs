//! Authentication: who a Kubernetes API request is from.
//!
//! In order, as kube-apiserver tries its authenticators:
//! 1. a verified client certificate ([`CertUser`], set by the TLS listener);
//! 2. `Authorization: Bearer <token>`, looked up by its SHA-256 in the
//!    static tokens of `--token-auth-file` and `--admin-token-file`.
//!
//! A bearer that is a robot token is never a user (robots speak only the
//! robot channel). No credentials at all is anonymous, which the caller
//! turns into 401 outside the health paths.

use super::{CertUser, User, SYSTEM_MASTERS};
use crate::server::tokens::{hash, ROBOT_TOKEN_PREFIX};
use axum::http::{header, Extensions, HeaderMap};
use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Every authenticated user is also in this group (as in Kubernetes).
pub const AUTHENTICATED: &str = "system:authenticated";
/// The user of `--admin-token-file`.
pub const ADMIN_USER: &str = "admin";
/// Largest `--token-auth-file` read (a static token list is small).
const MAX_TOKEN_FILE: u64 = 1024 * 1024;
/// Shortest accepted static token: shorter ones can be guessed.
const MIN_TOKEN_LEN: usize = 16;
/// Longer bearer strings are nobody's token.
const MAX_TOKEN_LEN: usize = 1024;

/// Why a request has no user.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// A bearer token that is no user's (401).
    UnknownToken,
    /// A robot token used as a user's (403: the robot is known, it just
    /// may not use this API).
    RobotToken,
}

/// The static tokens: SHA-256 of the token → its user (one lookup, and a
/// timing difference can reveal only a hash prefix, not the token).
#[derive(Debug, Default)]
pub struct Authenticator {
    tokens: HashMap<String, User>,
}

impl Authenticator {
    /// From the token files given (either may be absent).
    pub fn load(token_auth_file: Option<&Path>, admin_token_file: Option<&Path>) -> Result<Self, TokenFileError> {
        let mut a = Authenticator::default();
        if let Some(p) = token_auth_file {
            for entry in parse_token_file(p, &read_bounded(p)?)? {
                a.tokens.insert(hash(&entry.token), entry.user);
            }
        }
        if let Some(p) = admin_token_file {
            let text = read_bounded(p)?;
            let token = text.trim();
            check_token(p, 1, token)?;
            let user = User {
                name: ADMIN_USER.into(),
                groups: vec![SYSTEM_MASTERS.into()],
            };
            a.tokens.insert(hash(token), user);
        }
        Ok(a)
    }

    /// The request's user; `Ok(None)` when it carries no credentials.
    pub fn authenticate(&self, extensions: &Extensions, headers: &HeaderMap) -> Result<Option<User>, Denied> {
        if let Some(CertUser(u)) = extensions.get::<CertUser>() {
            return Ok(Some(with_authenticated(u.clone())));
        }
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(None);
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(Denied::UnknownToken)?;
        self.user_of_token(token).map(Some)
    }

    /// The user of a bearer token (also what the dashboard's login form
    /// takes).
    pub fn user_of_token(&self, token: &str) -> Result<User, Denied> {
        let token = token.trim();
        if token.is_empty() || token.len() > MAX_TOKEN_LEN {
            return Err(Denied::UnknownToken);
        }
        if token.starts_with(ROBOT_TOKEN_PREFIX) {
            return Err(Denied::RobotToken);
        }
        match self.tokens.get(&hash(token)) {
            Some(u) => Ok(with_authenticated(u.clone())),
            None => Err(Denied::UnknownToken),
        }
    }
}

fn with_authenticated(mut u: User) -> User {
    if !u.groups.iter().any(|g| g == AUTHENTICATED) {
        u.groups.push(AUTHENTICATED.into());
    }
    u
}

/// One line of a `--token-auth-file`.
#[derive(Debug, PartialEq, Eq)]
pub struct TokenEntry {
    pub token: String,
    pub user: User,
    pub uid: String,
}

/// A token file that cannot be used; the server refuses to start.
#[derive(Debug, PartialEq, Eq)]
pub struct TokenFileError {
    pub file: PathBuf,
    /// 1-based; 0 when the whole file is at fault.
    pub line: usize,
    pub message: String,
}

impl fmt::Display for TokenFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => write!(f, "{}: {}", self.file.display(), self.message),
            n => write!(f, "{}: line {n}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for TokenFileError {}

fn read_bounded(p: &Path) -> Result<String, TokenFileError> {
    use std::io::Read;
    let err = |message: String| TokenFileError {
        file: p.to_path_buf(),
        line: 0,
        message,
    };
    let f = std::fs::File::open(p).map_err(|e| err(e.to_string()))?;
    let mut text = String::new();
    f.take(MAX_TOKEN_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| err(e.to_string()))?;
    if text.len() as u64 > MAX_TOKEN_FILE {
        return Err(err(format!("larger than {MAX_TOKEN_FILE} bytes")));
    }
    Ok(text)
}

fn check_token(file: &Path, line: usize, token: &str) -> Result<(), TokenFileError> {
    let problem = if token.len() < MIN_TOKEN_LEN {
        Some(format!(
            "token (field 1): shorter than {MIN_TOKEN_LEN} characters, too easy to guess"
        ))
    } else if token.len() > MAX_TOKEN_LEN {
        Some(format!("token (field 1): longer than {MAX_TOKEN_LEN} characters"))
    } else if token.bytes().any(|b| !b.is_ascii_graphic()) {
        Some("token (field 1): only visible ASCII characters, no spaces".to_string())
    } else if token.starts_with(ROBOT_TOKEN_PREFIX) {
        Some(format!(
            "token (field 1): starts with {ROBOT_TOKEN_PREFIX:?}, which marks robot tokens"
        ))
    } else {
        None
    };
    match problem {
        Some(message) => Err(TokenFileError {
            file: file.to_path_buf(),
            line,
            message,
        }),
        None => Ok(()),
    }
}

/// kube-apiserver's static token file: CSV lines `token,user,uid` with an
/// optional fourth field of comma-separated groups (quoted when there are
/// several: `"group1,group2"`). Blank lines and `#` comments are skipped.
/// Every problem names the file, line and field; a token listed twice is
/// an error (kube-apiserver keeps the last with a warning).
pub fn parse_token_file(file: &Path, text: &str) -> Result<Vec<TokenEntry>, TokenFileError> {
    let mut entries: Vec<TokenEntry> = Vec::new();
    let mut first_line: HashMap<String, usize> = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let err = |message: String| TokenFileError {
            file: file.to_path_buf(),
            line,
            message,
        };
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let fields = split_csv(trimmed).map_err(err)?;
        if fields.len() < 3 {
            return Err(err(format!(
                "{} field(s); need at least 3: token,user,uid[,\"group1,group2\"]",
                fields.len()
            )));
        }
        if fields.len() > 4 {
            return Err(err(format!(
                "{} fields; at most 4 (quote the groups: \"group1,group2\")",
                fields.len()
            )));
        }
        let token = fields[0].clone();
        check_token(file, line, &token)?;
        let name = fields[1].trim().to_string();
        if name.is_empty() {
            return Err(err("user (field 2): empty".into()));
        }
        let uid = fields[2].trim().to_string();
        let groups: Vec<String> = fields
            .get(3)
            .map(|g| {
                g.split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        if let Some(earlier) = first_line.insert(hash(&token), line) {
            return Err(err(format!("token (field 1): the same token as line {earlier}")));
        }
        entries.push(TokenEntry {
            token,
            user: User { name, groups },
            uid,
        });
    }
    Ok(entries)
}

/// Split one CSV record (RFC 4180 quoting: `"a,b"`, `""` for a quote).
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        let mut field = String::new();
        while chars.peek() == Some(&' ') {
            chars.next();
        }
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err(format!("field {}: a quote is not closed", fields.len() + 1)),
                }
            }
            while chars.peek() == Some(&' ') {
                chars.next();
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(c) => {
                    return Err(format!(
                        "field {}: {c:?} after a closing quote (expected a comma)",
                        fields.len() + 1
                    ))
                }
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field);
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err(format!("field {}: a quote inside an unquoted field", fields.len() + 1)),
                    Some(c) => field.push(c),
                }
            }
            fields.push(field);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const T1: &str = "0123456789abcdef-alice";
    const T2: &str = "0123456789abcdef-bob";

    fn parse(text: &str) -> Result<Vec<TokenEntry>, TokenFileError> {
        parse_token_file(Path::new("tokens.csv"), text)
    }

    fn line_error(text: &str) -> (usize, String) {
        let e = parse(text).expect_err("must be refused");
        (e.line, e.message)
    }

    #[test]
    fn reads_kube_apiserver_lines() {
        let text = format!("# comment\n\n{T1},alice,1001,\"k8s4r:operators,team-a\"\n{T2}, bob ,1002\n");
        let got = parse(&text).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].token, T1);
        assert_eq!(got[0].user.name, "alice");
        assert_eq!(got[0].uid, "1001");
        assert_eq!(got[0].user.groups, vec!["k8s4r:operators", "team-a"]);
        assert_eq!(got[1].user.name, "bob");
        assert!(got[1].user.groups.is_empty());
        // One unquoted group is a group too.
        let one = parse(&format!("{T1},alice,1,k8s4r:viewers")).unwrap();
        assert_eq!(one[0].user.groups, vec!["k8s4r:viewers"]);
    }

    #[test]
    fn every_problem_names_its_line_and_field() {
        let (line, msg) = line_error(&format!("{T1},alice,1\nshort,bob,2\n"));
        assert_eq!(line, 2);
        assert!(msg.contains("token (field 1)") && msg.contains("shorter"), "{msg}");
        let (line, msg) = line_error(&format!("\n{T1},alice\n"));
        assert_eq!(line, 2);
        assert!(msg.contains("need at least 3"), "{msg}");
        let (_, msg) = line_error(&format!("{T1},,1"));
        assert!(msg.contains("user (field 2)"), "{msg}");
        let (_, msg) = line_error(&format!("{T1},alice,1,\"a,b"));
        assert!(msg.contains("field 4") && msg.contains("not closed"), "{msg}");
        let (_, msg) = line_error(&format!("{T1},alice,1,a,b"));
        assert!(msg.contains("at most 4"), "{msg}");
        let (line, msg) = line_error(&format!("{T1},alice,1\n{T1},bob,2"));
        assert_eq!(line, 2);
        assert!(msg.contains("same token as line 1"), "{msg}");
        let (_, msg) = line_error("k8s4r-robot-0123456789abcdef,r,1");
        assert!(msg.contains("robot tokens"), "{msg}");
        let e = parse("x,y").unwrap_err();
        assert_eq!(
            e.to_string(),
            "tokens.csv: line 1: 2 field(s); need at least 3: token,user,uid[,\"group1,group2\"]"
        );
    }

    #[test]
    fn an_oversized_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.csv");
        std::fs::write(&p, vec![b'#'; MAX_TOKEN_FILE as usize + 1]).unwrap();
        let e = Authenticator::load(Some(&p), None).unwrap_err();
        assert!(e.to_string().contains("larger than"), "{e}");
    }

    fn headers(auth: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(auth).unwrap());
        h
    }

    #[test]
    fn certificate_first_then_tokens_then_anonymous() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = dir.path().join("tokens.csv");
        std::fs::write(&tokens, format!("{T1},alice,1,k8s4r:viewers\n")).unwrap();
        let admin = dir.path().join("admin");
        std::fs::write(&admin, format!("{T2}\n")).unwrap();
        let a = Authenticator::load(Some(&tokens), Some(&admin)).unwrap();
        let none = Extensions::new();
        let alice = a
            .authenticate(&none, &headers(&format!("Bearer {T1}")))
            .unwrap()
            .unwrap();
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.groups, vec!["k8s4r:viewers", AUTHENTICATED]);
        let admin = a
            .authenticate(&none, &headers(&format!("Bearer {T2}")))
            .unwrap()
            .unwrap();
        assert_eq!(
            (admin.name.as_str(), admin.groups[0].as_str()),
            (ADMIN_USER, SYSTEM_MASTERS)
        );
        assert_eq!(a.authenticate(&none, &HeaderMap::new()), Ok(None));
        assert_eq!(
            a.authenticate(&none, &headers("Bearer nobody-knows-this-one")),
            Err(Denied::UnknownToken)
        );
        assert_eq!(a.authenticate(&none, &headers("Basic abc")), Err(Denied::UnknownToken));
        assert_eq!(
            a.authenticate(&none, &headers("Bearer k8s4r-robot-whatever")),
            Err(Denied::RobotToken)
        );
        // A verified certificate wins over any header.
        let mut ext = Extensions::new();
        ext.insert(CertUser(User {
            name: "carol".into(),
            groups: vec!["k8s4r:operators".into()],
        }));
        let carol = a.authenticate(&ext, &headers("Bearer wrong")).unwrap().unwrap();
        assert_eq!(carol.name, "carol");
    }

    #[test]
    fn a_short_admin_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let admin = dir.path().join("admin");
        std::fs::write(&admin, "short\n").unwrap();
        let e = Authenticator::load(None, Some(&admin)).unwrap_err();
        assert!(e.to_string().contains("shorter than 16"), "{e}");
    }
}
