//! `memgate completions SHELL` and `memgate man`: generated from the same
//! argument definitions the parser uses, so they cannot fall out of step.

use clap::CommandFactory;

use super::Cli;

#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete for; load the script from its startup file,
    /// e.g. `memgate completions bash > ~/.local/share/bash-completion/completions/memgate`
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// The completion script for `shell`.
pub fn completions(args: &CompletionsArgs) -> anyhow::Result<String> {
    let mut command = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut command, "memgate", &mut out);
    Ok(String::from_utf8(out)?)
}

/// The manual page memgate(1), in roff: name, synopsis, description and
/// global options, then a COMMANDS section with every subcommand and each of
/// its arguments, so one page documents everything (`memgate man >
/// memgate.1; man -l memgate.1`). clap_mangen's own subcommand section is
/// left out: it points at one page per subcommand, which memgate does not ship.
pub fn man() -> anyhow::Result<String> {
    let mut command = Cli::command();
    command.build();
    let man = clap_mangen::Man::new(command.clone());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    let mut page = String::from_utf8(out)?;
    page.push_str(".SH COMMANDS\n");
    for sub in command.get_subcommands() {
        describe(sub, "memgate", &mut page);
    }
    let mut out = Vec::new();
    man.render_version_section(&mut out)?;
    page.push_str(&String::from_utf8(out)?);
    Ok(page)
}

/// One command's entry in the COMMANDS section, then its subcommands'.
fn describe(command: &clap::Command, parent: &str, page: &mut String) {
    if command.get_name() == "help" {
        return;
    }
    let path = format!("{parent} {}", command.get_name());
    let leaf = command.get_subcommands().all(|s| s.get_name() == "help");
    if leaf {
        page.push_str(&format!(".TP\n\\fB{}\\fR", roff(&path)));
        for arg in command.get_positionals() {
            let name = arg
                .get_value_names()
                .and_then(|n| n.first())
                .map_or_else(|| arg.get_id().to_string(), |n| n.to_string());
            page.push_str(&format!(" \\fI{}\\fR", roff(&name)));
        }
        page.push('\n');
        if let Some(about) = command.get_about() {
            page.push_str(&format!("{}\n", roff(&about.to_string())));
        }
        let options: Vec<&clap::Arg> = command
            .get_arguments()
            .filter(|a| !a.is_global_set() && !matches!(a.get_id().as_str(), "help" | "version"))
            .collect();
        if !options.is_empty() {
            page.push_str(".RS\n");
            for arg in options {
                page.push_str(&format!(".TP\n{}\n", arg_head(arg)));
                if let Some(help) = arg.get_help() {
                    page.push_str(&format!("{}\n", roff(&help.to_string())));
                }
            }
            page.push_str(".RE\n");
        }
    }
    for sub in command.get_subcommands() {
        describe(sub, &path, page);
    }
}

/// `--name VALUE` (or the positional's `VALUE`), in roff.
fn arg_head(arg: &clap::Arg) -> String {
    let value = arg
        .get_value_names()
        .and_then(|n| n.first())
        .map(|n| n.to_string());
    let takes_value = arg.get_num_args().is_some_and(|n| n.takes_values());
    match arg.get_long() {
        Some(long) => {
            let mut head = format!("\\fB\\-\\-{}\\fR", roff(long));
            if takes_value {
                let value = value.unwrap_or_else(|| arg.get_id().to_string().to_uppercase());
                head.push_str(&format!(" \\fI{}\\fR", roff(&value)));
            }
            head
        }
        None => format!(
            "\\fI{}\\fR",
            roff(&value.unwrap_or_else(|| arg.get_id().to_string()))
        ),
    }
}

/// Text made safe for roff: backslashes and hyphens escaped, and a line
/// starting with a control character kept as text.
fn roff(text: &str) -> String {
    text.lines()
        .map(|line| {
            let escaped = line.replace('\\', "\\e").replace('-', "\\-");
            if escaped.starts_with('.') || escaped.starts_with('\'') {
                format!("\\&{escaped}")
            } else {
                escaped
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}
