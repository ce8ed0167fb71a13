//! The man pages and shell completion scripts, generated from the clap definitions of [`Cli`] (with
//! `clap_mangen` and `clap_complete`), so they never drift from the command line. Hidden commands (the demo's
//! service, the man page writer) are left out of both.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use roff::{bold, italic, roman, Roff};

use super::Cli;

/// The man page section of every page.
const SECTION: &str = "1";

/// The command line as people see it: [`Cli`] without its hidden subcommands (clap_complete would offer them).
pub fn visible_command() -> clap::Command {
    let full = Cli::command();
    let subcommands: Vec<clap::Command> = full.get_subcommands().filter(|s| !s.is_hide_set()).cloned().collect();
    let mut cmd = clap::Command::new("switchback")
        .version(env!("CARGO_PKG_VERSION"))
        .args(full.get_arguments().cloned())
        .subcommands(subcommands)
        .subcommand_required(full.is_subcommand_required_set());
    if let Some(about) = full.get_about() {
        cmd = cmd.about(about.clone());
    }
    if let Some(after) = full.get_after_help() {
        cmd = cmd.after_help(after.clone());
    }
    cmd
}

/// The completion script for `shell`.
pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
    let mut cmd = visible_command();
    // Into memory: clap_complete panics on a write error (a closed pipe), and the caller reports it instead.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "switchback", &mut script);
    script
}

/// Writes `switchback.1` and one page per command (`switchback-deploy.1`, `switchback-fleet-status.1`, ...) into
/// `dir`, which must exist; returns the files written.
pub fn manpages(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut cmd = visible_command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    write_page(&cmd, dir, true, &mut written)?;
    Ok(written)
}

fn write_page(cmd: &clap::Command, dir: &Path, top: bool, written: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name()).to_owned();
    let man = clap_mangen::Man::new(cmd.clone())
        .title(name.to_uppercase())
        .section(SECTION)
        .source(format!("switchback {}", env!("CARGO_PKG_VERSION")))
        .manual("Switchback Manual");
    // Each part is rendered on its own, each with roff's preamble (the definition of an apostrophe): the page
    // keeps the first.
    let preamble = Roff::new().render();
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let mut part = |render: &dyn Fn(&mut Vec<u8>) -> std::io::Result<()>| -> std::io::Result<()> {
        let mut buf = Vec::new();
        render(&mut buf)?;
        parts.push(buf);
        Ok(())
    };
    part(&|w| man.render_title(w))?;
    part(&|w| man.render_name_section(w))?;
    part(&|w| man.render_synopsis_section(w))?;
    part(&|w| man.render_description_section(w))?;
    if top {
        part(&|w| description().to_writer(w))?;
    }
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        part(&|w| man.render_options_section(w))?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        part(&|w| man.render_subcommands_section(w))?;
    }
    let mut tail = Roff::new();
    if top {
        exit_status(&mut tail);
        files(&mut tail);
        environment(&mut tail);
    }
    see_also(&mut tail, top.then_some(cmd), &name);
    part(&|w| tail.to_writer(w))?;
    let mut page = preamble.clone().into_bytes();
    for p in &parts {
        page.extend_from_slice(p.strip_prefix(preamble.as_bytes()).unwrap_or(p));
    }
    let path = dir.join(format!("{name}.{SECTION}"));
    std::fs::write(&path, page)?;
    written.push(path);
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_page(sub, dir, false, written)?;
    }
    Ok(())
}

/// What the tool is, after the one-line description clap gives.
fn description() -> Roff {
    let mut r = Roff::new();
    r.control("PP", []);
    r.text([roman(
        "Switchback is a host-level atomic deployment agent. Each release is verified and unpacked into its own \
         immutable directory ROOT/releases/VERSION, then ROOT/current is switched atomically; Switchback restarts \
         the service and runs its health checks, and swaps back to the last good release on its own when the new \
         one is not healthy.",
    )]);
    r.control("PP", []);
    r.text([
        bold("switchback daemon"),
        roman(
            " (the systemd unit switchback.service) follows each configured app's signed channel manifest in an \
             artifact bucket or a local inbox and deploys what it names. Operators use ",
        ),
        bold("status"),
        roman(", "),
        bold("rollback"),
        roman(", "),
        bold("deploy"),
        roman(", "),
        bold("pin"),
        roman(", "),
        bold("history"),
        roman(" and "),
        bold("prune"),
        roman(" by hand, with or without the daemon; CI uses "),
        bold("keygen"),
        roman(" once and "),
        bold("publish"),
        roman(" for each release."),
    ]);
    r
}

fn exit_status(r: &mut Roff) {
    r.control("SH", ["EXIT STATUS"]);
    for (code, meaning) in crate::exit::TABLE {
        r.control("TP", []);
        r.text([bold(code.to_string())]);
        r.text([roman(*meaning)]);
    }
}

fn files(r: &mut Roff) {
    r.control("SH", ["FILES"]);
    for (path, what) in [
        (
            crate::config::DEFAULT_PATH,
            "The configuration (TOML): the agent's settings and one [apps.NAME] table per app. Another file is given \
             with --config or SWITCHBACK_CONFIG. As root, it must be writable by root alone.",
        ),
        (
            "/var/lib/switchback",
            "The state directory (the default state_dir): per app, its state, history, release indexes, lock and \
             downloads. Root's alone (mode 0700).",
        ),
        ("ROOT/releases/VERSION", "One immutable directory per release of an app whose root is ROOT."),
        ("ROOT/current", "The symbolic link to the live release, only ever replaced by rename(2)."),
    ] {
        r.control("TP", []);
        r.text([italic(path)]);
        r.text([roman(what)]);
    }
}

fn environment(r: &mut Roff) {
    r.control("SH", ["ENVIRONMENT"]);
    for (var, what) in [
        ("SWITCHBACK_CONFIG", "The configuration file, when --config is not given."),
        ("SWITCHBACK_LOG", "A log filter (for example debug, or warn,switchback=debug) for the lines on stderr."),
        (
            "AWS_*, AZURE_*, GOOGLE_*",
            "Bucket credentials and settings for s3://, az:// and gs:// sources (never in a URL). For the daemon, set \
             them in a drop-in of switchback.service (systemctl edit switchback).",
        ),
        (
            "NOTIFY_SOCKET, WATCHDOG_USEC",
            "Set by systemd: the daemon reports READY=1, its status and watchdog pings there.",
        ),
    ] {
        r.control("TP", []);
        r.text([bold(var)]);
        r.text([roman(what)]);
    }
}

/// The other pages: the parent's from a command's page; from the top page, every command's, and systemd's.
fn see_also(r: &mut Roff, top: Option<&clap::Command>, name: &str) {
    r.control("SH", ["SEE ALSO"]);
    let mut refs: Vec<String> = Vec::new();
    match top {
        Some(cmd) => {
            refs.extend(cmd.get_subcommands().filter(|s| !s.is_hide_set()).map(|s| format!("{name}-{}", s.get_name())));
            refs.extend(["systemctl", "systemd.service"].map(String::from));
        }
        None => {
            // switchback-fleet-status -> switchback-fleet, switchback.
            let mut parent = name;
            while let Some((p, _)) = parent.rsplit_once('-') {
                refs.push(p.to_owned());
                parent = p;
            }
        }
    }
    let mut line = Vec::new();
    for (i, page) in refs.iter().enumerate() {
        if i > 0 {
            line.push(roman(", "));
        }
        let section = if page == "systemd.service" { "5" } else { SECTION };
        line.push(bold(page.clone()));
        line.push(roman(format!("({section})")));
    }
    r.text(line);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_offer_every_visible_command_and_no_hidden_one() {
        let visible: Vec<String> = visible_command().get_subcommands().map(|s| s.get_name().to_owned()).collect();
        assert!(visible.contains(&"deploy".to_owned()) && visible.contains(&"completions".to_owned()), "{visible:?}");
        for shell in [clap_complete::Shell::Bash, clap_complete::Shell::Zsh, clap_complete::Shell::Fish] {
            let text = String::from_utf8(completions(shell)).unwrap();
            for name in &visible {
                assert!(text.contains(name.as_str()), "{shell}: no {name}");
            }
            assert!(!text.contains("demo-service") && !text.contains("manpages"), "{shell} offers a hidden command");
        }
    }

    #[test]
    fn man_pages_cover_every_command_with_its_parents_in_see_also() {
        let dir = tempfile::tempdir().unwrap();
        let written = manpages(dir.path()).unwrap();
        let names: Vec<String> =
            written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
        for want in ["switchback.1", "switchback-deploy.1", "switchback-fleet.1", "switchback-fleet-status.1"] {
            assert!(names.contains(&want.to_owned()), "{names:?}");
        }
        assert!(!names.iter().any(|n| n.contains("demo-service") || n.contains("manpages") || n.contains("help")));
        let top = std::fs::read_to_string(dir.path().join("switchback.1")).unwrap();
        assert!(top.contains("\n.TH SWITCHBACK 1 "), "{top}");
        for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "SUBCOMMANDS", "EXIT STATUS", "FILES"] {
            assert!(
                top.contains(&format!(".SH {section}")) || top.contains(&format!(".SH \"{section}\"")),
                "{section}"
            );
        }
        let status = std::fs::read_to_string(dir.path().join("switchback-fleet-status.1")).unwrap();
        let see_also = &status[status.find(".SH \"SEE ALSO\"").expect("a SEE ALSO section")..];
        assert!(see_also.contains("\\fBswitchback\\-fleet\\fR(1)"), "{see_also}");
        assert!(see_also.contains("\\fBswitchback\\fR(1)"), "{see_also}");
    }
}
