use std::process::ExitCode;

fn main() -> ExitCode {
    followup_platform::service::main(
        followup_engagement::INFO,
        &followup_engagement::MIGRATOR,
        followup_engagement::Settings::default(),
        followup_engagement::Service::build,
    )
}
