//! `switchback demo`: a self-contained walkthrough in a temporary directory that needs nothing installed. It
//! builds three releases of a tiny HTTP service (this binary's hidden `demo-service` subcommand), deploys v1
//! (healthy), v2 (answers 500: rolled back automatically), v3 (healthy), then rolls back by hand, printing a
//! timeline. It stops the service it started before returning.
//!
//! The service reads its release directory once at start, like real code: `health` holds the status code that
//! `/healthz` answers, `crash` makes it exit at once, `unhealthy_after` (seconds) makes it turn unhealthy later.
//! Every other path answers `hello from VERSION`; `/sleep/MS` does so after MS milliseconds (at most 10 s).
//!
//! It behaves as an app should for restarts that drop nothing (see `systemd/examples/`): it takes its listening
//! socket from systemd when given one (socket activation), else binds 127.0.0.1:PORT; on SIGTERM it stops
//! accepting and answers the requests in flight before it exits; on SIGHUP it does the same, then re-executes
//! itself in place, keeping the socket, so that the new image serves the release `current` names now.

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::app::App;
use crate::base::version::Version;
use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct ServiceArgs {
    #[command(subcommand)]
    action: ServiceAction,
}

#[derive(Debug, clap::Subcommand)]
enum ServiceAction {
    /// Stop the running instance (from the pid file) and start a new one serving ROOT/current, detached
    Restart {
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        port: u16,
        #[arg(long)]
        pidfile: PathBuf,
    },
    /// Stop the running instance
    Stop {
        #[arg(long)]
        pidfile: PathBuf,
    },
    /// Serve HTTP from a release directory (in the foreground)
    Serve {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        port: u16,
    },
}

pub fn serve(args: &ServiceArgs) -> anyhow::Result<()> {
    match &args.action {
        ServiceAction::Restart { root, port, pidfile } => {
            stop(pidfile)?;
            let dir =
                root.join("current").canonicalize().with_context(|| format!("resolving {}/current", root.display()))?;
            let exe = std::env::current_exe().context("locating this binary")?;
            let child = std::process::Command::new(exe)
                .args(["demo-service", "serve", "--port", &port.to_string(), "--dir"])
                .arg(&dir)
                .current_dir(&dir)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .context("starting the demo service")?;
            std::fs::write(pidfile, child.id().to_string())
                .with_context(|| format!("writing {}", pidfile.display()))?;
            Ok(())
        }
        ServiceAction::Stop { pidfile } => stop(pidfile),
        ServiceAction::Serve { dir, port } => run_service(dir, *port),
    }
}

/// Stops the process named in the pid file (TERM, then KILL after 2 s) and removes the file.
fn stop(pidfile: &Path) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string(pidfile) else { return Ok(()) };
    if let Some(pid) = text.trim().parse::<i32>().ok().and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let start = Instant::now();
        while alive(pid) && start.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
    let _ = std::fs::remove_file(pidfile);
    Ok(())
}

/// Whether a process exists and is not a zombie (an exited service whose parent is gone may wait a while to be
/// reaped, but it no longer holds its port).
fn alive(pid: rustix::process::Pid) -> bool {
    crate::host::command::proc_stat(pid.as_raw_nonzero().get()).is_some_and(|f| f.first().is_some_and(|s| s != "Z"))
}

fn run_service(dir: &Path, port: u16) -> anyhow::Result<()> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok().map(|s| s.trim().to_owned());
    if read("crash").is_some() {
        anyhow::bail!("this release crashes at start");
    }
    let release = Arc::new(Release {
        version: read("version.txt").unwrap_or_else(|| "unknown".into()),
        health: read("health").and_then(|s| s.parse().ok()).unwrap_or(200),
        unhealthy_after: read("unhealthy_after").and_then(|s| s.parse::<f64>().ok()).map(Duration::from_secs_f64),
        started: Instant::now(),
    });
    let mut listener = listener(port)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let mut signals = rt.block_on(async { Signals::new() }).context("handling signals")?;
    // It runs from its release directory, resolved now: where the unit's `WorkingDirectory=` put it at start, and
    // after a re-exec the new release, which tells the unit's `ExecReload=` that the new code is in charge (it
    // handles signals and its socket is ready: connections wait in the backlog until it accepts them).
    if dir.is_absolute() {
        std::env::set_current_dir(dir).with_context(|| format!("entering {}", dir.display()))?;
    }
    // Type=notify units learn here that the service answers (ignored elsewhere: systemd sets NOTIFY_SOCKET only for
    // units that listen to it).
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    loop {
        let (stop, l) = rt.block_on(serve_until_signal(listener, &mut signals, release.clone()))?;
        match stop {
            Stop::Exit => return Ok(()),
            Stop::Reexec => {
                // Returns only when the exec failed: the old code serves on rather than leave nobody to.
                let e = reexec(&l);
                eprintln!("demo-service: re-exec failed, {} serves on: {e:#}", release.version);
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
                listener = l;
            }
        }
    }
}

/// What the service answers, read once at start from its release directory (as real code reads its own).
struct Release {
    version: String,
    health: u16,
    unhealthy_after: Option<Duration>,
    started: Instant,
}

/// The signals that stop the service, handled from its start on (a re-executed image that is not yet handling
/// SIGHUP would die of one).
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Inside the runtime.
    fn new() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// Why the service stopped accepting.
enum Stop {
    /// SIGTERM or SIGINT: exit once the requests in flight are answered.
    Exit,
    /// SIGHUP: replace this process's image with the one `current` names now, keeping the listening socket.
    Reexec,
}

/// The listening socket: the one systemd passes (socket activation: `LISTEN_FDS`, `LISTEN_PID`, fd 3) or a re-exec
/// hands itself (the last descriptor `LISTEN_FDS` names), else a socket of its own on 127.0.0.1:PORT.
fn listener(port: u16) -> anyhow::Result<TcpListener> {
    let mut passed = listenfd::ListenFd::from_env();
    if let Some(last) = passed.len().checked_sub(1) {
        if let Some(l) = passed.take_tcp_listener(last).context("taking the listening socket passed")? {
            return Ok(l);
        }
    }
    // Without one, a restart may race the old instance's exit for the port: retry briefly.
    (0..100)
        .find_map(|_| {
            TcpListener::bind(("127.0.0.1", port)).ok().or_else(|| {
                std::thread::sleep(Duration::from_millis(30));
                None
            })
        })
        .with_context(|| format!("binding 127.0.0.1:{port}"))
}

/// Answers each connection on its own task until a signal comes; then stops accepting (connections not yet
/// accepted wait in the socket's backlog, for whoever holds the socket next) and finishes the requests in flight
/// (at most 10 s) before returning the socket.
async fn serve_until_signal(
    listener: TcpListener,
    signals: &mut Signals,
    release: Arc<Release>,
) -> anyhow::Result<(Stop, TcpListener)> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut in_flight = tokio::task::JoinSet::new();
    let stop = loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    in_flight.spawn(answer(stream, release.clone()));
                }
            }
            Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
            _ = signals.term.recv() => break Stop::Exit,
            _ = signals.int.recv() => break Stop::Exit,
            _ = signals.hup.recv() => break Stop::Reexec,
        }
    };
    let drained =
        tokio::time::timeout(Duration::from_secs(10), async { while in_flight.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        eprintln!("demo-service: {} requests still in flight after 10s, dropped", in_flight.len());
    }
    let listener = listener.into_std()?;
    listener.set_nonblocking(false)?;
    Ok((stop, listener))
}

/// One request: its head (up to the empty line, at most 8 KiB, 2 s), then the answer, then the connection closes.
async fn answer(stream: tokio::net::TcpStream, release: Arc<Release>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut reader = tokio::io::BufReader::new(stream);
    let mut first = String::new();
    let head = async {
        let mut line = String::new();
        let mut total = 0;
        loop {
            line.clear();
            let n = reader.read_line(&mut line).await.ok()?;
            total += n;
            if n == 0 || total > 8192 {
                return None;
            }
            if first.is_empty() {
                first = line.clone();
            }
            if line == "\r\n" || line == "\n" {
                return Some(());
            }
        }
    };
    // The whole head is read, so closing the connection sends a FIN (unread data would make it a reset).
    if tokio::time::timeout(Duration::from_secs(2), head).await.ok().flatten().is_none() {
        return;
    }
    let path = first.split_whitespace().nth(1).unwrap_or("/");
    // A request that takes time, as real ones do: a restart must wait for it rather than cut it.
    if let Some(ms) = path.strip_prefix("/sleep/").and_then(|ms| ms.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms.min(10_000))).await;
    }
    let r = &release;
    let sick = r.unhealthy_after.is_some_and(|d| r.started.elapsed() >= d);
    let (status, body) = match path {
        "/healthz" if sick => (500, format!("{} turned unhealthy\n", r.version)),
        "/healthz" => (r.health, format!("{} {}\n", r.version, if r.health == 200 { "ok" } else { "broken" })),
        _ => (200, format!("hello from {}\n", r.version)),
    };
    let mut stream = reader.into_inner();
    let text = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    let _ = stream.write_all(text.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The reload pattern: this process becomes the code `current` names now, in place (same pid, so systemd's
/// `MainPID` holds), keeping its listening socket. The socket keeps its descriptor N, without close-on-exec, and
/// is named to the new image as systemd names the sockets it passes: `LISTEN_PID` = this pid (exec keeps it),
/// `LISTEN_FDS` = N - 2, so that N is the last descriptor passed (from systemd, N is 3; a socket the service bound
/// itself sits above what the runtime opened first). `dir` is absolute through `current` for this (as the example
/// unit has it): the new image reads the new release from it, and moves into it once it serves. Returns only on
/// failure.
fn reexec(listener: &TcpListener) -> anyhow::Error {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let fd = listener.as_raw_fd();
    if let Err(e) = rustix::io::fcntl_setfd(listener, rustix::io::FdFlags::empty()) {
        return anyhow::anyhow!("keeping the socket across exec: {e}");
    }
    // The program as the unit named it (a path through `current` finds the new release's), else this binary.
    let mut args = std::env::args_os();
    let program = args.next().filter(|p| Path::new(p).is_absolute()).map(PathBuf::from);
    let program = match program.map_or_else(std::env::current_exe, Ok) {
        Ok(p) => p,
        Err(e) => return anyhow::anyhow!("locating this binary: {e}"),
    };
    // Type=notify-reload units (systemd 253 and later) wait for READY=1 from the new image after this.
    let mut reloading = vec![sd_notify::NotifyState::Reloading];
    reloading.extend(sd_notify::NotifyState::monotonic_usec_now().ok());
    let _ = sd_notify::notify(&reloading);
    let e = std::process::Command::new(&program)
        .args(args)
        .env("LISTEN_FDS", (fd - 2).to_string())
        .env("LISTEN_PID", rustix::process::getpid().as_raw_nonzero().to_string())
        .env_remove("LISTEN_FDNAMES")
        .exec();
    let _ = rustix::io::fcntl_setfd(listener, rustix::io::FdFlags::CLOEXEC);
    anyhow::anyhow!("executing {}: {e}", program.display())
}

/// Builds a release archive of the demo service: `version.txt`, `health`, plus extra files.
fn release_archive(path: &Path, version: &str, health: u16) -> anyhow::Result<()> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in [
        ("version.txt", version.to_owned()),
        ("health", health.to_string()),
        ("README", format!("demo release {version}\n")),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, data.as_bytes())?;
    }
    let tar = b.into_inner()?;
    std::fs::write(path, zstd::encode_all(&tar[..], 3)?).with_context(|| format!("writing {}", path.display()))
}

fn fetch(port: u16, path: &str) -> String {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(2)))
        .http_status_as_error(false)
        .build()
        .into();
    match agent.get(&format!("http://127.0.0.1:{port}{path}")).call() {
        Ok(mut r) => format!("{} {}", r.status().as_u16(), r.body_mut().read_to_string().unwrap_or_default().trim()),
        Err(e) => format!("no answer ({e})"),
    }
}

pub fn run(keep: bool) -> anyhow::Result<()> {
    let tmp =
        tempfile::Builder::new().prefix("switchback-demo-").tempdir().context("creating a temporary directory")?;
    let dir = tmp.path().to_owned();
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let pidfile = dir.join("demo-service.pid");
    let mut so = std::io::stdout();
    let result = walkthrough(&dir, port, &pidfile, keep);
    stop(&pidfile)?;
    if keep {
        let kept = tmp.keep();
        writeln!(so, "\nkept {} (config: {}/switchback.toml)", kept.display(), kept.display())?;
    }
    result
}

fn walkthrough(dir: &Path, port: u16, pidfile: &Path, keep: bool) -> anyhow::Result<()> {
    let mut so = std::io::stdout();
    let exe = std::env::current_exe().context("locating this binary")?;
    let root = dir.join("srv/demo");
    let config_path = dir.join("switchback.toml");
    let q = |p: &Path| toml_str(&p.display().to_string());
    let config = format!(
        r#"[agent]
state_dir = {state}

[apps.demo]
root = {root}
keep = 5

[apps.demo.service]
restart = [{exe}, "demo-service", "restart", "--root", {root}, "--port", "{port}", "--pidfile", {pid}]
timeout = "10s"

[[apps.demo.checks]]
http = "http://127.0.0.1:{port}/healthz"
expect_status = 200
timeout = "1s"

[apps.demo.health]
interval = "250ms"
healthy_after = 2
deadline = "3s"
bake = "1s"
"#,
        state = q(&dir.join("state")),
        root = q(&root),
        exe = q(&exe),
        pid = q(pidfile),
    );
    std::fs::write(&config_path, &config)?;
    let config = Config::load(&config_path)?;
    let app = App::from_config(&config, "demo")?;
    let wait = Duration::from_secs(5);

    writeln!(so, "Switchback demo in {}", dir.display())?;
    writeln!(
        so,
        "A tiny HTTP service on 127.0.0.1:{port}; /healthz must answer 200 twice in a row (every 250ms, within 3s),"
    )?;
    writeln!(
        so,
        "then keep answering 200 for a 1s bake window. Three releases: v1 healthy, v2 broken (500), v3 healthy.\n"
    )?;
    for (v, health) in [("v1", 200), ("v2", 500), ("v3", 200)] {
        release_archive(&dir.join(format!("{v}.tar.zst")), v, health)?;
    }
    let t0 = Instant::now();
    let stamp = || format!("[{:>5.1}s]", t0.elapsed().as_secs_f64());
    for v in ["v1", "v2", "v3"] {
        writeln!(so, "{} switchback deploy demo --file {v}.tar.zst --version {v}", stamp())?;
        let req = crate::engine::deploy::DeployRequest {
            archive: Some(dir.join(format!("{v}.tar.zst"))),
            expected: None,
            version: Version::parse(v)?,
            force: false,
            reason: Some("demo".into()),
            fetched: None,
            delta: None,
            epoch: None,
        };
        match crate::engine::deploy::deploy(&app, &req, wait, true) {
            Ok(out) => writeln!(so, "{} => {v} is live and healthy ({})", stamp(), out.health)?,
            Err(e) => {
                let code = crate::error::code_for(&e);
                writeln!(so, "{} => exit code {code}: {e:#}", stamp())?;
                if code != crate::base::exit::ROLLED_BACK {
                    return Err(e);
                }
            }
        }
        writeln!(so, "         GET / -> {}\n", fetch(port, "/"))?;
    }
    writeln!(so, "{} switchback rollback demo --reason \"demo: back to the previous good release\"", stamp())?;
    let out = crate::engine::rollback::rollback(
        &app,
        None,
        Some("demo: back to the previous good release"),
        false,
        wait,
        true,
    )?;
    writeln!(
        so,
        "{} => rolled back from {} to {} ({}); v2 is skipped because it is marked bad",
        stamp(),
        out.from,
        out.to,
        out.health
    )?;
    writeln!(so, "         GET / -> {}\n", fetch(port, "/"))?;

    writeln!(so, "switchback status demo")?;
    crate::engine::status::print_human(&crate::engine::status::app_status(&app)?, &mut so)?;
    writeln!(so, "\nswitchback history demo")?;
    for e in crate::statedir::history::read(&app.history_path())? {
        let steps: Vec<String> = e.steps.iter().map(|s| format!("{} {}ms", s.step, s.ms)).collect();
        writeln!(
            so,
            "  {:<8} {:<4} {:<16} {:>5}ms  [{}]{}",
            e.op,
            e.version.as_deref().unwrap_or(""),
            e.outcome,
            e.duration_ms,
            steps.join(", "),
            e.reason.map(|r| format!("\n           why: {r}")).unwrap_or_default()
        )?;
    }
    writeln!(
        so,
        "\nDone in {:.1}s. The service was stopped; {}",
        t0.elapsed().as_secs_f64(),
        if keep { "the directory is kept (--keep)." } else { "the directory is removed (--keep keeps it)." }
    )?;
    Ok(())
}

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}
