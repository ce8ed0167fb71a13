use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match switchback::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                e.exit();
            }
            // Under --json, an argument error is a JSON document too.
            if std::env::args().any(|a| a == "--json") {
                use std::io::Write;
                let full = e.to_string();
                let text = full.lines().next().unwrap_or("").trim_start_matches("error: ").to_owned();
                let code = switchback::exit::USAGE;
                let doc =
                    serde_json::json!({ "schema": switchback::cli::JSON_SCHEMA, "error": text, "exit_code": code });
                let _ = writeln!(std::io::stdout(), "{doc}");
                let _ = e.print();
                return ExitCode::from(code);
            }
            e.exit();
        }
    };
    // Our own messages at info; other crates' only when they warn.
    let default = if cli.quiet { "warn" } else { "warn,switchback=info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHBACK_LOG").unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .init();
    let json = cli.json;
    match switchback::cli::run(cli) {
        Ok(code) => ExitCode::from(code),
        // The reader of stdout went away (`status | head`): nothing failed, nothing to say.
        Err(e) if switchback::cli::stdout_closed(&e) => ExitCode::SUCCESS,
        Err(e) => {
            use std::io::Write;
            let code = switchback::error::code_for(&e);
            // Written without panicking: stderr or stdout may be closed too.
            let _ = writeln!(std::io::stderr(), "error: {e:#}");
            if json {
                let doc = serde_json::json!({ "schema": switchback::cli::JSON_SCHEMA, "error": format!("{e:#}"), "exit_code": code });
                let _ = writeln!(std::io::stdout(), "{doc}");
            }
            ExitCode::from(code)
        }
    }
}
