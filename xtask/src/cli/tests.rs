//! The command line parsed as `main` parses it: flag names, defaults, refusals, `--help`.

use super::*;
use crate::deploy;
use clap::CommandFactory;

#[test]
fn the_command_line_definition_is_consistent() {
    Cli::command().debug_assert();
}

fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied()))
}

fn deploy_options(args: &[&str]) -> Result<deploy::Options> {
    match parse(args)?.task {
        Task::Deploy(d) => d.options(),
        Task::Rollback(r) => r.options(),
        Task::Status(s) => s.options(),
        Task::Provision(p) => p.options(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_existing_flags_keep_their_names_and_meaning() {
    let o = deploy_options(&[
        "deploy",
        "--env",
        "staging",
        "--version",
        "0.2.0",
        "--batch",
        "2",
        "--artifact",
        "a.tar.gz",
        "--inventory",
        "i.yml",
        "--report",
        "r.json",
    ])
    .unwrap();
    assert_eq!((o.env.as_str(), o.batch), ("staging", 2));
    assert_eq!(o.version.as_deref(), Some("0.2.0"));
    assert_eq!(o.artifact, Some(PathBuf::from("a.tar.gz")));
    assert_eq!(o.inventory, Some(PathBuf::from("i.yml")));
    assert_eq!(o.report, Some(PathBuf::from("r.json")));
    assert!(!o.dry_run);
    assert!(deploy_options(&["deploy", "--version", "1"]).is_err());
    assert!(deploy_options(&["deploy", "--env", "a/b"]).is_err());
    assert!(deploy_options(&["deploy", "--env", "a", "--batch", "0"]).is_err());
    assert!(deploy_options(&["status", "--env", "a", "--version", "1"]).is_err());
    let p = deploy_options(&["provision", "--env", "e", "--", "--check", "-v"]).unwrap();
    assert_eq!(p.playbook_args, ["--check", "-v"]);
    let p = deploy_options(&["provision", "--env", "e", "--auto-approve"]).unwrap();
    assert!(p.auto_approve && p.playbook_args.is_empty());

    match parse(&["test", "--no-smoke"]).unwrap().task {
        Task::Test {
            no_smoke,
            no_install,
        } => assert!(no_smoke && !no_install),
        other => panic!("{other:?}"),
    }
    match parse(&["fuzz", "--target", "a", "--target", "b", "--seconds", "5"])
        .unwrap()
        .task
    {
        Task::Fuzz {
            seconds, targets, ..
        } => assert_eq!((seconds, targets), (5, vec!["a".into(), "b".into()])),
        other => panic!("{other:?}"),
    }
    assert!(parse(&["fuzz", "--seconds", "0"]).is_err());
    match parse(&["image"]).unwrap().task {
        Task::Image { repository, .. } => assert_eq!(repository, "ddms"),
        other => panic!("{other:?}"),
    }
    match parse(&["bench", "ingest", "--seconds", "3", "--rate", "100"])
        .unwrap()
        .task
    {
        Task::Bench { bench } => assert_eq!(
            bench.driver_args(),
            (
                "ingest",
                ["--seconds", "3", "--rate", "100"]
                    .map(String::from)
                    .to_vec()
            )
        ),
        other => panic!("{other:?}"),
    }
    match parse(&[
        "bench",
        "mqtt-fleet",
        "--devices",
        "10",
        "--interval-s",
        "2",
    ])
    .unwrap()
    .task
    {
        Task::Bench { bench } => assert_eq!(
            bench.driver_args(),
            (
                "mqtt-fleet",
                ["--devices", "10", "--interval-s", "2"]
                    .map(String::from)
                    .to_vec()
            )
        ),
        other => panic!("{other:?}"),
    }
    match parse(&["bench", "api", "--clients", "8"]).unwrap().task {
        Task::Bench { bench } => assert_eq!(
            bench.driver_args(),
            ("api", ["--clients", "8"].map(String::from).to_vec())
        ),
        other => panic!("{other:?}"),
    }
}

fn certs_options(args: &[&str]) -> Result<certs::Options> {
    let mut full = vec!["certs"];
    full.extend_from_slice(args);
    match parse(&full)?.task {
        Task::Certs {
            out,
            hosts,
            devices,
            days,
            force,
        } => Task::certs_options(&out, &hosts, &devices, days, force),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_arguments_are_refused() {
    assert!(certs_options(&["--days", "0"]).is_err());
    assert!(certs_options(&["--device", "../etc/passwd"]).is_err());
    assert!(certs_options(&["--host"]).is_err());
    assert!(certs_options(&["--bogus"]).is_err());
    let ok = certs_options(&["--out", "x", "--host", "h", "--device", "d-1", "--force"]).unwrap();
    assert!(ok.force && ok.hosts == ["h"] && ok.devices == ["d-1"]);
    assert_eq!(certs_options(&[]).unwrap().out, PathBuf::from("certs"));
    for bad in [
        &["fuzz", "--seconds"][..],
        &["fuzz", "--seconds", "0"],
        &["fuzz", "--seconds", "x"],
        &["fuzz", "--what"],
        &["bench"],
        &["bench", "nope"],
        &["nope"],
    ] {
        assert!(parse(bad).is_err(), "{bad:?}");
    }
    match parse(&["fuzz"]).unwrap().task {
        Task::Fuzz {
            seconds,
            targets,
            dev,
        } => assert_eq!(
            (seconds, targets.len(), dev),
            (fuzz::DEFAULT_SECONDS, 0, false)
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn hosts_limit_dry_run_and_rollback_to() {
    let o = deploy_options(&[
        "deploy",
        "--env",
        "e",
        "--hosts",
        "web1,web2",
        "--limit",
        "web3",
        "--dry-run",
    ])
    .unwrap();
    assert_eq!(o.hosts, ["web1", "web2", "web3"]);
    assert!(o.dry_run);
    let o = deploy_options(&["rollback", "--env", "e", "--to", "0.2.0"]).unwrap();
    assert_eq!(o.to.as_deref(), Some("0.2.0"));
    let err = deploy_options(&["rollback", "--env", "e", "--to", "../x"]).unwrap_err();
    assert!(err.to_string().contains("release name"), "{err}");
    assert!(deploy_options(&["status", "--env", "e", "--to", "1"]).is_err());
}

/// Every task and subcommand answers `--help`: exit status 0 and its usage, through the
/// same parser `main` uses (the e2e suite asks the built binary too).
#[test]
fn every_task_and_subcommand_answers_help() {
    let paths = command_paths();
    assert!(paths.len() > 15, "{paths:?}");
    for path in paths {
        let mut args: Vec<&str> = path.iter().map(String::as_str).collect();
        args.push("--help");
        let err = parse(&args).expect_err("--help stops the parse");
        let text = err.render().to_string();
        assert!(
            err.kind() == clap::error::ErrorKind::DisplayHelp
                && err.exit_code() == 0
                && text.contains("Usage: cargo xtask"),
            "`xtask {}`: {:?} exit {}\n{text}",
            args.join(" "),
            err.kind(),
            err.exit_code()
        );
    }
    // And an unknown flag is an error naming it, exit 2.
    let err = parse(&["deploy", "--env", "e", "--nope"]).unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("--nope"), "{err}");
}

/// Every task and subcommand, as the words that name it (`[]` is the top level).
pub fn command_paths() -> Vec<Vec<String>> {
    fn walk(cmd: &clap::Command, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
        out.push(prefix.clone());
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let mut path = prefix.clone();
            path.push(sub.get_name().to_string());
            walk(sub, path, out);
        }
    }
    let mut paths = Vec::new();
    walk(&Cli::command(), Vec::new(), &mut paths);
    paths
}
