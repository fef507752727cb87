//! `wspair completions SHELL` and `wspair manpage`: shell completions and a man page made from
//! the command-line definition itself, so that they list every flag `serve` has (one per
//! configuration key) without a copy to keep in step.

use std::io::Write;

use clap::CommandFactory;

/// Writes the completion script for `shell` to stdout.
pub fn completions<C: CommandFactory>(shell: clap_complete::Shell) -> std::io::Result<()> {
    let mut command = C::command();
    let name = command.get_name().to_owned();
    // Into memory first: the generator panics on a write error, such as a closed pipe.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command, name, &mut script);
    to_stdout(&script)
}

/// Writes the man page (roff, section 1) of the command and its subcommands to stdout.
pub fn manpage<C: CommandFactory>() -> std::io::Result<()> {
    let command = C::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone()).render(&mut page)?;
    // The subcommands' own pages follow, so `man wspair` shows every flag of `serve`.
    for sub in command.get_subcommands().filter(|sub| !sub.is_hide_set()) {
        let name = format!("{}-{}", command.get_name(), sub.get_name());
        clap_mangen::Man::new(sub.clone().name(name)).render(&mut page)?;
    }
    to_stdout(&page)
}

/// Writes `bytes` to stdout; a reader that went away (`| head`) is not an error.
fn to_stdout(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
