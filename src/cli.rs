//! Helpers shared by the two binaries' command lines.

use crate::api::{self, AnyObject, Decoded};
use std::io::Read;
use std::path::{Path, PathBuf};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Read manifest text from a file, every `.yaml`/`.yml`/`.json` file of a
/// directory (sorted), or standard input for `-`.
pub fn read_sources(arg: &str) -> Result<Vec<(String, String)>, String> {
    if arg == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("reading standard input: {e}"))?;
        return Ok(vec![("<stdin>".into(), text)]);
    }
    let path = Path::new(arg);
    let meta = std::fs::metadata(path).map_err(|e| format!("{arg}: {e}"))?;
    let files: Vec<PathBuf> = if meta.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("{arg}: {e}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_path_buf()]
    };
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            Ok((p.display().to_string(), text))
        })
        .collect()
}

/// Outcome of checking one document.
pub struct Checked {
    pub source: String,
    pub result: Result<Decoded<AnyObject>, Vec<String>>,
}

/// Decode and validate every document of every source. A valid document's
/// warnings are its unknown fields, then what validation warns about.
pub fn check_sources(sources: &[(String, String)]) -> Vec<Checked> {
    let mut out = Vec::new();
    for (source, text) in sources {
        for doc in api::decode_all(text) {
            let result = match doc {
                Err(e) => Err(e.to_string().lines().map(String::from).collect()),
                Ok(mut decoded) => {
                    let found = api::review(&decoded.object);
                    if found.errors.is_empty() {
                        decoded.warnings.extend(found.warnings.iter().map(|w| w.to_string()));
                        Ok(decoded)
                    } else {
                        Err(found.errors.iter().map(|e| e.to_string()).collect())
                    }
                }
            };
            out.push(Checked {
                source: source.clone(),
                result,
            });
        }
    }
    out
}

/// `validate -f`: print `ok Kind/name` or the errors; return the exit code.
pub fn run_validate(file: &str) -> i32 {
    let sources = match read_sources(file) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    let mut failed = false;
    let mut count = 0;
    for c in check_sources(&sources) {
        count += 1;
        match c.result {
            Ok(d) => {
                println!("ok {}/{}", d.object.kind(), d.object.name());
                for w in d.warnings {
                    eprintln!("warning: {}: {}/{}: {w}", c.source, d.object.kind(), d.object.name());
                }
            }
            Err(errs) => {
                failed = true;
                for e in errs {
                    println!("error: {}: {e}", c.source);
                }
            }
        }
    }
    if count == 0 {
        eprintln!("error: {file}: no documents found");
        return 1;
    }
    i32::from(failed)
}

/// What a binary was started with, before its subcommand's own options.
pub enum FirstArg {
    /// `k8s4r server ...`: a subcommand.
    Command(String),
    /// `k8s4r-agent --server ...`: an option straight away (its name).
    Option(String),
}

/// The start both binaries share: no arguments → usage and exit 2; `-h`,
/// `-V` (prints `version`); otherwise `dispatch` runs the command. Errors
/// print as `error: ...` and exit 2.
pub fn run_main(
    name: &str,
    version: &str,
    usage: &str,
    dispatch: impl FnOnce(FirstArg, &mut lexopt::Parser) -> Result<i32, lexopt::Error>,
) -> ! {
    use lexopt::prelude::*;
    let code = (|| {
        let mut parser = lexopt::Parser::from_env();
        let first = match parser.next()? {
            None => {
                eprint!("{usage}");
                return Ok(2);
            }
            Some(Short('h') | Long("help")) => {
                print!("{usage}");
                return Ok(0);
            }
            Some(Short('V') | Long("version")) => {
                println!("{name} {version}");
                return Ok(0);
            }
            Some(Value(v)) => FirstArg::Command(v.string()?),
            Some(Long(l)) => FirstArg::Option(l.to_string()),
            Some(other) => return Err(other.unexpected()),
        };
        dispatch(first, &mut parser)
    })();
    std::process::exit(match code {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            2
        }
    })
}

pub fn unknown_command(bin: &str, cmd: &str) -> lexopt::Error {
    format!("unknown command {cmd:?}; see {bin} --help").into()
}

const VALIDATE_USAGE: &str = "\
validate — check manifests against the robot.k8s4r.io/v1alpha1 API

USAGE:
    validate -f FILE|DIR|-

Prints `ok Kind/name` per valid document, or one `error: SOURCE: field: reason`
line per problem. Unknown fields are reported as warnings on stderr.
Exits 1 when any document has an error.
";

/// `validate -f FILE|DIR|-` (both binaries).
pub fn cmd_validate(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    use lexopt::prelude::*;
    let mut file = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Short('f') | Long("filename") => file = Some(parser.value()?.string()?),
            Short('h') | Long("help") => {
                print!("{VALIDATE_USAGE}");
                return Ok(0);
            }
            other => return Err(other.unexpected()),
        }
    }
    let file = file.ok_or("validate needs -f FILE|DIR|-")?;
    Ok(run_validate(&file))
}
