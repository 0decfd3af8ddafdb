//! `spinel`: the command-line front end. A thin shell over spinel-runtime.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "spinel",
    version,
    about = "Run Llama-family models from GGUF files"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the kernel ISA this CPU uses (and all it supports).
    Isa,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result: Result<(), String> = match cli.command {
        Command::Isa => {
            let k = spinel_quant::Kernels::get();
            println!("selected: {}", k.isa());
            let all: Vec<_> = spinel_quant::Isa::supported().map(|i| i.name()).collect();
            println!("supported: {}", all.join(", "));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spinel: {e}");
            ExitCode::FAILURE
        }
    }
}
