//! `k8s4r job history|revert|promote|pause|resume NAME`: a Job's versions
//! and its staged rollout, steered through the Kubernetes API with the
//! kubeconfig (the same as `kubectl get rollouts -l robot.k8s4r.io/job=NAME`
//! and `kubectl patch rollout NAME-vN --type merge -p '{"spec":{...}}'`).

use crate::api::rollout::{Rollout, RolloutState};
use crate::server::kubeclient::{self, KubeClient};
use lexopt::prelude::*;
use serde_json::Value;

const USAGE: &str = "\
k8s4r job COMMAND NAME — a Job's versions and its staged rollout

COMMANDS:
    history NAME            The Job's kept versions and how each rolled out
    revert NAME [VERSION]   Put VERSION (default: the last one that succeeded
                            before the newest) back on every robot at once
    promote NAME            Let the newest version go on past its canaries
    pause NAME              Update no further robots until resumed
    resume NAME             Go on updating robots

OPTIONS:
    -n, --namespace NS   [default: default]
    -h, --help           Print help
{CLIENT}
Also: kubectl get rollouts -l robot.k8s4r.io/job=NAME -w
";

fn usage() -> String {
    USAGE.replace("{CLIENT}", kubeclient::USAGE)
}

const API: &str = "/apis/robot.k8s4r.io/v1alpha1/namespaces";

pub fn cmd_job(parser: &mut lexopt::Parser) -> Result<i32, lexopt::Error> {
    let mut words: Vec<String> = Vec::new();
    let mut ns = "default".to_string();
    let mut client = kubeclient::ClientFlags::default();
    while let Some(arg) = parser.next()? {
        match arg {
            Long(flag) if kubeclient::ClientFlags::owns(flag) => {
                let flag = flag.to_string();
                client.set(&flag, parser)?;
            }
            Short('n') | Long("namespace") => ns = parser.value()?.string()?,
            Short('h') | Long("help") => {
                print!("{}", usage());
                return Ok(0);
            }
            Value(v) if words.len() < 3 => words.push(v.string()?),
            other => return Err(other.unexpected()),
        }
    }
    let (cmd, name, version) = match words.as_slice() {
        [c, n] => (c.as_str(), n.as_str(), None),
        [c, n, v] if c == "revert" => match v.parse::<i64>() {
            Ok(v) if v >= 1 => (c.as_str(), n.as_str(), Some(v)),
            _ => return Err(format!("VERSION {v:?}: expected a version number (1, 2, ...)").into()),
        },
        _ => {
            eprint!("{}", usage());
            return Ok(2);
        }
    };
    let run = || -> Result<String, String> {
        let client = KubeClient::new(&client)?;
        let job = Job {
            client: &client,
            ns: &ns,
            name,
        };
        match cmd {
            "history" => job.history(),
            "revert" => job.revert(version),
            "promote" => job.steer("promoted", true),
            "pause" => job.steer("paused", true),
            "resume" => job.steer("paused", false),
            other => Err(format!("unknown command {other:?}; see k8s4r job --help")),
        }
    };
    match run() {
        Ok(out) => {
            print!("{out}");
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(1)
        }
    }
}

struct Job<'a> {
    client: &'a KubeClient,
    ns: &'a str,
    name: &'a str,
}

impl Job<'_> {
    /// The Job's versions, oldest first, with their stored objects.
    fn versions(&self) -> Result<Vec<(Value, Rollout)>, String> {
        let path = format!(
            "{API}/{}/rollouts?labelSelector=robot.k8s4r.io%2Fjob%3D{}",
            self.ns, self.name
        );
        let list: Value = serde_json::from_str(&self.client.request("GET", &path, None)?.ok()?)
            .map_err(|e| format!("the rollout list: {e}"))?;
        let mut out: Vec<(Value, Rollout)> = list
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|v| Some((v.clone(), serde_json::from_value::<Rollout>(v.clone()).ok()?)))
            .filter(|(_, r)| r.spec.job_name == self.name)
            .collect();
        out.sort_by_key(|(_, r)| r.spec.version);
        if out.is_empty() {
            return Err(format!(
                "job {:?} has no versions in namespace {:?}",
                self.name, self.ns
            ));
        }
        Ok(out)
    }

    fn history(&self) -> Result<String, String> {
        let mut out = format!(
            "{:<8} {:<20} {:<9} {:<8} {:<10} {:<8} {:<20} MESSAGE\n",
            "VERSION", "STATE", "PROGRESS", "HEALTHY", "UNHEALTHY", "PENDING", "STARTED"
        );
        for (_, r) in self.versions()? {
            let st = r.status.clone().unwrap_or_default();
            let mut message = st.message.clone().unwrap_or_default();
            if let Some(v) = r.spec.revert_of {
                message = format!("revert to version {v}. {message}");
            }
            out.push_str(&format!(
                "{:<8} {:<20} {:<9} {:<8} {:<10} {:<8} {:<20} {}\n",
                r.spec.version,
                format!("{:?}", st.state),
                st.progress,
                st.healthy,
                st.unhealthy,
                st.pending,
                st.started_at.unwrap_or_default(),
                message.trim()
            ));
        }
        Ok(out)
    }

    /// Set `spec.<field>` of the newest version (a read, then a write
    /// naming the version read: a concurrent change is a conflict, not lost).
    fn steer(&self, field: &str, value: bool) -> Result<String, String> {
        let (obj, r) = self.versions()?.pop().ok_or("no versions")?;
        let st = r.status.unwrap_or_default().state;
        if st.is_settled() {
            return Err(format!(
                "version {} of job {} has settled ({st:?}); nothing to {}",
                r.spec.version,
                self.name,
                if field == "promoted" {
                    "promote"
                } else {
                    "pause or resume"
                }
            ));
        }
        let name = crate::server::object::name(&obj).to_string();
        let path = format!("{API}/{}/rollouts/{name}", self.ns);
        self.client.update(&path, |o| o["spec"][field] = Value::Bool(value))?;
        let what = match (field, value) {
            ("promoted", _) => "promoted",
            (_, true) => "paused",
            _ => "resumed",
        };
        Ok(format!("job {}: version {} {what}\n", self.name, r.spec.version))
    }

    /// Write version `to`'s spec back into the Job (a new version, which
    /// the server puts on every robot at once).
    fn revert(&self, to: Option<i64>) -> Result<String, String> {
        let all = self.versions()?;
        let newest = all.last().map(|(_, r)| r.spec.version).unwrap_or(0);
        let pick = match to {
            Some(v) => all.iter().find(|(_, r)| r.spec.version == v).ok_or_else(|| {
                let kept: Vec<String> = all.iter().map(|(_, r)| r.spec.version.to_string()).collect();
                format!(
                    "version {v} of job {} is not kept (kept: {})",
                    self.name,
                    kept.join(", ")
                )
            })?,
            None => all
                .iter()
                .rev()
                .filter(|(_, r)| r.spec.version < newest)
                .find(|(_, r)| r.status.as_ref().is_some_and(|s| s.state == RolloutState::Succeeded))
                .ok_or_else(|| format!("job {} has no earlier version that succeeded; name one", self.name))?,
        };
        let version = pick.1.spec.version;
        let path = format!("{API}/{}/jobs/{}", self.ns, self.name);
        let template = serde_json::to_value(&pick.1.spec.template).map_err(|e| e.to_string())?;
        self.client.update(&path, |job| {
            job["spec"] = template.clone();
            crate::server::object::set_annotation(
                job,
                crate::server::controllers::rollout::ANN_REVERT_TO,
                Some(&version.to_string()),
            );
        })?;
        Ok(format!(
            "job {}: reverting to version {version} on every robot (as version {})\n",
            self.name,
            newest + 1
        ))
    }
}
