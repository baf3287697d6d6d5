use std::process::ExitCode;

fn main() -> ExitCode {
    followup_platform::service::main(
        followup_notifications::INFO,
        &followup_notifications::MIGRATOR,
        followup_notifications::Settings::default(),
        followup_notifications::Service::build,
    )
}
