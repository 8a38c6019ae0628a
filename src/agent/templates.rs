//! Task templates (`templates[]`): text rendered with the task's
//! environment and written atomically inside the task directory before the
//! task starts. Supported substitutions: `${VAR}`, by the agent's one rule
//! ([`super::expand`]: an unset VAR is kept as written, as in the task's
//! command), and `{{ env "VAR" }}` (with the template's own delimiters when
//! `leftDelim`/`rightDelim` are set), which renders an unset VAR empty like
//! consul-template's `env`. Any other `{{ ... }}` action is an error rather
//! than silently copied through.

use super::manifest_paths::{self, PathError, PendingFile};
use crate::api::Template;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

#[derive(Debug)]
pub enum TemplateError {
    Path(PathError),
    Syntax { dest: String, message: String },
    Write { dest: String, error: std::io::Error },
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TemplateError::Path(e) => write!(f, "template: {e}"),
            TemplateError::Syntax { dest, message } => write!(f, "template for {dest:?}: {message}"),
            TemplateError::Write { dest, error } => write!(f, "template for {dest:?}: writing: {error}"),
        }
    }
}

impl std::error::Error for TemplateError {}

/// Substitute `${VAR}` and `{{ env "VAR" }}` in `text`.
pub fn render(text: &str, env: &BTreeMap<String, String>, left: &str, right: &str) -> Result<String, String> {
    let dollar = super::expand::expand(text, env);
    let mut out = String::with_capacity(dollar.len());
    let mut rest = dollar.as_str();
    while let Some(start) = rest.find(left) {
        out.push_str(&rest[..start]);
        let after = &rest[start + left.len()..];
        let end = after.find(right).ok_or_else(|| format!("unclosed {left:?}"))?;
        let action = after[..end].trim().trim_start_matches('-').trim_end_matches('-').trim();
        let var = action
            .strip_prefix("env")
            .map(str::trim)
            .and_then(|q| q.strip_prefix('"')?.strip_suffix('"'))
            .ok_or_else(|| {
                format!(
                    "unsupported template action {:?} (supported: {left} env \"VAR\" {right} and ${{VAR}})",
                    action
                )
            })?;
        out.push_str(env.get(var).map(String::as_str).unwrap_or(""));
        rest = &after[end + right.len()..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Render and write every template of a task.
pub fn write_all(
    templates: &[Template],
    env: &BTreeMap<String, String>,
    task_dir: &Path,
    alloc_dir: &Path,
    owner: Option<(u32, u32)>,
) -> Result<(), TemplateError> {
    for tpl in templates {
        let dest = manifest_paths::resolve(&tpl.dest_path, task_dir, alloc_dir).map_err(TemplateError::Path)?;
        let source = match (&tpl.embedded_tmpl, &tpl.source_path) {
            (Some(text), _) => text.clone(),
            (None, Some(src)) => {
                let src = manifest_paths::resolve(src, task_dir, alloc_dir).map_err(TemplateError::Path)?;
                let bytes = manifest_paths::read(&src).map_err(TemplateError::Path)?;
                String::from_utf8(bytes).map_err(|_| TemplateError::Syntax {
                    dest: tpl.dest_path.clone(),
                    message: "source is not UTF-8 text".into(),
                })?
            }
            (None, None) => String::new(),
        };
        let left = tpl.left_delim.as_deref().unwrap_or("{{");
        let right = tpl.right_delim.as_deref().unwrap_or("}}");
        let text = render(&source, env, left, right).map_err(|message| TemplateError::Syntax {
            dest: tpl.dest_path.clone(),
            message,
        })?;
        let mode = tpl
            .perms
            .as_deref()
            .and_then(|p| u32::from_str_radix(p, 8).ok())
            // A task with its own user gets files only it can read: other
            // tasks on the robot may run as other users.
            .unwrap_or(if owner.is_some() { 0o600 } else { 0o644 });
        let mut file = PendingFile::create(&dest, mode, owner).map_err(TemplateError::Path)?;
        let write_err = |error| TemplateError::Write {
            dest: tpl.dest_path.clone(),
            error,
        };
        file.file.write_all(text.as_bytes()).map_err(write_err)?;
        file.commit().map_err(write_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn env() -> BTreeMap<String, String> {
        [
            ("A".to_string(), "1".to_string()),
            ("NAME".to_string(), "bot".to_string()),
        ]
        .into()
    }

    #[test]
    fn substitutes_both_forms() {
        assert_eq!(
            render("x=${A} {{ env \"NAME\" }}!", &env(), "{{", "}}").unwrap(),
            "x=1 bot!"
        );
        assert_eq!(
            render("[[env \"A\"]] {{keep}}", &env(), "[[", "]]").unwrap(),
            "1 {{keep}}"
        );
        assert_eq!(render("${MISSING}|", &env(), "{{", "}}").unwrap(), "${MISSING}|");
        assert_eq!(render("{{ env \"MISSING\" }}|", &env(), "{{", "}}").unwrap(), "|");
        assert!(render("{{ .Foo }}", &env(), "{{", "}}")
            .unwrap_err()
            .contains("unsupported template action"));
        assert_eq!(render("${A", &env(), "{{", "}}").unwrap(), "${A");
        assert!(render("{{ env \"A\"", &env(), "{{", "}}").is_err());
    }

    #[test]
    fn writes_with_perms_inside_the_task_dir() {
        let dir = tempfile::tempdir().unwrap();
        let tpl = Template {
            embedded_tmpl: Some("hello ${NAME}\n".into()),
            dest_path: "local/conf/hello.txt".into(),
            perms: Some("0600".into()),
            ..Default::default()
        };
        write_all(&[tpl], &env(), dir.path(), dir.path(), None).unwrap();
        let path = dir.path().join("local/conf/hello.txt");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "hello bot\n");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
