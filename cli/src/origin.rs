//! Where a setting came from (a flag, or an environment variable), so that
//! an error about it names what the user has to change.

use std::sync::OnceLock;

use clap::parser::ValueSource;
use clap::ArgMatches;

/// Settings that may come from the environment: (variable, flag, arg id).
const FROM_ENV: [(&str, &str, &str); 2] = [
    ("LABSPAN_CLUSTER", "--cluster", "cluster"),
    ("LABSPAN_ACCEL", "--accel", "accel"),
];

/// Where this command's `--cluster` and `--accel` came from.
#[derive(Debug, Default)]
struct Origins {
    cluster: Option<ValueSource>,
    accel: Option<ValueSource>,
}

static ORIGINS: OnceLock<Origins> = OnceLock::new();

/// Notes where the command's settings came from (once, after parsing).
pub fn record(matches: &ArgMatches) {
    let mut leaf = matches;
    while let Some((_, sub)) = leaf.subcommand() {
        leaf = sub;
    }
    let source = |id: &str| match leaf.try_get_raw(id) {
        Ok(Some(_)) => leaf.value_source(id),
        _ => None,
    };
    let _ = ORIGINS.set(Origins {
        cluster: source("cluster"),
        accel: source("accel"),
    });
}

/// How to name the cluster file in an error: `LABSPAN_CLUSTER` when the
/// value came from there, else `--cluster`.
pub fn cluster() -> &'static str {
    match ORIGINS.get().and_then(|o| o.cluster) {
        Some(ValueSource::EnvVariable) => "LABSPAN_CLUSTER",
        _ => "--cluster",
    }
}

/// Whether `--accel` was written on the command line (not from LABSPAN_ACCEL).
pub fn accel_on_command_line() -> bool {
    ORIGINS
        .get()
        .and_then(|o| o.accel)
        .is_some_and(|s| s == ValueSource::CommandLine)
}

/// Prints clap's error and exits; when the bad value came from an
/// environment variable, says which (clap names only the flag).
pub fn explain_and_exit(e: clap::Error) -> ! {
    use clap::error::ErrorKind as K;
    if matches!(e.kind(), K::InvalidValue | K::ValueValidation | K::NoEquals) {
        let text = e.render().to_string();
        let args: Vec<String> = std::env::args().collect();
        let on_line = |flag: &str| {
            args.iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
        };
        for (var, flag, _) in FROM_ENV {
            let Some(value) = std::env::var_os(var) else {
                continue;
            };
            if !text.contains(flag) || on_line(flag) {
                continue;
            }
            // clap's own first paragraph, without its "try --help" tail.
            let first = text.split("\n\n").next().unwrap_or(&text);
            eprintln!("{}", first.trim_end());
            if value.is_empty() {
                eprintln!(
                    "  note: the value comes from the environment variable {var}, which is set but empty: \
                     set it, or unset it (`unset {var}`)"
                );
            } else {
                eprintln!(
                    "  note: the value comes from the environment variable {var}={}",
                    value.to_string_lossy()
                );
            }
            std::process::exit(2);
        }
    }
    e.exit()
}
