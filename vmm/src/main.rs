//! The `arbiter` binary: parse the command line and run.

use clap::Parser;
use vmm::cli::{Cli, Command};

fn main() {
    vmm::mark_start();
    let cli = Cli::parse();
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
