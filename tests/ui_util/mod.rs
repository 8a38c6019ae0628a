//! A small WebDriver client (W3C WebDriver: plain HTTP and JSON) driving
//! Debian's headless Chromium through chromedriver on loopback, for the
//! dashboard's browser tests. Chromium and chromedriver come from
//! `.ci/install-tools.sh`; without them [`Browser::start`] fails the test
//! saying so (never a silent skip).
#![allow(dead_code)]

use base64::Engine;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common::wait_for;

/// How long one WebDriver command may take (a page load included).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// A headless Chromium session. Dropping it ends the session and stops
/// chromedriver (which stops Chromium).
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: ureq::Agent,
    _profile: tempfile::TempDir,
}

fn which(cmd: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.is_file())
}

/// A loopback port free a moment ago (probed without listening: see
/// `k8s4r::envoy::ports::free_port_at`).
fn free_port() -> u16 {
    k8s4r::envoy::ports::free_port_at(([127, 0, 0, 1], 0).into()).expect("a free loopback port")
}

impl Browser {
    /// Start chromedriver and a headless Chromium. The server's certificate
    /// is from the test's own CA, which this throwaway profile does not
    /// trust: `--ignore-certificate-errors` (tests only).
    pub fn start() -> Browser {
        let (Some(driver_bin), Some(chromium)) = (which("chromedriver"), which("chromium")) else {
            panic!(
                "the browser tests need Debian's chromium and chromium-driver: run `bash .ci/install-tools.sh` \
                 (or `make tools`) first"
            );
        };
        let port = free_port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(COMMAND_TIMEOUT))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        wait_for("chromedriver to be ready", Duration::from_secs(20), || {
            let r = http.get(format!("{base}/status")).call().ok()?;
            let v: Value = serde_json::from_reader(r.into_body().into_reader()).ok()?;
            v["value"]["ready"].as_bool().filter(|r| *r)
        });
        let profile = tempfile::tempdir().expect("tempdir");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--ignore-certificate-errors", "--window-size=1280,900",
                    "--no-first-run", "--disable-extensions",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let mut b = Browser {
            driver,
            base,
            session: String::new(),
            http,
            _profile: profile,
        };
        let v = b.post_raw("/session", &caps);
        b.session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver did not start a session: {v}"))
            .to_string();
        b
    }

    fn answer(what: &str, r: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Value {
        let r = r.unwrap_or_else(|e| panic!("WebDriver {what}: {e}"));
        let status = r.status().as_u16();
        let v: Value = serde_json::from_reader(r.into_body().into_reader())
            .unwrap_or_else(|e| panic!("WebDriver {what}: answer is not JSON: {e}"));
        assert!(status == 200, "WebDriver {what}: {status} {v}");
        v["value"].clone()
    }

    fn post_raw(&self, path: &str, body: &Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes());
        Browser::answer(path, r)
    }

    fn post(&self, path: &str, body: &Value) -> Value {
        self.post_raw(&format!("/session/{}{path}", self.session), body)
    }

    fn get(&self, path: &str) -> Value {
        let r = self
            .http
            .get(format!("{}/session/{}{path}", self.base, self.session))
            .call();
        Browser::answer(path, r)
    }

    pub fn goto(&self, url: &str) {
        self.post("/url", &json!({ "url": url }));
    }

    pub fn url(&self) -> String {
        self.get("/url").as_str().unwrap_or("").to_string()
    }

    /// The element matching CSS `selector` now, if any.
    pub fn find(&self, selector: &str) -> Option<String> {
        let r = self
            .http
            .post(format!("{}/session/{}/elements", self.base, self.session))
            .header("Content-Type", "application/json")
            .send(
                json!({"using": "css selector", "value": selector})
                    .to_string()
                    .as_bytes(),
            );
        let v = Browser::answer("find elements", r);
        v.as_array()?
            .first()?
            .as_object()?
            .values()
            .next()?
            .as_str()
            .map(String::from)
    }

    /// The element matching `selector`, waiting for it to appear.
    pub fn element(&self, selector: &str) -> String {
        wait_for(&format!("element {selector}"), Duration::from_secs(20), || {
            self.find(selector)
        })
    }

    pub fn type_into(&self, selector: &str, text: &str) {
        let e = self.element(selector);
        self.post(&format!("/element/{e}/value"), &json!({ "text": text }));
    }

    pub fn click(&self, selector: &str) {
        let e = self.element(selector);
        self.post(&format!("/element/{e}/click"), &json!({}));
    }

    /// The visible text of the element matching `selector` ("" if none).
    pub fn text(&self, selector: &str) -> String {
        match self.find(selector) {
            Some(e) => self
                .get(&format!("/element/{e}/text"))
                .as_str()
                .unwrap_or("")
                .to_string(),
            None => String::new(),
        }
    }

    /// Run `script` in the page; its return value.
    pub fn script(&self, script: &str) -> Value {
        self.post("/execute/sync", &json!({"script": script, "args": []}))
    }

    /// Cookie `name` as the browser holds it (HttpOnly ones too).
    pub fn cookie(&self, name: &str) -> Option<Value> {
        let all = self.get("/cookie");
        all.as_array()?.iter().find(|c| c["name"] == name).cloned()
    }

    /// Save a PNG of the window under `target/ui/NAME.png`.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        let b64 = self.get("/screenshot");
        let png = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().expect("screenshot as base64"))
            .expect("screenshot decodes");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ui");
        std::fs::create_dir_all(&dir).expect("create target/ui");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self
                .http
                .delete(format!("{}/session/{}", self.base, self.session))
                .call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// What the server answered to a plain request (redirects not followed).
pub struct Page {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Page {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Requests as a browser without a certificate sends them: trusting the
/// server's CA (from its admin kubeconfig), no client certificate, and
/// redirects returned rather than followed (a login's 303 and its cookie
/// are what is tested).
pub struct Http {
    agent: ureq::Agent,
    base: String,
}

impl Http {
    pub fn new(base: &str, kubeconfig: &Path) -> Http {
        use ureq::tls::{PemItem, RootCerts, TlsConfig};
        let r = k8s4r::server::kubeconfig::load(kubeconfig).expect("the admin kubeconfig");
        let ca = r.ca_pem.expect("the kubeconfig's CA");
        let roots: Vec<_> = ureq::tls::parse_pem(&ca)
            .filter_map(|i| match i {
                Ok(PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(COMMAND_TIMEOUT))
            .tls_config(
                TlsConfig::builder()
                    .root_certs(RootCerts::new_with_certs(&roots))
                    .build(),
            )
            .build()
            .into();
        Http {
            agent,
            base: base.to_string(),
        }
    }

    /// `method path` with `headers`; a body (a form) on POST.
    pub fn send(&self, method: &str, path: &str, body: Option<&str>, headers: &[(&str, &str)]) -> Page {
        let url = format!("{}{path}", self.base);
        let r = match method {
            "GET" => {
                let mut req = self.agent.get(&url);
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                req.call()
            }
            "POST" => {
                let mut req = self
                    .agent
                    .post(&url)
                    .header("Content-Type", "application/x-www-form-urlencoded");
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                req.send(body.unwrap_or("").as_bytes())
            }
            m => panic!("unsupported method {m}"),
        };
        let r = r.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = r.status().as_u16();
        let headers = r
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        let body = r.into_body().read_to_string().unwrap_or_default();
        Page { status, headers, body }
    }
}
