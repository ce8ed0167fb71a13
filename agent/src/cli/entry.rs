//! The edges of a run: parsing the arguments (under `--json`, an argument error is a JSON document too), the log
//! set-up, and turning the result into an exit code with the error said once on stderr (and as JSON on stdout
//! under `--json`).

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use super::{Cli, JSON_SCHEMA};

/// The parsed command line, or the exit code of an argument error (or of `--help` / `--version`), already said.
pub fn parse() -> Result<Cli, ExitCode> {
    let e = match Cli::try_parse() {
        Ok(cli) => return Ok(cli),
        Err(e) => e,
    };
    use clap::error::ErrorKind;
    if !matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion)
        && std::env::args().any(|a| a == "--json")
    {
        let code = crate::exit::USAGE;
        let doc =
            serde_json::json!({ "schema": JSON_SCHEMA, "error": usage_error_text(&e.to_string()), "exit_code": code });
        let _ = writeln!(std::io::stdout(), "{doc}");
        let _ = e.print();
        return Err(ExitCode::from(code));
    }
    let _ = e.print();
    Err(ExitCode::from(e.exit_code().clamp(0, 255) as u8))
}

/// clap's message without its `error: ` prefix and its usage lines, on one line: what is wrong and with what
/// ("the following required arguments were not provided: `--version <VERSION>`").
fn usage_error_text(full: &str) -> String {
    let body = full.split("\nUsage:").next().unwrap_or(full);
    let words: Vec<&str> = body.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    words.join(" ").trim_start_matches("error: ").to_owned()
}

/// Our own messages at info (warnings only with `--quiet`); other crates' only when they warn. `SWITCHBACK_LOG`
/// overrides it.
pub fn init_logging(quiet: bool) {
    let default = if quiet { "warn" } else { "warn,switchback=info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHBACK_LOG").unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .init();
}

/// The exit code of a run, with its error said: on stderr, and under `--json` as a document on stdout.
pub fn finish(result: anyhow::Result<u8>, json: bool) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        // The reader of stdout went away (`status | head`): nothing failed, nothing to say.
        Err(e) if super::stdout_closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            let code = crate::error::code_for(&e);
            // Written without panicking: stderr or stdout may be closed too.
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            if json {
                let doc = serde_json::json!({ "schema": JSON_SCHEMA, "error": format!("{e:#}"), "exit_code": code });
                let _ = writeln!(std::io::stdout(), "{doc}");
            }
            ExitCode::from(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_usage_error_says_what_is_missing_on_one_line() {
        let e = Cli::try_parse_from(["switchback", "--json", "deploy", "web"]).unwrap_err();
        let text = usage_error_text(&e.to_string());
        assert!(text.starts_with("the following required arguments were not provided:"), "{text}");
        assert!(text.contains("--version"), "{text}");
        assert!(!text.contains("Usage") && !text.contains('\n'), "{text}");
    }
}
