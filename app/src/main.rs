//! The `ddms` binary: installs jemalloc as the global allocator, parses the command line and
//! hands it to the library's [`ddms::cli::run`], whose exit status it returns.

use std::process::ExitCode;

use clap::Parser;

/// jemalloc, configured in `.cargo/config.toml`, gives memory back after a burst on its own;
/// glibc's malloc keeps freed pages between live allocations resident until `malloc_trim`.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // Before anything opens a database: SQLite takes its allocator only before its first use.
    if let Err(e) = ddms::allocator::route_sqlite_memory() {
        eprintln!("ddms: {e}");
    }
    ddms::cli::run(ddms::cli::Cli::parse())
}
