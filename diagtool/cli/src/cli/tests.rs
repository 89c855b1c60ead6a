use super::*;
use clap::CommandFactory;

#[test]
fn clap_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn exit_codes_follow_the_contract() {
    let unreachable = anyhow::Error::new(CliError::Unreachable {
        target: "t".into(),
        reason: "r".into(),
    })
    .context("watching");
    assert_eq!(exit_code(&unreachable), 3);
    assert_eq!(
        exit_code(&anyhow::Error::new(CliError::Input("bad".into()))),
        2
    );
    assert_eq!(exit_code(&anyhow::anyhow!("anything else")), 2);
    let pipe =
        anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe)).context("writing");
    assert!(is_broken_pipe(&pipe));
    assert!(!is_broken_pipe(&unreachable));
}

#[test]
fn watch_defaults_match_the_contract() {
    let cli = Cli::try_parse_from(["diagtool", "watch"]).expect("parses");
    let Command::Watch(args) = cli.command else {
        panic!("not watch")
    };
    assert_eq!(args.interval.0, std::time::Duration::from_secs(30));
    assert_eq!((args.duration, args.top, args.json), (None, 10, false));
    assert_eq!(cli.target, vec![DEFAULT_TARGET.to_owned()]);
    assert!(!args.is_fleet(&cli.target));
    assert!(Cli::try_parse_from(["diagtool", "watch", "--interval", "soon"]).is_err());
}

#[test]
fn fleet_flags_match_the_contract() {
    let cli = Cli::try_parse_from([
        "diagtool",
        "watch",
        "--target",
        "http://a:1",
        "--target",
        "http://b:2",
    ])
    .expect("parses");
    assert_eq!(
        cli.target,
        vec!["http://a:1".to_owned(), "http://b:2".to_owned()]
    );
    let Command::Watch(args) = cli.command else {
        panic!("not watch")
    };
    assert!(args.is_fleet(&cli.target));
    let cli = Cli::try_parse_from([
        "diagtool",
        "watch",
        "--prometheus",
        "http://127.0.0.1:9090",
        "--selector",
        "{job=\"shipper\"}",
        "--lookback",
        "30m",
        "--metric-prefix",
        "shipper",
        "--duration",
        "0s",
    ])
    .expect("parses");
    let Command::Watch(args) = cli.command else {
        panic!("not watch")
    };
    assert_eq!(args.lookback.0, std::time::Duration::from_secs(1800));
    assert_eq!(args.duration.map(|d| d.0), Some(std::time::Duration::ZERO));
    assert!(args.is_fleet(&cli.target));
    assert!(
        Cli::try_parse_from(["diagtool", "watch", "--selector", "{}"]).is_err(),
        "--selector needs --prometheus"
    );
    let two = Cli::try_parse_from([
        "diagtool",
        "--target",
        "http://a:1",
        "--target",
        "http://b:2",
        "snapshot",
    ])
    .expect("parses");
    let err = run(two).expect_err("snapshot takes one target");
    assert_eq!(exit_code(&err), 2);
}

#[test]
fn soak_flags_match_the_contract() {
    let cli = Cli::try_parse_from([
        "diagtool",
        "soak",
        "--profile",
        "p.toml",
        "--duration",
        "2m",
        "--junit",
        "j.xml",
        "--shipper",
        "/bin/shipper",
    ])
    .expect("parses");
    let Command::Soak(args) = cli.command else {
        panic!("not soak")
    };
    assert_eq!(args.profile, PathBuf::from("p.toml"));
    assert_eq!(
        args.duration.map(|d| d.0),
        Some(std::time::Duration::from_secs(120))
    );
    assert_eq!(args.junit, Some(PathBuf::from("j.xml")));
    assert_eq!(args.shipper, Some(PathBuf::from("/bin/shipper")));
    assert!(
        Cli::try_parse_from(["diagtool", "soak"]).is_err(),
        "--profile is required"
    );
}
