//! The `dhtnode` command: a trackerless BitTorrent node. See `dhtnode --help`.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    cli::main()
}
