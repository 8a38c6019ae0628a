//! `${NAME}` in a task's env values, command, arguments and templates: the
//! one rule, for every place the agent expands variables.
//!
//! `${NAME}` becomes NAME's value when NAME is defined and the text stays
//! within [`MAX_GROWTH`] bytes of substituted values; anything else is
//! copied as written: an undefined name (a shell in the task may still
//! define it: `sh -c 'echo ${HOME}'` keeps working), a `${` with no
//! closing `}`, a lone `$`. There is no escape sequence and no nesting: a
//! value is inserted as it is, never expanded again, so `$${A}` is `$`
//! followed by A's value, and a value holding `${B}` stays `${B}`.
//! Nothing here fails, so callers with no error path (the reconciler
//! building a unit) and with one (templates) share it.

use std::collections::BTreeMap;

/// Substituted values add at most this many bytes to a text: one that would
/// go past it is kept as written. Far above what execve takes for one
/// argument or variable (128 KiB), so no task that can run meets it, and it
/// bounds what a hostile manifest (`${BIG}` repeated) makes the agent
/// allocate: at most the text's own length plus this.
pub const MAX_GROWTH: usize = 1 << 20;

/// `text` with every defined `${NAME}` replaced by its value (see the module
/// doc for the rule).
pub fn expand(text: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut added = 0usize;
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let value = after
            .find('}')
            .and_then(|end| Some((end, vars.get(&after[..end])?)))
            .filter(|(_, v)| added.checked_add(v.len()).is_some_and(|n| n <= MAX_GROWTH));
        match value {
            Some((end, v)) => {
                added += v.len();
                out.push_str(v);
                rest = &after[end + 1..];
            }
            None => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defined_names_are_replaced_and_the_rest_is_kept_as_written() {
        let v = vars(&[("K8S4R_TASK_DIR", "/d/t"), ("A", "1"), ("EMPTY", "")]);
        assert_eq!(expand("${K8S4R_TASK_DIR}/x", &v), "/d/t/x");
        assert_eq!(expand("${A}${A}-${EMPTY}-", &v), "11--");
        assert_eq!(expand("${HOME} and ${A}", &v), "${HOME} and 1");
        assert_eq!(expand("no variables", &v), "no variables");
        assert_eq!(expand("", &v), "");
    }

    #[test]
    fn odd_dollar_forms_are_copied_through() {
        let v = vars(&[("A", "1")]);
        // Unterminated, at the end and before a later complete one.
        assert_eq!(expand("${A", &v), "${A");
        assert_eq!(expand("x ${", &v), "x ${");
        assert_eq!(expand("${ ${A}", &v), "${ 1");
        // Not the `${...}` form: untouched.
        assert_eq!(expand("$A $ $$ $}", &v), "$A $ $$ $}");
        // No escape: `$$` is a `$` and then an expansion.
        assert_eq!(expand("$${A}", &v), "$1");
        // An empty name is a name nobody defines.
        assert_eq!(expand("${}", &v), "${}");
        // Multi-byte text around variables stays whole.
        assert_eq!(expand("é${A}ü${Ω}", &v), "é1ü${Ω}");
    }

    #[test]
    fn values_are_inserted_once_never_expanded_again() {
        let v = vars(&[("A", "${B}"), ("B", "no")]);
        assert_eq!(expand("${A}", &v), "${B}");
    }

    #[test]
    fn growth_is_bounded() {
        let big = "x".repeat(MAX_GROWTH / 4);
        let v = vars(&[("BIG", &big)]);
        let text = "${BIG}".repeat(100);
        let out = expand(&text, &v);
        assert!(out.len() <= text.len() + MAX_GROWTH, "{} bytes", out.len());
        // Four fit exactly; every later one is kept as written.
        assert_eq!(out, format!("{}{}", big.repeat(4), "${BIG}".repeat(96)));
    }
}
