use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    ddms::cli::run(ddms::cli::Cli::parse())
}
