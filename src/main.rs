//! The `edgeplex` binary: parse the command line, set up logging, dispatch, map errors to exit
//! codes. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use edgeplex::cli::{Cli, Command, LogFormat, RingCommand};
use edgeplex::config::{self, Overrides};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    let result = match &cli.command {
        Command::Run(args) => {
            let flags = Overrides {
                set: args.set.clone(),
                ring_dir: args.ring_dir.clone(),
                metrics_listen: args.metrics_listen.clone(),
                log: cli.log.clone(),
                log_format: cli.log_format.map(|f| f.as_str().to_owned()),
            };
            let config = match config::load(args.config.as_deref(), std::env::vars(), &flags) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("edgeplex: {e}");
                    return ExitCode::from(edgeplex::EXIT_CONFIG);
                }
            };
            let format = LogFormat::from_name(&config.log.format).unwrap_or(LogFormat::Text);
            if let Err(e) = edgeplex::telemetry::init(format, &config.log.level) {
                eprintln!("edgeplex: {e:#}");
                return ExitCode::from(edgeplex::EXIT_CONFIG);
            }
            if args.check {
                println!("{config:#?}");
                Ok(())
            } else {
                edgeplex::agent::run(&config, None)
            }
        }
        command => {
            let env = |k: &str| std::env::var(k).ok();
            let format = cli
                .log_format
                .or_else(|| env("EDGEPLEX_LOG_FORMAT").and_then(|f| LogFormat::from_name(&f)))
                .unwrap_or(LogFormat::Text);
            let filter = cli
                .log
                .clone()
                .or_else(|| env("EDGEPLEX_LOG"))
                .unwrap_or_else(|| "info".into());
            if let Err(e) = edgeplex::telemetry::init(format, &filter) {
                eprintln!("edgeplex: {e:#}");
                return ExitCode::from(edgeplex::EXIT_CONFIG);
            }
            match command {
                Command::Ring(RingCommand::Ls { dir, json }) => edgeplex::ringtool::ls(dir, *json),
                Command::Ring(RingCommand::Inspect { path, json }) => {
                    edgeplex::ringtool::inspect(path, *json)
                }
                Command::Ring(RingCommand::Cat(args)) => edgeplex::ringtool::cat(args),
                Command::Demo(args) => edgeplex::demo::run(args),
                Command::Bench(args) => edgeplex::bench::run(args),
                Command::Failover(args) => edgeplex::failover::run(args),
                Command::Export(args) => edgeplex::export::run(args),
                Command::BenchReader(args) => edgeplex::bench::run_reader(args),
                Command::Run(_) => unreachable!("handled above"),
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgeplex: {e:#}");
            ExitCode::from(edgeplex::exit_code(&e))
        }
    }
}

/// Help and version go to stdout with success; a usage error is one line and exit 64.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = e.print();
            ExitCode::SUCCESS
        }
        _ => {
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or_default()
                .trim_start_matches("error: ");
            eprintln!("edgeplex: {first}; see edgeplex --help");
            ExitCode::from(edgeplex::EXIT_CONFIG)
        }
    }
}
