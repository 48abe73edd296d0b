//! The two pages a newcomer opens, in a real browser: the embedded default (a `web` channel and
//! the `default` pool, as `switchyard serve` runs with no configuration) serves the web chat and
//! the agent console, and `tests/browser/chat.test.mjs` drives both in headless Chromium
//! (Playwright): an agent connects, a visitor writes (and is told their place in the queue while
//! the agent is away), the agent answers, the visitor reloads (and sees the conversation so far
//! again) and comes back, the agent closes the conversation. A
//! second server, the same default with a `default` pool that makes offers
//! (`offer_timeout_secs`), serves the script's second case: the console's Accept and Decline
//! buttons.
//!
//! It needs Node.js, Chromium at /usr/bin/chromium (or `CHROMIUM_PATH`) and
//! `npm ci --prefix tests/browser`; without them it skips loudly, and fails under `CI=true`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use switchyard_core::config::{EMBEDDED_DEFAULT, Settings};
use switchyard_core::conformance::services::absent;
use switchyard_router::{App, Role};

use crate::support::Server;

/// How long the whole browser script may take.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

/// How long the offers server's agents have to accept: far longer than the script takes to
/// click, so no offer expires under it.
const OFFER_SECS: u64 = 120;

/// `tests/browser/`: the script, its package.json and (after `npm ci`) its node_modules.
fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("browser")
}

/// The Chromium the script launches (the script reads the same variable).
fn chromium_path() -> PathBuf {
    std::env::var_os("CHROMIUM_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// Node.js, Chromium and the script's packages, or `None` after reporting what is missing and
/// how to get it (a loud skip, or a failure under CI).
fn prerequisites() -> Option<()> {
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {
            // `v20.20.2`: playwright-core needs 20 or newer.
            let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let major = version
                .strip_prefix('v')
                .and_then(|v| v.split('.').next())
                .and_then(|m| m.parse::<u32>().ok());
            if major.is_none_or(|m| m < 20) {
                return absent(
                    "Node.js 20 or newer",
                    &format!("`node --version` says {version}; install Node.js 20 or newer"),
                );
            }
        }
        Ok(out) => {
            return absent(
                "Node.js",
                &format!("`node --version` exited with {}", out.status),
            );
        }
        Err(e) => {
            return absent(
                "Node.js",
                &format!("cannot run `node`: {e}; install Node.js 20 or newer"),
            );
        }
    }
    let chromium = chromium_path();
    if !chromium.is_file() {
        return absent(
            "Chromium",
            &format!(
                "{} does not exist; `sudo .ci/run services` installs it (apt-get install chromium), \
                 or set CHROMIUM_PATH",
                chromium.display()
            ),
        );
    }
    let playwright = browser_dir().join("node_modules/playwright-core/package.json");
    if !playwright.is_file() {
        return absent(
            "playwright-core (the browser test's npm package)",
            &format!(
                "{} does not exist; run `npm ci --prefix tests/browser`",
                playwright.display()
            ),
        );
    }
    Some(())
}

/// Reads all of `pipe` on a thread of its own, so the child never blocks on a full pipe.
fn drain(pipe: Option<impl Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_chat_and_the_agent_console_work_in_a_browser() {
    let Some(()) = prerequisites() else { return };

    // The embedded default, on a free loopback port (what `serve --listen` does).
    let mut settings = Settings::load_with_env(None, []).unwrap();
    settings.server.listen = "127.0.0.1:0".parse().unwrap();
    settings.validate().unwrap();
    let server = Server::of(App::start(settings, Role::All).await.unwrap());
    // The same, with offers: what the console's Accept and Decline buttons answer.
    let offers = Server::start(&format!(
        "{EMBEDDED_DEFAULT}\n[[pools]]\nid = \"default\"\noffer_timeout_secs = {OFFER_SECS}\n"
    ))
    .await;

    let script = browser_dir().join("chat.test.mjs");
    let mut child = Command::new("node")
        .arg(&script)
        .arg(&server.base)
        .arg(&offers.base)
        .current_dir(browser_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node {}: {e}", script.display()));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());

    // The server runs on this runtime: wait without blocking it.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > SCRIPT_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    // Shown by the test harness when the test fails (or with --nocapture).
    eprintln!(
        "---- node {} {} {} ----\n{stdout}\n---- its stderr ----\n{stderr}",
        script.display(),
        server.base,
        offers.base
    );
    server.stop().await;
    offers.stop().await;

    let status = status.unwrap_or_else(|| {
        panic!("the browser script did not finish within {SCRIPT_TIMEOUT:?} (output above)")
    });
    assert!(
        status.success(),
        "the browser script failed with {status} (output above)"
    );
}
