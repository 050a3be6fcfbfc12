//! The `arbiter` binary: parse the command line and run.

use clap::error::ErrorKind;
use clap::Parser;
use vmm::cli::{Cli, Command};

fn main() {
    vmm::mark_start();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
            _ => {
                // One line, like every other arbiter error.
                let msg = e.to_string();
                let first = msg.lines().next().unwrap_or("invalid arguments");
                eprintln!(
                    "arbiter: {} (see 'arbiter run --help')",
                    first.trim_start_matches("error: ")
                );
                std::process::exit(2);
            }
        },
    };
    let code = match cli.command {
        Command::Run(args) => match vmm::run(&args) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("arbiter: {e}");
                1
            }
        },
    };
    std::process::exit(code);
}
