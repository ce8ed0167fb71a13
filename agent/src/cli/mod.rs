//! The command line: clap definitions, and the execution of a command into a [`Report`] (what it found or did),
//! rendered on stdout for people (progress goes to stderr) or, with `--json`, as one JSON document with a
//! `schema` number.

pub mod docs;
mod entry;
mod report;

pub use report::Report;

pub use entry::{finish, init_logging, parse};

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::app::App;
use crate::base::exit;
use crate::base::version::Version;
use crate::config::{self, Config};
use crate::error::Error;
use crate::statedir::history;

/// Version of every `--json` document; bumped only on incompatible changes.
pub const JSON_SCHEMA: u32 = 1;

#[derive(Debug, Parser)]
#[command(name = "switchback", version, about = "Atomic releases with health checks and automatic rollback", after_help = exit::help_text())]
pub struct Cli {
    /// Configuration file [default: /etc/switchback/switchback.toml]; before the command (as root, it must be
    /// root's alone)
    #[arg(long, env = "SWITCHBACK_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print one JSON document (versioned schema) on stdout instead of text
    #[arg(long, global = true)]
    pub json: bool,
    /// How long to wait for an app's lock before giving up with exit code 5
    #[arg(long, global = true, default_value = "10s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub wait: Duration,
    /// No progress lines on stderr
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: follow each app's channel and inbox, deploy what they name (systemd Type=notify)
    Daemon,
    /// Deploy VERSION now and wait for the outcome: from --file, from disk, or from the app's source
    Deploy {
        /// The app, as named in the configuration
        app: String,
        /// The release archive (.tar.zst); without it the release must be on disk or named by the app's signed
        /// channel manifest
        #[arg(long, value_name = "ARCHIVE")]
        file: Option<PathBuf>,
        /// The release's version
        #[arg(long)]
        version: String,
        /// Deploy even a version marked bad, while the app is pinned, or of a lower epoch than the current release
        #[arg(long)]
        force: bool,
        /// Why (recorded in history)
        #[arg(long)]
        reason: Option<String>,
    },
    /// Switch to the last good (or the named) release, restart and check
    Rollback {
        /// The app, as named in the configuration
        app: String,
        /// The release to go to, instead of the last good one
        #[arg(long, value_name = "VERSION")]
        to: Option<String>,
        /// Why (recorded in history)
        #[arg(long)]
        reason: Option<String>,
        /// Roll back to a version marked bad, away from a pin, or to a lower epoch (across a schema migration)
        #[arg(long)]
        force: bool,
    },
    /// Current, last good, health and in-flight work of one app or all
    Status {
        /// The app, as named in the configuration; every app without it
        app: Option<String>,
    },
    /// Releases on disk
    Releases {
        /// The app, as named in the configuration
        app: String,
    },
    /// What happened to an app (history.jsonl)
    History {
        /// The app, as named in the configuration
        app: String,
        /// Only the last N events
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Delivery figures from history: deployment frequency, change failure rate, time to restore
    Report {
        /// The app, as named in the configuration
        app: String,
        /// The window, ending now
        #[arg(long, default_value = "30d", value_parser = humantime::parse_duration, value_name = "DURATION")]
        since: Duration,
    },
    /// Hold an app on a version (switching to it first, restarted and checked, if it runs another)
    Pin {
        /// The app, as named in the configuration
        app: String,
        /// The version to hold the app on
        version: String,
        /// Why (recorded in history)
        #[arg(long)]
        reason: Option<String>,
        /// Pin even a version marked bad, or of a lower epoch than the current release
        #[arg(long)]
        force: bool,
    },
    /// Release a pin
    Unpin {
        /// The app, as named in the configuration
        app: String,
    },
    /// Clear what only a person may clear: the degraded state (after a failed rollback), and bad marks
    Clear {
        /// The app, as named in the configuration
        app: String,
        /// Also clear this version's bad mark (repeatable)
        #[arg(long = "bad", value_name = "VERSION")]
        bad: Vec<String>,
        /// Clear every bad mark
        #[arg(long, conflicts_with = "bad")]
        all_bad: bool,
        /// Why (recorded in history)
        #[arg(long)]
        reason: Option<String>,
    },
    /// Remove old releases (never the current, last good or pinned one)
    Prune {
        /// The app, as named in the configuration
        app: String,
        /// Releases to keep [default: the app's `keep`]
        #[arg(long)]
        keep: Option<usize>,
    },
    /// Run the health checks against the current release now
    Check {
        /// The app, as named in the configuration
        app: String,
    },
    /// Write a minisign key pair for signing manifests: PREFIX.key (no password, for CI) and PREFIX.pub
    Keygen {
        /// Where to write the keys: PREFIX.key and PREFIX.pub
        #[arg(long, value_name = "PREFIX")]
        out: PathBuf,
    },
    /// Pack (or take) a release, upload it to BASE/APP/releases/, then sign and write the channel manifest
    Publish(PublishArgs),
    /// The fleet as its bucket sees it (the hosts' reports)
    Fleet {
        #[command(subcommand)]
        command: FleetCommand,
    },
    /// Configuration commands
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print a completion script for SHELL on stdout (the Debian package installs bash, zsh and fish ones)
    Completions {
        /// The shell
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
    /// A self-contained walkthrough in a temporary directory: deploy, a failed health check, automatic rollback
    Demo {
        /// Keep the temporary directory for inspection
        #[arg(long)]
        keep: bool,
    },
    /// The demo's tiny HTTP service (used by `demo` and the tests)
    #[command(hide = true)]
    DemoService(crate::demo::ServiceArgs),
    /// Write the man pages into DIR: switchback.1 and one per command (switchback-deploy.1, ...), for packaging
    #[command(hide = true)]
    Manpages {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct PublishArgs {
    /// The bucket base, e.g. s3://bucket/deploy (the app's files go under BASE/APP/)
    #[arg(long, value_name = "BASE")]
    to: String,
    /// The app (its files go under BASE/APP/)
    #[arg(long)]
    app: String,
    /// The channel to point at the release (BASE/APP/channels/CHANNEL.json)
    #[arg(long)]
    channel: String,
    /// The release's version
    #[arg(long)]
    version: String,
    /// The secret key written by `switchback keygen`
    #[arg(long, value_name = "PREFIX.key")]
    key: PathBuf,
    /// The directory to pack into a deterministic .tar.zst
    #[arg(value_name = "DIR", conflicts_with_all = ["file", "promote_only"])]
    dir: Option<PathBuf>,
    /// An archive to upload as it is
    #[arg(long, value_name = "ARCHIVE", conflicts_with = "promote_only")]
    file: Option<PathBuf>,
    /// Point the channel at a version uploaded before (promotion, or a deliberate rollback)
    #[arg(long)]
    promote_only: bool,
    /// How long the manifest stays valid
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration, value_name = "DURATION")]
    expires_in: Duration,
    /// Endpoint of an S3-compatible or Azure blob service (as the app's `endpoint`)
    #[arg(long)]
    endpoint: Option<String>,
    /// The region of an S3 bucket
    #[arg(long)]
    region: Option<String>,
    /// Allow a plain-http endpoint
    #[arg(long)]
    allow_http: bool,
    /// Do not publish a delta against the version the channel named before (agents holding that version download
    /// only the changed files)
    #[arg(long)]
    no_delta: bool,
    /// A wave of a staged rollout, PERCENT%:DELAY after publication (repeatable, growing), e.g. `--wave 1%:0s
    /// --wave 10%:30m --wave 100%:2h`: a host deploys once a wave covers its seed for this release
    #[arg(long = "wave", value_name = "P%:DELAY")]
    waves: Vec<crate::source::rollout::Wave>,
    /// Hosts that are due stop deploying this version once N hosts (or P% of the reporting hosts) report failing it
    #[arg(long, value_name = "N|P%")]
    halt_after: Option<crate::source::rollout::Threshold>,
    /// The release's epoch, written into the manifest (raise it with a schema migration: agents never roll back
    /// to a lower epoch on their own); the archive's .switchback/release.toml must not say another
    #[arg(long, value_name = "N")]
    epoch: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum FleetCommand {
    /// Versions and outcomes across the hosts, the rollout's waves, whether it is halted, and stale hosts
    Status(FleetStatusArgs),
}

#[derive(Debug, clap::Args)]
pub struct FleetStatusArgs {
    /// The bucket base, e.g. s3://bucket/deploy (as given to publish --to)
    #[arg(long, value_name = "BASE")]
    source: String,
    /// The app whose channel and host reports to read (BASE/APP/...)
    #[arg(long)]
    app: String,
    /// The channel whose manifest to read
    #[arg(long, default_value = "production")]
    channel: String,
    /// A host whose last report is older than this is stale (hosts write theirs at least hourly)
    #[arg(long, default_value = "3h", value_parser = humantime::parse_duration, value_name = "DURATION")]
    stale_after: Duration,
    /// A public key (as in trusted_keys) the channel manifest must be signed with (repeatable)
    #[arg(long = "trusted-key", value_name = "KEY")]
    trusted_keys: Vec<String>,
    /// Endpoint of an S3-compatible or Azure blob service
    #[arg(long)]
    endpoint: Option<String>,
    /// The region of an S3 bucket
    #[arg(long)]
    region: Option<String>,
    /// Allow a plain-http endpoint
    #[arg(long)]
    allow_http: bool,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the configuration and print what is wrong
    Check,
}

fn config_path(cli: &Cli) -> PathBuf {
    cli.config.clone().unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH))
}

fn load_config(cli: &Cli) -> Result<Config, Error> {
    Ok(Config::load(&config_path(cli))?)
}

fn version(s: &str) -> Result<Version, Error> {
    Ok(Version::parse(s)?)
}

/// Whether `e` is stdout closed under us (`status | head`): not a failure of the command, nothing to report.
pub fn stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().count() == 1
        && e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Runs the parsed command and says its report on stdout; returns the exit code. Async work runs on `rt`, the
/// process's one runtime.
pub fn run(cli: Cli, rt: &tokio::runtime::Runtime) -> anyhow::Result<u8> {
    if let Command::Daemon = cli.command {
        return crate::daemon::run(&config_path(&cli), rt);
    }
    if let Command::Completions { shell } = cli.command {
        // A shell script, not a report: there is no JSON form of it.
        if cli.json {
            return Err(Error::Usage("completions prints a shell script; --json does not apply".into()).into());
        }
        let mut out = std::io::stdout().lock();
        out.write_all(&docs::completions(shell))?;
        out.flush()?;
        return Ok(exit::SUCCESS);
    }
    let report = execute(&cli, rt)?;
    report.render(&mut std::io::stdout(), cli.json)?;
    if let Report::Checked { failed: Some(e), .. } = &report {
        crate::base::progress::note!("error: {e}");
    }
    Ok(report.exit_code())
}

/// Does what the command asks and returns what it found or did, rendering nothing.
pub fn execute(cli: &Cli, rt: &tokio::runtime::Runtime) -> anyhow::Result<Report> {
    let print = !cli.quiet
        && !matches!(
            cli.command,
            Command::Status { .. } | Command::Releases { .. } | Command::History { .. } | Command::Report { .. }
        );
    let app = |name: &str| -> anyhow::Result<App> { App::from_config(&load_config(cli)?, name) };
    Ok(match &cli.command {
        Command::Daemon | Command::Completions { .. } => {
            anyhow::bail!("the daemon and completions are run by `run`, not as commands with a report")
        }
        Command::Manpages { dir } => {
            for page in
                docs::manpages(dir).map_err(|e| anyhow::anyhow!("writing the man pages into {}: {e}", dir.display()))?
            {
                if print {
                    crate::base::progress::note!("wrote {}", page.display());
                }
            }
            Report::Done
        }
        Command::Keygen { out } => {
            Report::Keygen { public_key: crate::source::manifest::keygen(out)?, prefix: out.clone() }
        }
        Command::Publish(a) => Report::Published(crate::publish::publish(
            &crate::publish::PublishRequest {
                base: a.to.clone(),
                app: a.app.clone(),
                channel: a.channel.clone(),
                version: version(&a.version)?,
                key: a.key.clone(),
                dir: a.dir.clone(),
                file: a.file.clone(),
                promote_only: a.promote_only,
                delta: !a.no_delta,
                waves: a.waves.clone(),
                halt_after: a.halt_after,
                epoch: a.epoch,
                expires_in: a.expires_in,
                options: crate::source::bucket::Options {
                    endpoint: a.endpoint.clone(),
                    region: a.region.clone(),
                    allow_http: a.allow_http,
                    download: Default::default(),
                },
            },
            rt,
        )?),
        Command::Fleet { command: FleetCommand::Status(a) } => {
            Report::Fleet(Box::new(crate::publish::fleet::fleet_status(
                &crate::publish::fleet::FleetRequest {
                    base: a.source.clone(),
                    app: a.app.clone(),
                    channel: a.channel.clone(),
                    stale_after: a.stale_after,
                    trusted_keys: a.trusted_keys.clone(),
                    options: crate::source::bucket::Options {
                        endpoint: a.endpoint.clone(),
                        region: a.region.clone(),
                        allow_http: a.allow_http,
                        download: Default::default(),
                    },
                },
                rt,
            )?))
        }
        Command::Deploy { app: name, file, version: v, force, reason } => {
            let app = app(name)?;
            let v = version(v)?;
            Report::Deployed(match file {
                Some(file) => crate::engine::deploy::deploy(
                    &app,
                    &crate::engine::deploy::DeployRequest {
                        archive: Some(file.clone()),
                        expected: None,
                        version: v,
                        force: *force,
                        reason: reason.clone(),
                        fetched: None,
                        delta: None,
                        epoch: None,
                    },
                    cli.wait,
                    print,
                )?,
                None => crate::engine::pull::deploy_version(&app, &v, *force, reason.clone(), cli.wait, print, rt)?,
            })
        }
        Command::Rollback { app: name, to, reason, force } => {
            let to = to.as_deref().map(version).transpose()?;
            let app = app(name)?;
            Report::RolledBack(crate::engine::rollback::rollback(
                &app,
                to.as_ref(),
                reason.as_deref(),
                *force,
                cli.wait,
                print,
            )?)
        }
        Command::Status { app: name } => {
            let config = load_config(cli)?;
            let names: Vec<String> = match name {
                Some(n) => {
                    config.app(n)?;
                    vec![n.clone()]
                }
                None => config.apps.keys().cloned().collect(),
            };
            let mut all = Vec::new();
            for n in names {
                all.push(crate::engine::status::app_status(&App::from_config(&config, &n)?)?);
            }
            Report::Status(all)
        }
        Command::Releases { app: name } => {
            let app = app(name)?;
            let mut s = crate::engine::status::app_status(&app)?;
            crate::engine::status::with_usage(&app, &mut s)?;
            Report::Releases(Box::new(s))
        }
        Command::History { app: name, limit } => {
            let app = app(name)?;
            let mut events = history::read(&app.history_path())?;
            if let Some(n) = limit {
                events.drain(..events.len().saturating_sub(*n));
            }
            Report::History { app: app.name, events }
        }
        Command::Report { app: name, since } => {
            let app = app(name)?;
            let events = history::read(&app.history_path())?;
            Report::Delivery { app: app.name, figures: crate::engine::delivery::of_history(&events, *since) }
        }
        Command::Pin { app: name, version: v, reason, force } => {
            let v = version(v)?;
            Report::Pinned(crate::engine::pin::pin(&app(name)?, &v, reason.as_deref(), *force, cli.wait)?)
        }
        Command::Clear { app: name, bad, all_bad, reason } => {
            let bad = bad.iter().map(|v| version(v)).collect::<Result<Vec<_>, _>>()?;
            Report::Cleared(crate::engine::clear::clear(&app(name)?, &bad, *all_bad, reason.as_deref(), cli.wait)?)
        }
        Command::Unpin { app: name } => {
            Report::Unpinned { was: crate::engine::pin::unpin(&app(name)?, cli.wait)?, app: name.clone() }
        }
        Command::Prune { app: name, keep } => {
            if *keep == Some(0) {
                return Err(Error::Usage("--keep must be at least 1".into()).into());
            }
            Report::Pruned(crate::engine::retention::prune(&app(name)?, *keep, cli.wait, print)?)
        }
        Command::Check { app: name } => {
            let app = app(name)?;
            let results = crate::engine::status::check_now(&app)?;
            let failed = results.iter().find(|r| !r.ok).map(|bad| Error::CheckFailed {
                app: app.name.clone(),
                reason: format!("{}: {}", bad.check, bad.detail),
            });
            Report::Checked { app: app.name, results, failed }
        }
        Command::Config { command: ConfigCommand::Check } => {
            let path = config_path(cli);
            let config = Config::load(&path)?;
            Report::ConfigChecked { apps: config.apps.keys().cloned().collect(), path }
        }
        Command::Demo { keep } => {
            crate::demo::run(*keep)?;
            Report::Done
        }
        Command::DemoService(args) => {
            crate::demo::serve(args)?;
            Report::Done
        }
    })
}
