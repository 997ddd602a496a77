//! The `edgeplex` binary: parse the command line, set up logging, dispatch, map errors to exit
//! codes. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use edgeplex::cli::{Cli, Command, RingCommand};
use edgeplex::config::Config;
use edgeplex::Error;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match dispatch(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgeplex: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn dispatch(cli: &Cli) -> Result<(), Error> {
    let env = std::env::vars;
    match &cli.command {
        Command::Run(args) => {
            let config = edgeplex::config::load(
                args.config.as_deref(),
                env(),
                &args.overrides(cli.log_overrides()),
            )?;
            logging(&config)?;
            if args.check {
                edgeplex::agent::check_ring_dir(&config)?;
                print!("{}", config.to_toml());
                return Ok(());
            }
            edgeplex::agent::run(&config, &Default::default(), |_| {})?;
            Ok(())
        }
        Command::Failover(args) => {
            let config = args.load(env(), cli.log_overrides())?;
            logging(&config)?;
            if args.check {
                print!("{}", config.to_toml());
                return Ok(());
            }
            Ok(edgeplex::failover::run(&config.failover, &config.kube)?)
        }
        Command::Devices(args) => {
            let config = args.load(env(), cli.log_overrides())?;
            logging(&config)?;
            use edgeplex::discovery::DevicesError;
            match edgeplex::discovery::devices_command(args, &config) {
                Ok(text) => {
                    use std::io::Write;
                    // A closed pipe (`| head`) is not an error worth a message.
                    let _ = std::io::stdout().lock().write_all(text.as_bytes());
                    Ok(())
                }
                Err(DevicesError::Usage(m)) => Err(edgeplex::config::ConfigError(m).into()),
                Err(DevicesError::Scan(m)) => Err(Error::Tool(anyhow::anyhow!(m))),
            }
        }
        command => {
            // The tools take no configuration file; the log flags and variables still apply.
            let config = edgeplex::config::load_without_file(
                env().filter(|(k, _)| k == "EDGEPLEX_LOG" || k == "EDGEPLEX_LOG_FORMAT"),
                &cli.log_overrides(),
            )?;
            logging(&config)?;
            match command {
                Command::Ring(RingCommand::Ls { dir, json }) => {
                    Ok(edgeplex::ringtool::ls(dir, *json)?)
                }
                Command::Ring(RingCommand::Inspect { path, json }) => {
                    Ok(edgeplex::ringtool::inspect(path, *json)?)
                }
                Command::Ring(RingCommand::Cat(args)) => Ok(edgeplex::ringtool::cat(args)?),
                Command::Demo(args) => Ok(edgeplex::demo::run(args)?),
                Command::Bench(args) => Ok(edgeplex::bench::run(args)?),
                Command::Export(args) => Ok(edgeplex::export::run(args)?),
                Command::BenchReader(args) => Ok(edgeplex::bench::run_reader(args)?),
                Command::Run(_) | Command::Failover(_) | Command::Devices(_) => {
                    unreachable!("handled above")
                }
            }
        }
    }
}

fn logging(config: &Config) -> Result<(), Error> {
    edgeplex::telemetry::init(config.log.format, config.log.level.as_str()).map_err(Error::Tool)
}

/// Help and version go to stdout with success; a usage error is clap's whole message (which
/// names the argument, lists allowed values, suggests a similar subcommand) and exit 64.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let _ = e.print();
    match e.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
        _ => ExitCode::from(edgeplex::EXIT_CONFIG),
    }
}
