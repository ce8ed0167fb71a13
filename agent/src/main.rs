//! The `switchback` binary: parse, set up logging, build the one runtime, run the command, exit with its code.
//! Everything else is in the library.

use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    let cli = match switchback::cli::parse() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    switchback::cli::init_logging(cli.quiet);
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            return switchback::cli::finish(Err(anyhow::anyhow!("cannot start the async runtime: {e}")), cli.json)
        }
    };
    let json = cli.json;
    let result = switchback::cli::run(cli, &rt);
    // Work given up on at a daemon's shutdown (a stuck worker) must not keep the process alive.
    rt.shutdown_timeout(Duration::from_secs(1));
    switchback::cli::finish(result, json)
}
