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

/// Decode and validate every document of every source.
pub fn check_sources(sources: &[(String, String)]) -> Vec<Checked> {
    let mut out = Vec::new();
    for (source, text) in sources {
        for doc in api::decode_all(text) {
            let result = match doc {
                Err(e) => Err(e.to_string().lines().map(String::from).collect()),
                Ok(decoded) => {
                    let errs = api::validate(&decoded.object);
                    if errs.is_empty() {
                        Ok(decoded)
                    } else {
                        Err(errs.iter().map(|e| e.to_string()).collect())
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
