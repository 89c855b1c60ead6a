//! Shell completions and man pages, generated from the clap definition so they never drift from
//! the flags: `diagtool completions SHELL` prints a completion script, `diagtool man` prints the
//! roff man page (or, with `--dir`, writes one page per command, `diagtool-watch.1` and so on).
//!
//! Packagers run these at build time; nothing here touches the network or the target.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

use super::Cli;

/// Writes the completion script for `shell` to `out`.
pub(crate) fn completions(shell: Shell, out: &mut dyn Write) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "diagtool", out);
    out.flush().context("writing the completion script")
}

/// Writes the top-level man page to `out`, or every page (`diagtool.1`, `diagtool-<command>.1`)
/// into `dir` when given.
pub(crate) fn man(dir: Option<&Path>, out: &mut dyn Write) -> anyhow::Result<()> {
    let cmd = Cli::command();
    let Some(dir) = dir else {
        clap_mangen::Man::new(cmd)
            .render(out)
            .context("rendering the man page")?;
        return out.flush().context("writing the man page");
    };
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the man page directory '{}'", dir.display()))?;
    let mut pages = vec![(String::from("diagtool"), cmd.clone())];
    for sub in cmd.get_subcommands() {
        let name = format!("diagtool-{}", sub.get_name());
        let page = sub
            .clone()
            .display_name(name.clone())
            .bin_name(format!("diagtool {}", sub.get_name()));
        pages.push((name, page));
    }
    for (name, page) in pages {
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(page)
            .render(&mut buf)
            .with_context(|| format!("rendering {name}.1"))?;
        std::fs::write(&path, buf)
            .with_context(|| format!("cannot write man page '{}'", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shell_gets_a_completion_script_naming_each_command() {
        for shell in [
            Shell::Bash,
            Shell::Zsh,
            Shell::Fish,
            Shell::Elvish,
            Shell::PowerShell,
        ] {
            let mut out = Vec::new();
            completions(shell, &mut out).expect("generates");
            let text = String::from_utf8(out).expect("utf-8");
            for command in [
                "snapshot", "watch", "diff", "dump", "profile", "report", "soak",
            ] {
                assert!(
                    text.contains(command),
                    "{shell}: no '{command}' in the script"
                );
            }
            // Fish and PowerShell spell long flags without their dashes (`-l fail-on-leak`).
            assert!(
                text.contains("fail-on-leak"),
                "{shell}: watch flags missing"
            );
        }
    }

    #[test]
    fn every_command_shows_examples_in_its_help() {
        let mut cmd = Cli::command();
        assert!(cmd.render_help().to_string().contains("Examples:"));
        for sub in cmd.get_subcommands_mut() {
            let name = sub.get_name().to_string();
            if name == "help" {
                continue; // clap's own
            }
            let help = sub.render_help().to_string();
            assert!(
                help.contains("Examples:\n  diagtool "),
                "`diagtool {name} --help` has no examples:\n{help}"
            );
        }
    }

    #[test]
    fn man_page_is_roff_with_the_commands_and_examples() {
        let mut out = Vec::new();
        man(None, &mut out).expect("renders");
        let text = String::from_utf8(out).expect("utf-8");
        assert!(
            text.starts_with(".ie \\n(.g .ds Aq"),
            "not roff: {}",
            &text[..40]
        );
        assert!(text.contains(".TH diagtool 1"), "no title header");
        assert!(text.contains("diagtool\\-watch(1)") || text.contains("watch"));
        assert!(
            text.contains("DIAGTOOL_TARGET"),
            "the env var of --target is documented"
        );
    }

    #[test]
    fn man_dir_writes_one_page_per_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        man(Some(dir.path()), &mut Vec::new()).expect("writes");
        for name in [
            "diagtool",
            "diagtool-watch",
            "diagtool-dump",
            "diagtool-soak",
        ] {
            let page = std::fs::read_to_string(dir.path().join(format!("{name}.1")))
                .unwrap_or_else(|e| panic!("{name}.1: {e}"));
            assert!(page.contains(&format!(".TH {name} 1")), "{name}.1 header");
        }
        let watch = std::fs::read_to_string(dir.path().join("diagtool-watch.1")).expect("read");
        assert!(watch.contains("\\-\\-interval"), "watch flags in its page");
        assert!(
            watch.contains("EXAMPLES") || watch.contains("Examples"),
            "examples in its page"
        );
    }

    #[test]
    fn man_dir_that_cannot_be_created_is_an_error_naming_it() {
        let file = tempfile::NamedTempFile::new().expect("tempfile");
        let err =
            man(Some(&file.path().join("sub")), &mut Vec::new()).expect_err("a file is in the way");
        assert!(format!("{err:#}").contains("sub"), "{err:#}");
    }
}
