//! `k8s4r release keygen|sign|set-version`: the offline half of agent
//! updates. The release key is made and used on an operator's machine (or
//! an air-gapped one): the server and the robots only ever see its public
//! half and the signatures it made. `k8s4r release pause|resume|revert
//! NAME` steer a release's rollout through the Kubernetes API (the same as
//! `kubectl patch agentrelease NAME --type merge -p '{"spec":{...}}'`).

use crate::api::agent_release::{self, AgentRelease, AgentReleaseSpec, ReleaseBinary};
use crate::api::hex;
use crate::server::kubeclient::{self, KubeClient};
use lexopt::prelude::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

const USAGE: &str = "\
k8s4r release — sign agent releases (offline)

USAGE:
    k8s4r release keygen [--out PREFIX]
        Make an Ed25519 release key: PREFIX.key (secret, 0600) and PREFIX.pub
        [default PREFIX: release]. Keep PREFIX.key offline; give PREFIX.pub to
        the server (--release-public-key) or the robots (--release-key).
    k8s4r release sign --key FILE --arch ARCH --url URL [--version V]
                       [--name NAME] [--allow-downgrade] [--max-parallel N] BINARY
        Print an AgentRelease (YAML) for BINARY: its size, SHA-256 and the
        signature over version, arch, size and SHA-256. The version defaults
        to the one in the binary. ARCH: x86_64, aarch64, armv7. Sign each
        architecture's build and list every entry under spec.binaries.
    k8s4r release set-version --version V IN OUT
        Copy an agent binary with another version in its version slot (tests,
        or a rebuild-free re-version).
    k8s4r release pause|resume|revert NAME [CLIENT OPTIONS]
        Steer the rollout of the AgentRelease NAME: pause offers it to no
        more robots, resume goes on, revert offers it to no robot and takes
        the robots that run it back to the newest earlier release.
{CLIENT}";

pub fn cmd_release(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let sub = match parser.next()? {
        Some(Value(v)) => v.string()?,
        Some(Short('h') | Long("help")) | None => {
            print!("{}", USAGE.replace("{CLIENT}", kubeclient::USAGE));
            return Ok(0);
        }
        Some(other) => return Err(other.unexpected()),
    };
    match sub.as_str() {
        "keygen" => keygen(parser),
        "sign" => sign(parser),
        "set-version" => set_version(parser),
        "pause" => steer(parser, "paused", true),
        "resume" => steer(parser, "paused", false),
        "revert" => steer(parser, "revert", true),
        other => Err(format!("unknown release command {other:?}; see k8s4r release --help").into()),
    }
}

/// Set `spec.<field>` of the AgentRelease named on the command line.
fn steer(parser: &mut lexopt::Parser, field: &str, value: bool) -> Result<i32, lexopt::Error> {
    let mut flags = kubeclient::ClientFlags::default();
    let mut name = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Long(flag) if kubeclient::ClientFlags::owns(flag) => {
                let flag = flag.to_string();
                flags.set(&flag, parser)?;
            }
            Value(v) if name.is_none() => name = Some(v.string()?),
            other => return Err(other.unexpected()),
        }
    }
    let name = name.ok_or("release pause|resume|revert needs the AgentRelease's NAME")?;
    crate::api::validate::check_dns_subdomain(&name).map_err(|e| format!("NAME {name:?}: {e}"))?;
    let path = format!("/apis/robot.k8s4r.io/v1alpha1/agentreleases/{name}");
    let done =
        KubeClient::new(&flags).and_then(|c| c.update(&path, |r| r["spec"][field] = serde_json::Value::Bool(value)));
    match done {
        Ok(()) => {
            let what = match (field, value) {
                ("revert", _) => "reverted: offered to no robot; its robots go back to the newest earlier release",
                (_, true) => "paused",
                _ => "resumed",
            };
            println!("agentrelease {name}: {what}");
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(1)
        }
    }
}

fn keygen(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let mut prefix = PathBuf::from("release");
    while let Some(arg) = parser.next()? {
        match arg {
            Long("out") => prefix = parser.value()?.into(),
            other => return Err(other.unexpected()),
        }
    }
    let with = |ext: &str| PathBuf::from(format!("{}.{ext}", prefix.display()));
    let (secret_file, public_file) = (with("key"), with("pub"));
    let mut secret = [0u8; 32];
    crate::api::robot_channel::random(&mut secret);
    write_new(&secret_file, format!("{}\n", hex::encode(&secret)).as_bytes(), 0o600)?;
    let public = agent_release::public_key(&secret);
    write_new(&public_file, format!("{}\n", hex::encode(&public)).as_bytes(), 0o644)?;
    println!("{}", secret_file.display());
    println!("{}", public_file.display());
    Ok(0)
}

/// Create a file that must not exist yet (a key is never overwritten).
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), lexopt::Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| format!("{}: {e}", path.display()).into())
}

fn read_secret(path: &str) -> Result<[u8; 32], lexopt::Error> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("--key {path}: {e}"))?;
    hex::decode::<32>(text.trim())
        .ok_or_else(|| format!("--key {path}: expected 64 hex digits (from k8s4r release keygen)").into())
}

fn sign(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let (mut key, mut arch, mut url, mut version, mut name, mut binary) = (None, None, None, None, None, None);
    let mut allow_downgrade = false;
    let mut max_parallel = None;
    while let Some(arg) = parser.next()? {
        match arg {
            Long("key") => key = Some(parser.value()?.string()?),
            Long("arch") => arch = Some(parser.value()?.string()?),
            Long("url") => url = Some(parser.value()?.string()?),
            Long("version") => version = Some(parser.value()?.string()?),
            Long("name") => name = Some(parser.value()?.string()?),
            Long("allow-downgrade") => allow_downgrade = true,
            Long("max-parallel") => max_parallel = Some(parser.value()?.parse::<u32>()?),
            Value(v) if binary.is_none() => binary = Some(PathBuf::from(v)),
            other => return Err(other.unexpected()),
        }
    }
    let secret = read_secret(&key.ok_or("release sign needs --key FILE")?)?;
    let arch = arch.ok_or("release sign needs --arch (x86_64, aarch64 or armv7)")?;
    let url = url.ok_or("release sign needs --url URL (where robots download it)")?;
    let binary = binary.ok_or("release sign needs the BINARY to sign")?;
    let bytes = std::fs::read(&binary).map_err(|e| format!("{}: {e}", binary.display()))?;
    let version = match version {
        Some(v) => v,
        None => agent_release::binary_version(&bytes)
            .map_err(|e| format!("{}: {e}; pass --version", binary.display()))?
            .to_string(),
    };
    let sha256 = hex::encode(&Sha256::digest(&bytes));
    let size = bytes.len() as u64;
    let entry = ReleaseBinary {
        signature: agent_release::sign(&secret, &version, &arch, size, &sha256),
        arch,
        url,
        size,
        sha256,
    };
    agent_release::check_version(&version).map_err(|e| e.to_string())?;
    agent_release::check_binary_fields(&entry).map_err(|e| e.to_string())?;
    let name = name.unwrap_or_else(|| format!("agent-{}", version.replace(['+', '_'], "-").to_ascii_lowercase()));
    let mut release = AgentRelease::new(
        "AgentRelease",
        &name,
        "",
        AgentReleaseSpec {
            version,
            allow_downgrade,
            max_parallel,
            binaries: vec![entry],
            ..Default::default()
        },
    );
    release.metadata.namespace = None;
    print!("{}", serde_yaml_ng::to_string(&release).map_err(|e| e.to_string())?);
    Ok(0)
}

fn set_version(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let (mut version, mut input, mut output) = (None, None, None);
    while let Some(arg) = parser.next()? {
        match arg {
            Long("version") => version = Some(parser.value()?.string()?),
            Value(v) if input.is_none() => input = Some(PathBuf::from(v)),
            Value(v) if output.is_none() => output = Some(PathBuf::from(v)),
            other => return Err(other.unexpected()),
        }
    }
    let (Some(version), Some(input), Some(output)) = (version, input, output) else {
        return Err("release set-version needs --version V IN OUT".into());
    };
    let mut bytes = std::fs::read(&input).map_err(|e| format!("{}: {e}", input.display()))?;
    agent_release::patch_version(&mut bytes, &version).map_err(|e| format!("{}: {e}", input.display()))?;
    crate::atomic_file::write(&output, &bytes, 0o755).map_err(|e| format!("{}: {e}", output.display()))?;
    Ok(0)
}
