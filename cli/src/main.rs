//! `followup`: the dev stack, tokens, and the admin client.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cases;
mod client;
mod demo;
mod dev;
mod engagement;
mod keys;
mod nats_auth;
mod notifications;
mod plans;
mod scheduler;
mod services;

#[derive(Parser)]
#[command(
    name = "followup",
    version,
    about = "Followup: every treatment plan, no-show and cancellation followed up"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole system on this machine: NATS, PostgreSQL and all five services.
    Dev(dev::DevArgs),
    /// Print a staff token signed with the dev stack's key (for grpcurl and the admin commands).
    Token(keys::TokenArgs),
    /// NATS users: every service's and the admin's credentials, a clinic integration's, the server's
    /// users.conf.
    NatsAuth(nats_auth::NatsAuthArgs),
    /// The engagement service: who viewed a plan, when, for how long and what.
    Engagement(engagement::EngagementArgs),
    /// The plans service: catalogue, fee schedules, and plans from draft to completion.
    Plans(Box<plans::PlansArgs>),
    /// The notifications service: contacts, requests, replies, tasks, and what patients received.
    Notifications(Box<notifications::NotificationsArgs>),
    /// The cases service: the follow-up list, a case's timeline, the queue and the leakage report.
    Cases(Box<cases::CasesArgs>),
    /// The scheduler: automation rules (list, show, play, pause, templates), enrollments and timelines.
    Rules(Box<scheduler::RulesArgs>),
    /// A narrated minute of the whole system against a running stack: a plan sent, read, followed up,
    /// a no-show recovered, a STOP honoured, a booking, the leakage report.
    Demo(Box<demo::DemoArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("followup: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => dev::run(args).await,
            Command::Token(args) => keys::print_token(args),
            Command::NatsAuth(args) => nats_auth::run(args),
            Command::Engagement(args) => engagement::run(args).await,
            Command::Plans(args) => plans::run(*args).await,
            Command::Notifications(args) => notifications::run(*args).await,
            Command::Rules(args) => scheduler::run(*args).await,
            Command::Cases(args) => cases::run(*args).await,
            Command::Demo(args) => demo::run(*args).await,
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("followup: {err:#}");
            ExitCode::FAILURE
        }
    }
}
