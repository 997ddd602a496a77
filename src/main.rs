//! The `edgeplex` binary: parse the command line, set up logging, dispatch, map errors to exit
//! codes. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use edgeplex::cli::{Cli, Command, RingCommand};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = edgeplex::telemetry::init(cli.log_format, &cli.log) {
        eprintln!("edgeplex: {e:#}");
        return ExitCode::from(edgeplex::EXIT_CONFIG);
    }
    let result = match &cli.command {
        Command::Ring(RingCommand::Ls { dir, json }) => edgeplex::ringtool::ls(dir, *json),
        Command::Ring(RingCommand::Inspect { path, json }) => {
            edgeplex::ringtool::inspect(path, *json)
        }
        Command::Ring(RingCommand::Cat(args)) => edgeplex::ringtool::cat(args),
        Command::Demo(args) => edgeplex::demo::run(args),
        Command::Bench(args) => edgeplex::bench::run(args),
        Command::BenchReader(args) => edgeplex::bench::run_reader(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgeplex: {e:#}");
            ExitCode::from(edgeplex::exit_code(&e))
        }
    }
}
